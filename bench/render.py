"""Renderer throughput: eqn (2) images (gamma = 0.2 A, cutoff 6 gamma) on this machine.

Prints, from one run:
  * numpy ``render`` of the 60-atom h-BN cell (12.78 x 12.30 A) on a 256x256 grid
    (median and min over many repeats; ~0.05 A/px, the paper's resolution),
  * numpy ``render`` of a 10^5-atom sheet at the same pixel size (~0.05 A/px,
    a ~10650 x 9840 grid): with a fresh output array (includes the first-touch
    page faults of ~420 MB) and into a reused ``out`` array; atoms/s and Mpixel/s,
  * the TensorFlow ``render_tf`` (eager and tf.function, float32) on the
    60-atom 256x256 case and its value-and-gradient time, for comparison.

    python bench/render.py [--repeats 300] [--big-atoms 100000] [--skip-big] [--skip-tf] [--json out.json]
"""
import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from ednn_tf.timing import call_seconds  # noqa: E402
from ednn_tf.atoms.structures import honeycomb_sheet  # noqa: E402
from ednn_tf.atoms.render import render, shape_for_cell  # noqa: E402
from ednn_tf.atoms.render_tf import render_tf  # noqa: E402


def hexagonal_sheet(repeat=(5, 3), species=("C", "C"), a=2.46):
    """Flat honeycomb sheet (``structures.honeycomb_sheet``): (5, 3) gives the 60-atom 12.30 x 12.78 A cell."""
    return honeycomb_sheet(repeat[0], repeat[1], lattice_constant=a, symbols=species)


def timings(fn, repeats, warmup=1):
    """``(median, min)`` seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    ts = call_seconds(fn, repeats=repeats, warmup=warmup)
    return float(np.median(ts)), float(ts.min())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300, help="repeats for the 60-atom case")
    ap.add_argument("--big-atoms", type=int, default=100_000, help="atoms in the large sheet (approx.)")
    ap.add_argument("--big-repeats", type=int, default=3)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-tf", action="store_true")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    res = {}

    atoms = hexagonal_sheet((5, 3), species=("B", "N"), a=2.46)
    med, best = timings(lambda: render(atoms, shape=(256, 256)), args.repeats, warmup=5)
    res["small"] = {"atoms": len(atoms), "shape": [256, 256], "median_ms": med * 1e3, "min_ms": best * 1e3,
                    "atoms_per_s": len(atoms) / med}
    print(f"numpy {np.__version__}, {os.cpu_count()} CPU threads visible")
    print(f"render  {len(atoms)} atoms, 256x256:     median {med * 1e3:7.3f} ms  min {best * 1e3:7.3f} ms  "
          f"({len(atoms) / med:,.0f} atoms/s, {args.repeats} repeats)")

    if not args.skip_big:
        # Rectangular 4-atom cells (a along x, sqrt(3) a along y): the exact count if a
        # divisor pair gives a roughly square sheet, else the nearest square-ish sheet.
        cells = max(1, int(round(args.big_atoms / 4)))
        pairs = [(cells // d, d) for d in range(1, cells + 1) if cells % d == 0]
        rx, ry = min(pairs, key=lambda p: abs(math.log(p[0] / (p[1] * math.sqrt(3)))))
        if abs(math.log(rx / (ry * math.sqrt(3)))) > 0.3:
            rx = max(1, int(round(math.sqrt(cells * math.sqrt(3)))))
            ry = max(1, int(round(cells / rx)))
        big = hexagonal_sheet((rx, ry), species=("B", "N"), a=2.46)
        shape = shape_for_cell(big.cell, pixel_size=0.05)
        px = shape[0] * shape[1]
        out = np.empty(shape + (1,), np.float32)
        t0 = time.perf_counter()
        out[...] = 0  # first touch of the output pages, measured for reference
        t_touch = time.perf_counter() - t0
        fresh, _ = timings(lambda: render(big, shape=shape), args.big_repeats, warmup=0)
        reuse, reuse_min = timings(lambda: render(big, shape=shape, out=out), args.big_repeats, warmup=1)
        res["large"] = {"atoms": len(big), "shape": list(shape), "cell_A": big.cell.lengths()[:2].tolist(),
                        "pixel_size_A": big.cell[0, 0] / shape[0], "fresh_s": fresh, "reuse_out_s": reuse,
                        "reuse_out_min_s": reuse_min, "first_touch_s": t_touch,
                        "atoms_per_s": len(big) / reuse, "mpixel_per_s": px / reuse / 1e6}
        print(f"render {len(big):,} atoms, {shape[0]}x{shape[1]} ({big.cell[0, 0]:.0f} x {big.cell[1, 1]:.0f} A, "
              f"{big.cell[0, 0] / shape[0]:.4f} A/px):")
        print(f"    fresh output array  median {fresh:7.3f} s   (first touch of a new {px * 4 / 1e6:.0f} MB array here: "
              f"{t_touch:.3f} s)")
        print(f"    reused out= array   median {reuse:7.3f} s  min {reuse_min:.3f} s  "
              f"({len(big) / reuse:,.0f} atoms/s, {px / reuse / 1e6:,.0f} Mpixel/s)")
        del out

    if not args.skip_tf:
        import tensorflow as tf

        L = atoms.cell.lengths()[:2]
        pos = tf.constant(atoms.positions, tf.float32)
        eager = lambda: render_tf(pos, atoms.numbers, L, (256, 256)).numpy()  # noqa: E731
        graph_fn = tf.function(lambda p: render_tf(p, atoms.numbers, L, (256, 256)))
        graph = lambda: graph_fn(pos).numpy()  # noqa: E731
        var = tf.Variable(pos)
        w = tf.random.normal((256, 256, 1))

        @tf.function
        def value_and_grad():
            with tf.GradientTape() as tape:
                v = tf.reduce_sum(render_tf(var, atoms.numbers, L, (256, 256)) * w)
            return v, tape.gradient(v, var)

        reps = max(10, args.repeats // 5)
        t_e, _ = timings(eager, reps, warmup=2)
        t_g, _ = timings(graph, reps, warmup=2)
        t_vg, _ = timings(lambda: [t.numpy() for t in value_and_grad()], reps, warmup=2)
        res["tf"] = {"eager_ms": t_e * 1e3, "function_ms": t_g * 1e3, "value_and_grad_ms": t_vg * 1e3}
        print(f"render_tf {len(atoms)} atoms, 256x256 (TF {tf.__version__}, float32): eager {t_e * 1e3:.3f} ms, "
              f"tf.function {t_g * 1e3:.3f} ms, value+gradient {t_vg * 1e3:.3f} ms (median of {reps})")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
