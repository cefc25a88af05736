"""Error summaries for extensive predictions (all arithmetic in float64)."""
from __future__ import annotations

import numpy as np

__all__ = ["extensive_errors", "energy_errors", "error_ratio_ci"]


def extensive_errors(true, pred, n_sites=None, level=None):
    """Summary of prediction errors of an extensive quantity.

    Args:
        true, pred: totals, any shape with the same number of elements.
        n_sites: sites (spins, atoms, area...) per sample, scalar or array: adds per-site errors.
        level: spacing of the allowed values (4 J for Ising energies on a periodic lattice):
            adds the fraction of predictions that round to the right level.
    Returns a dict of plain floats: median/mean absolute error, RMSE, median relative error,
    max absolute error, and the per-site and level figures when requested.
    """
    true = np.asarray(true, np.float64).ravel()
    pred = np.asarray(pred, np.float64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in size: {true.size} vs {pred.size}")
    err = pred - true
    ae = np.abs(err)
    out = {
        "n": int(true.size),
        "median_abs_error": float(np.median(ae)),
        "mean_abs_error": float(np.mean(ae)),
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "max_abs_error": float(np.max(ae)),
        "mean_error": float(np.mean(err)),
        "median_rel_error": float(np.median(ae / np.maximum(np.abs(true), 1e-300))),
    }
    if n_sites is not None:
        per = ae / np.asarray(n_sites, np.float64)
        out["median_abs_error_per_site"] = float(np.median(per))
        out["mean_abs_error_per_site"] = float(np.mean(per))
    if level is not None:
        out["fraction_right_level"] = float(np.mean(np.round(pred / level) == np.round(true / level)))
    return out


def energy_errors(true_ev, pred_ev, n_atoms, areas):
    """:func:`extensive_errors` of total energies in the three units the atomistic experiments
    report: ``"eV"`` (totals), ``"meV_per_A2"`` (per cell area in A^2, the paper's unit) and
    ``"meV_per_atom"``. ``n_atoms`` and ``areas`` are per sample (or scalars)."""
    true_ev, pred_ev = np.asarray(true_ev, np.float64), np.asarray(pred_ev, np.float64)
    areas, n_atoms = np.asarray(areas, np.float64), np.asarray(n_atoms, np.float64)
    if np.any(areas <= 0) or np.any(n_atoms <= 0):
        raise ValueError("areas and n_atoms must be > 0")
    return {"eV": extensive_errors(true_ev, pred_ev),
            "meV_per_A2": extensive_errors(1e3 * true_ev / areas, 1e3 * pred_ev / areas),
            "meV_per_atom": extensive_errors(1e3 * true_ev / n_atoms, 1e3 * pred_ev / n_atoms)}


def error_ratio_ci(true, pred_a, pred_b, stat="mean", level=0.95, n_boot=10000, seed=0):
    """Ratio ``stat|pred_b - true| / stat|pred_a - true|`` with a paired bootstrap interval.

    The samples are resampled with replacement, the same indices for both models (their errors
    on one sample are correlated), ``n_boot`` times. ``stat`` is ``"mean"`` or ``"median"``.
    Returns ``{"ratio", "low", "high", "level", "n_boot", "p_ratio_below_2"}``: the ratio on the
    full sample, the percentile interval, and the fraction of resamples whose ratio is below 2.
    """
    true = np.asarray(true, np.float64).ravel()
    pred_a, pred_b = np.asarray(pred_a, np.float64).ravel(), np.asarray(pred_b, np.float64).ravel()
    if not pred_a.size == pred_b.size == true.size or true.size < 2:
        raise ValueError(f"need >= 2 samples and equal sizes, got {true.size}, {pred_a.size}, {pred_b.size}")
    ea, eb = np.abs(pred_a - true), np.abs(pred_b - true)
    if stat not in ("mean", "median"):
        raise ValueError(f"stat must be 'mean' or 'median', got {stat!r}")
    if not 0 < level < 1 or int(n_boot) < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    fn = np.mean if stat == "mean" else np.median
    idx = np.random.default_rng(seed).integers(0, true.size, size=(int(n_boot), true.size))
    with np.errstate(divide="ignore", invalid="ignore"):   # a resample may hold only exact predictions of a
        ratios = fn(eb[idx], axis=1) / fn(ea[idx], axis=1)   # (inf ranks last; 0/0 resamples are dropped)
    ratios = ratios[~np.isnan(ratios)]
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return {"ratio": float(fn(eb) / fn(ea)), "low": float(lo), "high": float(hi), "level": float(level),
            "n_boot": int(n_boot), "p_ratio_below_2": float(np.mean(ratios < 2))}
