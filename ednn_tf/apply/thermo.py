"""Analysis of Monte Carlo records: lattice thermodynamics (energy, magnetisation, specific heat,
Binder cumulant with block error bars, the Binder crossing) and, for atomic structures, the radial
distribution function and its peaks. Pure numpy (scipy for the peaks); no TensorFlow.
"""
from __future__ import annotations

import math

import numpy as np

from ..atoms.cells import cell_lengths
from ..util import check_int, check_positive

__all__ = ["thermodynamics", "binder_crossing", "BINDER_ISING_2D", "radial_distribution", "rdf_peaks"]

#: Binder cumulant of the 2D Ising model at Tc on square periodic lattices (Kamieniarz & Bloete 1993)
BINDER_ISING_2D = 0.61069


def thermodynamics(energy, magnetisation, temperatures, n_sites, n_blocks=10):
    """Thermal averages from Monte Carlo records, replicas of equal temperature pooled.

    ``energy`` (totals) and ``magnetisation`` (per site) are ``(n_records, R)`` as returned by
    ``Metropolis.run``; ``temperatures`` the ``(R,)`` ``k_B T``; ``n_sites`` the sites ``N`` of one
    replica. Error bars are the standard error over ``n_blocks`` consecutive blocks of records.

    Returns a dict of float64 arrays over the sorted unique temperatures: ``T``,
    ``energy_per_site`` ``<E>/N``, ``abs_magnetisation`` ``<|m|>``, ``specific_heat``
    ``(<E^2> - <E>^2) / (N T^2)`` (per site, ``k_B = 1``), ``binder`` ``1 - <m^4> / (3 <m^2>^2)``,
    each with a ``*_err`` companion, and ``n_samples`` per temperature.
    """
    e = np.asarray(energy, np.float64)
    m = np.asarray(magnetisation, np.float64)
    T = np.asarray(temperatures, np.float64).ravel()
    if e.ndim != 2 or e.shape != m.shape or e.shape[1] != T.size:
        raise ValueError(f"energy {e.shape} and magnetisation {m.shape} must both be (n_records, {T.size})")
    n_sites = check_int("n_sites", n_sites, minimum=1)
    n_blocks = check_int("n_blocks", n_blocks, minimum=2, maximum=e.shape[0])    # at most n_records
    temps = np.unique(T)

    def estimates(es, ms, t):  # es, ms: (n, r) records of replicas at temperature t
        a = np.abs(ms)
        m2, m4 = np.mean(ms ** 2), np.mean(ms ** 4)
        return np.array([np.mean(es) / n_sites, np.mean(a), np.var(es) / (n_sites * t * t),
                         1.0 - m4 / (3.0 * m2 * m2) if m2 > 0 else np.nan])

    keys = ["energy_per_site", "abs_magnetisation", "specific_heat", "binder"]
    out = {k: np.empty(len(temps)) for k in keys}
    out.update({k + "_err": np.empty(len(temps)) for k in keys})
    out["T"], out["n_samples"] = temps, np.empty(len(temps), np.int64)
    for i, t in enumerate(temps):
        es, ms = e[:, T == t], m[:, T == t]
        blocks = np.array([estimates(eb, mb, t) for eb, mb in zip(np.array_split(es, n_blocks),
                                                                  np.array_split(ms, n_blocks))])
        err = blocks.std(axis=0, ddof=1) / np.sqrt(n_blocks)
        for k, v, dv in zip(keys, estimates(es, ms, t), err):
            out[k][i], out[k + "_err"][i] = v, dv
        out["n_samples"][i] = es.size
    return out


def binder_crossing(T, u_small, u_large, u_star=BINDER_ISING_2D):
    """Temperature where the Binder cumulants of two lattice sizes cross (estimate of ``Tc``).

    Crossings are located by linear interpolation of ``u_small - u_large`` between neighbouring
    temperatures (sorted ascending). Noise in the disordered phase (both cumulants near 0) can add
    spurious crossings, so among all sign changes the one whose cumulant value is closest to
    ``u_star`` is returned; ``None`` if the curves do not cross.
    """
    T = np.asarray(T, np.float64)
    a, b = np.asarray(u_small, np.float64), np.asarray(u_large, np.float64)
    if not (T.ndim == 1 and T.shape == a.shape == b.shape):
        raise ValueError(f"T, u_small, u_large must be 1-D of equal length, got {T.shape}, {a.shape}, {b.shape}")
    order = np.argsort(T)
    T, d, u = T[order], (a - b)[order], (0.5 * (a + b))[order]
    best = None
    for i in range(len(T) - 1):
        if not (np.isfinite(d[i]) and np.isfinite(d[i + 1])) or d[i] * d[i + 1] > 0 or d[i] == d[i + 1]:
            continue
        w = d[i] / (d[i] - d[i + 1])
        tc, uc = T[i] + w * (T[i + 1] - T[i]), u[i] + w * (u[i + 1] - u[i])
        if best is None or abs(uc - u_star) < abs(best[1] - u_star):
            best = (float(tc), float(uc))
    return None if best is None else best[0]


def radial_distribution(frames, cell, r_max=6.0, n_bins=240, in_plane=True):
    """Radial distribution function g(r) of periodic frames, averaged over frames.

    ``frames``: positions ``(n_frames, N, 3)`` or ``(N, 3)`` (Angstrom), or a list of ase.Atoms;
    ``cell``: orthorhombic (lengths or 3x3, Angstrom), periodic along x and y; ``n_bins`` bins on
    ``[0, r_max]`` (Angstrom; periodic images are included, so it may exceed half the cell).
    ``in_plane=True`` (2D sheets): xy distances and ``g(r) = n(r) / (N rho_A 2 pi r dr)`` with
    ``rho_A = N / (Lx Ly)`` per A^2; False: 3D distances with the same areal normalisation (a pair
    density per unit area of the sheet). Returns ``(r, g)``: bin centres and g, float64 ``(n_bins,)``.
    """
    if isinstance(frames, (list, tuple)) and frames and hasattr(frames[0], "positions"):
        frames = np.array([a.positions for a in frames])
    x = np.asarray(frames, np.float64)
    x = x[None] if x.ndim == 2 else x
    if x.ndim != 3 or x.shape[2] != 3 or x.shape[1] < 2:
        raise ValueError(f"frames must be (n_frames, N >= 2, 3) positions, got shape {x.shape}")
    r_max = check_positive("r_max", r_max)
    n_bins = check_int("n_bins", n_bins, minimum=1)
    L = cell_lengths(cell, 2)
    n_atoms = x.shape[1]
    edges = np.linspace(0.0, r_max, n_bins + 1)
    ka, kb = int(math.ceil(r_max / L[0])), int(math.ceil(r_max / L[1]))
    shifts = np.array([(a * L[0], b * L[1], 0.0) for a in range(-ka, ka + 1) for b in range(-kb, kb + 1)])
    counts = np.zeros(n_bins, np.float64)
    iu = ~np.eye(n_atoms, dtype=bool)
    for pos in x:
        d = pos[None, :, :] - pos[:, None, :]                                  # (N, N, 3)
        d[..., :2] -= L * np.round(d[..., :2] / L)                            # minimum image in-plane
        if in_plane:
            d[..., 2] = 0.0
        for s in shifts:
            r = np.sqrt(((d + s) ** 2).sum(-1))
            r = r[iu] if not s.any() else r.ravel()                          # no self-distance
            counts += np.histogram(r[r < r_max], bins=edges)[0]
    rho = n_atoms / (L[0] * L[1])
    shell = np.pi * (edges[1:] ** 2 - edges[:-1] ** 2)
    g = counts / (len(x) * n_atoms * rho * shell)
    return 0.5 * (edges[1:] + edges[:-1]), g


def rdf_peaks(r, g, n_peaks=3, smooth=1.0, min_height=0.5):
    """Positions (Angstrom) of the first ``n_peaks`` maxima of g(r), in increasing r.

    ``g`` is smoothed with a Gaussian of ``smooth`` bins (0: none); local maxima higher than
    ``min_height`` with a prominence of at least 10 % of the highest value are kept (this drops
    noise wiggles), and each position is refined by a parabola through the three bins at the
    maximum. Missing peaks are NaN.
    """
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
    if r.shape != g.shape or r.ndim != 1 or r.size < 3:
        raise ValueError(f"r and g must be 1D arrays of equal length >= 3, got {r.shape} and {g.shape}")
    gs = gaussian_filter1d(g, smooth) if smooth > 0 else g
    idx, props = find_peaks(gs, height=min_height, prominence=0.1 * max(float(gs.max()), 1e-12))
    out = []
    for k in idx[:n_peaks]:
        off = 0.0
        if 0 < k < len(r) - 1:
            y0, y1, y2 = gs[k - 1], gs[k], gs[k + 1]
            den = y0 - 2 * y1 + y2
            off = np.clip(0.5 * (y0 - y2) / den, -1, 1) if den != 0 else 0.0
        out.append(float(r[k] + off * (r[1] - r[0])))
    return np.array(out + [np.nan] * (n_peaks - len(out)))
