"""Error summaries for extensive predictions (all arithmetic in float64)."""
from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["extensive_errors", "energy_errors", "error_ratio_ci", "ratio_entries", "ratio_summary", "fit_exponent",
           "combine_runs", "runs_report", "no_better_than"]

#: The prediction kinds of a hexagonal run that :func:`combine_runs` compares.
RUN_KINDS = ("plain", "symmetrised")


def extensive_errors(true, pred, n_sites=None, level=None):
    """Plain-float errors of predicted totals ``pred`` vs ``true`` (same size): median / mean / max absolute,
    RMSE, mean, median relative. ``n_sites`` (spins, atoms, area... per sample) adds per-site errors;
    ``level`` (allowed-value spacing, 4 J for periodic Ising) adds the fraction at the right level."""
    true, pred = (np.asarray(v, np.float64).ravel() for v in (true, pred))
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in size: {true.size} vs {pred.size}")
    err = pred - true
    ae = np.abs(err)
    out = {"n": int(true.size), "median_abs_error": float(np.median(ae)), "mean_abs_error": float(np.mean(ae)),
           "rmse": float(np.sqrt(np.mean(err ** 2))), "max_abs_error": float(np.max(ae)),
           "mean_error": float(np.mean(err)),
           "median_rel_error": float(np.median(ae / np.maximum(np.abs(true), 1e-300)))}
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
    true_ev, pred_ev, areas, n_atoms = (np.asarray(v, np.float64) for v in (true_ev, pred_ev, areas, n_atoms))
    if np.any(areas <= 0) or np.any(n_atoms <= 0):
        raise ValueError("areas and n_atoms must be > 0")
    return {"eV": extensive_errors(true_ev, pred_ev),
            "meV_per_A2": extensive_errors(1e3 * true_ev / areas, 1e3 * pred_ev / areas),
            "meV_per_atom": extensive_errors(1e3 * true_ev / n_atoms, 1e3 * pred_ev / n_atoms)}


def no_better_than(model_error, reference_error, reference="the baseline alone", fraction=0.9):
    """A warning (``str``; ``""`` when none is due) when a trained model's test error ``model_error``
    is at least ``fraction`` of ``reference_error``, the error of the fixed part it was trained on
    top of (same unit). Such a run learned (almost) nothing: typically training sat at the
    constant-predictor plateau. Both errors must be finite and >= 0."""
    model_error, reference_error = float(model_error), float(reference_error)
    if not (np.isfinite(model_error) and np.isfinite(reference_error)) or min(model_error, reference_error) < 0:
        raise ValueError(f"errors must be finite and >= 0, got model_error={model_error!r}, "
                         f"reference_error={reference_error!r}")
    if model_error < fraction * reference_error:
        return ""
    return (f"the trained model's test error {model_error:.4g} is {model_error / max(reference_error, 1e-300):.2f}x "
            f"that of {reference} ({reference_error:.4g}): the network learned (almost) nothing. Too few "
            f"epochs, or a loss flat from the first ones (the constant-predictor plateau): try more --epochs "
            f"or --warmup-epochs, a smaller --lr or another --seed")


def error_ratio_ci(true, pred_a, pred_b, stat="mean", level=0.95, n_boot=10000, seed=0):
    """``{"ratio", "low", "high", "level", "n_boot", "p_ratio_below_2"}`` of ``stat|pred_b - true| /
    stat|pred_a - true|`` (``stat``: "mean" or "median"): paired bootstrap (``n_boot`` resamples, the
    same indices for both models, whose errors correlate) percentile interval, fraction below 2."""
    true, pred_a, pred_b = (np.asarray(v, np.float64).ravel() for v in (true, pred_a, pred_b))
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


def ratio_entries(true_ev, ednn_ev, cnn_ev, areas):
    """CNN / EDNN ratios of the mean and the median absolute error (meV/A^2, the paper's "MAE" is
    a median) and, as ``ratio_ci``, their paired bootstrap 95 % intervals over the test cells
    (:func:`error_ratio_ci`)."""
    t, e, c = (1e3 * np.asarray(v, np.float64) / areas for v in (true_ev, ednn_ev, cnn_ev))
    ci = {stat: error_ratio_ci(t, e, c, stat=stat) for stat in ("mean", "median")}
    return {"mae_ratio_cnn_over_ednn": ci["mean"]["ratio"], "median_ratio_cnn_over_ednn": ci["median"]["ratio"],
            "ratio_ci": ci}


def ratio_summary(ci):
    """One line per statistic of :func:`ratio_entries`'s ``ratio_ci``."""
    return ", ".join(f"{stat} ratio {r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}] (95 %; "
                     f"{100 * r['p_ratio_below_2']:.0f} % of resamples below 2)" for stat, r in ci.items())


def fit_exponent(n, t):
    """Least-squares slope of log t vs log n (None with fewer than two distinct sizes)."""
    n, t = np.asarray(n, float), np.asarray(t, float)
    if len(np.unique(n)) < 2:
        return None
    return float(np.polyfit(np.log(n), np.log(t), 1)[0])


def _load_run(run):
    """``(path, test_predictions, cell area)`` of one hexagonal run's ``results.json``."""
    path = run if run.endswith(".json") else os.path.join(run, "results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no results.json for run {run!r} (looked for {path!r})")
    try:
        with open(path) as fh:
            res = json.load(fh)
    except ValueError as exc:
        raise ValueError(f"corrupt results file {path!r}: {exc}") from exc
    tp = res.get("test_predictions")
    if not tp or "ednn_eV" not in tp or "cnn_eV" not in tp:
        raise ValueError(f"{path!r} has no test predictions of both models (run hexagonal.py without --skip ednn/cnn)")
    # A^2 per cell (hexagonal.py uses one cell size), from the two units of a nonzero reported MAE
    for name in ("ednn", "cnn"):
        t = res["test"][name]
        if t["meV_per_A2"]["mean_abs_error"] > 0:
            return path, tp, t["eV"]["mean_abs_error"] * 1e3 / t["meV_per_A2"]["mean_abs_error"]
    raise ValueError(f"{path!r}: both models have zero test error, the cell area cannot be recovered")


def combine_runs(runs, n_boot=10000):
    """MAEs (meV/A^2) and CNN/EDNN ratios of hexagonal runs: ``{"runs", "n_test", "cell_area_A2", "plain",
    "symmetrised" (if every run has it)}``; each kind holds ``per_run``, ``mean`` (of the per-run MAEs,
    ratio of the means) and ``ensemble`` (of the averaged predictions, bootstrap ``[median_]ratio_ci``)."""
    if len(runs) < 1:
        raise ValueError("give at least one run directory")
    loaded = [_load_run(r) for r in runs]
    _, tp0, area = loaded[0]
    y = np.asarray(tp0["true_eV"], np.float64)
    for path, tp, a in loaded[1:]:
        if tp["test_indices"] != tp0["test_indices"] or not np.allclose(tp["true_eV"], y):
            raise ValueError(f"{path!r} was tested on other cells than {loaded[0][0]!r}: runs must share "
                             "--seed and the split")
        if not np.isclose(a, area, rtol=1e-6):
            raise ValueError(f"{path!r} has cells of {a:.3f} A^2, {loaded[0][0]!r} of {area:.3f} A^2")

    def mae(p):
        return float(np.mean(np.abs(np.asarray(p) - y)) * 1e3 / area)

    out = {"runs": [os.fspath(r) for r in runs], "n_test": int(y.size), "cell_area_A2": float(area)}
    for kind in RUN_KINDS:
        suffix = "" if kind == "plain" else "_symmetrised"
        if not all(f"ednn{suffix}_eV" in tp and f"cnn{suffix}_eV" in tp for _, tp, _ in loaded):
            continue
        e = [np.asarray(tp[f"ednn{suffix}_eV"], np.float64) for _, tp, _ in loaded]
        c = [np.asarray(tp[f"cnn{suffix}_eV"], np.float64) for _, tp, _ in loaded]
        per = [{"ednn": ea, "cnn": eb, "ratio": eb / ea} for ea, eb in ((mae(a), mae(b)) for a, b in zip(e, c))]
        me, mc = np.mean([r["ednn"] for r in per]), np.mean([r["cnn"] for r in per])
        ee, ce = np.mean(e, axis=0), np.mean(c, axis=0)
        out[kind] = {
            "per_run": per,
            "mean": {"ednn": float(me), "cnn": float(mc), "ratio": float(mc / me),
                     "ratio_min": min(r["ratio"] for r in per), "ratio_max": max(r["ratio"] for r in per)},
            "ensemble": {"ednn": mae(ee), "cnn": mae(ce),
                         "ratio_ci": error_ratio_ci(y, ee, ce, n_boot=n_boot),
                         "median_ratio_ci": error_ratio_ci(y, ee, ce, stat="median", n_boot=n_boot)},
        }
    return out


def runs_report(res):
    """The text report of :func:`combine_runs`'s result (MAE in meV/A^2, ratios CNN / EDNN)."""
    lines = [f"{len(res['runs'])} runs, {res['n_test']} test cells; MAE in meV/A^2, ratio = CNN / EDNN"]
    for kind, k in ((kind, res[kind]) for kind in RUN_KINDS if kind in res):
        lines.append(f"{kind}:")
        for path, r in zip(res["runs"], k["per_run"]):
            lines.append(f"  {path}: EDNN {r['ednn']:.2f}  CNN {r['cnn']:.2f}  ratio {r['ratio']:.2f}")
        m = k["mean"]
        lines.append(f"  mean of runs: EDNN {m['ednn']:.2f}  CNN {m['cnn']:.2f}  ratio {m['ratio']:.2f} "
                     f"(runs {m['ratio_min']:.2f}-{m['ratio_max']:.2f})")
        en, ci, mci = k["ensemble"], k["ensemble"]["ratio_ci"], k["ensemble"]["median_ratio_ci"]
        lines.append(f"  ensemble (mean prediction): EDNN {en['ednn']:.2f}  CNN {en['cnn']:.2f}  ratio "
                     f"{ci['ratio']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]; median ratio {mci['ratio']:.2f} "
                     f"[{mci['low']:.2f}, {mci['high']:.2f}]")
    return "\n".join(lines)
