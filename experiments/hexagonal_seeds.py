"""Combine repeats of ``experiments/hexagonal.py`` (e.g. ``--init-seed 0, 1, 2`` on the same cells)
into one EDNN-vs-CNN comparison: per run, the mean over runs, and the ensemble (the average of the
runs' predictions, one "model" of n networks each), plain and symmetrised.

    python experiments/hexagonal_seeds.py results/hexagonal-cpu results/hexagonal-cpu-seed1 \\
        results/hexagonal-cpu-seed2 [--json results/hexagonal-cpu-seeds.json]

Reads each run's ``results.json`` (``test_predictions``: per-cell labels and predictions in eV).
The runs must share their test cells (same ``--seed`` and split). Errors are MAE in meV/A^2 (each
cell's error over its own area); ratios are CNN / EDNN with a paired bootstrap interval over the
test cells (``metrics.error_ratio_ci``). The bootstrap covers the test sample only: the spread
between runs is the training-seed uncertainty, shown by the per-run rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

KINDS = ("plain", "symmetrised")


def _load(run):
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


def combine(runs, n_boot=10000):
    """Per-run, mean-over-runs and ensemble MAEs (meV/A^2) and CNN/EDNN ratios of hexagonal runs.

    Returns ``{"runs": [...], "plain": {...}, "symmetrised": {...} (if every run has it)}`` where
    each kind holds ``per_run`` (EDNN, CNN, ratio per run), ``mean`` (of the per-run MAEs and the
    ratio of those means) and ``ensemble`` (MAEs of the averaged predictions, with the paired
    bootstrap ``ratio_ci``).
    """
    from ednn_tf import metrics

    if len(runs) < 1:
        raise ValueError("give at least one run directory")
    loaded = [_load(r) for r in runs]
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
    for kind in KINDS:
        suffix = "" if kind == "plain" else "_symmetrised"
        if not all(f"ednn{suffix}_eV" in tp and f"cnn{suffix}_eV" in tp for _, tp, _ in loaded):
            continue
        e = [np.asarray(tp[f"ednn{suffix}_eV"], np.float64) for _, tp, _ in loaded]
        c = [np.asarray(tp[f"cnn{suffix}_eV"], np.float64) for _, tp, _ in loaded]
        per = []
        for a, b in zip(e, c):
            ea, eb = mae(a), mae(b)
            per.append({"ednn": ea, "cnn": eb, "ratio": eb / ea})
        me, mc = np.mean([r["ednn"] for r in per]), np.mean([r["cnn"] for r in per])
        ee, ce = np.mean(e, axis=0), np.mean(c, axis=0)
        out[kind] = {
            "per_run": per,
            "mean": {"ednn": float(me), "cnn": float(mc), "ratio": float(mc / me),
                     "ratio_min": min(r["ratio"] for r in per), "ratio_max": max(r["ratio"] for r in per)},
            "ensemble": {"ednn": mae(ee), "cnn": mae(ce),
                         "ratio_ci": metrics.error_ratio_ci(y, ee, ce, n_boot=n_boot),
                         "median_ratio_ci": metrics.error_ratio_ci(y, ee, ce, stat="median", n_boot=n_boot)},
        }
    return out


def report(res):
    lines = [f"{len(res['runs'])} runs, {res['n_test']} test cells; MAE in meV/A^2, ratio = CNN / EDNN"]
    for kind in KINDS:
        if kind not in res:
            continue
        k = res[kind]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="output directories of hexagonal.py (or their results.json)")
    ap.add_argument("--json", help="also write the numbers to this JSON file (atomically)")
    ap.add_argument("--n-boot", type=int, default=10000)
    args = ap.parse_args(argv)
    res = combine(args.runs, n_boot=args.n_boot)
    print(report(res))
    if args.json:
        from ednn_tf.util import write_json_atomic
        write_json_atomic(res, args.json)
    return res


if __name__ == "__main__":
    main()
