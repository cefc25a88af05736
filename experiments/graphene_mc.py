"""Section 3.4 / Fig. 13 of Mills et al. (2019): Metropolis Monte Carlo of pristine graphene with an
EDNN as the energy, compared with Langevin molecular dynamics driven by the reference code.

    python experiments/graphene_mc.py --preset tiny       # seconds: smoke test (tiny demo model)
    python experiments/graphene_mc.py                     # quick preset, < ~10 min on 2 shared cores
    python experiments/graphene_mc.py --model results/hexagonal-cpu/ednn.keras --oracle gfn1-xtb
    python experiments/graphene_mc.py --preset paper --model my_ednn.keras --shape 256 256

Steps (cached in --out; a rerun reuses what is done): 1. reference Langevin MD (1 fs, friction
0.02/fs, ``labels.md.langevin_snapshots``) of the 60-atom graphene cell with the oracle; 2. the EDNN:
``--model path.keras`` with its render settings (``--shape/--gamma/--cutoff`` > sidecar ``path.json``
> hexagonal.py's ``results.json``, ``apply.runs.read_render_settings``), or a demo EDNN trained here on
oracle-labelled rattled cells; 3. Metropolis MC, single-atom in-plane moves, local energy updates
(``apply.atom_mc``), step tuned to ~40 % acceptance; 4. in-plane g(r) of both, first three peaks,
seconds per energy evaluation (paper: 0.39 s EDNN vs 9.9 s VASP), ``results.json``, ``gr.png``.
MD and labels should come from one oracle; a missing one is replaced and ``results.json`` says so.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ednn_tf.apply.runs import script_environment  # noqa: E402

REPO = script_environment(__name__ == "__main__")   # before numpy: single-threaded BLAS/OpenMP (render, tblite)
import numpy as np  # noqa: E402

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


# ------------------------------------------------------------------------------------------------
def reference_md(atoms0, oracle, cfg, temperature, seed, path, progress):
    """Step 1, cached in ``path``: Langevin MD with the oracle (``labels.md.langevin_snapshots``, 1 fs,
    friction 0.02/fs, its ``stationary_start``); returns (frames (n, N, 3) A, kinetic T (n,) K, s/step)."""
    if os.path.exists(path):
        z = np.load(path)
        if int(z["steps"]) == cfg["md_steps"] and str(z["oracle"]) == oracle.name:
            print(f"MD: reusing {path}")
            return z["frames"], z["temperature"], float(z["seconds_per_step"])
    from ednn_tf.labels import md
    from ednn_tf.util import atomic_path

    t0 = time.perf_counter()
    snaps = md.langevin_snapshots(atoms0, oracle.calculator(), temperature_K=temperature, n_steps=cfg["md_steps"],
                                  every=cfg["md_every"], equilibration_steps=cfg["md_equil"], progress=progress,
                                  seed=np.random.SeedSequence([seed, 13]), stationary_start=True,
                                  desc=f"MD ({oracle.name})")
    sec = (time.perf_counter() - t0) / cfg["md_steps"]
    frames = np.array([a.positions for a in snaps])
    temps = np.array([a.info["kinetic_temperature_K"] for a in snaps])
    with atomic_path(path) as tmp:
        np.savez(tmp, frames=frames, temperature=temps, seconds_per_step=sec, steps=cfg["md_steps"],
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


def train_demo(cfg, oracle, seed, out, workers, progress, results):
    """Train (or reuse) the demo EDNN: paper CNN (He-uniform kernels, ``networks.he_initialise``) with
    the fixed eV head ``E = scale * mean_tiles(raw) + E0`` (``atoms.heads.ev_subnet``), MSE in eV^2,
    cosine-decayed Adam; returns (model, render settings)."""
    import keras

    from ednn_tf import training
    from ednn_tf.apply import runs
    from ednn_tf.atoms import heads, render
    from ednn_tf.labels import oracles

    path = os.path.join(out, "ednn.keras")
    settings = {"shape": [cfg["grid"], cfg["grid"]], "gamma": cfg["gamma"],
                "cutoff": render.DEFAULT_CUTOFF, "channels": None, "oracle": oracle.name,
                "focus": cfg["focus"], "context": cfg["context"]}
    old, source = runs.load_sidecar(path)
    if os.path.exists(path):
        if source and all(old.get(k) == v for k, v in settings.items()):
            print(f"model: reusing {path}")
            results["training"] = old.get("training")
            return keras.models.load_model(path, compile=False), old
        os.remove(path)                      # other settings: train again
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
    build = lambda: heads.ev_ednn(f, c, scale, e0, (shape[0] // f) * (shape[1] // f), width=cfg["width"],  # noqa: E731
                                  dense=cfg["dense"], seed=seed, he=(seed + 1000, "uniform"), name="paper_cnn_eV")
    lr = training.cosine_schedule(cfg["lr"], -(-n_tr // cfg["batch_size"]) * cfg["epochs"], alpha=0.02)
    model, fitted = training.train_or_reuse(
        path, build, lambda: (X[:n_tr], Y[:n_tr], {"validation_data": (X[n_tr:], Y[n_tr:])}), epochs=cfg["epochs"],
        workdir=os.path.join(out, "train"), lr=lr, batch_size=cfg["batch_size"], progress=progress,
        desc="EDNN (demo)")
    err = np.abs(model.predict_total(X[n_tr:]) - E[n_tr:])
    info = {"n_train": n_tr, "n_val": n_va, "rattle_A": list(cfg["rattle"]), "epochs": cfg["epochs"],
            "label_seconds": t_label, "train_seconds": fitted["seconds"], "E0_eV": e0, "scale_eV": scale,
            "val_mae_meV_per_atom": float(1e3 * err.mean() / 60), "val_mae_eV": float(err.mean()),
            "val_energy_std_eV": float(E[n_tr:].std())}
    print(f"demo EDNN: validation MAE {info['val_mae_meV_per_atom']:.2f} meV/atom "
          f"(label std {1e3 * info['val_energy_std_eV'] / 60:.2f} meV/atom)")
    settings["training"] = results["training"] = info
    runs.write_render_settings(path, settings)
    return model, settings


def run_mc(model, atoms0, settings, cfg, temperature, seed, path, progress):
    """Tuned-step Metropolis MC with local energy updates; returns (frames, record dict, local object)."""
    from ednn_tf.apply.atom_mc import AtomicLocalEnergy, AtomMetropolis

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
    out["oracle_over_ednn_full"] = out["oracle_energy_s"] / out["ednn_full_calculator_s"]
    out["full_over_local"] = out["ednn_full_calculator_s"] / out["ednn_local_dE_s"]
    return out


def compare_gr(md_frames, mc_frames, cell, cfg):
    """Step 4: in-plane g(r) of the MD and MC frames (``apply.thermo``), their first three peaks (A)."""
    from ednn_tf.apply.thermo import radial_distribution, rdf_peaks

    r, g_md = radial_distribution(md_frames, cell, r_max=cfg["r_max"], n_bins=cfg["n_bins"])
    _, g_mc = radial_distribution(mc_frames, cell, r_max=cfg["r_max"], n_bins=cfg["n_bins"])
    p_md, p_mc = rdf_peaks(r, g_md, 3), rdf_peaks(r, g_mc, 3)
    diff = p_mc - p_md
    print("g(r) peaks (A): MD " + ", ".join(f"{p:.3f}" for p in p_md) + " | MC " + ", ".join(f"{p:.3f}" for p in p_mc))
    return {"r_A": r, "g_md": g_md, "g_mc": g_mc, "in_plane": True, "peaks_md_A": p_md, "peaks_mc_A": p_mc,
            "peak_difference_A": diff,
            "max_abs_peak_difference_A": float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else None,
            "bin_width_A": float(r[1] - r[0])}


# ------------------------------------------------------------------------------------------------
def main(argv=None):
    args, cfg = parse_args(argv)
    import keras

    from ednn_tf import plots
    from ednn_tf.apply import runs
    from ednn_tf.atoms.structures import hexagonal_cell
    from ednn_tf.labels import oracles
    from ednn_tf.model import load_ednn
    from ednn_tf.util import write_json_atomic

    progress = not args.no_progress
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    T = float(args.temperature)
    notes = []
    keras.utils.set_random_seed(args.seed)
    atoms0 = hexagonal_cell("graphene", args.seed, rattle=0.0, rattle_z=0.0)
    settings = None
    if args.model:
        try:
            settings = runs.read_render_settings(args.model, args.shape, args.gamma, args.cutoff)
        except ValueError as exc:
            raise SystemExit(f"{exc} (--shape NX NY)") from None
    oracle, note = oracles.first_available(args.oracle or (settings or {}).get("oracle") or cfg["oracle"])
    if note:
        notes.append(note)
        print("NOTE:", note)
    if settings is not None and settings.get("oracle") and settings["oracle"] != oracle.name:
        notes.append(f"the model was trained on {settings['oracle']!r} labels but the MD uses {oracle.name!r}")
        print("NOTE:", notes[-1])
    results = {"config": {**cfg, "preset": args.preset, "seed": args.seed, "temperature_K": T,
                          "model": args.model}, "oracle": oracle.attrs(), "notes": notes,
               "paper_seconds": PAPER_SECONDS}

    def save():
        results["wall_seconds"] = time.time() - t_start
        write_json_atomic(results, os.path.join(args.out, "results.json"))

    # 1. reference MD
    md_frames, md_T, md_sec = reference_md(atoms0, oracle, cfg, T, args.seed, os.path.join(args.out, "md.npz"),
                                           progress)
    results["md"] = {"frames": len(md_frames), "steps": cfg["md_steps"], "equilibration_steps": cfg["md_equil"],
                     "timestep_fs": 1.0, "friction_per_fs": 0.02, "mean_temperature_K": float(md_T.mean()),
                     "seconds_per_step": md_sec}
    save()
    # 2. the EDNN
    if args.model:
        model = load_ednn(args.model)
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
    gr = results["gr"] = compare_gr(md_frames, mc_frames, atoms0.cell, cfg)
    plots.radial_distributions(gr["r_A"], [(gr["g_md"], gr["peaks_md_A"], "tab:orange", 1.5, ":",
                                            f"MD ({oracle.name}), Langevin"),
                                           (gr["g_mc"], gr["peaks_mc_A"], "black", 1.2, "--", "MC (EDNN)")],
                               os.path.join(args.out, "gr.png"), f"Pristine graphene, 60 atoms, {T:.0f} K")
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 17]))
    timing = time_evaluations(model, le, atoms0, settings, oracle, cfg["timing_repeats"], rng,
                              other_oracles=args.preset != "tiny")
    timing.update(md_step_with_forces_s=md_sec, mc_seconds_per_move=mc_info["seconds_per_move"])
    results["timing"] = timing
    print("seconds per energy: EDNN full {ednn_full_calculator_s:.4f} (numpy render {ednn_full_numpy_render_s:.4f}), "
          "local dE {ednn_local_dE_s:.4f}, oracle {oracle_energy_s:.4f} ({oracle})".format(**timing))
    save()
    print(f"wrote {os.path.join(args.out, 'results.json')} and gr.png ({time.time() - t_start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
