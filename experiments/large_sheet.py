"""Section 3.3: the energy of a porous graphene sheet of any size, up to 1 um^2 (35 million atoms).

    python experiments/large_sheet.py                          # 0.01 um^2 (~330k atoms), minutes
    python experiments/large_sheet.py --repeats 292            # 1.0 um^2, ~32.7 million atoms
    horovodrun -np 2 -H localhost:2 --gloo python experiments/large_sheet.py --repeats 40

The sheet is ``repeats x repeats`` porous-graphene training cells (14 x 8 rectangular graphene
cells, 34.44 x 34.09 A, rendered at ``--pixels-per-cell`` = 384 px as in the paper) generated
procedurally from ``--seed`` (``ednn_tf.atoms.sheets.PorousSheet``), so no process ever holds the whole
sheet. Each Horovod rank takes a contiguous block of tile rows, renders it stripe by stripe with
its halo and evaluates the EDNN in fixed-size batches; one float64 allreduce gives the total.

``--model`` takes a trained ``.keras`` EDNN (trained at the same pixel size); without it an
untrained paper CNN (f=64, c=32, 13 conv + 2 dense) with fixed seed is used, which gives the
paper's cost exactly (its energies are meaningless: timing runs only).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CELL = (14, 8)   # rectangular graphene cells per training cell (structures.porous_graphene default)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=29, help="training cells per side (292 -> 1.0 um^2)")
    ap.add_argument("--pixels-per-cell", type=int, default=384, help="image pixels per training cell side")
    ap.add_argument("--model", help="trained EDNN .keras file (default: untrained paper CNN, timing only)")
    ap.add_argument("--focus", type=int, default=64)
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--width", type=float, default=1.0, help="CNN filter multiplier of the default model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile-rows-per-chunk", type=int, default=1)
    ap.add_argument("--batch-tiles", type=int, default=64)
    ap.add_argument("--tile-cols-per-block", type=int, default=None,
                    help="tile columns cut from a stripe at a time (default: enough to fill four --batch-tiles "
                         "calls; 0 = the whole sheet width at once, the memory-hungry way)")
    ap.add_argument("--sample-tile-rows", type=int, default=None,
                    help="evaluate only the first N tile rows (full width) and extrapolate the time to the whole sheet")
    ap.add_argument("--count-atoms", action="store_true", help="count atoms exactly (an extra pass over the sheet)")
    ap.add_argument("--map", action="store_true", help="write per-tile energies to <out>/tile_map_rank<r>.h5")
    ap.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads per rank (default: cores / ranks)")
    ap.add_argument("--record", help="also write the run's record (atoms, tiles, wall, core-hours, RSS, energy, "
                    "command) to this JSON file, e.g. docs/measurements/large_sheet_1um2.json")
    ap.add_argument("--out", default="results/large_sheet")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from ednn_tf.util import ArgumentError, argument_errors, check_float, check_int

    with argument_errors(ap):   # every argument, before any work: one line, exit status 2
        for name in ("repeats", "pixels_per_cell", "focus", "tile_rows_per_chunk", "batch_tiles"):
            check_int(f"--{name.replace('_', '-')}", getattr(args, name), minimum=1)
        for name in ("context", "seed", "threads"):
            check_int(f"--{name}", getattr(args, name), minimum=0)
        check_float("--width", args.width, minimum=0.0, strict=True)
        if args.tile_cols_per_block is not None:
            check_int("--tile-cols-per-block", args.tile_cols_per_block, minimum=0)
        if args.sample_tile_rows is not None:
            check_int("--sample-tile-rows", args.sample_tile_rows, minimum=1)
        if args.record and not os.path.isdir(os.path.dirname(os.path.abspath(args.record))):
            raise ArgumentError(f"--record: the folder of {args.record!r} does not exist")
        if args.model and not os.path.isfile(args.model):
            raise ArgumentError(f"--model: no such file {args.model!r}")
        if (args.pixels_per_cell * args.repeats) % args.focus and not args.model:
            raise ArgumentError(f"--pixels-per-cell x --repeats = {args.pixels_per_cell * args.repeats} px is not a "
                                f"multiple of --focus {args.focus}")
    return args


def _model(args):
    """The trained EDNN of ``--model``, or the untrained paper CNN of fixed seed (timing only)."""
    import keras

    from ednn_tf import EDNN, networks
    from ednn_tf.model import load_ednn

    if args.model:
        return load_ednn(args.model)
    keras.utils.set_random_seed(args.seed)
    t = args.focus + 2 * args.context
    return EDNN(networks.paper_cnn(t, width=args.width, seed=args.seed), focus=args.focus, context=args.context)


def _map_writer(out, model, shape, rank, size):
    """``(open HDF5 file, map_writer)`` writing this rank's per-tile energies to ``tile_map_rank<r>.h5``."""
    import h5py
    import numpy as np

    fh = h5py.File(os.path.join(out, f"tile_map_rank{rank}.h5"), "w")
    dset = fh.create_dataset("tile_energy", shape=(shape[0] // model.focus, shape[1] // model.focus), dtype="f4",
                             fillvalue=np.nan)
    fh.attrs.update(focus=model.focus, context=model.context, rank=rank, size=size, unit="model output (eV)")

    def write_block(r, block):
        dset[r:r + len(block)] = block

    return fh, write_block


def _command(size):
    """The command line of this run, with the ``horovodrun`` prefix when it ran on several ranks."""
    cmd = "python experiments/large_sheet.py " + " ".join(sys.argv[1:])
    return f"horovodrun -np {size} -H localhost:{size} --gloo {cmd}" if size > 1 else cmd


def _record(args, out, res, size, exact):
    """The fields of the run's record (``docs/measurements/large_sheet_1um2.json``), energies in eV."""
    H, W = out["image_px"]
    return {
        "atoms": out["atoms"] or out["atoms_estimate"], "atoms_exact": exact, "area_um2": out["area_um2"],
        "image_px": [H, W], "pixel_size_A": out["pixel_size_A"], "tile_px": out["tile_px"],
        "tiles_total": (H // out["focus"]) * (W // out["focus"]), "tiles_evaluated": res["n_tiles_all"],
        "ranks": size, "threads_per_rank": out["threads_per_rank"], "cores": out["cores"],
        "wall_s": out["wall_seconds"], "rank_seconds": out["rank_seconds"], "core_hours": out["core_hours"],
        "peak_rss_mb_per_rank": out["peak_rss_mb_per_rank"], "energy_eV": out["total_energy"],
        "energy_per_atom_eV": out["energy_per_atom"], "model": out["model"],
        "paper": {"atoms": 35.2e6, "cores": 448, "wall_min": 24.7, "core_hours": 184},
        "energy_note": ("a trained model's prediction" if args.model else
                        "untrained paper CNN of fixed seed: exactly the paper CNN's cost, but the energy is only a "
                        "checksum of the run, not a physical energy"),
        "command": _command(size), "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main(argv=None):
    args = parse_args(argv)
    from ednn_tf import distributed
    from ednn_tf.apply.inference import evaluate_sharded
    from ednn_tf.util import write_json_atomic
    from ednn_tf.atoms.sheets import PorousSheet

    distributed.init()
    rank, size, root = distributed.rank(), distributed.size(), distributed.is_root()
    n_thr = args.threads or max(1, (os.cpu_count() or 1) // size)
    if args.threads or size > 1:   # ranks on one node share its cores instead of oversubscribing them
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(n_thr)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    sheet = PorousSheet((CELL[0] * args.repeats, CELL[1] * args.repeats), seed=args.seed)
    H = W = args.pixels_per_cell * args.repeats
    model = _model(args)
    if H % model.focus:
        raise SystemExit(f"image size {H} px is not a multiple of focus={model.focus}; change --pixels-per-cell")
    os.makedirs(args.out, exist_ok=True)
    n_est = sheet.count_atoms_estimate()
    if root:
        print(f"sheet {sheet.Lx / 1e4:.4f} x {sheet.Ly / 1e4:.4f} um ({sheet.area / 1e8:.4f} um^2), ~{n_est:,.0f} atoms, "
              f"image {H} x {W} px, {(H // model.focus) * (W // model.focus):,} tiles of {model.tile_size}^2, "
              f"{size} rank(s)")
    src = sheet.row_source((H, W))
    fh, writer = _map_writer(args.out, model, (H, W), rank, size) if args.map else (None, None)
    t0 = time.perf_counter()
    res = evaluate_sharded(model, src, (H, W), n_tile_rows=args.sample_tile_rows, tile_rows_per_chunk=args.tile_rows_per_chunk,
                           batch_tiles=args.batch_tiles, map_writer=writer,
                           tile_cols_per_block=("auto" if args.tile_cols_per_block is None else
                                                args.tile_cols_per_block or None), progress=root and not args.no_progress,
                           desc=f"rank {rank}", atoms_per_tile=n_est / ((H // model.focus) * (W // model.focus)))
    wall = time.perf_counter() - t0
    if fh is not None:
        fh.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = distributed.allgather_object(peak_mb) if size > 1 else [peak_mb]
    walls = distributed.allgather_object(wall) if size > 1 else [wall]
    if not root:
        return None
    n_atoms = sheet.count_atoms() if args.count_atoms else None
    n = n_atoms or n_est
    frac = 1.0 if args.sample_tile_rows is None else args.sample_tile_rows / (H // model.focus)
    out = {
        "fraction_evaluated": frac, "extrapolated_wall_seconds": max(walls) / frac,
        "repeats": args.repeats, "area_um2": sheet.area / 1e8, "atoms": n_atoms, "atoms_estimate": n_est,
        "image_px": [H, W], "focus": model.focus, "context": model.context, "tiles": res["n_tiles_all"],
        "model": args.model or f"untrained paper_cnn width={args.width} (timing only)",
        "ranks": size, "wall_seconds": max(walls), "rank_seconds": walls, "atoms_per_s": n * frac / max(walls),
        "cores": os.cpu_count(), "core_hours": max(walls) * (os.cpu_count() or 1) / 3600,
        "peak_rss_mb_per_rank": peaks, "total_energy": res["total"],
        "tile_cols_per_block": args.tile_cols_per_block, "pixel_size_A": sheet.Lx / H, "tile_px": model.tile_size,
        "threads_per_rank": n_thr,
        "energy_per_atom": res["total"] / (n * frac), "seed": args.seed,
    }
    out["record"] = _record(args, out, res, size, n_atoms is not None)
    write_json_atomic(out, os.path.join(args.out, "results.json"))
    if args.record:
        write_json_atomic(out["record"], args.record)
    what = "E" if frac == 1.0 else f"E(first {100 * frac:.2f} % of the sheet)"
    print(f"{what} = {res['total']:.6f} ({out['energy_per_atom']:.6f} per atom) in {out['wall_seconds']:.1f} s: "
          f"{out['atoms_per_s']:,.0f} atoms/s, peak RSS {max(peaks):.0f} MB/rank -> {args.out}/results.json")
    if frac < 1.0:
        print(f"whole sheet extrapolated: {out['extrapolated_wall_seconds'] / 60:.1f} min on {size} rank(s), "
              f"{out['extrapolated_wall_seconds'] * (os.cpu_count() or 1) / 3600:.2f} core-hours")
    return out


if __name__ == "__main__":
    main()
