"""Active learning, round by round (issue "know where the model is wrong", item 4): start from a few
labelled cells, train a committee; each round explore with the committee's mean (strained, turned
cells with vacancies, Langevin MD at several temperatures), pick frames where the members disagree
(or at random: the baseline), label them with the oracle, retrain (warm start from the last round's
members) and score the committee on a held-out set unlike the training cells (turned, strained, hot).

    python experiments/active_learning.py --preset tiny                 # LJ oracle, ~2 min: a smoke test
    python experiments/active_learning.py --preset cpu                  # GFN1-xTB (2x2 k), hours a round
    python experiments/active_learning.py --preset cpu --strategy random --out results/active_random

Every step writes its files atomically into ``--out`` and is skipped when its files exist, labels go
through the labelling checkpoints and training through its workdirs: run the same command again to
go on after an interruption (``--max-steps N`` stops on purpose after N steps). ``results.json`` holds
one record per round (labels so far, held-out errors of the committee mean, the Spearman
correlation of max_force_dev with the actual force error, the pool's deviations).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ednn_tf.apply.runs import script_environment  # noqa: E402

REPO = script_environment(__name__ == "__main__")

from ednn_tf.apply.active import Steps, read_frames, write_frames  # noqa: E402
from ednn_tf.util import argument_errors, check_float, check_int  # noqa: E402

PRESETS = {
    "tiny": dict(oracle="lj", initial=8, test=6, committee=2, rounds=1, starts=2, temperatures=(300.0, 1500.0),
                 md_steps=4, every=2, select=4, epochs=1, context=2, filters=4, pixel_size=0.45, gamma=0.45,
                 kinds=("graphene",), workers=1),
    "cpu": dict(oracle="gfn1-xtb", initial=200, test=60, committee=4, rounds=6, starts=20,
                temperatures=(300.0, 900.0, 1500.0), md_steps=40, every=10, select=50, epochs=20, context=16,
                filters=32, pixel_size=0.25, gamma=0.3, kinds=("graphene", "hbn", "bnc-domains", "bnc-random"),
                workers=2),
}
ORACLE_SETTINGS = {"lj": {}, "gfn1-xtb": {"supercell": 2}}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--strategy", choices=("deviation", "random"), default="deviation")
    ap.add_argument("--rounds", type=int, default=None, help="override the preset's number of rounds")
    ap.add_argument("--trust-lo", type=float, default=0.0, help="eV/A (deviation strategy)")
    ap.add_argument("--trust-hi", type=float, default=float("inf"), help="eV/A (deviation strategy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (a planned interruption)")
    ap.add_argument("--out", default=None, help="default results/active_<preset>_<strategy>")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    with argument_errors(ap):
        check_int("--seed", args.seed, minimum=0)
        check_float("--trust-lo", args.trust_lo, minimum=0.0)
        if args.rounds is not None:
            check_int("--rounds", args.rounds, minimum=0)
        if args.max_steps is not None:
            check_int("--max-steps", args.max_steps, minimum=1)
        if not args.trust_hi > args.trust_lo:
            from ednn_tf.util import ArgumentError

            raise ArgumentError(f"--trust-hi must be above --trust-lo {args.trust_lo}, got {args.trust_hi}")
    args.out = args.out or os.path.join(REPO, "results", f"active_{args.preset}_{args.strategy}")
    return args


def _cells(n, seed, kinds, held_out):
    """``n`` varied hexagonal cells (``held_out``: another stream, turned by random angles and strained
    by up to 4 %: unlike the training cells)."""
    import numpy as np

    from ednn_tf.atoms.structures import varied_hexagonal_cell

    out = []
    rng = np.random.default_rng([seed, 11])
    for k in range(n):
        a = varied_hexagonal_cell(seed * 100_003 + k + (50_000 if held_out else 0), kinds=kinds,
                                  max_strain=0.04 if held_out else 0.02)
        if held_out:
            a.rotate(float(rng.uniform(0, 360)), "z", rotate_cell=True)
        a.calc = None
        out.append(a)
    return out


def _label(steps, frames_path, out_path, oracle, cfg, progress):
    from ednn_tf.apply.active import label_frames

    return steps(out_path, lambda: write_frames(out_path, label_frames(
        read_frames(frames_path), oracle, out_path + ".labels.npz", cfg["workers"], progress)))


def _train(steps, labelled_path, stem, cfg, seed, init_from, progress):
    from ednn_tf.apply.fit import labelled_energies, labelled_forces, train_committee

    card = stem + ".committee.json"

    def make():
        data = read_frames(labelled_path)
        train_committee(data, labelled_energies(data), stem + ".keras", cfg["committee"],
                        forces=labelled_forces(data, "forces"), seed=seed, init_from=init_from, epochs=cfg["epochs"],
                        context=cfg["context"], filters=cfg["filters"], pixel_size=cfg["pixel_size"],
                        gamma=cfg["gamma"], val_fraction=0.1 if len(data) >= 20 else 0.25, progress=progress)
    return steps(card, make)


def _round(r, args, cfg, steps, oracle, prev_card, prev_labelled):
    """One round: explore, pick, label, merge, retrain. Returns (card, labelled path, pool path)."""
    import numpy as np

    from ednn_tf import load_potential
    from ednn_tf.apply.active import explore, pick
    from ednn_tf.apply.uncertainty import predict_committee
    from ednn_tf.util import write_json_atomic

    d = os.path.join(args.out, f"round{r}")
    pool, picked, dev_file = (os.path.join(d, f) for f in ("pool.extxyz", "pick.extxyz", "pool_deviation.json"))
    progress = not args.no_progress

    def make_pool():
        committee = load_potential(prev_card)
        starts = read_frames(prev_labelled)
        rng = np.random.default_rng([args.seed, r, 3])
        chosen = [starts[i] for i in rng.choice(len(starts), size=min(cfg["starts"], len(starts)), replace=False)]
        write_frames(pool, explore(committee, chosen, seed=args.seed * 1000 + r, temperatures=cfg["temperatures"],
                             md_steps=cfg["md_steps"], every=cfg["every"], progress=progress))

    steps(pool, make_pool)

    def make_pick():
        frames = read_frames(pool)
        dev = [x["max_force_dev"] for x in predict_committee(load_potential(prev_card), frames)]
        idx = pick(dev, cfg["select"], args.strategy, args.seed * 1000 + r, args.trust_lo, args.trust_hi)
        write_json_atomic({"max_force_dev": dev, "picked": [int(i) for i in idx]}, dev_file)
        write_frames(picked, [frames[i] for i in idx])

    steps(picked, make_pick)
    new = _label(steps, picked, os.path.join(d, "pick_labelled.extxyz"), oracle, cfg, progress)
    merged = os.path.join(d, "labelled.extxyz")
    steps(merged, lambda: write_frames(merged, read_frames(prev_labelled) + read_frames(new)))
    card = _train(steps, merged, os.path.join(d, "committee"), cfg, args.seed, prev_card, progress)
    return card, merged, dev_file


def _record(r, card, labelled, test, dev_file, results):
    import json

    from ednn_tf import load_potential
    from ednn_tf.apply.active import committee_errors

    rec = {"round": r, "labels": len(read_frames(labelled)),
           "committee": os.path.relpath(card, os.path.dirname(labelled)),
           "held_out": committee_errors(load_potential(card), test)}
    if dev_file:
        with open(dev_file) as fh:
            dev = json.load(fh)
        rec["pool"] = {"frames": len(dev["max_force_dev"]), "picked": len(dev["picked"]),
                       "max_force_dev_mean": sum(dev["max_force_dev"]) / len(dev["max_force_dev"])}
    results["rounds"] = [x for x in results["rounds"] if x["round"] != r] + [rec]
    print(f"round {r}: {rec['labels']} labels, held-out energy {rec['held_out']['energy_mae_meV_per_atom']:.2f} "
          f"meV/atom, forces {rec['held_out']['force_mae_xy_eV_per_A']:.3f} eV/A, Spearman(dev, error) "
          f"{rec['held_out']['spearman_dev_vs_force_error']:.2f}")


def main(argv=None):
    args = parse_args(argv)
    from ednn_tf.labels.oracles import get_oracle
    from ednn_tf.util import write_json_atomic

    cfg = dict(PRESETS[args.preset])
    rounds = cfg["rounds"] if args.rounds is None else args.rounds
    oracle = get_oracle(cfg["oracle"], **ORACLE_SETTINGS[cfg["oracle"]])
    os.makedirs(args.out, exist_ok=True)
    steps, progress = Steps(args.max_steps), not args.no_progress
    init, test = (os.path.join(args.out, f) for f in ("initial.extxyz", "test.extxyz"))
    steps(init, lambda: write_frames(init, _cells(cfg["initial"], args.seed, cfg["kinds"], False)))
    steps(test, lambda: write_frames(test, _cells(cfg["test"], args.seed, cfg["kinds"], True)))
    labelled = _label(steps, init, os.path.join(args.out, "initial_labelled.extxyz"), oracle, cfg, progress)
    test_l = read_frames(_label(steps, test, os.path.join(args.out, "test_labelled.extxyz"), oracle, cfg, progress))
    card = _train(steps, labelled, os.path.join(args.out, "round0", "committee"), cfg, args.seed, None, progress)
    results = {"preset": args.preset, "strategy": args.strategy, "oracle": oracle.name, "seed": args.seed,
               "config": cfg, "rounds": []}
    _record(0, card, labelled, test_l, None, results)
    for r in range(1, rounds + 1):
        card, labelled, dev_file = _round(r, args, cfg, steps, oracle, card, labelled)
        _record(r, card, labelled, test_l, dev_file, results)
    write_json_atomic(results, os.path.join(args.out, "results.json"))
    print(f"wrote {args.out}/results.json")
    return results


if __name__ == "__main__":
    main()
