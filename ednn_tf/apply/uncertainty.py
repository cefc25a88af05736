"""Where a committee disagrees: the mean prediction of its members and their spread, per structure
and per atom; frames picked for labelling by that spread; a map of it (``docs/uncertainty.md``).

Definitions (K members, population statistics, i.e. over K, not K - 1):

* ``energy_std`` (eV): the standard deviation of the members' total energies;
* ``energies_std`` (N,) eV: that of each atom's energy;
* ``force_dev`` (N,) eV/A: ``sqrt(mean_k |F_k,i - mean_k F_k,i|^2)``, the norm of the standard
  deviation of atom i's force vector (DeePMD-kit's per-atom model deviation of the force);
* ``max_force_dev`` (eV/A): its largest value in the structure (``dp model-devi``'s
  ``max_devi_f``), the number by which frames are picked.
"""
from __future__ import annotations

import numpy as np

from ..util import check_float, check_int

__all__ = ["predict_committee", "committee_spread", "select_frames", "plot_uncertainty_map", "max_raster"]


def committee_spread(runs):
    """Mean and spread of one structure from the members' results ``runs`` (dicts of
    :func:`ednn_tf.apply.space.predict_structures`, one per member): the keys of a prediction plus
    ``energy_std``, ``energies_std``, ``force_dev``, ``max_force_dev`` (None without forces)."""
    E = np.array([r["energy"] for r in runs])
    e = np.stack([r["energies"] for r in runs])
    out = {"energy": float(E.mean()), "energies": e.mean(0), "energy_std": float(E.std()),
           "energies_std": e.std(0), "forces": None, "stress": None, "force_dev": None, "max_force_dev": None}
    if runs[0]["forces"] is not None:
        F = np.stack([r["forces"] for r in runs])
        mean = F.mean(0)
        out["forces"] = mean
        out["force_dev"] = np.sqrt(((F - mean) ** 2).sum(-1).mean(0))
        out["max_force_dev"] = float(out["force_dev"].max()) if len(mean) else 0.0
    if all(r["stress"] is not None for r in runs):
        out["stress"] = np.mean([r["stress"] for r in runs], axis=0)
    return out


def predict_committee(committee, structures, **kwargs):
    """:func:`ednn_tf.apply.space.predict_structures` through every member of ``committee``
    (``kwargs`` go to it), then :func:`committee_spread` per structure. The first member's call
    checks every structure before any evaluation (the members share elements and limits)."""
    from .space import predict_structures

    runs = [predict_structures(m, structures, **kwargs) for m in committee.members]
    return [committee_spread([run[s] for run in runs]) for s in range(len(structures))]


def select_frames(deviations, n, trust_lo=0.0, trust_hi=np.inf):
    """Indices of at most ``n`` frames to label, from their ``deviations`` (max_force_dev, eV/A): those
    in the trust window ``trust_lo <= d < trust_hi`` (below: the committee agrees, nothing to learn;
    above: likely unphysical), highest deviation first (ties: the lower index first). Deterministic."""
    d = np.asarray(deviations, dtype=np.float64)
    n = check_int("n", n, minimum=1)
    trust_lo = check_float("trust_lo", trust_lo, minimum=0.0)
    if not trust_hi > trust_lo:
        raise ValueError(f"trust_hi must be above trust_lo={trust_lo}, got trust_hi={trust_hi}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"deviations must be finite, got {d[~np.isfinite(d)][:3].tolist()}")
    inside = np.flatnonzero((d >= trust_lo) & (d < trust_hi))
    order = inside[np.lexsort((inside, -d[inside]))]
    return order[:n]


def max_raster(xy, values, max_bins=500, min_side=3.0):
    """``(grid (nx, ny), side)``: the largest of ``values`` among the points ``xy`` (M, 2) in each bin
    of a grid over their span (NaN where a bin is empty); bins of about ``side`` A, at least
    ``min_side`` and at most ``max_bins`` along the longer axis."""
    xy, values = np.asarray(xy, np.float64), np.asarray(values, np.float64)
    span = np.ptp(xy, axis=0) + 1.0
    bins = np.maximum(1, np.round(span / max(min_side, float(span.max()) / max_bins)).astype(int))
    grid = np.full(bins, np.nan)
    ij = np.minimum(((xy - xy.min(0)) / span * bins).astype(int), bins - 1)
    np.fmax.at(grid, (ij[:, 0], ij[:, 1]), values)
    return grid, float(span[0] / bins[0])


def plot_uncertainty_map(atoms, values, path, label="force deviation (eV/A)", boxes=()):
    """The atoms of a sheet seen from above, coloured by ``values`` (one per atom), as a PNG;
    ``boxes``: ``(centre xy, side)`` squares (A) to outline, e.g. the cells cut around spots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..util import atomic_path

    xy = atoms.positions[:, :2]
    values = np.asarray(values, dtype=np.float64)
    span = np.ptp(xy, axis=0) + 1.0
    fig, ax = plt.subplots(figsize=(7.0, 7.0 * span[1] / span[0] + 0.8))
    if len(xy) > 20_000:        # a raster: the largest value in each bin, so a hot atom stays visible
        grid, side = max_raster(xy, values)
        lo = xy.min(0)
        sc = ax.imshow(grid.T, origin="lower", extent=(lo[0], lo[0] + span[0], lo[1], lo[1] + span[1]),
                       cmap="viridis", interpolation="nearest")
        label += f" (max per {side:.2g} A bin)"
    else:
        size = max(0.05, min(30.0, 4e4 / max(len(xy), 1)))
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=size, cmap="viridis", linewidths=0)
    fig.colorbar(sc, ax=ax, label=label, shrink=0.8)
    for centre, side in boxes:
        ax.add_patch(matplotlib.patches.Rectangle(np.asarray(centre)[:2] - side / 2, side, side, fill=False,
                                                  edgecolor="red", linewidth=1.0))
    ax.set(aspect="equal", xlabel="x (A)", ylabel="y (A)", title=f"{len(xy):,} atoms, max {values.max():.3g}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
