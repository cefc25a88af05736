"""Section 3.4 / Fig. 13 of Mills et al. (2019): Metropolis Monte Carlo of pristine graphene with an
EDNN as the energy, compared with Langevin molecular dynamics driven by the reference code.

    python experiments/graphene_mc.py --preset tiny       # seconds: smoke test (tiny demo model)
    python experiments/graphene_mc.py                     # quick preset, < ~10 min on 2 shared cores
    python experiments/graphene_mc.py --model results/hexagonal-cpu/ednn.keras --oracle gfn1-xtb
    python experiments/graphene_mc.py --preset paper --model my_ednn.keras --shape 256 256

Steps (each cached in --out; rerunning the same command reuses what is done):

1. reference MD: the 60-atom pristine graphene cell (12.50 x 12.99 A, ``hexagonal_cell``) under
   Langevin dynamics (ASE, 1 fs, 1000 K, friction 0.02/fs) with the oracle's forces; frames after
   the equilibration are kept.
2. the EDNN: ``--model path.keras`` (its render settings from ``--shape/--gamma/--cutoff``, or a JSON
   sidecar ``path.json`` with {"shape": [nx, ny], "gamma": .., "cutoff": .., "oracle": ..}, or the
   ``results.json`` that ``experiments/hexagonal.py`` writes next to its ``ednn.keras``). Without
   ``--model`` a small EDNN is trained here on oracle-labelled rattled graphene cells (demo), and
   saved with its sidecar.
3. Metropolis MC at 1000 K with single-atom in-plane moves (the 2D image is blind to z) and
   ``ednn_tf.apply.mc.AtomicLocalEnergy`` (re-renders the moved atom's stamps and re-evaluates the
   affected tiles only); the step is tuned to ~40 % acceptance during equilibration, then fixed.
4. g(r) of both (in-plane distances, 2D normalisation, periodic), the first three peak positions
   and their differences, timings per energy evaluation (EDNN full / local vs the oracle; paper:
   0.39 s vs 9.9 s for VASP), ``results.json`` and ``gr.png``.

The MD and the EDNN labels must come from the same oracle (the paper: VASP/PBE for both). If the
requested oracle is not installed another one is used and ``results.json`` says so.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":
    # single-threaded BLAS/OpenMP: stable per-call latency on a shared 2-core machine (render, tblite)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_SECONDS = {"ednn_per_energy": 0.39, "dft_per_energy": 9.9}

PRESETS = {
    # seconds: a 1-epoch toy model on a coarse grid, a few MD steps and MC sweeps
    "tiny": dict(n_train=24, n_val=8, grid=32, gamma=0.5, focus=8, context=4, width=0.125, dense=16, epochs=1,
                 batch_size=8, lr=1e-3, rattle=(0.01, 0.10), oracle="rebo",
                 md_steps=60, md_equil=20, md_every=5, mc_tune=1, mc_sweeps=2, mc_every=1,
                 r_max=6.0, n_bins=120, timing_repeats=2),
    # minutes: 0.2 A pixels, 3.2 A focus + 1.6 A context (the paper's physical tile sizes), a
    # quarter-width paper CNN trained on REBO energies of 2000 rattled cells (in-plane sigma 0.01-0.10 A;
    # 1000 K MD gives ~0.054 A). gamma = 0.5 A instead of the paper's 0.2 A: at 0.2 A/px a 0.2 A
    # Gaussian leaves bond lengths to sub-pixel peak positions and the small CPU network reached only
    # ~4-5 eV RMSE per cell; with overlapping 0.5 A Gaussians it reaches ~2.7 eV (measured, 15 epochs)
    "quick": dict(n_train=2000, n_val=200, grid=64, gamma=0.5, focus=16, context=8, width=0.25, dense=64, epochs=20,
                  batch_size=16, lr=1e-3, rattle=(0.01, 0.10), oracle="rebo",
                  md_steps=3500, md_equil=500, md_every=10, mc_tune=30, mc_sweeps=300, mc_every=2,
                  r_max=6.0, n_bins=240, timing_repeats=10),
    # the paper's image (256 x 256, gamma 0.2 A) and network (f = 64, c = 32, full-width CNN), 5 ps of
    # GFN1-xTB MD; meant for --model with a model trained by experiments/hexagonal.py (or a GPU)
    "paper": dict(n_train=5000, n_val=500, grid=256, gamma=0.2, focus=64, context=32, width=1.0, dense=1024,
                  epochs=200, batch_size=32, lr=1e-4, rattle=(0.01, 0.10), oracle="gfn1-xtb",
                  md_steps=6000, md_equil=1000, md_every=10, mc_tune=100, mc_sweeps=3000, mc_every=5,
                  r_max=6.0, n_bins=240, timing_repeats=10),
}
TEMPERATURE_K = 1000.0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", help="trained EDNN (.keras); default: train a small demo EDNN here")
    ap.add_argument("--out", help="output directory (default results/graphene-mc-<preset>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle", help="reference code for the MD (and demo labels): rebo, gfn1-xtb, ...")
    ap.add_argument("--shape", type=int, nargs=2, metavar=("NX", "NY"), help="image grid of --model")
    ap.add_argument("--gamma", type=float, help="Gaussian width (A) of --model's images")
    ap.add_argument("--cutoff", type=float, help="Gaussian truncation (gammas) of --model's images")
    ap.add_argument("--temperature", type=float, default=TEMPERATURE_K, help="K (paper: 1000)")
    for key in ("md_steps", "mc_sweeps", "epochs", "n_train"):
        ap.add_argument("--" + key.replace("_", "-"), type=int, help="override the preset")
    ap.add_argument("--workers", type=int, default=1, help="labelling processes (demo training)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for key in ("md_steps", "mc_sweeps", "epochs", "n_train"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.temperature <= 0:
        raise SystemExit(f"--temperature must be > 0 K, got {args.temperature}")
    if cfg["md_steps"] <= cfg["md_equil"] or cfg["mc_sweeps"] < cfg["mc_every"]:
        raise SystemExit(f"need md_steps > md_equil ({cfg['md_equil']}) and mc_sweeps >= {cfg['mc_every']}")
    args.out = args.out or os.path.join(REPO, "results", f"graphene-mc-{args.preset}")
    return args, cfg


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


# ------------------------------------------------------------------------------------------------
def pick_oracle(requested, notes):
    """The oracle ``requested`` if its code is installed, else the first available fallback."""
    from ednn_tf.labels import oracles

    avail = oracles.available_oracles()
    for name in [requested, "rebo", "tersoff-bnc", "gfn1-xtb", "lj"]:
        if avail.get(name):
            if name != requested:
                notes.append(f"oracle {requested!r} is not installed; using {name!r} instead")
                print("NOTE:", notes[-1])
            return oracles.get_oracle(name)
    raise SystemExit(f"no oracle available ({avail})")


def render_settings(args, cfg):
    """Render settings of --model: command line > sidecar JSON > hexagonal.py's results.json."""
    from ednn_tf.atoms import render

    found, source = {}, None
    stem = os.path.splitext(args.model)[0]
    for cand in (stem + ".json", args.model + ".json"):
        if os.path.isfile(cand):
            with open(cand) as fh:
                found, source = json.load(fh), cand
            break
    else:
        cand = os.path.join(os.path.dirname(os.path.abspath(args.model)), "results.json")
        if os.path.isfile(cand):
            with open(cand) as fh:
                conf = json.load(fh).get("config", {})
            if "grid" in conf:
                found = {"shape": [conf["grid"], conf["grid"]], "oracle": conf.get("oracle")}
                source = cand
    settings = {"shape": found.get("shape"), "gamma": found.get("gamma", render.DEFAULT_GAMMA),
                "cutoff": found.get("cutoff", render.DEFAULT_CUTOFF), "channels": found.get("channels"),
                "oracle": found.get("oracle"), "source": source}
    for key in ("shape", "gamma", "cutoff"):
        if getattr(args, key) is not None:
            settings[key] = list(getattr(args, key)) if key == "shape" else getattr(args, key)
    if settings["shape"] is None:
        raise SystemExit(f"no image shape for {args.model}: pass --shape NX NY or write a sidecar "
                         f"{stem}.json with {{\"shape\": [nx, ny], \"gamma\": 0.2, \"cutoff\": 6.0}}")
    return settings


def run_md(atoms0, oracle, cfg, temperature, seed, path, progress):
    """Langevin MD with the oracle; returns (frames (n, N, 3), temperatures (n,), seconds per step)."""
    if os.path.exists(path):
        z = np.load(path)
        if int(z["steps"]) == cfg["md_steps"] and str(z["oracle"]) == oracle.name:
            print(f"MD: reusing {path}")
            return z["frames"], z["temperature"], float(z["seconds_per_step"])
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from tqdm.auto import tqdm

    atoms = atoms0.copy()
    atoms.calc = oracle.calculator()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 13]))
    thermalize_momenta(atoms, temperature, rng=rng)
    Stationary(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False,
                   rng=rng)
    frames, temps = [], []
    every, n_rec = cfg["md_every"], cfg["md_steps"] // cfg["md_every"]
    t0 = time.perf_counter()
    bar = tqdm(range(n_rec), desc=f"MD ({oracle.name})", unit="x%dfs" % every, disable=not progress)
    for k in bar:
        dyn.run(every)
        if (k + 1) * every > cfg["md_equil"]:
            frames.append(atoms.positions.copy())
            temps.append(atoms.get_temperature())
        if temps:
            bar.set_postfix(T=f"{np.mean(temps):.0f} K", refresh=False)
    sec = (time.perf_counter() - t0) / (n_rec * every)
    frames, temps = np.array(frames), np.array(temps)
    np.savez(path, frames=frames, temperature=temps, seconds_per_step=sec, steps=cfg["md_steps"],
             oracle=oracle.name)
    return frames, temps, sec


def demo_structures(n, seed, rattle):
    """``n`` rattled 60-atom graphene cells, in-plane sigma uniform in ``rattle`` (A), flat (z = 0)."""
    from ednn_tf.atoms.structures import hexagonal_cell

    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    out = []
    for i in range(n):
        sigma = float(rng.uniform(*rattle))
        out.append(hexagonal_cell("graphene", int(rng.integers(2**31)), rattle=sigma, rattle_z=0.0))
    return out


def he_initialise(model, seed):
    """Redraw every kernel of ``model`` from He-uniform (variance preserving for ReLU); biases stay 0.

    With the Glorot init of ``networks.paper_cnn`` the narrow CPU widths (4-16 filters) shrink the
    activations ~2x per layer (1e-4 at the output after 13 layers, measured): training then sat on
    a loss plateau for many epochs or died at lr 1e-3. With He init it trains within an epoch.
    """
    import keras

    for k, layer in enumerate(model.layers):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            kernel.assign(keras.initializers.HeUniform(seed=seed + 1000 + k)(kernel.shape))
    return model


def train_demo(cfg, oracle, seed, out, workers, progress, results):
    """Train (or reload) the demo EDNN; returns (model, render settings)."""
    import keras

    from ednn_tf import EDNN, networks, training
    from ednn_tf.labels import oracles
    from ednn_tf.atoms import render

    path = os.path.join(out, "ednn.keras")
    side = os.path.join(out, "ednn.json")
    settings = {"shape": [cfg["grid"], cfg["grid"]], "gamma": cfg["gamma"],
                "cutoff": render.DEFAULT_CUTOFF, "channels": None, "oracle": oracle.name,
                "focus": cfg["focus"], "context": cfg["context"]}
    if os.path.exists(path) and os.path.exists(side):
        with open(side) as fh:
            old = json.load(fh)
        if all(old.get(k) == v for k, v in settings.items()):
            print(f"model: reusing {path}")
            results["training"] = old.get("training")
            return keras.models.load_model(path, compile=False), old
    n_tr, n_va = cfg["n_train"], cfg["n_val"]
    structs = demo_structures(n_tr + n_va, seed, cfg["rattle"])
    t0 = time.time()
    E = oracles.label_structures(structs, oracle, n_workers=workers, progress=progress,
                                 checkpoint=os.path.join(out, f"labels_{oracle.name}_{n_tr + n_va}_{seed}.npz"))
    t_label = time.time() - t0
    shape = tuple(settings["shape"])
    X = render.render_many(structs, shape=shape, gamma=settings["gamma"], cutoff=settings["cutoff"],
                           progress=progress)
    Y = E[:, None]
    e0, scale = float(E[:n_tr].mean()), float(E[:n_tr].std()) or 1.0
    f, c = cfg["focus"], cfg["context"]
    n_tiles = (shape[0] // f) * (shape[1] // f)
    keras.utils.set_random_seed(seed)
    sub = he_initialise(networks.paper_cnn(f + 2 * c, width=cfg["width"], dense=cfg["dense"], seed=seed), seed)
    # fixed affine map to eV per tile: E = scale * mean_tiles(raw) + E0 (E0/n_tiles per tile = per area)
    sub = keras.Model(sub.input, keras.layers.Rescaling(scale / n_tiles, offset=e0 / n_tiles, name="to_eV")(sub.output),
                      name="paper_cnn_eV")
    model = EDNN(sub, focus=f, context=c)
    steps = -(-n_tr // cfg["batch_size"]) * cfg["epochs"]
    lr = keras.optimizers.schedules.CosineDecay(cfg["lr"], decay_steps=steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    t0 = time.time()
    training.fit(model, X[:n_tr], Y[:n_tr], epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                 validation_data=(X[n_tr:], Y[n_tr:]), workdir=os.path.join(out, "train"), progress=progress,
                 desc="EDNN (demo)")
    t_train = time.time() - t0
    pred = model.predict_total(X[n_tr:])
    err = np.abs(pred - E[n_tr:])
    info = {"n_train": n_tr, "n_val": n_va, "rattle_A": list(cfg["rattle"]), "epochs": cfg["epochs"],
            "label_seconds": t_label, "train_seconds": t_train, "E0_eV": e0, "scale_eV": scale,
            "val_mae_meV_per_atom": float(1e3 * err.mean() / 60), "val_mae_eV": float(err.mean()),
            "val_energy_std_eV": float(E[n_tr:].std())}
    print(f"demo EDNN: validation MAE {info['val_mae_meV_per_atom']:.2f} meV/atom "
          f"(label std {1e3 * info['val_energy_std_eV'] / 60:.2f} meV/atom)")
    training.save_model_atomic(model, path)
    settings["training"] = info
    results["training"] = info
    with open(side, "w") as fh:
        json.dump(settings, fh, indent=2)
    return model, settings


def run_mc(model, atoms0, settings, cfg, temperature, seed, path, progress):
    """Tuned-step Metropolis MC with local energy updates; returns (frames, record dict, local object)."""
    from ednn_tf.apply.mc import AtomicLocalEnergy, AtomMetropolis

    le = AtomicLocalEnergy(model, atoms0, tuple(settings["shape"]), gamma=settings["gamma"],
                           cutoff=settings["cutoff"], channels=settings.get("channels"))
    if os.path.exists(path):
        z = np.load(path)
        if int(z["sweeps"]) == cfg["mc_sweeps"]:
            print(f"MC: reusing {path}")
            return z["frames"], {k: z[k].item() if z[k].ndim == 0 else z[k] for k in z.files}, le
    mc = AtomMetropolis(le, temperature, step=0.05, seed=seed)
    t0 = time.perf_counter()
    mc.tune(cfg["mc_tune"], target=0.4, progress=progress)
    t_tune = time.perf_counter() - t0
    mc.reset_counters()
    n_eval0 = le.n_evaluated_tiles
    t0 = time.perf_counter()
    rec = mc.run(cfg["mc_sweeps"], every=cfg["mc_every"], progress=progress, desc="MC (EDNN)")
    t_run = time.perf_counter() - t0
    moves = cfg["mc_sweeps"] * len(atoms0)
    drift = le.refresh()
    out = {"sweeps": cfg["mc_sweeps"], "acceptance": rec["acceptance"], "step_A": rec["step"],
           "seconds_per_move": t_run / moves, "tune_seconds": t_tune, "run_seconds": t_run,
           "tiles_per_move": (le.n_evaluated_tiles - n_eval0) / moves, "n_tiles": le.index.n_tiles,
           "cache_drift_eV": drift, "energy": rec["energy"]}
    np.savez(path, frames=rec["positions"], **out)
    return rec["positions"], out, le


def time_evaluations(model, le, atoms0, settings, oracle, repeats, rng, other_oracles=True):
    """Median seconds per energy evaluation: EDNN full (ASE calculator; numpy render + model), EDNN
    local (one single-atom dE), oracle (one energy of the cell, as ``oracle.energy``)."""
    from ednn_tf.apply.calculator import EDNNCalculator

    calc = EDNNCalculator(model, shape=tuple(settings["shape"]), gamma=settings["gamma"],
                          cutoff=settings["cutoff"], channels=settings.get("channels"))
    cells = []
    for _ in range(repeats + 1):
        a = atoms0.copy()
        a.positions[:, :2] += rng.normal(0, 0.05, (len(a), 2))
        cells.append(a)
    calc.get_potential_energy(cells[-1])            # trace once

    from ednn_tf.timing import median_seconds as per_call   # median: robust to load spikes

    out = {"ednn_full_calculator_s": per_call(calc.get_potential_energy, cells[:repeats])}
    calc.get_forces(cells[-1])
    out["ednn_energy_and_forces_s"] = per_call(calc.get_forces, cells[:repeats])
    out["ednn_full_numpy_render_s"] = per_call(lambda _: le.full_energy(), range(repeats))
    moves = [(int(i), le.positions[i] + np.r_[rng.uniform(-0.05, 0.05, 2), 0.0])
             for i in rng.integers(len(atoms0), size=10 * repeats)]
    le.delta_energy(*moves[0])
    out["ednn_local_dE_s"] = per_call(lambda m: le.delta_energy(*m), moves)
    le.reject()
    oracle.energy(cells[-1])
    out["oracle_energy_s"] = per_call(oracle.energy, cells[:repeats])
    out["oracle"] = oracle.name
    if other_oracles:          # the other installed reference codes on the same cells, for scale
        from ednn_tf.labels import oracles

        out["other_oracles_energy_s"] = {}
        for name, ok in oracles.available_oracles().items():
            if ok and name not in (oracle.name, "lj") and "/" not in name:
                other = oracles.get_oracle(name)
                try:
                    other.energy(cells[-1])
                    out["other_oracles_energy_s"][name] = per_call(other.energy, cells[:min(repeats, 3)])
                except Exception as exc:  # a broken optional code must not sink the run
                    out["other_oracles_energy_s"][name] = f"failed: {type(exc).__name__}: {exc}"
    return out


def plot_gr(r, g_md, g_mc, peaks_md, peaks_mc, oracle_name, path, temperature=TEMPERATURE_K):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(r, g_md, color="tab:orange", lw=1.5, label=f"MD ({oracle_name}), Langevin")
    ax.plot(r, g_mc, color="black", lw=1.2, label="MC (EDNN)")
    for p in peaks_md:
        if np.isfinite(p):
            ax.axvline(p, color="tab:orange", lw=0.6, ls=":")
    for p in peaks_mc:
        if np.isfinite(p):
            ax.axvline(p, color="black", lw=0.6, ls="--")
    ax.set_xlabel("r (Angstrom, in-plane)")
    ax.set_ylabel("g(r)")
    ax.set_xlim(0, r[-1] + 0.5 * (r[1] - r[0]))
    ax.legend(frameon=False)
    ax.set_title(f"Pristine graphene, 60 atoms, {temperature:.0f} K")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
def main(argv=None):
    args, cfg = parse_args(argv)
    import keras

    from ednn_tf.apply.calculator import load_model
    from ednn_tf.apply.mc import radial_distribution, rdf_peaks
    from ednn_tf.util import write_json_atomic
    from ednn_tf.atoms.structures import hexagonal_cell

    progress = not args.no_progress
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    T = float(args.temperature)
    notes = []
    keras.utils.set_random_seed(args.seed)
    atoms0 = hexagonal_cell("graphene", args.seed, rattle=0.0, rattle_z=0.0)

    settings = None
    if args.model:
        settings = render_settings(args, cfg)
    requested = args.oracle or (settings or {}).get("oracle") or cfg["oracle"]
    oracle = pick_oracle(requested, notes)
    if settings is not None and settings.get("oracle") and settings["oracle"] != oracle.name:
        notes.append(f"the model was trained on {settings['oracle']!r} labels but the MD uses {oracle.name!r}")
        print("NOTE:", notes[-1])
    results = {"config": {**cfg, "preset": args.preset, "seed": args.seed, "temperature_K": T,
                          "model": args.model}, "oracle": oracle.attrs(), "notes": notes,
               "paper_seconds": PAPER_SECONDS}

    def save():
        results["wall_seconds"] = time.time() - t_start
        write_json_atomic(_jsonable(results), os.path.join(args.out, "results.json"))

    # 1. reference MD
    md_frames, md_T, md_sec = run_md(atoms0, oracle, cfg, T, args.seed, os.path.join(args.out, "md.npz"), progress)
    results["md"] = {"frames": len(md_frames), "steps": cfg["md_steps"], "equilibration_steps": cfg["md_equil"],
                     "timestep_fs": 1.0, "friction_per_fs": 0.02, "mean_temperature_K": float(md_T.mean()),
                     "seconds_per_step": md_sec}
    save()

    # 2. the EDNN
    if args.model:
        model = load_model(args.model)
        results["model_settings"] = settings
    else:
        model, settings = train_demo(cfg, oracle, args.seed, args.out, args.workers, progress, results)
        results["model_settings"] = {k: v for k, v in settings.items() if k != "training"}
    save()

    # 3. Metropolis MC
    mc_frames, mc_info, le = run_mc(model, atoms0, settings, cfg, T, args.seed, os.path.join(args.out, "mc.npz"),
                                    progress)
    results["mc"] = {k: v for k, v in mc_info.items() if k not in ("energy", "frames")}
    energy = np.asarray(mc_info["energy"], np.float64)
    results["mc"]["frames"] = len(mc_frames)
    results["mc"]["mean_energy_eV"] = float(energy.mean()) if energy.size else None
    save()

    # 4. g(r), peaks, timings
    r, g_md = radial_distribution(md_frames, atoms0.cell, r_max=cfg["r_max"], n_bins=cfg["n_bins"])
    _, g_mc = radial_distribution(mc_frames, atoms0.cell, r_max=cfg["r_max"], n_bins=cfg["n_bins"])
    p_md, p_mc = rdf_peaks(r, g_md, 3), rdf_peaks(r, g_mc, 3)
    results["gr"] = {"r_A": r, "g_md": g_md, "g_mc": g_mc, "in_plane": True,
                     "peaks_md_A": p_md, "peaks_mc_A": p_mc, "peak_difference_A": p_mc - p_md,
                     "max_abs_peak_difference_A": float(np.nanmax(np.abs(p_mc - p_md))) if np.isfinite(p_mc - p_md).any() else None,
                     "bin_width_A": float(r[1] - r[0])}
    print("g(r) peaks (A): MD " + ", ".join(f"{p:.3f}" for p in p_md) + " | MC " + ", ".join(f"{p:.3f}" for p in p_mc))
    plot_gr(r, g_md, g_mc, p_md, p_mc, oracle.name, os.path.join(args.out, "gr.png"), T)
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 17]))
    timing = time_evaluations(model, le, atoms0, settings, oracle, cfg["timing_repeats"], rng,
                              other_oracles=args.preset != "tiny")
    timing["md_step_with_forces_s"] = md_sec
    timing["mc_seconds_per_move"] = mc_info["seconds_per_move"]
    timing["oracle_over_ednn_full"] = timing["oracle_energy_s"] / timing["ednn_full_calculator_s"]
    timing["full_over_local"] = timing["ednn_full_calculator_s"] / timing["ednn_local_dE_s"]
    results["timing"] = timing
    print("seconds per energy: EDNN full {ednn_full_calculator_s:.4f} (numpy render {ednn_full_numpy_render_s:.4f}), "
          "local dE {ednn_local_dE_s:.4f}, oracle {oracle_energy_s:.4f} ({oracle})".format(**timing))
    save()
    print(f"wrote {os.path.join(args.out, 'results.json')} and gr.png ({time.time() - t_start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
