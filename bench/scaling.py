"""Time and peak memory of sheet evaluation vs number of atoms (Fig. 10), and vs ranks (Fig. 11).

Each size runs ``experiments/large_sheet.py`` in a fresh process (so peak RSS is that size's own),
on porous graphene sheets of ``k x k`` training cells (~381 atoms each) at the paper's 384 px per
cell. Prints a table, the fitted exponent of time vs atoms (1.0 = linear) and the peak-memory
ratio between the largest and smallest sheet; writes ``scaling.json`` and ``scaling.png``.

    python bench/scaling.py                      # 10^3 .. 10^7 atoms, CNN width 0.25 (minutes)
    python bench/scaling.py --width 1.0          # the paper's CNN (10^7 atoms: ~10 min per size here)
    python bench/scaling.py --ranks 1 2 --rank-repeats 51   # rank scaling at ~10^6 atoms (needs Horovod)
    python bench/scaling.py --compare-whole-width          # also each size with whole-width stripes of
                                                           # tiles (the old way): peak memory of both
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from any folder or worktree
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "experiments", "large_sheet.py")


def run(repeats, width, ranks=1, extra=()):
    out = tempfile.mkdtemp(prefix="scaling_")
    cmd = [sys.executable, SCRIPT, "--repeats", str(repeats), "--width", str(width), "--no-progress",
           "--count-atoms", "--out", out, *extra]
    if ranks > 1:
        cmd = [shutil.which("horovodrun") or "horovodrun", "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo"] + cmd
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    with open(os.path.join(out, "results.json")) as fh:
        res = json.load(fh)
    shutil.rmtree(out, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, nargs="+", default=[2, 5, 16, 51, 162],
                    help="training cells per side (~381 k^2 atoms): default 1.5e3 .. 1.0e7 atoms")
    ap.add_argument("--width", type=float, default=0.25, help="CNN filter multiplier (1.0 = paper)")
    ap.add_argument("--ranks", type=int, nargs="*", default=[], help="also time these rank counts")
    ap.add_argument("--rank-repeats", type=int, default=51)
    ap.add_argument("--compare-whole-width", action="store_true",
                    help="also run each size cutting a stripe's tiles over the whole width at once "
                         "(--tile-cols-per-block 0) and print both peak memories")
    ap.add_argument("--out", default="results/scaling")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    rows = []
    print(f"{'atoms':>12} {'tiles':>10} {'seconds':>9} {'atoms/s':>11} {'peak MB':>8}")
    for k in args.repeats:
        r = run(k, args.width)
        rows.append(r)
        print(f"{r['atoms']:>12,} {r['tiles']:>10,} {r['wall_seconds']:>9.2f} {r['atoms_per_s']:>11,.0f} "
              f"{max(r['peak_rss_mb_per_rank']):>8.0f}", flush=True)
    if args.compare_whole_width:
        print(f"{'atoms':>12} {'peak MB, column blocks':>23} {'peak MB, whole width':>21} {'ratio':>6}")
        for k, r in zip(args.repeats, rows):
            w = run(k, args.width, extra=("--tile-cols-per-block", "0"))
            r["peak_rss_mb_whole_width"] = max(w["peak_rss_mb_per_rank"])
            r["wall_seconds_whole_width"] = w["wall_seconds"]
            print(f"{r['atoms']:>12,} {max(r['peak_rss_mb_per_rank']):>23.0f} {r['peak_rss_mb_whole_width']:>21.0f} "
                  f"{r['peak_rss_mb_whole_width'] / max(r['peak_rss_mb_per_rank']):>6.2f}", flush=True)
    atoms = np.array([r["atoms"] for r in rows], float)
    secs = np.array([r["wall_seconds"] for r in rows])
    mem = np.array([max(r["peak_rss_mb_per_rank"]) for r in rows])
    big = atoms >= 1e5
    several = len(np.unique(atoms)) >= 2          # an exponent needs two sizes at least
    expo_all = float(np.polyfit(np.log(atoms), np.log(secs), 1)[0]) if several else None
    expo_big = (float(np.polyfit(np.log(atoms[big]), np.log(secs[big]), 1)[0])
                if len(np.unique(atoms[big])) >= 2 else None)
    summary = {"width": args.width, "rows": rows, "exponent_all": expo_all, "exponent_ge_1e5": expo_big,
               "memory_ratio_largest_smallest": float(mem[-1] / mem[0]), "atoms_ratio": float(atoms[-1] / atoms[0])}
    if big.any():                                  # the figure: largest sheet vs the first >= 1e5 atoms
        i = int(np.argmax(big))
        summary["memory_ratio_largest_to_ge_1e5"] = float(mem[-1] / mem[i])
        summary["memory_ratio_reference_atoms"] = int(atoms[i])
    if several:
        print(f"time ~ atoms^{expo_all:.3f} (all sizes)" + (f", ^{expo_big:.3f} (>= 1e5 atoms)" if expo_big else ""))
        print(f"peak memory: {mem[0]:.0f} MB -> {mem[-1]:.0f} MB (x{mem[-1] / mem[0]:.2f}) "
              f"for x{atoms[-1] / atoms[0]:.0f} atoms")
        if big.any():
            print(f"peak memory, largest vs {int(atoms[i]):,} atoms (first >= 1e5): "
                  f"x{summary['memory_ratio_largest_to_ge_1e5']:.2f}")

    rank_rows = []
    for n in args.ranks:
        r = run(args.rank_repeats, args.width, ranks=n)
        rank_rows.append(r)
        print(f"{n} rank(s): {r['atoms']:,} atoms in {r['wall_seconds']:.2f} s ({r['atoms_per_s']:,.0f} atoms/s)")
    if rank_rows:
        base = rank_rows[0]["wall_seconds"] * rank_rows[0]["ranks"]
        for r in rank_rows:
            r["speedup_vs_first"] = rank_rows[0]["wall_seconds"] / r["wall_seconds"]
            r["efficiency"] = base / (r["wall_seconds"] * r["ranks"])
        summary["rank_scaling"] = rank_rows

    from ednn_tf import plots
    from ednn_tf.util import write_json_atomic

    write_json_atomic(summary, os.path.join(args.out, "scaling.json"))   # the figures first: a plot failure keeps them
    plots.scaling(atoms, secs, mem, os.path.join(args.out, "scaling.png"), exponent=expo_big or expo_all,
                  ranks=[(r["ranks"], r["wall_seconds"]) for r in rank_rows])
    print(f"wrote {args.out}/scaling.json and scaling.png")


if __name__ == "__main__":
    main()
