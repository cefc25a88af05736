"""The most uncertain places of a large sheet, cut into small periodic cells for the oracle (issue
"know where the model is wrong", item 4, large systems).

A committee (or one potential, spread over ``--orientations K`` copies: ``docs/uncertainty.md``)
evaluates the sheet (by blocks: any size); the atoms with the largest force deviation, at
least ``--min-separation`` apart, are the spots; around each an ``--size`` x ``--size`` periodic cell is
cut (atoms within ``--keep-radius`` of the spot unchanged, overlaps of the new boundary removed) and
its outer shell relaxed with the committee's mean (``ednn_tf.apply.spots``). Written to ``--out``:

    spots.extxyz        the cells, ready for ``ednn-tf label spots.extxyz --oracle gfn1-xtb ...``
                        (info: spot_center, source atom, its force deviation; arrays: spot_core)
    map.png             the sheet coloured by force deviation, the cut cells outlined
    results.json        the spots, their deviations, the cost of each stage

    python experiments/uncertain_spots.py --model COMMITTEE.committee.json                  # porous sheet
    python experiments/uncertain_spots.py --model COMMITTEE.committee.json --sheet big.extxyz --n 20
    python experiments/uncertain_spots.py --model hexagonal-gfn1 --orientations 4     # one potential
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ednn_tf.apply.runs import script_environment  # noqa: E402

REPO = script_environment(__name__ == "__main__")

from ednn_tf.util import ArgumentError, argument_errors, check_float, check_int  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a committee card (NAME.committee.json), a potential, a shipped name")
    ap.add_argument("--orientations", type=int, default=4, help="one potential's spread: over K copies (default 4)")
    ap.add_argument("--sheet", default=None, help="extxyz of the large structure (default: a porous sheet)")
    ap.add_argument("--sheet-size", type=float, default=120.0, help="A, the default porous sheet's side (~5,000 atoms)")
    ap.add_argument("--n", type=int, default=8, help="number of spots (default 8)")
    ap.add_argument("--size", type=float, default=12.0, help="A, side of each cut cell (default 12)")
    ap.add_argument("--keep-radius", type=float, default=4.0, help="A, atoms kept exactly around a spot (default 4)")
    ap.add_argument("--min-separation", type=float, default=10.0, help="A, between spots (default 10)")
    ap.add_argument("--relax-steps", type=int, default=100, help="FIRE steps for each shell (default 100; 0: none)")
    ap.add_argument("--seed", type=int, default=0, help="the default sheet's pores")
    ap.add_argument("--out", default="results/uncertain_spots")
    args = ap.parse_args(argv)
    with argument_errors(ap):
        check_int("--n", args.n, minimum=1)
        check_int("--relax-steps", args.relax_steps, minimum=0)
        check_int("--seed", args.seed, minimum=0)
        check_float("--sheet-size", args.sheet_size, minimum=10.0)
        for name in ("size", "keep_radius", "min_separation"):
            check_float("--" + name.replace("_", "-"), getattr(args, name), minimum=0.0, strict=name != "min_separation")
        if 2 * args.keep_radius + 2.0 > args.size:
            raise ArgumentError(f"--keep-radius {args.keep_radius} leaves no seam in a --size {args.size} cell "
                             "(need 2 keep_radius + 2 <= size)")
        if args.sheet is not None and not os.path.isfile(args.sheet):
            raise ArgumentError(f"--sheet {args.sheet!r} is not a file")
    return args


def _sheet(args):
    import ase.io

    from ednn_tf.apply.spots import porous_sheet

    return ase.io.read(args.sheet) if args.sheet is not None else porous_sheet(args.sheet_size, args.seed)


def main(argv=None):
    args = parse_args(argv)
    import ase.io
    import numpy as np

    from ednn_tf.apply.calculator import EDNNCalculator
    from ednn_tf.apply.space import predict_structures
    from ednn_tf.apply.spots import cut_spot, relax_shell, uncertain_spots
    from ednn_tf.apply.uncertainty import plot_uncertainty_map
    from ednn_tf.committee import Committee
    from ednn_tf.potential import load_potential
    from ednn_tf.util import atomic_path, write_json_atomic

    model = load_potential(args.model)
    single = not isinstance(model, Committee)                # then the spread over its orientations
    if single and args.orientations < 2:
        raise SystemExit(f"--model {args.model!r} is a single potential: its spread needs --orientations K >= 2, "
                         f"got {args.orientations}")
    os.makedirs(args.out, exist_ok=True)
    sheet, t0 = _sheet(args), time.perf_counter()
    run = predict_structures(model, [sheet], orientations=args.orientations if single else None, spread=single)[0]
    t_eval = time.perf_counter() - t0
    dev = run["force_dev"]
    spots = uncertain_spots(dev, sheet.positions, args.n, args.min_separation, sheet.cell.array, sheet.pbc)
    calc = EDNNCalculator(model, orientations=args.orientations if single else None)
    cells, t0 = [], time.perf_counter()
    for i in spots:
        cell = cut_spot(sheet, sheet.positions[i, :2], args.size, args.keep_radius)
        if args.relax_steps:
            cell = relax_shell(cell, calc, steps=args.relax_steps)
        cell.info.update(source_atom=int(i), source_force_dev=float(dev[i]))
        cells.append(cell)
    t_cut = time.perf_counter() - t0
    with atomic_path(os.path.join(args.out, "spots.extxyz")) as tmp:
        ase.io.write(tmp, cells, format="extxyz")
    plot_uncertainty_map(sheet, dev, os.path.join(args.out, "map.png"),
                         boxes=[(sheet.positions[i, :2], args.size) for i in spots])
    record = {"model": args.model, "spread": f"{args.orientations} orientations" if single else "committee",
              "sheet": args.sheet or f"porous_graphene({args.sheet_size}, seed={args.seed})",
              "atoms": len(sheet), "max_force_dev_eV_per_A": float(dev.max()),
              "median_force_dev_eV_per_A": float(np.median(dev)),
              "spots": [{"atom": int(i), "xy_A": [float(v) for v in sheet.positions[i, :2]], "force_dev": float(dev[i]),
                         "cell_atoms": len(c), "core_atoms": int(c.arrays["spot_core"].sum()),
                         "relax_steps": c.info.get("relax_steps", 0)} for i, c in zip(spots, cells)],
              "seconds": {"committee_on_sheet": t_eval, "cut_and_relax": t_cut},
              "command": "python experiments/uncertain_spots.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    write_json_atomic(record, os.path.join(args.out, "results.json"))
    print(f"{len(sheet)} atoms, force deviation max {dev.max():.3f} eV/A (median {np.median(dev):.3f}); "
          f"{len(cells)} cells of {min(len(c) for c in cells)}-{max(len(c) for c in cells)} atoms -> {args.out}")


if __name__ == "__main__":
    main()
