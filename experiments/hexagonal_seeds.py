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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ednn_tf.metrics import combine_runs, runs_report  # noqa: E402
from ednn_tf.util import ArgumentError, argument_errors, check_int  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="output directories of hexagonal.py (or their results.json)")
    ap.add_argument("--json", help="also write the numbers to this JSON file (atomically)")
    ap.add_argument("--n-boot", type=int, default=10000)
    args = ap.parse_args(argv)
    with argument_errors(ap):   # one line naming the bad value, exit status 2
        check_int("--n-boot", args.n_boot, minimum=1)
        try:   # the runs' results: missing, corrupt, without predictions, tested on other cells
            res = combine_runs(args.runs, n_boot=args.n_boot)
        except (FileNotFoundError, ValueError) as exc:
            raise ArgumentError(f"runs: {exc}") from None
    print(runs_report(res))
    if args.json:
        from ednn_tf.util import write_json_atomic
        write_json_atomic(res, args.json)
    return res


if __name__ == "__main__":
    main()
