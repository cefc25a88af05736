"""Section 3.1 of Mills et al. (2019): an EDNN learns the 8x8 Ising energy and transfers to 128x128.

    python experiments/ising.py                       # quick preset, a few minutes on 2 cores
    python experiments/ising.py --preset paper        # the paper's budget (hours on 2 cores)
    python experiments/ising.py --epochs 50 --out results/ising50

Steps: generate (or reuse, cached under data/) 8x8 configurations across temperatures with their
exact energies; train f=1 EDNNs with c = 1, 2, 3 (the paper's dense net, same number of
iterations each); evaluate on a held-out split; apply the c=1 model unchanged to 128x128
configurations sampled near Tc. Writes ``results.json``, the models and PNG plots to ``--out``.
Interrupt at any time: rerunning the same command resumes (finished models are reused, an
unfinished training resumes from its last epoch).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from ednn_tf.util import ArgumentError, argument_errors, check_float, check_int  # noqa: E402

PRESETS = {
    # Table 1 of the paper: 100,000 examples, batch 2000, Adam 1e-4, MSE, 500 epochs.
    "paper": dict(n_train=100_000, n_test=10_000, epochs=500, batch_size=2000, lr=1e-4, lr_decay=False,
                  big_L=128, n_big=400, contexts=(1, 2, 3)),
    # The paper's data (100,000 examples) on a CPU budget: smaller batches, a larger step that is
    # cosine-decayed 100x, 40 epochs (40,000 Adam steps, ~15 min per c=1 model on 2 cores).
    "long": dict(n_train=100_000, n_test=10_000, epochs=40, batch_size=100, lr=1e-3, lr_decay=True,
                 big_L=128, n_big=400, contexts=(1, 2, 3)),
    # A few minutes on 2 CPU cores: fewer samples and epochs, smaller batches and a larger step
    # so each model still takes thousands of optimizer steps.
    "quick": dict(n_train=20_000, n_test=4_000, epochs=12, batch_size=100, lr=1e-3, lr_decay=True,
                  big_L=128, n_big=64, contexts=(1, 2, 3)),
    # Seconds; for tests of the script itself.
    "tiny": dict(n_train=600, n_test=200, epochs=2, batch_size=100, lr=1e-3, lr_decay=False,
                 big_L=16, n_big=8, contexts=(1, 2)),
}
PAPER_C_SCAN = {1: 0.028, 2: 1.090, 3: 14.816}   # median abs error [J / L^2 ...] reported in Sec. 3.1


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--out", default=None, help="output directory (default results/ising-<preset>)")
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--L", type=int, default=8, help="training lattice size")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--n-test", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-decay", type=int, choices=(0, 1), help="cosine-decay the step 100x over training (1) or not (0)")
    ap.add_argument("--big-L", type=int, help="transfer lattice size (default 128)")
    ap.add_argument("--n-big", type=int, help="number of transfer configurations")
    ap.add_argument("--contexts", type=int, nargs="+", help="context widths to scan (f=1)")
    ap.add_argument("--distributed", action="store_true", help="data-parallel training with Horovod (horovodrun)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def parse_args(argv=None):
    """``(args, cfg)``: the preset of ``--preset`` with the options given, checked before any work: a
    bad value ends the script with one line naming it and the allowed range, exit status 2."""
    ap = _parser()
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for k in cfg:
        v = getattr(args, k)
        if v is not None:
            cfg[k] = tuple(v) if isinstance(v, list) else v
    cfg.update(L=args.L, seed=args.seed, preset=args.preset)
    args.out = args.out or os.path.join("results", f"ising-{args.preset}")
    with argument_errors(ap):
        _check(cfg, args.out)
    return args, cfg


def _check(cfg, out):
    """ArgumentError naming the first bad value of ``cfg``, or a training backup in ``out`` past ``--epochs``."""
    from ednn_tf import training

    for k in ("n_train", "n_test", "epochs", "n_big", "big_L", "L"):
        check_int(f"--{k.replace('_', '-')}", cfg[k], minimum=1)
    check_float("--lr", cfg["lr"], minimum=0, strict=True)
    _check_batch(cfg["batch_size"], cfg["n_train"], "--n-train")
    for c in cfg["contexts"]:
        check_int("--contexts", c, minimum=0)
    for c in cfg["contexts"]:   # a rerun with fewer --epochs than an interrupted one
        if not os.path.exists(os.path.join(out, f"model_c{c}.keras")):
            training.check_backup(training.backup_dir(os.path.join(out, f"train_c{c}")), cfg["epochs"])


def _check_batch(batch_size, n, what):
    """Refuse a batch larger than the training set (batches are whole: it would give no training step)."""
    if not 1 <= batch_size <= n:
        raise ArgumentError(f"--batch-size must be in 1..{n} ({what}: batches are whole, a larger one gives no "
                            f"training step), got --batch-size={batch_size}")


def _train_or_reuse(cfg, args, c, path, train_idx, progress):
    """Train the c-context model (resumably, optionally with Horovod) or reuse its saved file."""
    import keras

    from ednn_tf import EDNN, data, networks, training

    seed = cfg["seed"]
    dist = None
    if args.distributed:
        from ednn_tf import distributed as dist

    def build():
        keras.utils.set_random_seed(seed + c)
        model = EDNN(networks.ising_dense(1 + 2 * c, seed=seed + 10 * c), focus=1, context=c)
        # global batch split over ranks: lr unchanged
        return dist.make_distributed(model) if dist else model

    def dataset():
        # each rank streams its own 1/size of the training rows in batches of 1/size of the global batch
        batch = cfg["batch_size"] // (dist.size() if dist else 1)
        rank_idx = train_idx[dist.rank()::dist.size()] if dist else train_idx
        ds = data.h5_dataset(path, batch_size=batch, indices=rank_idx, shuffle=True, seed=seed, drop_remainder=True)
        return ds, None, {}

    steps = cfg["epochs"] * (len(train_idx) // cfg["batch_size"])
    lr = training.cosine_schedule(cfg["lr"], steps, decay=cfg["lr_decay"], alpha=0.01)
    return training.train_or_reuse(os.path.join(args.out, f"model_c{c}.keras"), build, dataset, epochs=cfg["epochs"],
                                   workdir=os.path.join(args.out, f"train_c{c}"), lr=lr, progress=progress,
                                   desc=f"c={c}", callbacks=[dist.BroadcastInitialState()] if dist else [],
                                   rank=dist.rank() if dist else 0)


def _load_data(args, cfg, root, progress):
    """The cached 8x8 data set split by Markov chain, its test rows and the near-Tc transfer set."""
    from ednn_tf import data, ising

    if args.distributed:
        from ednn_tf import distributed
    L, seed = cfg["L"], cfg["seed"]
    n_total = cfg["n_train"] + cfg["n_test"]
    path = os.path.join(args.data_dir, f"ising_L{L}_n{n_total}_seed{seed}.h5")
    if not os.path.exists(path):
        if root:
            print(f"generating {n_total} {L}x{L} configurations -> {path}")
            t0 = time.time()
            ising.generate_dataset(path, L=L, n_samples=n_total, seed=seed, progress=progress)
            print(f"  {time.time() - t0:.1f} s")
        if args.distributed:
            distributed.barrier()
    # split by Markov chain: snapshots of one replica are correlated and never straddle the split
    chains = data.read_arrays(path, ["replica"])["replica"]
    train_idx, test_idx = data.split_indices(len(chains), (cfg["n_train"] / n_total, cfg["n_test"] / n_total),
                                             seed=seed, groups=chains)
    test = data.read_arrays(path, ["X", "Y", "temperatures"], indices=test_idx)

    big_L = cfg["big_L"]
    big_path = os.path.join(args.data_dir, f"ising_L{big_L}_nearTc_n{cfg['n_big']}_seed{seed}.h5")
    if not os.path.exists(big_path) and root:
        print(f"sampling {cfg['n_big']} {big_L}x{big_L} configurations near Tc -> {big_path}")
        t0 = time.time()
        temps = np.linspace(ising.TC - 0.1, ising.TC + 0.1, cfg["n_big"])
        spins, temps = ising.sample_configurations(big_L, temps, n_per_temperature=1, seed=seed + 1, progress=progress)
        data.write_dataset(big_path, spins[..., None].astype(np.int8), ising.ising_energy(spins),
                           attrs=dict(L=big_L, J=1.0, seed=seed + 1, unit="J", note="sampled near Tc"),
                           temperatures=temps)
        print(f"  {time.time() - t0:.1f} s")
    if args.distributed:
        distributed.barrier()
    big = data.read_arrays(big_path, ["X", "Y", "temperatures"])
    return path, train_idx, test, big


def main(argv=None):
    args, cfg = parse_args(argv)
    from ednn_tf import plots
    from ednn_tf.metrics import extensive_errors
    from ednn_tf.util import write_json_atomic

    root = True
    if args.distributed:
        from ednn_tf import distributed
        distributed.init()
        root = distributed.is_root()
    progress = root and not args.no_progress
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    L = cfg["L"]

    path, train_idx, test, big = _load_data(args, cfg, root, progress)
    with argument_errors(_parser()):   # the split by Markov chain may hold fewer rows than --n-train
        _check_batch(cfg["batch_size"], len(train_idx), "the training rows of the split by Markov chain")
    x_test = test["X"].astype(np.float32)
    y_test = test["Y"][:, 0]
    big_L = cfg["big_L"]

    # ---------------------------------------------------------------- train the c-scan
    results = {"config": {**cfg, "contexts": list(cfg["contexts"])}, "dataset": path, "c_scan": {}}
    histories = {}
    models, preds = {}, {}
    for c in cfg["contexts"]:
        model, info = _train_or_reuse(cfg, args, c, path, train_idx, progress)
        if not info["reused"]:
            results.setdefault("train_seconds", {})[c] = info["seconds"]
            if "loss" in info["history"]:
                histories[f"c={c}"] = info["history"]["loss"]
        models[c] = model
        # 4096 lattices per step; EDNN.predict_total cuts each sub-network call to a bounded number of tiles
        pred = preds[c] = model.predict_total(x_test, batch_size=4096)
        stats = extensive_errors(y_test, pred, n_sites=L * L, level=4.0)
        stats["params"] = int(model.subnet.count_params())
        results["c_scan"][c] = stats
        print(f"c={c}: median |dE| = {stats['median_abs_error']:.4f} J, mean {stats['mean_abs_error']:.4f} J, "
              f"right level {100 * stats['fraction_right_level']:.2f} %")
        if root:
            write_json_atomic(results, os.path.join(args.out, "results.json"))

    # ---------------------------------------------------------------- best model: plots, transfer
    c_best = min(cfg["contexts"])
    model, pred = models[c_best], preds[c_best]
    results["test"] = results["c_scan"][c_best]
    pred_big = model.predict_total(big["X"].astype(np.float32), batch_size=8)
    results["transfer"] = {"L": big_L, "model_context": c_best,
                           **extensive_errors(big["Y"][:, 0], pred_big, n_sites=big_L ** 2, level=4.0)}
    print(f"transfer {L}x{L} -> {big_L}x{big_L}: median relative error {results['transfer']['median_rel_error']:.2e}, "
          f"median |dE| {results['transfer']['median_abs_error']:.3f} J")
    results["wall_seconds"] = time.time() - t_start
    if not root:
        return results
    plots.parity_and_error(y_test / L ** 2, pred / L ** 2, os.path.join(args.out, "fig3_parity_error.png"),
                           quantity="E / L^2", unit="J", color=test["temperatures"], label="T [J/k_B]",
                           title=f"EDNN f=1 c={c_best} on {L}x{L} Ising (test set)")
    plots.parity_and_error(big["Y"][:, 0] / big_L ** 2, pred_big / big_L ** 2,
                           os.path.join(args.out, "fig8_transfer.png"), quantity="E / L^2", unit="J",
                           color=big["temperatures"], label="T [J/k_B]",
                           title=f"trained on {L}x{L}, evaluated unchanged on {big_L}x{big_L} near Tc")
    cs = sorted(results["c_scan"])
    plots.context_scan(cs, [results["c_scan"][c]["median_abs_error"] for c in cs],
                       os.path.join(args.out, "c_scan.png"), paper={c: PAPER_C_SCAN[c] for c in cs if c in PAPER_C_SCAN})
    if histories:
        plots.training_curves(histories, os.path.join(args.out, "training_loss.png"))
    write_json_atomic(results, os.path.join(args.out, "results.json"))
    print(f"wrote {args.out}/results.json and plots in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
