"""Does the spread rank the errors? Calibration of an uncertainty on labelled frames unlike the
training set (issue 28; ``docs/uncertainty.md``).

Step 1 (``--label``): ``data/potentials/checks_hot.extxyz``, 48 frames explored from 12 new varied
cells (seeds 20,000 and up), each strained by up to 4 %, turned, maybe with a vacancy, then ASE
Langevin MD at 600 and 1500 K with ``--md-model`` (the structures are committed, since they depend on
that model's numerics), labelled with GFN1-xTB (``supercell=2``) through a checkpoint.

Step 2 (``--model M``): the spread against the actual errors on four held-out sets: the 150
validation cells turned by random angles, ``checks_strained`` (2.5-4 % strain, beyond training),
``hexagonal_othersizes`` and ``checks_hot``. The spread is that of a committee (``M`` a
``.committee.json`` card, or ``--members A B ..``) or, for one potential, that of its ``--orientations K``
(K copies turned by 90 k / K deg and moved by sub-pixel offsets: a committee with no training). Per set and over
all frames: Spearman of max force deviation against max force error, of RMS deviation against RMS
error and of energy spread against energy error; the fraction of frames above 3 x the spread; a
reliability table. Writes ``OUT/results.json`` and ``OUT/calibration.png``.

    python experiments/calibration.py --label                                 # ~10 min of one core, once
    python experiments/calibration.py --model hexagonal-gfn1 --orientations 4 --out results/calibration-K4
    python experiments/calibration.py --model m.committee.json --out results/calibration-committee
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402

DATA = "data/potentials"


def hot_frames(model, n_starts=12):
    """The frames of ``checks_hot.extxyz`` (module docstring), explored with ``model``."""
    from ednn_tf.apply.active import explore
    from ednn_tf.atoms.structures import varied_hexagonal_cell
    from ednn_tf.potential import load_potential

    starts = [varied_hexagonal_cell(20_000 + k) for k in range(n_starts)]
    return explore(load_potential(model), starts, seed=28, temperatures=(600.0, 1500.0), md_steps=300, every=300,
                   timestep_fs=0.5, max_strain=0.04, vacancy_p=0.3, progress=True)


def label(md_model, workers, data=DATA):
    """Make (once) and label the hot frames; a rerun labels only what the checkpoint lacks."""
    import ase.io

    from ednn_tf.cli import write_labelled
    from ednn_tf.labels.labelling import label_structures
    from ednn_tf.labels.oracles import get_oracle
    from ednn_tf.util import atomic_path

    hot = f"{data}/checks_hot.extxyz"
    if not os.path.isfile(hot):
        frames = hot_frames(md_model)
        with atomic_path(hot) as tmp:
            ase.io.write(tmp, frames, format="extxyz")
    frames = ase.io.read(hot, ":")
    oracle = get_oracle("gfn1-xtb", supercell=2)
    out = f"{data}/checks_hot_gfn1_sc2.extxyz"
    e, f, s = label_structures(frames, oracle, n_workers=workers, checkpoint=out + ".labels.npz",
                               threads_per_worker=1, stress=True, progress=True)
    write_labelled(out, frames, e, f, {"oracle": oracle.name}, s)
    print(f"hot: {len(frames)} frames -> {out}")


def spread_model(args):
    """``(predict, description)``: ``predict(structures)`` gives committee_spread dicts."""
    from ednn_tf.apply.space import predict_structures
    from ednn_tf.committee import Committee
    from ednn_tf.potential import load_potential

    if args.members:
        pot = Committee([load_potential(m) for m in args.members], card={"name": "ad hoc"})
        return (lambda s: predict_structures(pot, s)), f"committee of {len(pot)}: {', '.join(args.members)}"
    pot = load_potential(args.model)
    if isinstance(pot, Committee):
        return (lambda s: predict_structures(pot, s)), f"committee {args.model} ({len(pot)} members)"
    if not args.orientations:
        raise SystemExit(f"{args.model} is one potential: give --orientations K (K >= 2) or a committee")
    return ((lambda s: predict_structures(pot, s, orientations=args.orientations, spread=True)),
            f"{args.model}, spread over {args.orientations} orientations")


def calibrate(predict, sets):
    """Per set and over all frames: errors, spreads and :func:`rank_summary` of each pair."""
    from ednn_tf.apply.calibration import BASELINES, PAIRS, frame_table, rank_summary, reliability

    tables, out = {}, {}
    for name, (structures, energies, forces) in sets.items():
        tables[name] = frame_table(predict(structures), energies, forces)
    tables_all = {k: np.concatenate([t[k] for t in tables.values()]) for k in next(iter(tables.values()))}
    for name, t in list(tables.items()) + [("all", tables_all)]:
        out[name] = {"frames": int(len(t["n"])),
                     "energy_mae_meV_per_atom": float(t["energy_error"].mean()),
                     "force_mae_xy_eV_per_A": float(np.average(t["force_mae"], weights=t["n"])),
                     "mean_max_force_dev": float(t["max_force_dev"].mean()),
                     **{f"{p}~{a}": rank_summary(t[p], t[a]) for p, a in PAIRS + BASELINES}}
    out["all"]["reliability_force_rms"] = reliability(tables_all["force_dev_rms"], tables_all["force_rms"], bins=8)
    return tables, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", action="store_true", help="make and label the hot frames")
    ap.add_argument("--md-model", default="hexagonal-gfn1", help="the model that explores the hot frames")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", help="a committee card, or one potential with --orientations K")
    ap.add_argument("--members", nargs="+", help="potentials that make an ad-hoc committee")
    ap.add_argument("--orientations", type=int, default=0, help="K >= 2: one potential's spread over K orientations")
    ap.add_argument("--data", default=DATA, help="the folder of the labelled sets")
    ap.add_argument("--out", default="results/calibration")
    args = ap.parse_args(argv)
    if not (args.label or args.model or args.members):
        ap.error("give --label and/or --model MODEL (or --members A B ..)")
    if args.orientations and args.orientations < 2:
        ap.error(f"--orientations must be at least 2, got {args.orientations}")
    if args.label:
        label(args.md_model, args.workers, args.data)
    if not (args.model or args.members):
        return 0
    from ednn_tf.apply.calibration import held_out_sets, plot_calibration
    from ednn_tf.util import write_json_atomic

    predict, what = spread_model(args)
    sets = held_out_sets(args.data)
    tables, res = calibrate(predict, sets)
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic({"spread": what, "sets": res}, os.path.join(args.out, "results.json"))
    plot_calibration(tables, os.path.join(args.out, "calibration.png"), title=what)
    for name, r in res.items():
        s = r["max_force_dev~max_force_error"]
        print(f"{name:22s} {r['frames']:4d} frames  E {r['energy_mae_meV_per_atom']:6.2f} meV/atom  "
              f"F {r['force_mae_xy_eV_per_A']:.3f} eV/A  spearman(max) {s['spearman']:.2f}  "
              f"rms {r['force_dev_rms~force_rms']['spearman']:.2f}  E {r['energy_std~energy_error']['spearman']:.2f}  "
              f">3x {s['above_3x']:.2f}  baseline |F| {r['force_norm_rms~force_rms']['spearman']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
