"""Colour-parallel EDNN Metropolis throughput on a 128x128 Ising lattice (paper dense net, f=1, c=1).

Prints, from one run on this machine:
  * flip attempts/s for one lattice and for ``--replicas`` lattices at once,
  * TF matmul GFLOP/s (a 2048^3 float32 tf.matmul, the machine's reference) and the resulting
    FLOP bound on attempts/s = GFLOP/s / (tile evaluations per attempt * FLOP per tile),
  * the fraction of that bound reached,
  * local vs full re-evaluation cost per move: the time of one full 128x128 EDNN evaluation
    divided by the time of one local attempt (the FLOP ratio would be 16384 / 9 = 1820),
  * the same for atoms (``AtomicLocalEnergy``): one local dE of a 240-atom graphene sheet (2 x 2
    hexagonal cells, 0.1 A pixels, f = 32, c = 16, quarter-width paper CNN) against a full render
    and evaluation, median of 12 moves / 5 evaluations, and the tiles re-evaluated per move.

    python bench/mc.py [--L 128] [--replicas 8] [--sweeps 3] [--json out.json]
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ednn_tf import EDNN, networks  # noqa: E402
from ednn_tf.apply.lattice_mc import Metropolis  # noqa: E402
from ednn_tf.timing import median_seconds, min_seconds  # noqa: E402


def dense_flops(model):
    """2 x multiply-adds of every Dense layer for one input."""
    import keras
    return sum(2 * layer.input.shape[-1] * layer.units for layer in model.layers
               if isinstance(layer, keras.layers.Dense))


def best_time(fn, repeats):
    """Minimum wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    return min_seconds(fn, repeats=repeats, warmup=1)


def attempts_per_second(model, L, replicas, sweeps, repeats, seed=0):
    """Flip attempts per second (all replicas together) of ``Metropolis.sweep(sweeps)``."""
    rng = np.random.default_rng(seed)
    spins = rng.choice(np.array([-1.0, 1.0], np.float32), size=(replicas, L, L))
    mc = Metropolis(model, spins, temperatures=np.linspace(1.5, 3.5, replicas), seed=seed)
    t = best_time(lambda: mc.sweep(sweeps), repeats)
    return sweeps * replicas * L * L / t, mc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, default=128)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--sweeps", type=int, default=2, help="sweeps per timed call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    for name in ("L", "replicas", "sweeps", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")

    n = 2048
    a = tf.random.normal((n, n))
    mm = tf.function(lambda: tf.matmul(a, a))
    matmul_gflops = 2 * n ** 3 / best_time(lambda: mm().numpy(), 5) / 1e9

    sub = networks.ising_dense(3, seed=0)
    model = EDNN(sub, focus=1, context=1)
    flops_tile = dense_flops(sub)

    rate1, mc1 = attempts_per_second(model, args.L, 1, args.sweeps, args.repeats)
    tiles_per_attempt = mc1.tile_evaluations_per_sweep() / mc1.index.n_sites
    bound = matmul_gflops * 1e9 / (tiles_per_attempt * flops_tile)
    rateR, _ = attempts_per_second(model, args.L, args.replicas, max(1, args.sweeps // 2), args.repeats)

    x = tf.constant(np.sign(np.random.default_rng(1).normal(size=(1, args.L, args.L, 1))).astype(np.float32))
    full = tf.function(lambda z: model(z, training=False))
    t_full = best_time(lambda: full(x).numpy(), 5)
    ratio = t_full * rate1

    res = dict(L=args.L, replicas=args.replicas, colours=int(mc1.n_colours),
               flops_per_tile=int(flops_tile), tile_evals_per_attempt=float(tiles_per_attempt),
               matmul_gflops=matmul_gflops, bound_attempts_per_s=bound,
               attempts_per_s_1=rate1, attempts_per_s_R=rateR,
               fraction_of_bound_1=rate1 / bound, fraction_of_bound_R=rateR / bound,
               full_eval_s=t_full, local_vs_full_ratio_1=ratio, local_vs_full_ratio_R=t_full * rateR)
    print(f"lattice {args.L}x{args.L}, f=1 c=1, paper dense net: {flops_tile / 1e3:.1f} kFLOP/tile, "
          f"{tiles_per_attempt:.0f} tile evaluations per attempt, {mc1.n_colours} colours")
    print(f"matmul                          {matmul_gflops:8.1f} GFLOP/s")
    print(f"FLOP bound                      {bound:10.3e} attempts/s")
    print(f"Metropolis, 1 replica           {rate1:10.3e} attempts/s  ({100 * rate1 / bound:.1f} % of bound)")
    print(f"Metropolis, {args.replicas:2d} replicas         {rateR:10.3e} attempts/s  ({100 * rateR / bound:.1f} % of bound)")
    print(f"full {args.L}x{args.L} EDNN evaluation     {1e3 * t_full:8.2f} ms")
    print(f"full / local cost per move      {ratio:10.0f}x (1 replica), {t_full * rateR:.0f}x ({args.replicas} replicas)")
    res["atoms"] = atom_local_vs_full()
    a = res["atoms"]
    print(f"atom MC, {a['n_atoms']} atoms on {a['grid']}: local dE {1e3 * a['local_s']:.1f} ms "
          f"({a['tiles_per_move']:.1f} of {a['n_tiles']} tiles), full {1e3 * a['full_s']:.1f} ms, "
          f"speed-up {a['full_s'] / a['local_s']:.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


def atom_local_vs_full(seed=0):
    """Median seconds of a local dE and of a full energy for 240 graphene atoms (see module doc)."""
    from ednn_tf.apply.atom_mc import AtomicLocalEnergy
    from ednn_tf.atoms.structures import hexagonal_cell

    f, c, px = 32, 16, 128
    model = EDNN(networks.paper_cnn(f + 2 * c, width=0.25, dense=64, seed=seed), f, c)
    atoms = hexagonal_cell("graphene", seed=seed).repeat((2, 2, 1))
    le = AtomicLocalEnergy(model, atoms, (2 * px, 2 * px))
    rng = np.random.default_rng(seed)
    moves = [(int(i), le.positions[i] + np.r_[rng.uniform(-0.1, 0.1, 2), 0])
             for i in rng.integers(len(atoms), size=12)]
    le.delta_energy(*moves[0])
    le.full_energy()

    n0 = le.n_evaluated_tiles
    t_local = median_seconds(lambda m: le.delta_energy(*m), moves)
    tiles = (le.n_evaluated_tiles - n0) / len(moves)
    t_full = median_seconds(lambda _: le.full_energy(), range(5))
    return dict(n_atoms=len(atoms), grid=[2 * px, 2 * px], n_tiles=int(le.index.n_tiles), tiles_per_move=tiles,
                local_s=t_local, full_s=t_full)


if __name__ == "__main__":
    main()
