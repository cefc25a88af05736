"""Write the shipped ``ednn_tf/models/hexagonal-gfn1.keras`` from a trained potential: the model
unchanged, its card completed with the data, the command, the validation errors by kind, the
errors on cells of other sizes, the NVE drift and the checks of ``experiments/potential_checks.py``
(rotation, equation of state, supercells, relaxation). Run from the repository root:

    python data/potentials/ship_model.py results/potentials/hexagonal-gfn1-space.keras \
        --md results/md-nve-space/results.json --checks results/potential_checks/results.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

OTHER = "data/potentials/hexagonal_othersizes_gfn1_sc2.extxyz"
COMMAND = ("ednn-tf train data/potentials/hexagonal_varied_c012_gfn1_sc2.extxyz --forces-key forces "
           "--force-weight 10 --epochs 40 --lr 2e-3 --init-from PREVIOUS --out "
           "results/potentials/hexagonal-gfn1-space.keras --workdir data/potentials/train/hexagonal-gfn1-space "
           "(PREVIOUS: tests/fixtures/hexagonal-gfn1-cellgrid.keras, the cell-grid model shipped until e5182ed; "
           "started with --epochs 50, stopped at epoch 12 and resumed with --epochs 40 to fit the session)")
TRAINING = ("space frame ('atoms' readout), energy + forces (w_E 1, w_F 10), 40 epochs, Adam 2e-3 cosine, "
            "batch 8 of similar cell size, a random rotation, mirror and sub-pixel shift of every structure "
            "in every batch; network weights started from the previous (cell-grid) hexagonal-gfn1; "
            "2 CPU threads shared with other work, 1 h 26 min")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--md", help="results.json of experiments/md_nve.py with this model")
    ap.add_argument("--checks", help="results.json of experiments/potential_checks.py with this model")
    ap.add_argument("--orientations", type=int, default=None, help="set the potential's orientation average K")
    ap.add_argument("--checks-k", nargs="*", default=[], metavar="K=RESULTS",
                    help="results.json of the checks with orientations K (recorded for comparison)")
    ap.add_argument("--precision", help="results of bench/precision.py with this model: bfloat16's measured error")
    ap.add_argument("--out", default="ednn_tf/models/hexagonal-gfn1.keras")
    ap.add_argument("--command", default=COMMAND, help="the training command recorded in the card")
    ap.add_argument("--training", default=TRAINING, help="the training, in words, recorded in the card")
    args = ap.parse_args()

    import ase.io
    import numpy as np

    from ednn_tf.apply.fit import evaluate, labelled_energies, labelled_forces
    from ednn_tf.potential import load_potential
    from ednn_tf.util import atomic_path

    pot = load_potential(args.model)
    if args.orientations is not None:
        pot.orientations = args.orientations
    card = pot.card
    cells = ase.io.read(OTHER, ":")
    forces = labelled_forces(cells, "forces")
    r = evaluate(pot, cells, labelled_energies(cells, "energy"), forces)
    val = card["metrics"]["val"]
    card.update({
        "name": "hexagonal-gfn1",
        "data": ("data/potentials/hexagonal_varied_chunk{0,1,2}.extxyz: 1,500 varied_hexagonal_cell cells (24-72 atoms, "
                 "8 sizes, own lattice constants, +-2% strain, 0-2 vacancies, rattle 0.03-0.10 A), labelled with "
                 "energies and forces by `bash data/potentials/label.sh 0 1 2` (ednn-tf label --oracle gfn1-xtb "
                 "--oracle-setting supercell=2)"),
        "command": args.command,
        "training": args.training,
        "val_by_kind": {k: round(v["energy_mae_meV_per_atom"], 2) for k, v in val["by_kind"].items()},
        "other_sizes_test": {
            "data": (f"{OTHER}: 4 graphene 12.30 x 12.78 A cells at a = 2.46 A (60 atoms) and 4 varied cells of "
                     "7 x 4 rectangular cells (109-112 atoms, ~17.5 x 17.2 A), GFN1-xTB supercell=2"),
            **{k: r[k] for k in ("n", "energy_mae_meV_per_atom", "energy_rmse_meV_per_atom", "force_mae_eV_per_A",
                                 "force_rmse_eV_per_A", "force_mae_xy_eV_per_A", "force_rmse_xy_eV_per_A")},
            "label_force_mean_abs_eV_per_A": round(float(np.mean(np.abs(np.concatenate(forces)))), 3),
        },
    })
    if args.md:
        with open(args.md) as fh:
            md = json.load(fh)
        card["nve_md"] = {"command": "python experiments/md_nve.py", "atoms": md["atoms"],
                          **{k: {q: v[q] for q in ("drift_meV_per_atom_per_ps", "net_force_mean_eV_per_A")}
                             for k, v in md["runs"].items()}}
    if args.checks:
        with open(args.checks) as fh:
            checks = json.load(fh)
        card["checks"] = {"command": "python experiments/potential_checks.py --model MODEL", **_summary(checks)}
    for item in args.checks_k:
        k, path = item.split("=", 1)
        with open(path) as fh:
            card.setdefault("checks_orientations", {})[k] = _summary(json.load(fh))
    if args.precision:
        with open(args.precision) as fh:
            prec = json.load(fh)
        card["precision"] = {"bfloat16": {
            "use": "EDNNCalculator(..., precision='bfloat16'), ednn-tf predict --precision bfloat16: the density "
                   "network under mixed_bfloat16; not the default",
            "against_float32": prec["bf16_vs_f32"], "against_labels": prec["vs_labels"],
            "speedup": prec["speedup_bf16"], "cpu": prec["cpu"], "cpu_bf16_flags": prec["cpu_bf16_flags"],
            "validation_cells": prec["n"], "command": prec["command"], "date": prec["date"]}}
    pot.card = card
    with atomic_path(args.out) as tmp:      # same extension: .keras
        pot.save(tmp)
    print(f"{args.out}: other sizes {r['energy_mae_meV_per_atom']:.2f} meV/atom, forces {r['force_mae_eV_per_A']:.3f} eV/A")


def _summary(checks):
    """The figures of a potential_checks results.json (no per-point arrays)."""
    out = {k: checks[k] for k in ("validation", "hexagonal_othersizes", "checks_strained", "relaxation", "chiral_e_per_atom_eV",
                                  "supercell_max_meV_per_atom", "translation_max_meV_per_atom") if k in checks}
    out["rotation_0_90_max_minus_min_meV_per_atom"] = {m: r["max_minus_min_meV_per_atom"]
                                                      for m, r in checks["rotation_scan"].items()}
    out["eos"] = {m: {"ednn": r["ednn"], "gfn1": r["gfn1"]} for m, r in checks["eos"].items()}
    return out


if __name__ == "__main__":
    main()
