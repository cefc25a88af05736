"""Do cells cut around a large sheet's uncertain spots teach the model that sheet? (issue "know where
the model is wrong", item 4, large systems; ``docs/uncertainty.md``).

Step 1 (``--prepare``), after ``experiments/uncertain_spots.py --out SPOTS``: label the spot cells
with GFN1-xTB (``supercell=2``, checkpointed), split them alternately (ranks 0, 2, 4, ... teach, 1, 3,
5, ... test), and write the training files of two fine-tunes that differ only in the spot cells:

    SPOTS/train_with.extxyz      the 1,350 training cells of hexagonal-gfn1 + the teaching spots x --repeat
    SPOTS/train_without.extxyz   the 1,350 training cells alone (the control: as much fine-tuning, no spots)
    SPOTS/val.extxyz             the 150 validation cells (``ednn-tf train --val-file``)
    SPOTS/spots_test.extxyz      the held-out spot cells

Step 2: the two fine-tunes (commands in the docs). Step 3 (``--score M [M ...]``): each model's errors
on the held-out spot cells and its force deviation (spread over ``--orientations`` K) on them and over
the whole sheet, with a map per model. Writes ``SPOTS/scores.json``.

    python experiments/spot_learning.py --spots results/spots1e5 --prepare
    python experiments/spot_learning.py --spots results/spots1e5 --score hexagonal-gfn1 with.keras without.keras
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402

DATA = "data/potentials"


def prepare(spots, repeat, workers, data=DATA):
    """Label, split and write the files of step 1 (module docstring)."""
    import ase.io

    from ednn_tf.apply.checks import shipped_split
    from ednn_tf.apply.fit import labelled_energies, labelled_forces
    from ednn_tf.cli import write_labelled
    from ednn_tf.labels.labelling import label_structures
    from ednn_tf.labels.oracles import get_oracle

    cells = ase.io.read(os.path.join(spots, "spots.extxyz"), ":")
    oracle = get_oracle("gfn1-xtb", supercell=2)
    out = os.path.join(spots, "spots_gfn1.extxyz")
    e, f = label_structures(cells, oracle, n_workers=workers, checkpoint=out + ".labels.npz",
                            threads_per_worker=1, forces=True, progress=True)
    write_labelled(out, cells, e, f, {"oracle": oracle.name})
    teach, test = list(range(0, len(cells), 2)), list(range(1, len(cells), 2))
    write_labelled(os.path.join(spots, "spots_test.extxyz"), [cells[i] for i in test], e[test], [f[i] for i in test],
                   {"oracle": oracle.name})
    base, train, val = shipped_split(data)
    be, bf = labelled_energies(base), labelled_forces(base)
    for name, extra in (("with", teach * repeat), ("without", [])):
        rows = [base[i] for i in train] + [cells[i] for i in extra]
        write_labelled(os.path.join(spots, f"train_{name}.extxyz"), rows,
                       np.r_[be[train], e[extra]], [bf[i] for i in train] + [f[i] for i in extra])
    write_labelled(os.path.join(spots, "val.extxyz"), [base[i] for i in val], be[val], [bf[i] for i in val])
    print(f"{len(cells)} spot cells: {len(teach)} teach (x {repeat}), {len(test)} test -> {spots}")


def _sheet(spots):
    """The sheet of ``uncertain_spots.py`` (its default porous sheet, rebuilt from results.json)."""
    import re

    from ednn_tf.apply.spots import porous_sheet

    rec = json.load(open(os.path.join(spots, "results.json")))
    m = re.fullmatch(r"porous_graphene\(([\d.]+), seed=(\d+)\)", rec["sheet"])
    if not m:
        raise SystemExit(f"--score rebuilds only the default porous sheet, got {rec['sheet']!r}")
    sheet = porous_sheet(float(m.group(1)), int(m.group(2)))
    if len(sheet) != rec["atoms"]:
        raise SystemExit(f"rebuilt sheet has {len(sheet)} atoms, results.json {rec['atoms']}")
    return sheet, rec


def score(spots, models, k):
    """Errors on the held-out spot cells and the force deviation there and over the sheet, per model."""
    import ase.io

    from ednn_tf.apply.fit import labelled_energies, labelled_forces
    from ednn_tf.apply.space import predict_structures
    from ednn_tf.apply.uncertainty import plot_uncertainty_map
    from ednn_tf.potential import load_potential
    from ednn_tf.util import write_json_atomic

    test = ase.io.read(os.path.join(spots, "spots_test.extxyz"), ":")
    for a in test:
        a.pbc = [True, True, False]
    e, f = labelled_energies(test), labelled_forces(test)
    sheet, rec = _sheet(spots)
    spot_atoms = [s["atom"] for s in rec["spots"]]
    out = {}
    for name in models:
        pot = load_potential(name)
        r = predict_structures(pot, test, orientations=k, spread=True)
        n = np.array([len(a) for a in test])
        core = [a.arrays["spot_core"] for a in test]
        dF = [np.abs(x["forces"][:, :2] - y[:, :2]) for x, y in zip(r, f)]
        s = predict_structures(pot, [sheet], orientations=k, spread=True)[0]["force_dev"]
        tag = os.path.splitext(os.path.basename(name))[0]
        plot_uncertainty_map(sheet, s, os.path.join(spots, f"map_{tag}.png"), label=f"{tag}: force deviation (eV/A)")
        out[name] = {
            "spots_test": {"frames": len(test),
                           "energy_mae_meV_per_atom": float(1e3 * np.mean(np.abs([x["energy"] for x in r] - e) / n)),
                           "force_mae_xy_eV_per_A": float(np.mean(np.concatenate([d.ravel() for d in dF]))),
                           "core_force_mae_xy_eV_per_A": float(np.mean(np.concatenate([d[c].ravel()
                                                                                        for d, c in zip(dF, core)]))),
                           "mean_max_force_dev": float(np.mean([x["max_force_dev"] for x in r]))},
            "sheet": {"atoms": len(sheet), "mean_force_dev": float(s.mean()),
                      "p99_force_dev": float(np.quantile(s, 0.99)), "max_force_dev": float(s.max()),
                      "at_the_spots_mean": float(s[spot_atoms].mean())}}
        print(name, json.dumps(out[name]))
    write_json_atomic({"orientations": k, "models": out}, os.path.join(spots, "scores.json"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spots", required=True, help="the --out folder of experiments/uncertain_spots.py")
    ap.add_argument("--prepare", action="store_true", help="label, split, write the training files")
    ap.add_argument("--repeat", type=int, default=4, help="copies of each teaching spot cell (default 4)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--score", nargs="+", metavar="MODEL", help="score these models")
    ap.add_argument("--orientations", type=int, default=4, help="K of the force deviation (default 4)")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.spots, "spots.extxyz")):
        ap.error(f"--spots {args.spots!r} has no spots.extxyz: run experiments/uncertain_spots.py --out there first")
    if args.repeat < 1 or args.orientations < 2:
        ap.error(f"--repeat must be >= 1 and --orientations >= 2, got {args.repeat} and {args.orientations}")
    if not (args.prepare or args.score):
        ap.error("give --prepare and/or --score MODEL ..")
    if args.prepare:
        prepare(args.spots, args.repeat, args.workers)
    if args.score:
        score(args.spots, args.score, args.orientations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
