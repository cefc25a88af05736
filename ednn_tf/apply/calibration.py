"""Whether a spread can be trusted: per-frame predicted spreads against the actual errors on labelled
frames (issue 28's calibration; ``experiments/calibration.py``, ``docs/uncertainty.md``).

Per frame (N atoms, in-plane forces, eV and eV/A):

* actual: ``force_rms`` ``sqrt(mean_i |dF_i|^2)``, ``max_force_error`` ``max_i |dF_i|``,
  ``force_mae`` (mean over components) and ``energy_error`` ``|dE| / N`` (meV/atom);
* predicted: ``force_dev_rms`` ``sqrt(mean_i force_dev_i^2)`` (a calibrated committee has
  ``force_rms = force_dev_rms`` on average), ``max_force_dev`` and ``energy_std / N`` (meV/atom);
* a baseline that needs no spread: the predicted forces' own size, ``force_norm_rms``
  ``sqrt(mean_i |F_i|^2)`` and ``max_force_norm`` (larger forces tend to have larger errors; a spread
  is worth its cost only where it ranks the errors better than this).

The spreads come from a :class:`~ednn_tf.committee.Committee` or, for a single potential, from its
K orientations (``predict_structures(..., orientations=K, spread=True)``): the same potential on K
copies turned by ``90 k / K`` degrees and moved by sub-pixel offsets, a committee that costs no
training and measures how much the prediction depends on the grid.
"""
from __future__ import annotations

import numpy as np

from ..util import atomic_path, check_int

__all__ = ["frame_table", "rank_summary", "reliability", "plot_calibration", "held_out_sets", "PAIRS", "BASELINES"]

#: The labelled held-out sets of ``hexagonal-gfn1`` under ``data/potentials`` (besides its turned validation cells).
HELD_OUT = ("checks_strained", "hexagonal_othersizes", "checks_hot")

#: (predicted, actual) columns of :func:`frame_table` compared by :func:`rank_summary`.
PAIRS = (("max_force_dev", "max_force_error"), ("force_dev_rms", "force_rms"), ("energy_std", "energy_error"))
#: The same comparison for the baseline of the predicted forces' size.
BASELINES = (("max_force_norm", "max_force_error"), ("force_norm_rms", "force_rms"))


def frame_table(predictions, energies, forces):
    """Columns (one value per frame) of the module docstring from ``predictions`` (dicts with the
    keys of :func:`~ednn_tf.apply.uncertainty.committee_spread`) and the labels (eV, (N, 3) eV/A)."""
    cols = {k: [] for k in ("n", "force_rms", "max_force_error", "force_mae", "energy_error", "force_dev_rms",
                            "max_force_dev", "energy_std", "force_norm_rms", "max_force_norm")}
    for r, e, f in zip(predictions, energies, forces):
        n = len(f)
        d = r["forces"][:, :2] - np.asarray(f)[:, :2]
        norm = np.sqrt((d ** 2).sum(1))
        cols["n"].append(n)
        cols["force_rms"].append(float(np.sqrt(np.mean(norm ** 2))))
        cols["max_force_error"].append(float(norm.max()))
        cols["force_mae"].append(float(np.abs(d).mean()))
        cols["energy_error"].append(1e3 * abs(r["energy"] - float(e)) / n)
        cols["force_dev_rms"].append(float(np.sqrt(np.mean(r["force_dev"] ** 2))))
        cols["max_force_dev"].append(float(r["max_force_dev"]))
        cols["energy_std"].append(1e3 * float(r["energy_std"]) / n)
        size = np.sqrt((r["forces"][:, :2] ** 2).sum(1))
        cols["force_norm_rms"].append(float(np.sqrt(np.mean(size ** 2))))
        cols["max_force_norm"].append(float(size.max()))
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def rank_summary(predicted, actual):
    """``spearman`` (rank correlation, nan for fewer than 3 frames or a constant column),
    ``above_3x`` (fraction of frames whose actual error exceeds 3 x the predicted spread) and
    ``median_ratio`` (median of actual / predicted; 1 for a calibrated spread of matching units)."""
    from scipy.stats import spearmanr

    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if p.shape != a.shape or p.ndim != 1:
        raise ValueError(f"predicted and actual must be 1-D of one length, got {p.shape} and {a.shape}")
    rho = float(spearmanr(p, a)[0]) if len(p) > 2 and np.ptp(p) > 0 and np.ptp(a) > 0 else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.median(a / p)) if len(p) else float("nan")
    return {"spearman": rho, "above_3x": float(np.mean(a > 3.0 * p)) if len(p) else float("nan"),
            "median_ratio": ratio}


def reliability(predicted, actual, bins=6):
    """Frames binned by ``predicted`` into ``bins`` groups of (nearly) equal count, sorted: per bin
    the mean predicted spread, the RMS actual error and the count (lists). A calibrated spread lies
    on the diagonal."""
    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    bins = check_int("bins", bins, minimum=1)
    groups = [g for g in np.array_split(np.argsort(p, kind="stable"), min(bins, len(p))) if len(g)]
    return {"predicted": [float(p[g].mean()) for g in groups],
            "actual_rms": [float(np.sqrt(np.mean(a[g] ** 2))) for g in groups],
            "count": [int(len(g)) for g in groups]}


def plot_calibration(tables, path, title=""):
    """Two panels from ``{set name: frame_table}``: max force deviation against max force error
    (every frame, log axes) and the reliability of ``force_dev_rms`` against ``force_rms`` (all sets
    together, binned), each with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, t in tables.items():
        rho = rank_summary(t["max_force_dev"], t["max_force_error"])["spearman"]
        ax.loglog(t["max_force_dev"], t["max_force_error"], "o", ms=3, alpha=0.7, label=f"{name} (rho {rho:.2f})")
    allp = np.concatenate([t["force_dev_rms"] for t in tables.values()])
    alla = np.concatenate([t["force_rms"] for t in tables.values()])
    rel = reliability(allp, alla, bins=8)
    bx.plot(rel["predicted"], rel["actual_rms"], "o-", label="frames binned by spread")
    for x, lim in ((ax, np.concatenate([t["max_force_dev"] for t in tables.values()])),
                   (bx, np.array([0.0] + rel["predicted"]))):
        lo, hi = max(1e-4, float(lim.min())) if x is ax else 0.0, 1.1 * float(lim.max())
        x.plot([lo, hi], [lo, hi], "k--", lw=1, label="actual = predicted")
        x.plot([lo, hi], [3 * lo, 3 * hi], "k:", lw=1, label="3 x predicted")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="predicted: max force deviation (eV/A)", ylabel="actual: max |dF| of the frame (eV/A)",
           title="each frame")
    bx.set(xlabel="predicted: RMS force deviation (eV/A)", ylabel="actual: RMS |dF| (eV/A)",
           title="reliability (binned, all sets)")
    ax.legend(fontsize=7)
    bx.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def held_out_sets(data="data/potentials", seed=1):
    """``{name: (structures, energies (eV), forces (eV/A))}``: the held-out frames of the calibration, those
    that exist under ``data``: ``validation_turned`` (the 150 validation cells of ``hexagonal-gfn1``, each
    turned by a random angle from ``seed``, forces turned with it) and the labelled :data:`HELD_OUT` sets
    (``<name>_gfn1_sc2.extxyz``: strained 2.5-4 %, other sizes, hot MD frames). Raises SystemExit when none exists."""
    import os

    import ase.io

    from .checks import shipped_split, turned
    from .fit import labelled_energies, labelled_forces

    sets = {}
    if os.path.isfile(f"{data}/hexagonal_varied_c012_gfn1_sc2.extxyz"):
        cells, _, val = shipped_split(data)
        val = [cells[i] for i in val]
        angles = np.random.default_rng([seed, 28]).uniform(0.0, 360.0, len(val))
        e, f = labelled_energies(val), labelled_forces(val)
        moved = [turned(a, t, g) for a, t, g in zip(val, angles, f)]
        sets["validation_turned"] = ([m[0] for m in moved], e, [np.c_[m[1], np.zeros(len(m[1]))] for m in moved])
    for name in HELD_OUT:
        path = f"{data}/{name}_gfn1_sc2.extxyz"
        if os.path.isfile(path):
            s = ase.io.read(path, ":")
            for a in s:
                a.pbc = [True, True, False]
            sets[name] = (s, labelled_energies(s), labelled_forces(s))
    if not sets:
        raise SystemExit(f"no labelled held-out set under {data}: run the labelling first "
                         "(python experiments/calibration.py --label, docs/uncertainty.md)")
    return sets
