"""Learning curves: frames picked by the model's spread against frames picked at random, from one
explored pool (issue "know where the model is wrong", what "done" shows: the active loop reaches
random selection's final error with at most 60 % of its labels).

Pool-based protocol (both strategies see the same pool, start and training schedule):

1. **Start.** ``initial`` labelled cells (``cpu``: drawn from the training split of ``hexagonal-gfn1``,
   never from its validation cells) and ``val`` more as a fixed validation set of every training run
   (not counted as labels).
2. **Round 0.** A potential trained from scratch on the start.
3. **Pool.** Explored with the round-0 potential (:func:`ednn_tf.apply.active.explore`: ``starts``
   other cells, each strained by up to 4 %, turned, maybe with a vacancy, then in-plane Langevin MD at
   each temperature), labelled once by the oracle through a checkpoint.
4. **Rounds.** For each strategy: the current potential's spread over ``orientations`` K
   (``predict_structures(..., spread=True)``) on the pool frames it has not taken; pick ``select``
   frames by ``max_force_dev``, highest first (``deviation``) or at random (``random``); fine-tune from
   the previous round's potential on everything labelled so far; score on the held-out frames
   (``cpu``: the 230 frames of ``experiments/calibration.py``: turned validation cells, strained,
   other sizes, hot MD).

    python experiments/learning_curves.py --preset tiny          # LJ oracle, ~1 min: a smoke test
    python experiments/learning_curves.py --preset cpu           # GFN1-xTB (2x2 k), ~1.5 h on 2 cores

Every step writes its files atomically and is skipped when they exist (labels resume from their
checkpoint, training from its workdir): run the same command again after an interruption.
Writes ``OUT/results.json`` (one record per strategy and round) and ``OUT/learning_curves.png``.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ednn_tf.apply.runs import script_environment  # noqa: E402

REPO = script_environment(__name__ == "__main__")

import numpy as np  # noqa: E402

from ednn_tf.apply.active import Steps, read_frames, write_frames  # noqa: E402
from ednn_tf.util import argument_errors, check_int  # noqa: E402

PRESETS = {
    "tiny": dict(oracle="lj", initial=8, val=3, test=6, starts=2, temperatures=(300.0, 1500.0), md_steps=4, every=2,
                 select=3, rounds=2, epochs0=2, epochs=1, lr0=1e-2, lr=3e-3, orientations=2, context=2, filters=4,
                 pixel_size=0.45, gamma=0.45, workers=1),
    "cpu": dict(oracle="gfn1-xtb", initial=200, val=20, test=None, starts=16, temperatures=(300.0, 900.0, 1500.0),
                md_steps=40, every=10, select=40, rounds=3, epochs0=30, epochs=10, lr0=2e-3, lr=5e-4, orientations=4,
                context=16, filters=32, pixel_size=0.25, gamma=0.3, workers=2),
}
ORACLE_SETTINGS = {"lj": {}, "gfn1-xtb": {"supercell": 2}}
STRATEGIES = ("deviation", "random")
#: The errors scored, per set and over all frames.
KEYS = ("energy_mae_meV_per_atom", "force_mae_xy_eV_per_A")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--rounds", type=int, default=None, help="override the preset's number of rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.path.join(REPO, "data", "potentials"), help="cpu: the labelled sets")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (a planned interruption)")
    ap.add_argument("--out", default=None, help="default results/learning_curves_<preset>")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    with argument_errors(ap):
        check_int("--seed", args.seed, minimum=0)
        if args.rounds is not None:
            check_int("--rounds", args.rounds, minimum=1)
        if args.max_steps is not None:
            check_int("--max-steps", args.max_steps, minimum=1)
    args.out = args.out or os.path.join(REPO, "results", f"learning_curves_{args.preset}")
    return args


def _start_tiny(cfg, seed, oracle):
    """(start cells, validation cells, explore starts, {"test": (structures, energies, forces)}), LJ-labelled."""
    from ednn_tf.apply.active import label_frames
    from ednn_tf.apply.fit import labelled_energies, labelled_forces
    from ednn_tf.atoms.structures import varied_hexagonal_cell

    n = cfg["initial"] + cfg["val"] + cfg["starts"]
    cells = [varied_hexagonal_cell(seed * 100_003 + k, kinds=("graphene",)) for k in range(n + cfg["test"])]
    rng = np.random.default_rng([seed, 13])
    for a in cells[n:]:                         # held out: turned
        a.rotate(float(rng.uniform(0, 360)), "z", rotate_cell=True)
    cells = label_frames(cells, oracle, None)
    test = cells[n:]
    i, v = cfg["initial"], cfg["initial"] + cfg["val"]
    return cells[:i], cells[i:v], cells[v:n], {"test": (test, labelled_energies(test), labelled_forces(test))}


def _start_cpu(cfg, seed, data):
    """The same from the labelled cells of ``hexagonal-gfn1`` (its training split) and the held-out sets."""
    from ednn_tf.apply.calibration import held_out_sets
    from ednn_tf.apply.checks import shipped_split

    cells, train, _ = shipped_split(data)
    rng = np.random.default_rng([seed, 17])
    order = rng.permutation(train)
    i, v = cfg["initial"], cfg["initial"] + cfg["val"]
    take = lambda idx: [cells[k] for k in idx]  # noqa: E731
    return take(order[:i]), take(order[i:v]), take(order[v:v + cfg["starts"]]), held_out_sets(data)


def _train(structures, n_val, out, cfg, seed, init_from, epochs, lr, progress):
    """Train on ``structures`` whose last ``n_val`` are the validation set; returns ``out``."""
    from ednn_tf.apply.fit import labelled_energies, labelled_forces, train_potential

    n = len(structures)
    train_potential(structures, labelled_energies(structures), out, forces=labelled_forces(structures), seed=seed,
                    init_from=init_from, epochs=epochs, lr=lr, context=cfg["context"], filters=cfg["filters"],
                    pixel_size=cfg["pixel_size"], gamma=cfg["gamma"], val_indices=np.arange(n - n_val, n),
                    workdir=out + ".train", progress=progress)
    return out


def score(pot, sets):
    """``{set: {frames, energy_mae_meV_per_atom, force_mae_xy_eV_per_A}}`` (:func:`ednn_tf.apply.fit.evaluate`)
    and ``"all"`` (the energy MAE over every frame, the force MAE over every in-plane component of every atom)."""
    from ednn_tf.apply.fit import evaluate

    out, frames, atoms = {}, [], []
    for name, (structures, energies, forces) in sets.items():
        r = evaluate(pot, structures, energies, forces)
        out[name] = {"frames": len(structures), **{k: r[k] for k in KEYS}}
        frames.append(len(structures))
        atoms.append(sum(len(a) for a in structures))
    rows = list(out.values())
    out["all"] = {"frames": sum(frames),
                  KEYS[0]: float(np.average([r[KEYS[0]] for r in rows], weights=frames)),
                  KEYS[1]: float(np.average([r[KEYS[1]] for r in rows], weights=atoms))}
    return out


def _rounds(strategy, args, cfg, steps, start, pool, sets, model0):
    """The rounds of one ``strategy``: a list of records (round, labels, picked pool indices, scores)."""
    import json

    from ednn_tf.apply.active import pick
    from ednn_tf.apply.space import predict_structures
    from ednn_tf.potential import load_potential
    from ednn_tf.util import write_json_atomic

    initial, val = start
    records = [{"round": 0, "labels": len(initial), "picked": [], "scores": _scored(model0, sets, steps)}]
    model, taken = model0, []
    for r in range(1, cfg["rounds"] + 1):
        d = os.path.join(args.out, strategy, f"round{r}")
        picked = os.path.join(d, "picked.json")

        def make_pick(model=model, taken=tuple(taken), r=r, picked=picked):
            rest = [i for i in range(len(pool)) if i not in taken]
            res = predict_structures(load_potential(model), [pool[i] for i in rest],
                                     orientations=cfg["orientations"], spread=True)
            dev = [x["max_force_dev"] for x in res]
            idx = pick(dev, cfg["select"], strategy, args.seed * 1000 + r)
            write_json_atomic({"max_force_dev": dev, "candidates": rest, "picked": [rest[i] for i in idx]}, picked)

        steps(picked, make_pick)
        with open(picked) as fh:
            taken += json.load(fh)["picked"]
        out = os.path.join(d, "model.keras")
        steps(out, lambda out=out, taken=list(taken), model=model: _train(
            initial + [pool[i] for i in taken] + val, len(val), out, cfg, args.seed, model, cfg["epochs"], cfg["lr"],
            not args.no_progress))
        model = out
        records.append({"round": r, "labels": len(initial) + len(taken), "picked": list(taken),
                        "scores": _scored(model, sets, steps)})
    return records


def _scored(model, sets, steps):
    """The scores of ``model`` (a path), cached beside it as ``<stem>.scores.json``."""
    import json

    from ednn_tf.potential import load_potential
    from ednn_tf.util import write_json_atomic

    path = os.path.splitext(model)[0] + ".scores.json"
    steps(path, lambda: write_json_atomic(score(load_potential(model), sets), path))
    with open(path) as fh:
        return json.load(fh)


def summary(records):
    """Random selection's final error and the labels the deviation curve needs to reach it (energy and forces)."""
    from ednn_tf.apply.active import labels_to_reach

    out = {}
    for key in KEYS:
        curves = {s: ([r["labels"] for r in recs], [r["scores"]["all"][key] for r in recs])
                  for s, recs in records.items()}
        labels, errors = curves["random"]
        need = labels_to_reach(*curves["deviation"], errors[-1])
        out[key] = {"random_final": errors[-1], "random_labels": labels[-1],
                    "deviation_final": curves["deviation"][1][-1],
                    "deviation_labels_to_reach_random_final": need,
                    "ratio": None if need is None else need / labels[-1]}
    return out


def plot(records, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ednn_tf.util import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, unit in zip(axes, KEYS, ("meV/atom", "eV/A")):
        for s, recs in records.items():
            ax.plot([r["labels"] for r in recs], [r["scores"]["all"][key] for r in recs], "o-",
                    label={"deviation": "highest spread", "random": "random"}[s])
        ax.set_xlabel("labelled cells")
        ax.set_ylabel(f"held-out {key.split('_')[0]} MAE ({unit})")
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    from ednn_tf.apply.active import explore, label_frames
    from ednn_tf.labels.oracles import get_oracle
    from ednn_tf.potential import load_potential
    from ednn_tf.util import write_json_atomic

    args = parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    cfg["rounds"] = cfg["rounds"] if args.rounds is None else args.rounds
    oracle = get_oracle(cfg["oracle"], **ORACLE_SETTINGS[cfg["oracle"]])
    steps, progress = Steps(args.max_steps), not args.no_progress
    initial, val, starts, sets = (_start_tiny(cfg, args.seed, oracle) if args.preset == "tiny"
                                  else _start_cpu(cfg, args.seed, args.data))
    model0 = steps(os.path.join(args.out, "round0", "model.keras"), lambda: _train(
        initial + val, len(val), os.path.join(args.out, "round0", "model.keras"), cfg, args.seed, None, cfg["epochs0"],
        cfg["lr0"], progress))
    pool_path, labelled = (os.path.join(args.out, f) for f in ("pool.extxyz", "pool_labelled.extxyz"))
    steps(pool_path, lambda: write_frames(pool_path, explore(
        load_potential(model0), starts, seed=args.seed, temperatures=cfg["temperatures"], md_steps=cfg["md_steps"],
        every=cfg["every"], progress=progress)))
    steps(labelled, lambda: write_frames(labelled, label_frames(
        read_frames(pool_path), oracle, labelled + ".labels.npz", cfg["workers"], progress)))
    pool = read_frames(labelled)
    for a in pool:
        a.pbc = [True, True, False]
    records = {s: _rounds(s, args, cfg, steps, (initial, val), pool, sets, model0) for s in STRATEGIES}
    res = {"preset": args.preset, "seed": args.seed, "oracle": oracle.name, "config": cfg, "pool_frames": len(pool),
           "validation_cells": len(val), "strategies": records, "summary": summary(records)}
    write_json_atomic(res, os.path.join(args.out, "results.json"))
    plot(records, os.path.join(args.out, "learning_curves.png"),
         f"{args.preset}: {len(pool)} explored frames, {cfg['select']} picked a round, spread over "
         f"{cfg['orientations']} orientations")
    for s, recs in records.items():
        for r in recs:
            a = r["scores"]["all"]
            print(f"{s:9s} round {r['round']}: {r['labels']:4d} labels  "
                  f"E {a['energy_mae_meV_per_atom']:7.2f} meV/atom  "
                  f"F {a['force_mae_xy_eV_per_A']:.3f} eV/A")
    print(f"summary: {res['summary']}\nwrote {args.out}/results.json")
    return res


if __name__ == "__main__":
    main()
