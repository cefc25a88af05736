"""Does MD with the EDNN conserve energy? NVE (ASE VelocityVerlet) of a graphene sheet with the
EDNN potential and with a classical reference (the drift of the integrator itself), at two
starting temperatures (issue 14, item 4).

    python experiments/md_nve.py                      # 240 atoms, 1 ps at 0.5 fs, 300 K and 1000 K
    python experiments/md_nve.py --steps 40           # seconds: smoke test
    python experiments/md_nve.py --engine both --reference none   # the EDNN in ASE and in LAMMPS

Writes ``--out/results.json`` (per run: drift in meV/atom/ps, RMS and largest deviation of E_tot,
net force, centre-of-mass kinetic energy, seconds per step; ``apply.nve.drift_summary``) and
``--out/etot.png`` (E_tot(t) - E_tot(0) per atom for every run). Velocities are in-plane
(``apply.nve.nve_run``): a 2D EDNN has no z forces.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ednn_tf.apply.runs import script_environment  # noqa: E402

REPO = script_environment(__name__ == "__main__")

from ednn_tf.util import ArgumentError, argument_errors, check_float, check_int  # noqa: E402


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hexagonal-gfn1", help="Potential: shipped name or .keras path")
    ap.add_argument("--reference", default="tersoff-bnc", help="classical oracle for the integrator's own drift "
                    "('none' to skip)")
    ap.add_argument("--engine", choices=("ase", "lammps", "both"), default="ase",
                    help="integrate the EDNN in ASE, in LAMMPS (fix external: apply.lammps_md) or both")
    ap.add_argument("--cells", type=int, nargs=2, default=(10, 6),
                    help="rectangular 4-atom graphene cells along x, y (default 10 6: 240 atoms)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=(300.0, 1000.0), help="K")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--timestep", type=float, default=0.5, help="fs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(REPO, "results", "md-nve"))
    return ap


def parse_args(argv=None):
    """The options, checked before any work: a bad value ends the script with one line naming it and the
    allowed range, exit status 2 (``--model``'s file is checked at the start of ``main``)."""
    from ednn_tf.labels.oracles import get_oracle

    ap = _parser()
    args = ap.parse_args(argv)
    with argument_errors(ap):
        for n in args.cells:
            check_int("--cells", n, minimum=1)
        for T in args.temperatures:
            check_float("--temperatures", T, minimum=0, strict=True)
        check_int("--steps", args.steps, minimum=1)
        check_float("--timestep", args.timestep, minimum=0, strict=True)
        check_int("--seed", args.seed, minimum=0)
        if args.reference != "none":
            try:
                get_oracle(args.reference)
            except ValueError as exc:
                raise ArgumentError(f"--reference: {exc} (or 'none')") from None
    return args


def main(argv=None):
    args = parse_args(argv)

    from ednn_tf import plots
    from ednn_tf.apply.calculator import EDNNCalculator
    from ednn_tf.apply.nve import drift_summary, nve_run
    from ednn_tf.atoms.structures import honeycomb_sheet
    from ednn_tf.labels.oracles import get_oracle
    from ednn_tf.potential import load_potential
    from ednn_tf.util import write_json_atomic

    reference = None if args.reference == "none" else get_oracle(args.reference)
    sheet = honeycomb_sheet(*args.cells)
    with argument_errors(_parser()):   # the model file and the reference on this sheet, before any work
        try:
            pot = load_potential(args.model)
        except ValueError as exc:
            raise ArgumentError(f"--model: {exc}") from None
        if reference is not None:
            try:
                reference.check(sheet)
            except ValueError as exc:
                raise ArgumentError(f"--reference {args.reference} on the --cells {args.cells[0]} {args.cells[1]} "
                                    f"sheet: {exc}") from None
    calcs = {"ednn": lambda: EDNNCalculator(pot)} if args.engine != "lammps" else {}
    if args.engine != "ase":
        calcs["ednn-lammps"] = "lammps"
    if reference is not None:
        calcs[reference.name] = reference.calculator
    os.makedirs(args.out, exist_ok=True)
    results, curves = {"model": str(args.model), "atoms": len(sheet), "cell_A": sheet.cell.lengths().round(4).tolist(),
                       "steps": args.steps, "timestep_fs": args.timestep, "runs": {}}, {}
    for name, make in calcs.items():
        for T in args.temperatures:
            if make == "lammps":
                from ednn_tf.apply.lammps_md import lammps_nve_run
                run = lammps_nve_run(pot, sheet, T, args.steps, args.timestep, seed=args.seed, progress=True)
            else:
                run = nve_run(sheet, make(), T, args.steps, args.timestep, seed=args.seed, progress=True)
            key = f"{name} {T:g} K"
            results["runs"][key] = drift_summary(run)
            curves[key] = (run["time_fs"] / 1000.0, (run["etot"] - run["etot"][0]) / len(sheet) * 1e3)
            print(key, {k: round(v, 4) if isinstance(v, float) else v for k, v in results["runs"][key].items()})
    write_json_atomic(results, os.path.join(args.out, "results.json"))
    plots.line_plot(curves, os.path.join(args.out, "etot.png"), xlabel="t (ps)",
                    ylabel="E_tot(t) - E_tot(0) (meV/atom)", title=f"NVE, {len(sheet)}-atom graphene, "
                    f"{args.timestep:g} fs")
    print(f"wrote {args.out}/results.json, etot.png")
    return results


if __name__ == "__main__":
    main()
