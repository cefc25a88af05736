"""A potential checked the way its users will: turned, strained, repeated, re-celled, relaxed (issue 26).

Step 1 (``--label``): the reference structures, labelled with GFN1-xTB (``supercell=2``, as the
training set; energies, forces and stress) in checkpointed runs (a rerun labels only what is missing):
``eos.extxyz``: pristine graphene and h-BN, 3 x 2 rectangular cells (24 atoms), biaxial strain
-3 .. +3 % in 0.1 % steps; ``strained.extxyz``: cells like the training set's (seeds 10,000 and up)
strained by 2.5-4 % along each axis (the training set stops at 2 %).

Step 2 (``--model M``): the checks, written to ``OUT/results.json`` with plots
(``rotation.png``, ``eos.png``):

* rotation: E/atom of pristine graphene and h-BN (2-atom hexagonal cells, a = 2.46 / 2.50 A) turned
  by 0 .. 90 deg in 1 deg steps (positions and cell); the validation cells turned by random angles:
  mean |dE| (meV/atom), and their forces against the turned forces (MAE eV/A);
* accuracy on the 150 validation cells as they are and turned, on the other-sizes set and on the
  strained set (energy MAE meV/atom, force MAE eV/A);
* equation of state on a 0.1 % grid (-3 .. 3 %): the largest residual from a smooth (quartic) fit,
  the equilibrium lattice constant and the 2D bulk modulus ``B = A d2E/dA2`` (N/m) against GFN1-xTB's;
* supercells: ``|E(k1 x k2) / (k1 k2) - E|`` (meV/atom) of validation cells, k in (2,1), (1,2), (2,2), (3,2);
* sub-pixel translation: the largest change of E/atom when every atom moves by 0 .. 1 pixel;
* a ``FrechetCellFilter`` relaxation of graphene from a = 2.52 A (FIRE, fmax 1e-3 eV/A).

    python experiments/potential_checks.py --label                 # ~15 min of one core, once
    python experiments/potential_checks.py --model hexagonal-gfn1  # ~5 min
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402

DATA = "data/potentials"
EOS_STRAINS = np.round(np.arange(-0.03, 0.03001, 0.001), 4)


def eos_cell(material, strain, repeat=(3, 2)):
    from ednn_tf.apply.checks import A0, SYMBOLS
    from ednn_tf.atoms.structures import honeycomb_sheet

    a = honeycomb_sheet(*repeat, A0[material] * (1.0 + strain), SYMBOLS[material])
    a.pbc = [True, True, False]
    a.info.update(material=material, strain=float(strain))
    return a


def strained_cells(n=24):
    from ednn_tf.atoms.structures import varied_hexagonal_cell

    out = []
    for k in range(n):
        rng = np.random.default_rng([k, 26])
        a = varied_hexagonal_cell(10_000 + k, max_strain=0.0)
        s = rng.choice([-1.0, 1.0], 2) * rng.uniform(0.025, 0.04, 2)
        a.set_cell(a.cell.array * np.array([1 + s[0], 1 + s[1], 1.0])[:, None], scale_atoms=True)
        a.info["kind"], a.info["extra_strain"] = str(a.info["kind"]), s.tolist()
        out.append(a)
    return out


def label(workers):
    from ednn_tf.cli import write_labelled
    from ednn_tf.labels.labelling import label_structures
    from ednn_tf.labels.oracles import get_oracle

    oracle = get_oracle("gfn1-xtb", supercell=2)
    sets = {"eos": [eos_cell(m, s) for m in ("graphene", "hbn") for s in EOS_STRAINS], "strained": strained_cells()}
    for name, structures in sets.items():
        out = f"{DATA}/checks_{name}_gfn1_sc2.extxyz"
        e, f, s = label_structures(structures, oracle, n_workers=workers, checkpoint=out + ".labels.npz",
                                   threads_per_worker=1, stress=True)
        write_labelled(out, structures, e, f, {"oracle": oracle.name}, s)
        print(f"{name}: {len(structures)} structures -> {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", action="store_true", help="make and label the reference structures")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", help="a .keras path or shipped name: run the checks")
    ap.add_argument("--out", default="results/potential_checks")
    args = ap.parse_args(argv)
    if not args.label and not args.model:
        ap.error("give --label and/or --model MODEL")
    if args.label:
        label(args.workers)
    if args.model:
        from ednn_tf.apply.checks import run_checks

        run_checks(args.model, args.out)


if __name__ == "__main__":
    sys.exit(main())
