"""The ``ednn-tf`` command line (``setup.py`` console script; also ``python -m ednn_tf.cli``).

``label``: energies (eV) and forces (eV/A) of every structure in a file from an oracle, in worker
processes, resumable (``OUT.labels.npz``), written as extxyz. ``train``: a density
:class:`~ednn_tf.potential.Potential` from labelled structures (resumable; the model, a metrics JSON
and a parity PNG). ``eval``: its errors on labelled structures (``--json``: one JSON object).
``predict``: structures with predicted energies and forces as extxyz. ``info``: the model card.
``models``: the shipped models. MODEL is a ``.keras`` path or a shipped name; DATA is any file ASE
reads (all frames). Bad input exits with status 2 and a message naming the value, before any work.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .committee import Committee

__all__ = ["main", "parse_setting", "read_structures", "write_labelled"]


def parse_setting(item):
    """``(key, value)`` of one ``KEY=VALUE`` (VALUE parsed as JSON, else kept as a string)."""
    key, sep, value = str(item).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"a setting must be KEY=VALUE, got {item!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def read_structures(path, index=":"):
    """All frames of ``path`` (``ase.io.read``); ValueError naming the file when it is missing,
    unreadable or empty."""
    import ase.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"structure file not found: {path!r}")
    try:
        frames = ase.io.read(path, index=index)
    except Exception as exc:  # ASE raises many types for a bad file
        raise ValueError(f"could not read structures from {path!r}: {type(exc).__name__}: {exc}") from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ValueError(f"{path!r} holds no structures for index {index!r}")
    return frames


def write_labelled(path, structures, energies, forces, info=None, stresses=None, atom_energies=None, extras=None):
    """Write ``structures`` with their energies (eV) and forces (eV/A) as extxyz, atomically; with
    ``stresses`` (6,) eV/A^3 (or None) and per-atom ``atom_energies`` (N,) eV when given; ``extras``:
    one dict per structure of scalars (written to its info) and per-atom arrays (to its arrays)."""
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from .util import atomic_path

    out = []
    for i, (atoms, e, f) in enumerate(zip(structures, energies, forces)):
        a = atoms.copy()
        a.info.update(info or {})
        extra = {} if stresses is None or stresses[i] is None else {"stress": stresses[i]}
        extra.update({} if atom_energies is None else {"energies": atom_energies[i]})
        for k, v in ({} if extras is None else extras[i]).items():
            if np.ndim(v):
                a.arrays[k] = np.asarray(v)
            else:
                a.info[k] = float(v)
        a.calc = SinglePointCalculator(a, energy=float(e), forces=f, **extra)
        out.append(a)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, out, format="extxyz")
    return os.fspath(path)


def _label(args):
    from .labels import oracles
    from .labels.labelling import label_structures

    oracle = oracles.get_oracle(args.oracle, **dict(parse_setting(s) for s in args.oracle_setting))
    structures = read_structures(args.data)
    for i, atoms in enumerate(structures):
        try:
            oracle.check(atoms)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{args.data!r} structure {i}: {exc}") from None
    labels = label_structures(structures, oracle, n_workers=args.workers, checkpoint=args.out + ".labels.npz",
                              progress=not args.no_progress, threads_per_worker=args.threads, forces=True,
                              stress=args.stress)
    info = {"oracle": oracle.name, "oracle_settings": json.dumps(oracle.settings, sort_keys=True)}
    write_labelled(args.out, structures, *labels[:2], info, labels[2] if args.stress else None)
    print(f"labelled {len(structures)} structures with {oracle.name} -> {args.out}")


def _provenance(args, structures):
    import datetime

    from .labels.native import package_version

    info = structures[0].info
    return {"data": os.path.abspath(args.data), "energy_key": args.energy_key, "oracle": info.get("oracle"),
            "oracle_settings": info.get("oracle_settings"), "date": datetime.date.today().isoformat(),
            "command": "ednn-tf " + " ".join(args.argv),
            "versions": {p: package_version(p) or package_version(p + "-cpu")
                         for p in ("ednn_tf", "keras", "tensorflow", "ase")}}


def _train(args):
    import numpy as np

    from . import plots
    from .apply.fit import labelled_energies, labelled_forces, train_potential
    from .util import write_json_atomic

    if args.committee < 1 or (args.committee > 1 and args.readout != "atoms"):
        raise ValueError(f"--committee must be an integer >= 1, with the atoms readout for more than one member; "
                         f"got --committee {args.committee} --readout {args.readout}")
    structures = read_structures(args.data)
    val_indices = None
    if args.val_file:                       # validate on these, train on all of DATA
        extra = read_structures(args.val_file)
        val_indices = list(range(len(structures), len(structures) + len(extra)))
        structures = structures + extra
    energies = labelled_energies(structures, args.energy_key)
    forces = labelled_forces(structures, args.forces_key) if args.forces_key else None
    if args.committee > 1:
        return _train_committee(args, structures, energies, forces, val_indices)
    _, metrics = train_potential(structures, energies, args.out, forces=forces, energy_weight=args.energy_weight,
                                 force_weight=args.force_weight, pixel_size=args.pixel_size, gamma=args.gamma,
                                 context=args.context, filters=args.filters, epochs=args.epochs,
                                 batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                                 seed=args.seed, progress=not args.no_progress, card=_provenance(args, structures),
                                 augment=not args.no_augment, workdir=args.workdir, readout=args.readout,
                                 init_from=args.init_from, invariance_weight=args.invariance_weight,
                                 val_indices=val_indices, refit_reference=args.refit_reference)
    stem = os.path.splitext(args.out)[0]
    write_json_atomic(metrics, stem + ".metrics.json")
    val = metrics["val_indices"]
    n = np.array([len(structures[i]) for i in val])
    plots.parity_and_error(energies[val] / n, np.array(metrics["val"]["pred_energy"]) / n, stem + ".parity.png",
                           quantity="E / atom", unit="eV", title=f"{os.path.basename(args.out)}: validation split")
    print(f"{args.out}: validation energy MAE {metrics['val']['energy_mae_meV_per_atom']:.2f} meV/atom "
          f"on {metrics['n_val']} structures" + (f", force MAE {metrics['val']['force_mae_xy_eV_per_A']:.3f} eV/A "
                                                 "(in-plane)" if forces is not None else ""))


def _train_committee(args, structures, energies, forces, val_indices):
    """``--committee K``: :func:`ednn_tf.apply.fit.train_committee` (K members, one split, a card)."""
    from .apply.fit import train_committee

    card, metrics = train_committee(
        structures, energies, args.out, args.committee, forces=forces, seed=args.seed, init_from=args.init_from,
        workdir=args.workdir, energy_weight=args.energy_weight, force_weight=args.force_weight,
        pixel_size=args.pixel_size, gamma=args.gamma, context=args.context, filters=args.filters, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, progress=not args.no_progress,
        card=_provenance(args, structures), augment=not args.no_augment, readout=args.readout,
        invariance_weight=args.invariance_weight, val_indices=val_indices, refit_reference=args.refit_reference)
    for k, m in enumerate(metrics):
        print(f"member {k}: validation energy MAE {m['val']['energy_mae_meV_per_atom']:.2f} meV/atom")
    print(f"committee of {args.committee} -> {card}")


def _select(args):
    import ase.io

    from .apply.uncertainty import predict_committee, select_frames
    from .util import atomic_path

    pot = _model(args.model)
    if not isinstance(pot, Committee):
        raise ValueError(f"select needs a committee (a NAME.committee.json card), got the single potential "
                         f"{args.model!r}")
    structures = read_structures(args.data)
    res = predict_committee(pot, structures, progress=not args.no_progress)
    dev = [r["max_force_dev"] for r in res]
    picked = select_frames(dev, args.n, args.trust_lo, args.trust_hi)
    out = []
    for i in picked:
        a = structures[i].copy()
        a.calc = None
        a.info.update(max_force_dev=float(dev[i]), source_index=int(i), source=os.fspath(args.data))
        out.append(a)
    with atomic_path(args.out) as tmp:
        ase.io.write(tmp, out, format="extxyz")
    print(f"picked {len(out)} of {len(structures)} frames (max force deviation in [{args.trust_lo:g}, "
          f"{args.trust_hi:g}) eV/A, highest first) -> {args.out}")


def _eval(args):
    from .apply.fit import evaluate, labelled_energies, labelled_forces, structure_kinds

    pot = _model(args.model)
    structures = read_structures(args.data)
    energies = labelled_energies(structures, args.energy_key)
    forces = labelled_forces(structures, args.forces_key) if args.forces_key else None
    result = evaluate(pot, structures, energies, forces, structure_kinds(structures))
    if args.plot:
        import numpy as np

        from . import plots

        n = np.array([len(a) for a in structures])
        plots.parity_and_error(energies / n, np.array(result["pred_energy"]) / n, args.plot, quantity="E / atom",
                               unit="eV")
    result.pop("pred_energy")
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['n']} structures: energy MAE {result['energy_mae_meV_per_atom']:.2f} meV/atom, "
          f"RMSE {result['energy_rmse_meV_per_atom']:.2f} meV/atom ({result['energy_mae_eV']:.4f} eV/structure)")
    if forces is not None:
        print(f"forces: MAE {result['force_mae_eV_per_A']:.4f} eV/A, RMSE {result['force_rmse_eV_per_A']:.4f} eV/A "
              f"(in-plane: {result['force_mae_xy_eV_per_A']:.4f} / {result['force_rmse_xy_eV_per_A']:.4f} eV/A)")
    for kind, r in result.get("by_kind", {}).items():
        print(f"  {kind}: {r['n']} structures, {r['energy_mae_meV_per_atom']:.2f} meV/atom"
              + (f", forces {r['force_mae_xy_eV_per_A']:.3f} eV/A in-plane" if forces is not None else ""))


def _predict(args):
    from .apply.fit import predict_energies_forces

    pot = _model(args.model)
    spread = bool(args.uncertainty or args.map) and not isinstance(pot, Committee)   # over K orientations
    K = args.orientations
    if spread and K is None:                               # the default spread: 4 copies
        K = max(4, pot.orientations)
    if spread and (pot.readout != "atoms" or K < 2):
        raise ValueError(f"--uncertainty and --map need a committee (a NAME.committee.json card) or a potential "
                         f"with the 'atoms' readout and --orientations K >= 2 (default 4); got {args.model!r} "
                         f"(readout {pot.readout!r}) with --orientations {args.orientations}")
    structures = read_structures(args.data)
    info = {"model": os.fspath(args.model)}
    if pot.readout == "atoms":
        from .apply.space import predict_structures

        res = predict_structures(pot, structures, progress=not args.no_progress, orientations=K,
                                 precision=args.precision, spread=spread)
        extras = None
        if args.uncertainty:
            info["uncertainty"] = f"spread over {K} orientations" if spread else f"committee of {len(pot)}"
            keys = ("energy_std", "max_force_dev", "force_dev", "energies_std")
            extras = [{k: r[k] for k in keys} for r in res]
        write_labelled(args.out, structures, [r["energy"] for r in res], [r["forces"] for r in res], info,
                       [r["stress"] for r in res], [r["energies"] for r in res], extras)
        if args.map:
            from .apply.uncertainty import plot_uncertainty_map

            plot_uncertainty_map(structures[0], res[0]["force_dev"], args.map)
    else:
        if args.orientations is not None or args.precision != "float32":
            raise ValueError(f"--orientations {args.orientations} / --precision {args.precision} need a potential "
                             "with the 'atoms' readout")
        energies, forces = predict_energies_forces(pot, structures)
        write_labelled(args.out, structures, energies, forces, info)
    print(f"predicted {len(structures)} structures -> {args.out}")


def _info(args):
    import keras

    from .potential import Potential, model_card, resolve_model_path

    model = keras.models.load_model(resolve_model_path(args.model), compile=False)
    out = {"class": type(model).__name__, "card": model_card(args.model)}
    if isinstance(model, Potential):
        out.update(pixel_size_A=model.pixel_size, gamma_A=model.gamma, cutoff_gamma=model.cutoff,
                   channels=model.channels, e0_eV=model.e0, scale_eV=model.scale, focus=model.ednn.focus,
                   context=model.ednn.context, readout=model.readout, max_height_A=model.max_height,
                   min_vacuum_A=model.min_vacuum, orientations=model.orientations)
    else:
        out.update(focus=getattr(model, "focus", None), context=getattr(model, "context", None))
    print(json.dumps(out, indent=2))


def _models(args):
    from .potential import model_card, shipped_models

    for name, path in shipped_models().items():
        card = model_card(path)
        print(f"{name}\t{card.get('what', '')}\t{path}")


def _model(name_or_path):
    from .potential import load_potential

    return load_potential(name_or_path)


def _train_parser(sub):
    """The ``train`` subcommand's arguments."""
    p = sub.add_parser("train", help="train a density potential on labelled structures")
    p.add_argument("data")
    p.add_argument("--energy-key", default="energy")
    p.add_argument("--forces-key", default=None,
                   help="train on energies and forces (atoms.arrays key, or 'forces' for ASE's calculator results)")
    p.add_argument("--energy-weight", type=float, default=1.0, help="w_E of the energy + force loss (default 1)")
    p.add_argument("--force-weight", type=float, default=10.0, help="w_F of the energy + force loss (default 10)")
    p.add_argument("--out", required=True, help="MODEL.keras (beside it: .metrics.json, .parity.png, .train/)")
    p.add_argument("--pixel-size", type=float, default=0.25, help="A per pixel (default 0.25)")
    p.add_argument("--gamma", type=float, default=0.3, help="Gaussian width of the image, A (default 0.3)")
    p.add_argument("--context", type=int, default=16, help="context c in pixels (window 2c+1; default 16)")
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam step, cosine-decayed (default 3e-3)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="seeded random validation fraction, never trained on (default 0.1)")
    p.add_argument("--val-file", default=None, metavar="VAL",
                   help="validate on VAL's structures instead (all of DATA is trained on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true",
                   help="no augmentation (atoms readout: random rotations, mirrors, sub-pixel shifts; cell: mirrors, x<->y)")
    p.add_argument("--readout", default="atoms", choices=["atoms", "cell"],
                   help="atoms (default): space frame, any cell, per-atom energies, stress; cell: the first form")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from the network weights of MODEL (a .keras path or shipped name; same architecture), "
                   "and from its e0 and scale when it has the atoms readout and the same elements")
    p.add_argument("--refit-reference", action="store_true",
                   help="with --init-from: fit e0 and scale to the new training split instead (before 2026-12-08)")
    p.add_argument("--invariance-weight", type=float, default=0.0, metavar="W", help="W > 0: every cell twice a "
                   "batch, two random isometries; W weighs their per-atom energy and force disagreement (docs/potentials.md)")
    p.add_argument("--committee", type=int, default=1, metavar="K",
                   help="train K members (seeds seed..seed+K-1, one split) and write OUT's .committee.json card")
    p.add_argument("--workdir", default=None,
                   help="training backup and log.csv (default OUT.train); a rerun with the same one resumes")
    p.set_defaults(run=_train)


def _parser():
    ap = argparse.ArgumentParser(prog="ednn-tf", description="Extensive deep neural network potentials.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("label", help="energies and forces of every structure in a file, from an oracle")
    p.add_argument("data", help="structure file (any format ASE reads; all frames)")
    p.add_argument("--oracle", required=True, help="gfn1-xtb, rebo, tersoff-bnc or lj")
    p.add_argument("--oracle-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="oracle setting (repeatable; VALUE parsed as JSON), e.g. supercell=2")
    p.add_argument("--out", required=True, help="labelled extxyz file (checkpoint: OUT.labels.npz)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--threads", type=int, default=None, help="threads per worker (default cores / workers)")
    p.add_argument("--stress", action="store_true",
                   help="label the stress too (eV/A^3, kept in the checkpoint like the forces; ASE reads it back)")
    p.set_defaults(run=_label)
    _train_parser(sub)
    p = sub.add_parser("eval", help="errors of a model on labelled structures")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--energy-key", default="energy")
    p.add_argument("--forces-key", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", help="parity PNG")
    p.set_defaults(run=_eval)
    p = sub.add_parser("predict", help="write structures with predicted energies and forces (extxyz)")
    p.add_argument("--orientations", type=int, default=None, metavar="K",
                   help="average over K turned copies (atoms readout; default: the model's own K)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="the density network's precision (atoms readout; docs/performance.md: error, speed)")
    p.add_argument("--uncertainty", action="store_true",
                   help="spreads: energy_std, max_force_dev (info), force_dev, energies_std (arrays); a committee's, "
                        "or one potential's over --orientations K copies (default 4; docs/uncertainty.md)")
    p.add_argument("--map", metavar="PNG", help="the first structure's atoms coloured by force deviation (as --uncertainty)")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_predict)
    p = sub.add_parser("select", help="pick frames for labelling by a committee's force deviation")
    p.add_argument("data")
    p.add_argument("--model", required=True, help="a committee card (NAME.committee.json) or shipped committee")
    p.add_argument("--n", type=int, required=True, help="at most this many frames")
    p.add_argument("--trust-lo", type=float, default=0.0, help="eV/A: frames below are skipped (default 0)")
    p.add_argument("--trust-hi", type=float, default=float("inf"), help="eV/A: frames at or above are skipped")
    p.add_argument("--out", required=True, help="extxyz of the picked frames, ready for `ednn-tf label`")
    p.set_defaults(run=_select)
    p = sub.add_parser("info", help="print a model's card as JSON")
    p.add_argument("model")
    p.set_defaults(run=_info)
    sub.add_parser("models", help="list the shipped models").set_defaults(run=_models)
    for p in sub.choices.values():
        p.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        args.run(args)
    except (ValueError, TypeError, KeyError, ImportError) as exc:
        print(f"ednn-tf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
