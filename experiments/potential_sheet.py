"""A trained space potential on a porous graphene sheet of any size, up to 1 um^2 and beyond: energy,
forces, per-atom energies and stress, block by block (issue "run it big").

    python experiments/potential_sheet.py                       # 10 x 10 cells (~112k atoms), ~1 min
    python experiments/potential_sheet.py --repeats 306 --ranks 2 --rank 0 &   # the 35.9 M-atom sheet:
    python experiments/potential_sheet.py --repeats 306 --ranks 2 --rank 1     # one process per core,
    python experiments/potential_sheet.py --repeats 306 --ranks 2 --merge --record docs/measurements/potential_sheet_1um2.json
    horovodrun -np 2 -H localhost:2 --gloo python experiments/potential_sheet.py --repeats 306   # or with Horovod

The sheet is ``repeats x repeats`` porous-graphene training cells (14 x 8 rectangular graphene cells,
34.44 x 34.09 A, pores from ``--seed``: ``ednn_tf.atoms.sheets.PorousSheet``, the sheet of
``experiments/large_sheet.py``), generated block by block, so no process ever holds it whole.
Each process evaluates its bands of blocks (``ednn_tf.apply.space_sheet``) and saves its state to
``--out`` every ``--checkpoint-min`` minutes: run the same command again to resume. ``--merge`` (or
rank 0 of a Horovod run) adds the states, writes ``results.json``, the per-atom energy map
``energy_map.png`` and, with ``--save-atoms``, ``atoms.npz`` (per-site energies and forces).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CELL = (14, 8)   # rectangular graphene cells per training cell (experiments/large_sheet.py)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hexagonal-gfn1", help="a space potential: shipped name or .keras file")
    ap.add_argument("--repeats", type=int, default=10, help="training cells per side (306 -> 35.9 M atoms)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=128, help="readout pixels per block side")
    ap.add_argument("--rank", type=int, default=0, help="this process (without Horovod)")
    ap.add_argument("--ranks", type=int, default=1, help="processes sharing the sheet (without Horovod)")
    ap.add_argument("--threads", type=int, default=1, help="TensorFlow threads per process")
    ap.add_argument("--checkpoint-min", type=float, default=10.0)
    ap.add_argument("--map-bins", type=int, default=512, help="bins per side of the per-atom energy map")
    ap.add_argument("--merge", action="store_true", help="only add up the processes' saved states")
    ap.add_argument("--save-atoms", action="store_true", help="also write per-site energies and forces")
    ap.add_argument("--record", help="also write the run's record to this JSON file")
    ap.add_argument("--out", default=None, help="default results/potential_sheet_r<repeats>")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from ednn_tf.util import ArgumentError, argument_errors, check_float, check_int

    with argument_errors(ap):   # every argument, before any work: one line, exit status 2
        for name in ("repeats", "block", "ranks", "threads", "map_bins"):
            check_int(f"--{name.replace('_', '-')}", getattr(args, name), minimum=1)
        check_int("--seed", args.seed, minimum=0)
        check_int("--rank", args.rank, minimum=0)
        check_float("--checkpoint-min", args.checkpoint_min, minimum=0.0)
        if args.rank >= args.ranks:
            raise ArgumentError(f"--rank must be below --ranks {args.ranks}, got {args.rank}")
        if args.record and not os.path.isdir(os.path.dirname(os.path.abspath(args.record))):
            raise ArgumentError(f"--record: the folder of {args.record!r} does not exist")
    args.out = args.out or f"results/potential_sheet_r{args.repeats}"
    return args


def _meta(args, potential):
    return {"repeats": args.repeats, "seed": args.seed, "block": args.block, "model": str(args.model),
            "pitch": potential.pitch, "map_bins": args.map_bins}


def _command(args, size):
    cmd = "python experiments/potential_sheet.py " + " ".join(sys.argv[1:])
    return f"horovodrun -np {size} -H localhost:{size} --gloo {cmd}" if size > 1 and args.ranks == 1 else cmd


def _energy_map(state, sheet, path, zoom=120.0):
    """Per-atom energies as a PNG: the whole sheet (mean per bin, meV above the lowest bin) and the
    atoms of a ``zoom`` A square at its corner, each coloured by its own energy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ednn_tf.util import atomic_path

    with np.errstate(invalid="ignore", divide="ignore"):
        m = state.map_sum / state.map_count
    e_min = np.nanmin(m)
    m = 1e3 * (m - e_min)
    fig, (ax, az) = plt.subplots(1, 2, figsize=(14, 6.2))
    im = ax.imshow(m.T, origin="lower", extent=(0, sheet.Lx / 1e4, 0, sheet.Ly / 1e4), cmap="magma",
                   vmax=np.nanpercentile(m, 99.5))
    fig.colorbar(im, ax=ax, label="mean per-atom energy of a bin above the lowest bin (meV)")
    ax.set(xlabel="x (um)", ylabel="y (um)",
           title=f"{state.atoms:,} atoms, {m.shape[0]} x {m.shape[1]} bins of {sheet.Lx / m.shape[0]:.0f} A")
    xy, ids = sheet.atoms_in_box(0.0, zoom, 0.0, zoom, ids=True)
    e = 1e3 * (state.energies[ids].astype(np.float64) - e_min)
    sc = az.scatter(xy[:, 0], xy[:, 1], c=e, s=6, cmap="magma", vmax=np.percentile(e, 99.5), linewidths=0)
    fig.colorbar(sc, ax=az, label="per-atom energy above the lowest bin mean (meV)")
    az.set(aspect="equal", xlabel="x (A)", ylabel="y (A)", title=f"the corner {zoom:.0f} x {zoom:.0f} A, atom by atom")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _summary(args, st, sheet, potential, walls, peaks, size):
    import numpy as np

    occ = st.occupied
    f = np.linalg.norm(st.forces[occ].astype(np.float64), axis=1)
    e_atom = st.energies[occ].astype(np.float64)
    area = sheet.Lx * sheet.Ly
    stress_2d = st.virial / area * 16.021766                    # eV/A^2 -> N/m
    cores = min(os.cpu_count() or 1, size * args.threads)
    return {
        "atoms": int(st.atoms), "area_um2": area / 1e8, "repeats": args.repeats, "seed": args.seed,
        "model": str(args.model), "readout_pitch_A": potential.pitch, "block_px": args.block,
        "blocks": int(st.blocks), "ranks": size, "threads_per_rank": args.threads, "cores": cores,
        "wall_s": max(walls), "rank_seconds": walls, "core_hours": sum(walls) * args.threads / 3600,
        "atoms_per_s_per_core": st.atoms / (sum(walls) * args.threads),
        "peak_rss_mb_per_rank": peaks, "energy_eV": st.energy, "energy_per_atom_eV": st.energy / st.atoms,
        "per_atom_energy_eV": {"min": float(e_atom.min()), "max": float(e_atom.max()),
                               "std": float(e_atom.std())},
        "force_eV_per_A": {"max": float(f.max()), "mean": float(f.mean()),
                           "net": st.forces[occ].astype(np.float64).sum(0).tolist()},
        "stress_2d_N_per_m": {"xx": stress_2d[0, 0], "yy": stress_2d[1, 1], "xy": stress_2d[0, 1]},
        "command": _command(args, size), "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _finish(args, sheet, potential, meta, size, peaks):
    import numpy as np

    from ednn_tf.apply.space_sheet import merge_states, sheet_blocks, state_path
    from ednn_tf.util import atomic_path, write_json_atomic

    n_bands = sheet_blocks(sheet, potential.pitch, args.block)[0]
    paths = [state_path(args.out, r, size) for r in range(size)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise SystemExit(f"no state {missing[0]}: run every rank first")
    st = merge_states(paths, meta)
    if len(st.bands) < n_bands:
        raise SystemExit(f"only {len(st.bands)} of {n_bands} bands done: run the ranks again to finish")
    walls = []
    for p in paths:
        with np.load(p) as z:
            walls.append(float(z["seconds"]))
    out = _summary(args, st, sheet, potential, walls, peaks, size)
    write_json_atomic(out, os.path.join(args.out, "results.json"))
    if args.record:
        write_json_atomic(out, args.record)
    _energy_map(st, sheet, os.path.join(args.out, "energy_map.png"))
    if args.save_atoms:
        with atomic_path(os.path.join(args.out, "atoms.npz")) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, occupied=st.occupied, energies=st.energies, forces=st.forces)
    print(f"E = {out['energy_eV']:.4f} eV ({out['energy_per_atom_eV']:.6f} eV/atom), {out['atoms']:,} atoms, "
          f"{out['atoms_per_s_per_core']:,.0f} atoms/s a core, {out['core_hours']:.2f} core-hours -> {args.out}")
    return out


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from ednn_tf import distributed, load_potential
    from ednn_tf.apply.space_sheet import SheetState, evaluate_sheet, load_state, state_path
    from ednn_tf.atoms.sheets import PorousSheet

    hvd = distributed.init()
    rank, size = (distributed.rank(), distributed.size()) if hvd else (args.rank, args.ranks)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    potential = load_potential(args.model)
    sheet = PorousSheet((CELL[0] * args.repeats, CELL[1] * args.repeats), seed=args.seed)
    meta = _meta(args, potential)
    if not args.merge:
        path = state_path(args.out, rank, size)
        st = load_state(path, meta) if os.path.exists(path) else SheetState(sheet.n_sites, (args.map_bins,) * 2)
        if rank == 0:
            print(f"sheet {sheet.Lx / 1e4:.4f} x {sheet.Ly / 1e4:.4f} um, ~{sheet.count_atoms_estimate():,.0f} atoms, "
                  f"{size} process(es); this one resumes with {len(st.bands)} bands done")
        evaluate_sheet(potential, sheet, st, block=args.block, rank=rank, ranks=size,
                       checkpoint=lambda s: s.save(path, meta), checkpoint_s=60 * args.checkpoint_min,
                       progress=not args.no_progress)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not args.merge:
        with open(os.path.join(args.out, f"peak_rss_mb_rank{rank}of{size}.txt"), "w") as fh:
            fh.write(f"{peak:.1f}\n")
    if hvd and size > 1:
        distributed.barrier()
    if not (args.merge or size == 1 or (hvd and rank == 0)):
        return None
    peaks = []
    for r in range(size):
        rec = os.path.join(args.out, f"peak_rss_mb_rank{r}of{size}.txt")
        peaks.append(float(open(rec).read()) if os.path.exists(rec) else float(np.nan))
    return _finish(args, sheet, potential, meta, size, peaks)


if __name__ == "__main__":
    main()
