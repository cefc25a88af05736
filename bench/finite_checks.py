"""The cost of ``EDNN(check_batches=True)`` (the default): NaN/inf checks of every batch's inputs and labels.

For each case two EDNNs with the same weights, one checked and one not, run the same compiled Keras
call on the same numpy batch (``predict_on_batch``, ``train_on_batch``); the timed calls alternate
between the two so load on a shared machine hits both alike. Prints, from one run on this machine,
the median seconds per batch of each and their ratio (checked / unchecked):

  * training step of the paper's Ising dense net (f=1, c=1) on 8x8 lattices, batch 100
    (``experiments/ising.py``'s quick preset: the cheapest step, where the check weighs most),
  * inference of the same net on 128x128 lattices, batch 8,
  * training step of the f=1 energy-density net on 64x64 images, batch 16 (the atoms potentials).

    python bench/finite_checks.py [--repeats 40] [--json out.json]
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from any folder or worktree

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ednn_tf import EDNN, DensityEDNN, networks  # noqa: E402
from ednn_tf.timing import call_seconds  # noqa: E402
from ednn_tf.util import write_json_atomic  # noqa: E402


def _pair(build):
    """``(checked, unchecked)``: two compiled models from ``build(check_batches)`` with equal weights."""
    models = []
    for check in (True, False):
        keras.utils.set_random_seed(0)
        model = build(check)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
        models.append(model)
    return models


def _cases():
    """``(name, build, x, y, kind)`` of each timed case."""
    rng = np.random.default_rng(0)
    spins = lambda n, size: rng.choice([-1.0, 1.0], size=(n, size, size, 1)).astype("float32")  # noqa: E731
    ising = lambda check: EDNN(networks.ising_dense(3, seed=1), focus=1, context=1,  # noqa: E731
                               check_batches=check)
    density = lambda check: DensityEDNN(networks.energy_density(2, seed=1), context=2,  # noqa: E731
                                        check_batches=check)
    return [("ising dense f=1 c=1, train step, 8x8 x 100", ising, spins(100, 8), rng.normal(size=(100, 1)), "train"),
            ("ising dense f=1 c=1, predict, 128x128 x 8", ising, spins(8, 128), None, "predict"),
            ("energy density c=2, train step, 64x64 x 16", density, rng.random((16, 64, 64, 1)).astype("float32"),
             rng.normal(size=(16, 1)), "train")]


def time_pair(models, x, y, kind, repeats):
    """Median seconds per batch of each model, the timed calls interleaved (which goes first alternates;
    two untimed calls each first)."""
    calls = [(lambda m=m: m.train_on_batch(x, y)) if kind == "train" else (lambda m=m: m.predict_on_batch(x))
             for m in models]
    times = [[], []]
    for k in range(repeats):
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            times[i].append(call_seconds(calls[i], repeats=1, warmup=0 if times[i] else 2)[0])
    return [float(np.median(t)) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=40, help="timed calls per model and case")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    rows = []
    for name, build, x, y, kind in _cases():
        checked, unchecked = time_pair(_pair(build), x, y, kind, args.repeats)
        rows.append({"case": name, "checked_s": checked, "unchecked_s": unchecked, "ratio": checked / unchecked})
        print(f"{name:48s} checked {1e3 * checked:8.3f} ms  unchecked {1e3 * unchecked:8.3f} ms  "
              f"ratio {checked / unchecked:.3f}")
    if args.json:
        write_json_atomic(rows, args.json)


if __name__ == "__main__":
    main()
