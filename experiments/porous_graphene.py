"""Section 3.2.2 / Fig. 7 of Mills et al. (2019): an EDNN learns the total energy of porous graphene
sheets sampled by 1000 K molecular dynamics.

    python experiments/porous_graphene.py                    # cpu preset (~20-30 min on 2 shared cores)
    python experiments/porous_graphene.py --preset paper     # the paper's grid/network/budget (GPU, TBs)
    python experiments/porous_graphene.py --preset tiny      # seconds, for tests
    python experiments/porous_graphene.py --n-geometries 400 --epochs 60 --out results/porous400

Steps (cached or resumable: a rerun continues where it stopped; docs/porous_graphene.md): 1. geometries
``porous_graphene(seed=k)``; 2. 1000 K Langevin MD (``labels.md.run_trajectories``), snapshots labelled
by the MD energy (eV); 3. eqn (2) images in one HDF5 file (``atoms.snapshots``); 4. split BY STARTING
GEOMETRY; 5. EDNN, paper CNN with the eV head and optional linear atom-count baseline (``atoms.heads``),
augmented by exact symmetries (``data.augment_symmetries``), MSE in eV^2; 6. test errors in meV/A^2 and
meV/atom (paper: median 1.685 meV/A^2), of the baseline alone and the thermal floor, Fig. 7, training
curve, ``results.json``, ``model.keras`` + its render settings ``model.json`` (``apply.runs``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ednn_tf.apply.runs import script_environment  # noqa: E402

REPO = script_environment(__name__ == "__main__")   # before numpy: single-threaded BLAS (stable render latency)
import numpy as np  # noqa: E402

from ednn_tf.apply.runs import porous_figures  # noqa: E402
from ednn_tf.util import argument_errors, check_batch_size  # noqa: E402

from porous_graphene_presets import (  # noqa: E402  (beside this script)
    CELL_NOTE, PAPER_CONTEXT, PAPER_FOCUS, PAPER_MEDIAN_MEV_PER_A2, PAPER_PIXELS, PRESETS)


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--out", default=None, help="output directory (default results/porous-<preset>)")
    ap.add_argument("--data-dir", default=os.path.join(REPO, "data"))
    ap.add_argument("--seed", type=int, default=0, help="MD, split and initialisation seed")
    ap.add_argument("--oracle", default="rebo", help="force/energy oracle for the MD (rebo; lj for tests)")
    ap.add_argument("--n-geometries", type=int, help="starting geometries = trajectories")
    ap.add_argument("--val-fraction", type=float, help="fraction of geometries for validation (0: none)")
    ap.add_argument("--test-fraction", type=float, help="fraction of geometries for the test set")
    ap.add_argument("--temperature", type=float, help="MD temperature [K]")
    ap.add_argument("--initial-temperature", type=float,
                    help="Maxwell-Boltzmann temperature of the initial velocities [K] (2x the target: equipartition "
                         "with the potential energy of the ideal lattice halves it)")
    ap.add_argument("--timestep", type=float, help="MD time step [fs]")
    ap.add_argument("--friction", type=float, help="Langevin friction [1/fs]")
    ap.add_argument("--equilibration", type=int, help="MD steps before the first snapshot")
    ap.add_argument("--steps", type=int, help="MD steps per trajectory, equilibration included")
    ap.add_argument("--every", type=int, help="MD steps between snapshots")
    ap.add_argument("--pixels-per-cell", type=int, help="image pixels per cell side (paper 384)")
    ap.add_argument("--focus", type=int, help="focus [px] (default: 64 * pixels_per_cell / 384)")
    ap.add_argument("--context", type=int, help="context [px] (default: 32 * pixels_per_cell / 384)")
    ap.add_argument("--width", type=float, help="CNN filter multiplier (1.0 = paper)")
    ap.add_argument("--dense", type=int, help="width of the CNN's hidden dense layer (paper 1024)")
    ap.add_argument("--baseline", choices=("linear", "none"), help="fixed linear atom-count term (see docstring)")
    ap.add_argument("--init", choices=("he", "glorot"), help="CNN kernel initialisation (see he_initialise)")
    ap.add_argument("--augment", type=int, choices=(0, 1),
                    help="random periodic shifts and mirror flips of the training images (exact symmetries)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-decay", type=int, choices=(0, 1), help="cosine-decay the step 100x over training")
    ap.add_argument("--warmup-epochs", type=int, help="linear warm-up of the step from lr/100 over these epochs")
    ap.add_argument("--workers", type=int, default=2, help="MD worker processes")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def parse_args(argv=None):
    """``(args, cfg)``: the preset of ``--preset`` with the options given, checked before any work: a
    bad value ends the script with one line naming it and the allowed range, exit status 2."""
    ap = _parser()
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for k in cfg:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    cfg["augment"], cfg["lr_decay"] = bool(cfg["augment"]), bool(cfg["lr_decay"])
    cfg.update(seed=args.seed, preset=args.preset, oracle=args.oracle)
    args.out = args.out or os.path.join(REPO, "results", f"porous-{args.preset}")
    with argument_errors(ap):
        _check(cfg, args)
    return args, cfg


def _opt(key):
    return "--" + key.replace("_", "-")


def split_sizes(cfg):
    """``(train, val, test)`` geometries of ``data.split_indices``'s split by geometry (rounded as there)."""
    n, vf, tf_ = cfg["n_geometries"], cfg["val_fraction"], cfg["test_fraction"]
    c1, c2 = np.round(np.cumsum(np.asarray((1 - vf - tf_, vf, tf_), float))[:-1] * n).astype(int)
    return int(c1), int(c2 - c1), int(n - c2)


def _check(cfg, args):
    """ArgumentError naming the first bad value (option and allowed range); all before any work. Sets
    ``cfg["focus"]`` / ``cfg["context"]`` from ``--pixels-per-cell`` when not given."""
    from ednn_tf.labels import md, oracles
    from ednn_tf.util import ArgumentError, check_batch_size, check_float, check_int

    ppc = check_int("--pixels-per-cell", cfg["pixels_per_cell"], minimum=1)
    for key, paper in (("focus", PAPER_FOCUS), ("context", PAPER_CONTEXT)):
        if cfg[key] is None:
            scaled = paper * ppc / PAPER_PIXELS
            if scaled != int(scaled):
                raise ArgumentError(f"--pixels-per-cell must be a multiple of 12 (the paper's {key} of {paper} px at "
                                    f"{PAPER_PIXELS} px scales to {scaled:g} px), or give --{key}; got "
                                    f"--pixels-per-cell={ppc}")
            cfg[key] = int(scaled)
    f = check_int("--focus", cfg["focus"], minimum=1)
    check_int("--context", cfg["context"], minimum=0)
    if ppc % f:
        raise ArgumentError(f"--focus must divide --pixels-per-cell {ppc}, got --focus={f}")
    for key in ("n_geometries", "epochs", "steps", "every", "dense"):
        check_int(_opt(key), cfg[key], minimum=1)
    check_int("--seed", cfg["seed"], minimum=0)
    check_int("--workers", args.workers, minimum=1)
    check_int("--equilibration", cfg["equilibration"], minimum=0)
    if not 0 <= check_int("--warmup-epochs", cfg["warmup_epochs"]) <= cfg["epochs"]:
        raise ArgumentError(f"--warmup-epochs must be in 0..{cfg['epochs']} (--epochs), got "
                            f"--warmup-epochs={cfg['warmup_epochs']}")
    if cfg["equilibration"] + cfg["every"] > cfg["steps"]:
        raise ArgumentError(f"--steps must be >= --equilibration + --every = {cfg['equilibration'] + cfg['every']} "
                            f"(no snapshots otherwise), got --steps={cfg['steps']}")
    for key in ("temperature", "initial_temperature", "timestep", "friction", "width", "lr"):
        check_float(_opt(key), cfg[key], minimum=0, strict=True)
    vf = check_float("--val-fraction", cfg["val_fraction"], minimum=0, maximum=1)
    tf_ = check_float("--test-fraction", cfg["test_fraction"], minimum=0, maximum=1, strict=True)
    n_train, _, n_test = split_sizes(cfg)
    if vf + tf_ >= 1 or n_train < 1 or n_test < 1:
        raise ArgumentError(f"--n-geometries {cfg['n_geometries']} with --val-fraction {vf:g} and --test-fraction "
                            f"{tf_:g} leaves {n_train} training and {n_test} test geometries: each needs >= 1")
    per_geometry = len(md.snapshot_steps(cfg["steps"], cfg["every"], cfg["equilibration"]))
    check_batch_size("--batch-size", cfg["batch_size"], n_train * per_geometry,
                     f"{n_train} training geometries x {per_geometry} snapshots")
    try:
        oracles.get_oracle(cfg["oracle"])
    except ValueError as exc:
        raise ArgumentError(f"--oracle: {exc}") from None
    backup = os.path.join(args.out, "train", "backup")
    if os.path.isdir(backup) and not os.path.exists(os.path.join(args.out, "model.keras")):
        from ednn_tf import training   # imports Keras: only when there is a backup
        training.check_backup(backup, cfg["epochs"])


# ------------------------------------------------------------------------------------------------ data
def md_settings(cfg):
    """Keyword arguments of ``ednn_tf.labels.md.run_trajectories`` for this configuration."""
    return dict(temperature_K=float(cfg["temperature"]), timestep_fs=float(cfg["timestep"]), n_steps=int(cfg["steps"]),
                every=int(cfg["every"]), equilibration_steps=int(cfg["equilibration"]),
                friction=float(cfg["friction"]), initial_temperature_K=float(cfg["initial_temperature"]))


def md_directory(data_dir, oracle, cfg):
    """Trajectory folder. Trajectory k depends only on geometry k, the MD settings, the oracle and the
    seed, so runs with more geometries reuse the files of runs with fewer."""
    key = json.dumps({"md": md_settings(cfg), "oracle": oracle.name, "settings": oracle.settings}, sort_keys=True)
    h = hashlib.sha1(key.encode()).hexdigest()[:8]
    return os.path.join(data_dir, f"porous_md_{oracle.name.replace('/', '-')}_T{cfg['temperature']:g}_{h}_seed{cfg['seed']}")


def run_md_and_render(args, cfg, oracle, geometries, path, mdir, progress):
    """Steps 2-3: the MD trajectories (resumable, parallel), rendered into the data file ``path``."""
    from ednn_tf.atoms import render, snapshots
    from ednn_tf.labels import md

    N, ppc, seed = cfg["n_geometries"], cfg["pixels_per_cell"], cfg["seed"]
    print(f"MD: {N} trajectories x {cfg['steps']} steps at {cfg['temperature']:g} K ({oracle.name}) -> {mdir}")
    t0 = time.time()
    traj_paths = md.run_trajectories(geometries, oracle, mdir, seed=seed, n_workers=args.workers,
                                     progress=progress, **md_settings(cfg))
    t_md = time.time() - t0
    md_cpu = sum(md.read_trajectory(p)["meta"]["seconds"] for p in traj_paths)
    print(f"  {t_md:.0f} s wall ({md_cpu:.0f} s summed over trajectories)")
    lengths = geometries[0].cell.lengths()[:2]
    gamma = render.DEFAULT_GAMMA
    attrs = {**oracle.attrs(), "unit": "eV", "generator": "ednn_tf.atoms.structures.porous_graphene(seed=k) + "
             "ednn_tf.labels.md.run_trajectories (Langevin)", "n_geometries": N, "seed": seed, "md": md_settings(cfg),
             "md_seconds_summed": md_cpu, "md_wall_seconds_this_run": t_md, "grid": [ppc, ppc], "gamma_A": gamma,
             "cutoff_gamma": render.DEFAULT_CUTOFF, "pixel_size_A": (lengths / ppc).tolist(), "cell_A": lengths.tolist(),
             "image": "eqn (2): sum_i Z_i exp(-r^2 / 2 gamma^2), row = x", "cell": CELL_NOTE}
    n_snapshots = sum(len(md.read_trajectory(p)["steps"]) for p in traj_paths)
    t0 = time.time()
    snapshots.write_snapshot_dataset(path, (md.read_trajectory(p) for p in traj_paths), n_snapshots, geometries,
                                     ppc, gamma, attrs, progress)
    print(f"  rendered -> {path} in {time.time() - t0:.0f} s")


def train(args, cfg, path, split, base, progress):
    """Step 5: train (resumably) or reuse ``--out/model.keras``; returns ``(model, info)``."""
    from ednn_tf import data, training
    from ednn_tf.atoms import heads

    train_idx, val_idx = split[0], split[1]
    seed = cfg["seed"]

    def dataset():
        ds = data.h5_dataset(path, batch_size=cfg["batch_size"], indices=train_idx, shuffle=True, seed=seed,
                             augment=data.augment_symmetries if cfg["augment"] else None)   # keyed (seed, epoch, batch)
        val = data.h5_dataset(path, batch_size=64, indices=val_idx) if len(val_idx) else None
        return ds, None, {"validation_data": val}

    per_epoch = -(-len(train_idx) // cfg["batch_size"])
    lr = training.cosine_schedule(cfg["lr"], cfg["epochs"] * per_epoch, decay=cfg["lr_decay"], alpha=0.01,
                                  warmup_steps=cfg["warmup_epochs"] * per_epoch)
    f, c = cfg["focus"], cfg["context"]

    def build():   # He-normal kernels with --init he: with Glorot ones training stays on the constant plateau
        return heads.ev_ednn(f, c, base["scale_eV"], base["beta_eV"], (cfg["pixels_per_cell"] // f) ** 2,
                             base["alpha_eV_per_intensity"], width=cfg["width"], dense=cfg["dense"], seed=seed,
                             he=(int(seed) * 1000, "normal") if cfg["init"] == "he" else None, name="porous_subnet")

    return training.train_or_reuse(os.path.join(args.out, "model.keras"), build,
                                   dataset, epochs=cfg["epochs"], workdir=os.path.join(args.out, "train"), lr=lr,
                                   progress=progress, desc="EDNN")


def describe_dataset(path, mdir, cfg, results):
    """Step 4: read the labels, split BY STARTING GEOMETRY, summarise the data set into ``results``."""
    from ednn_tf import data

    attrs = data.read_attrs(path)
    meta = data.read_arrays(path, ["Y", "trajectory", "n_atoms", "cell", "temperature", "step"])
    E, traj, n_atoms = meta["Y"][:, 0], meta["trajectory"], meta["n_atoms"].astype(np.float64)
    meta["areas"] = np.abs(meta["cell"][:, 0, 0] * meta["cell"][:, 1, 1] - meta["cell"][:, 0, 1] * meta["cell"][:, 1, 0])
    fr = (1 - cfg["val_fraction"] - cfg["test_fraction"], cfg["val_fraction"], cfg["test_fraction"])
    split = data.split_indices(len(E), fr, seed=cfg["seed"], groups=traj)
    sets = {name: np.unique(traj[idx]) for name, idx in zip(("train", "val", "test"), split)}
    assert not (set(sets["train"]) & set(sets["test"]) or set(sets["train"]) & set(sets["val"])
                or set(sets["val"]) & set(sets["test"])), "a trajectory straddles the split"
    # within-trajectory spread: what thermal motion alone does to the energy
    mean_by_traj = {t: E[traj == t].mean() for t in np.unique(traj)}
    meta["thermal_dev"] = E - np.array([mean_by_traj[t] for t in traj])
    results["dataset"] = {
        "path": path, "md_directory": mdir, "snapshots": len(E), "snapshots_per_trajectory": len(E) / len(mean_by_traj),
        "geometries": {k: len(v) for k, v in sets.items()},
        "snapshots_split": {k: len(idx) for k, idx in zip(("train", "val", "test"), split)},
        "test_geometries": sets["test"].tolist(),
        "atoms": {"min": int(n_atoms.min()), "max": int(n_atoms.max()), "mean": float(n_atoms.mean())},
        "energy_eV": {"min": float(E.min()), "max": float(E.max()), "std": float(E.std())},
        "energy_per_atom_eV": {"min": float((E / n_atoms).min()), "max": float((E / n_atoms).max())},
        "kinetic_temperature_K": {"mean": float(meta["temperature"].mean()), "std": float(meta["temperature"].std())},
        "thermal_std_within_trajectory_eV": float(meta["thermal_dev"].std()),
        "md_seconds_summed": attrs.get("md_seconds_summed"), "pixel_size_A": attrs.get("pixel_size_A"),
    }
    print(f"data: {len(E)} snapshots of {cfg['n_geometries']} geometries ({len(sets['train'])}/{len(sets['val'])}/"
          f"{len(sets['test'])} train/val/test geometries), {int(n_atoms.min())}-{int(n_atoms.max())} atoms, "
          f"mean kinetic T {meta['temperature'].mean():.0f} K")
    return attrs, meta, split


def evaluate(model, path, meta, test_idx, base, results):
    """Step 6: test errors of the model, of the baseline alone and of the thermal floor."""
    from ednn_tf.atoms.snapshots import image_sums, predict_totals
    from ednn_tf.metrics import energy_errors, no_better_than

    t0 = time.perf_counter()
    pred = predict_totals(model, path, test_idx)
    results["test_inference_seconds"] = time.perf_counter() - t0
    y, a_t, n_t = meta["Y"][test_idx, 0], meta["areas"][test_idx], meta["n_atoms"][test_idx].astype(np.float64)
    res = results["test"] = energy_errors(y, pred, n_t, a_t)
    base_pred = base["alpha_eV_per_intensity"] * image_sums(path, test_idx) + base["beta_eV"]
    results["test_baseline_only"] = energy_errors(y, base_pred, n_t, a_t)
    results["test_thermal_floor"] = {
        "note": "error of predicting each test snapshot by its own trajectory's mean energy (knows the geometry "
                "exactly, ignores the thermal displacements)",
        **energy_errors(y, y - meta["thermal_dev"][test_idx], n_t, a_t)}
    # per-geometry mean error: what is left after averaging out thermal noise
    tt = meta["trajectory"][test_idx]
    geo_err = np.array([np.mean((pred - y)[tt == t]) for t in np.unique(tt)])
    results["test_geometry_mean_abs_error_meV_per_A2"] = float(np.mean(np.abs(geo_err) * 1e3 / a_t[0]))
    m = res["meV_per_A2"]
    print(f"test ({len(test_idx)} snapshots of {len(np.unique(tt))} unseen geometries): median |err| "
          f"{m['median_abs_error']:.3f} meV/A^2 (paper {PAPER_MEDIAN_MEV_PER_A2}), mean {m['mean_abs_error']:.3f} meV/A^2; "
          f"median {res['meV_per_atom']['median_abs_error']:.3f} / mean {res['meV_per_atom']['mean_abs_error']:.3f} meV/atom")
    print(f"  baseline alone: median {results['test_baseline_only']['meV_per_A2']['median_abs_error']:.3f} meV/A^2; "
          f"thermal floor: median {results['test_thermal_floor']['meV_per_A2']['median_abs_error']:.3f} meV/A^2")
    warning = no_better_than(m["median_abs_error"], results["test_baseline_only"]["meV_per_A2"]["median_abs_error"],
                             "the atom-count baseline alone")
    if warning:
        results.setdefault("warnings", []).append(warning)
        print(f"WARNING: {warning}", file=sys.stderr)
    return pred


# ------------------------------------------------------------------------------------------------
def main(argv=None):
    args, cfg = parse_args(argv)
    from ednn_tf.apply import runs
    from ednn_tf.atoms import heads, render, structures
    from ednn_tf.atoms.snapshots import image_sums
    from ednn_tf.labels import oracles
    from ednn_tf.util import write_json_atomic

    progress = not args.no_progress
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    ppc, N = cfg["pixels_per_cell"], cfg["n_geometries"]
    oracle = oracles.get_oracle(cfg["oracle"])
    results = {"config": dict(cfg), "oracle": oracle.attrs(), "paper_median_meV_per_A2": PAPER_MEDIAN_MEV_PER_A2,
               "command": " ".join([os.path.basename(sys.argv[0]) or "porous_graphene.py"] + list(argv or sys.argv[1:]))}

    def save_results():
        results["wall_seconds"] = time.time() - t_start
        write_json_atomic(results, os.path.join(args.out, "results.json"))

    # 1-3. geometries, MD, data (cached)
    mdir = md_directory(args.data_dir, oracle, cfg)
    path = os.path.join(args.data_dir, f"{os.path.basename(mdir).replace('porous_md_', 'porous_')}_g{N}_px{ppc}.h5")
    if not os.path.exists(path):
        geometries = [structures.porous_graphene(seed=k) for k in range(N)]
        run_md_and_render(args, cfg, oracle, geometries, path, mdir, progress)
    # 4. split by starting geometry
    attrs, meta, (train_idx, val_idx, test_idx) = describe_dataset(path, mdir, cfg, results)
    with argument_errors(_parser()):   # the data file's own count (e.g. one written by another version)
        check_batch_size("--batch-size", cfg["batch_size"], len(train_idx), "the training snapshots of the split")
    save_results()
    # 5. model + training (resumable)
    base = results["baseline"] = heads.fit_baseline(image_sums(path, train_idx), meta["Y"][train_idx, 0],
                                                    cfg["baseline"])
    model, info = train(args, cfg, path, (train_idx, val_idx), base, progress)
    if not info["reused"]:
        results["train_seconds"] = info["seconds"]
    sidecar = {"pixels_per_cell": ppc, "shape": [ppc, ppc], "gamma": render.DEFAULT_GAMMA,
               "cutoff": render.DEFAULT_CUTOFF, "focus": cfg["focus"], "context": cfg["context"], "cell": CELL_NOTE,
               "oracle": oracle.name, "energy_unit": "eV", "baseline": base, "preset": cfg["preset"],
               "pixel_size_A": attrs.get("pixel_size_A")}
    runs.write_render_settings(os.path.join(args.out, "model.keras"), sidecar)
    results["params"] = int(model.count_params())
    # 6. test, plots
    pred = evaluate(model, path, meta, test_idx, base, results)
    porous_figures(args.out, path, meta, test_idx, pred, cfg, oracle.name, results["test"]["meV_per_A2"]["median_abs_error"])
    save_results()
    print(f"wrote {args.out}/results.json, model.keras, model.json and plots in {time.time() - t_start:.0f} s")
    return results


if __name__ == "__main__":
    main()
