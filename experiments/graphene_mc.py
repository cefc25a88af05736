"""Section 3.4 / Fig. 13 of Mills et al. (2019): Metropolis Monte Carlo of pristine graphene with an
EDNN potential as the energy, compared with Langevin molecular dynamics driven by the reference code.

    python experiments/graphene_mc.py --preset tiny       # seconds: smoke test (tiny demo potential)
    python experiments/graphene_mc.py                     # quick preset (demo potential trained here)
    python experiments/graphene_mc.py --model tests/fixtures/hexagonal-gfn1-cellgrid.keras --oracle gfn1-xtb \\
        --oracle-setting supercell=2 --repeat 3 2         # the previous shipped potential, 24 atoms
    python experiments/graphene_mc.py --model results/hexagonal-cpu/potential.keras --oracle gfn1-xtb

Steps (cached in --out; a rerun reuses what is done): 1. reference Langevin MD (1 fs, friction
0.02/fs, ``labels.md.langevin_snapshots``) of the graphene sheet of ``--repeat`` rectangular 4-atom
cells (default 5 x 3: 60 atoms, a = 2.50 A) with the oracle (``--oracle``, ``--oracle-setting``);
2. the potential: ``--model``, the ``.keras`` file (or shipped name) of an ``ednn_tf.potential.Potential``
(a space potential such as today's ``hexagonal-gfn1`` is evaluated whole for every move,
``apply.space_mc``; the ``"cell"`` readout has exact local updates), which carries its own image settings (pixel size, gamma, cutoff,
channels) and reference energies, or a demo density potential trained here on oracle-labelled
rattled copies of the sheet (``apply.fit.train_potential``); 3. Metropolis MC, single-atom in-plane
moves, exact local energy updates (``apply.atom_mc``), step tuned to ~40 % acceptance; 4. in-plane
g(r) of both, first three peaks, seconds per energy evaluation (paper: 0.39 s EDNN vs 9.9 s VASP),
``results.json``, ``gr.png``. MD and labels should come from one oracle with the same settings; a
missing oracle is replaced, and ``results.json`` notes that and any mismatch with the model's card.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ednn_tf.apply.runs import script_environment  # noqa: E402

REPO = script_environment(__name__ == "__main__")   # before numpy: single-threaded BLAS/OpenMP (render, tblite)
import numpy as np  # noqa: E402

from ednn_tf.apply.studies import time_evaluations  # noqa: E402
from ednn_tf.util import ArgumentError, argument_errors, check_float, check_int  # noqa: E402

from graphene_mc_presets import DEFAULT_REPEAT, DEMO_KEYS, OVERRIDES, PAPER_SECONDS, PRESETS, TEMPERATURE_K  # noqa


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", help="a Potential: shipped model name (ednn-tf models, e.g. hexagonal-gfn1) or "
                    ".keras path; default: train a small demo potential here")
    ap.add_argument("--out", help="output directory (default results/graphene-mc-<preset>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle", help="reference code for the MD (and demo labels): rebo, gfn1-xtb, ... "
                    "(default: the --model card's oracle, else the preset's)")
    ap.add_argument("--oracle-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="oracle setting (repeatable; VALUE parsed as JSON), e.g. supercell=2 with gfn1-xtb")
    ap.add_argument("--repeat", type=int, nargs=2, metavar=("NX", "NY"), default=DEFAULT_REPEAT,
                    help="rectangular 4-atom graphene cells of the simulated sheet (default 5 3: 60 atoms)")
    ap.add_argument("--temperature", type=float, default=TEMPERATURE_K, help="K (paper: 1000)")
    for key in OVERRIDES:
        ap.add_argument("--" + key.replace("_", "-"), type=int, help="override the preset")
    ap.add_argument("--workers", type=int, default=1, help="labelling processes (demo training)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def parse_args(argv=None):
    """``(args, cfg)``: the preset of ``--preset`` with the options given, checked before any work: a
    bad value ends the script with one line naming it and the allowed range, exit status 2 (the
    checks that need ``--model``'s file run at the start of ``main``, also before any work)."""
    ap = _parser()
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    cfg.update({key: getattr(args, key) for key in OVERRIDES if getattr(args, key) is not None})
    args.out = args.out or os.path.join(REPO, "results", f"graphene-mc-{args.preset}")
    with argument_errors(ap):
        _check(cfg, args)
    args.repeat = tuple(args.repeat)
    return args, cfg


def _check(cfg, args):
    """ArgumentError naming the first bad value (option and allowed range); sets ``args.oracle_settings``."""
    from ednn_tf.cli import parse_setting
    from ednn_tf.labels import oracles

    try:
        args.oracle_settings = dict(map(parse_setting, args.oracle_setting))
    except ValueError as exc:
        raise ArgumentError(f"--oracle-setting: {exc}") from None
    check_float("--temperature", args.temperature, minimum=0, strict=True)
    for n in args.repeat:
        check_int("--repeat", n, minimum=1)
    check_int("--seed", args.seed, minimum=0)
    check_int("--workers", args.workers, minimum=1)
    for key in ("md_steps", "md_every", "mc_sweeps", "mc_every", "epochs", "n_train"):
        check_int("--" + key.replace("_", "-"), cfg[key], minimum=1)
    check_int("--md-equil", cfg["md_equil"], minimum=0)
    if cfg["md_steps"] <= cfg["md_equil"]:
        raise ArgumentError(f"--md-steps must be > --md-equil = {cfg['md_equil']}, got --md-steps={cfg['md_steps']}")
    if cfg["mc_sweeps"] < cfg["mc_every"]:
        raise ArgumentError(f"--mc-sweeps must be >= {cfg['mc_every']} (the preset's sweeps between samples), got "
                            f"--mc-sweeps={cfg['mc_sweeps']}")
    if args.model is None:   # the demo potential is trained here
        if cfg["batch_size"] > cfg["n_train"]:
            raise ArgumentError(f"--n-train must be >= {cfg['batch_size']} (the preset's batch size: a batch is "
                                f"never larger than the training set), got --n-train={cfg['n_train']}")
    if args.oracle is not None:
        try:
            oracles.get_oracle(args.oracle, **args.oracle_settings)
        except ValueError as exc:
            raise ArgumentError(f"--oracle {args.oracle} with --oracle-setting {args.oracle_settings}: {exc}") from None


# ------------------------------------------------------------------------------------------------
def reference_md(atoms0, oracle, cfg, temperature, seed, path, progress):
    """Step 1, cached in ``path``: Langevin MD with the oracle (``labels.md.langevin_snapshots``, 1 fs,
    friction 0.02/fs, its ``stationary_start``); returns (frames (n, N, 3) A, kinetic T (n,) K, s/step)."""
    key = {"steps": cfg["md_steps"], "equil": cfg["md_equil"], "every": cfg["md_every"], "oracle": oracle.name,
           "oracle_settings": json.dumps(oracle.settings, sort_keys=True), "n_atoms": len(atoms0)}
    if os.path.exists(path):
        z = np.load(path)
        if all(k in z.files and z[k].item() == v for k, v in key.items()):
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
        np.savez(tmp, frames=frames, temperature=temps, seconds_per_step=sec, **key)
    return frames, temps, sec


def graphene_sheet(seed, repeat, rattle=0.0):
    """Flat graphene (z = 0 displacements) of ``repeat`` rectangular 4-atom cells (a = 2.50 A), in-plane
    rattle sigma ``rattle`` (A)."""
    from ednn_tf.atoms.structures import hexagonal_cell

    return hexagonal_cell("graphene", seed, rattle=rattle, rattle_z=0.0, repeat=repeat)


def demo_structures(n, seed, rattle, repeat):
    """``n`` rattled graphene sheets of ``repeat`` cells, in-plane sigma uniform in ``rattle`` (A)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    return [graphene_sheet(int(rng.integers(2**31)), repeat, float(rng.uniform(*rattle))) for _ in range(n)]


def train_demo(cfg, oracle, repeat, seed, out, workers, progress, results):
    """Train (or reuse) the demo density Potential (``apply.fit.train_potential``: per-element reference
    energies, energies only, cosine-decayed Adam) on oracle-labelled rattled sheets; the card records
    the demo settings and the training summary. Returns the Potential."""
    import shutil

    from ednn_tf import training
    from ednn_tf.apply.fit import train_potential
    from ednn_tf.atoms.datasets import oracle_tag
    from ednn_tf.labels import oracles
    from ednn_tf.potential import load_potential
    from ednn_tf.util import to_jsonable

    path, workdir = os.path.join(out, "ednn.keras"), os.path.join(out, "train")
    demo = to_jsonable({**{k: cfg[k] for k in DEMO_KEYS}, "oracle": oracle.name, "oracle_settings": oracle.settings,
                        "repeat": repeat, "seed": seed})
    if os.path.exists(path):
        pot = load_potential(path)
        if pot.card.get("demo") == demo:
            print(f"model: reusing {path}")
            results["training"] = pot.card["training"]
            return pot
        os.remove(path)                      # other settings: train again, from scratch
        shutil.rmtree(workdir, ignore_errors=True)
    n_tr, n_va = cfg["n_train"], cfg["n_val"]
    structs = demo_structures(n_tr + n_va, seed, cfg["rattle"], repeat)
    t0 = time.time()
    E = oracles.label_structures(structs, oracle, n_workers=workers, progress=progress, checkpoint=os.path.join(
        out, f"labels_{oracle_tag(oracle)}_{repeat[0]}x{repeat[1]}_{n_tr + n_va}_{seed}.npz"))
    t_label, t0 = time.time() - t0, time.time()
    card = {"name": "graphene-mc demo", "oracle": oracle.name, "oracle_settings": oracle.settings, "demo": demo,
            "data": f"{n_tr + n_va} rattled {4 * repeat[0] * repeat[1]}-atom graphene sheets "
                    "(experiments/graphene_mc.py)"}
    pot, metrics = train_potential(structs, E, path, pixel_size=cfg["pixel_size"], gamma=cfg["gamma"],
                                   context=cfg["context"], filters=cfg["filters"], epochs=cfg["epochs"],
                                   batch_size=cfg["batch_size"], lr=cfg["lr"], val_fraction=n_va / (n_tr + n_va),
                                   readout="cell", seed=seed, workdir=workdir, progress=progress, card=card)
    val = metrics["val"]
    info = {"n_train": metrics["n_train"], "n_val": metrics["n_val"], "rattle_A": list(cfg["rattle"]),
            "epochs": cfg["epochs"], "label_seconds": t_label, "train_seconds": time.time() - t0,
            "e0_eV": {str(z): v for z, v in pot.e0.items()}, "scale_eV": pot.scale,
            "val_mae_meV_per_atom": val["energy_mae_meV_per_atom"], "val_mae_eV": val["energy_mae_eV"],
            "val_energy_std_eV": float(np.std(E[metrics["val_indices"]]))}
    print(f"demo potential: validation MAE {info['val_mae_meV_per_atom']:.2f} meV/atom "
          f"(label std {1e3 * info['val_energy_std_eV'] / len(structs[0]):.2f} meV/atom)")
    pot.card = {**pot.card, "training": info}
    training.save_model_atomic(pot, path)
    results["training"] = json.loads(json.dumps(to_jsonable(info)))
    return pot


def model_summary(pot, atoms0, oracle, model):
    """``(summary dict, notes)``: the potential's image settings, grid of the sheet and card provenance;
    a note when its card names another oracle or other oracle settings than the MD's."""
    card = pot.card
    shape, stretch = pot.grid(atoms0.cell.lengths()[:2])
    summary = {"model": model, "name": card.get("name"), "pixel_size_A": pot.pixel_size, "gamma_A": pot.gamma,
               "cutoff_gamma": pot.cutoff, "channels": pot.channels, "focus": int(pot.ednn.focus),
               "context": int(pot.ednn.context), "grid": list(shape), "stretch": list(stretch),
               "oracle": card.get("oracle"), "oracle_settings": card.get("oracle_settings")}
    notes, trained = [], summary["oracle_settings"]
    trained = json.loads(trained) if isinstance(trained, str) else trained
    if summary["oracle"] and summary["oracle"] != oracle.name:
        notes.append(f"the model was trained on {summary['oracle']!r} labels but the MD uses {oracle.name!r}")
    elif isinstance(trained, dict) and trained != oracle.settings:
        notes.append(f"the model's labels used oracle settings {trained}, the MD {oracle.settings}")
    return summary, notes


def run_mc(pot, atoms0, cfg, temperature, seed, path, progress):
    """Tuned-step Metropolis MC with local energy updates; returns (frames, record dict, local object)."""
    from ednn_tf.apply.atom_mc import AtomMetropolis
    from ednn_tf.apply.space_mc import local_energy

    le = local_energy(pot, atoms0)
    if os.path.exists(path):
        z = np.load(path)
        if int(z["sweeps"]) == cfg["mc_sweeps"] and z["frames"].shape[1] == len(atoms0):
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
           "windows_per_move": (le.n_evaluated_tiles - n_eval0) / moves, "n_terms": le.n_terms,
           "cache_drift_eV": drift, "energy": rec["energy"]}
    np.savez(path, frames=rec["positions"], **out)
    return rec["positions"], out, le


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
    from ednn_tf.labels import oracles
    from ednn_tf.potential import load_potential
    from ednn_tf.util import write_json_atomic

    progress = not args.no_progress
    t_start = time.time()
    T = float(args.temperature)
    notes = []
    keras.utils.set_random_seed(args.seed)
    atoms0 = graphene_sheet(args.seed, args.repeat)
    with argument_errors(_parser()):   # the checks that need the model file, before any work
        try:
            pot = load_potential(args.model) if args.model else None
        except ValueError as exc:
            raise ArgumentError(f"--model: {exc}") from None
        requested = args.oracle or (pot.card.get("oracle") if pot is not None else None) or cfg["oracle"]
        try:
            oracle, note = oracles.first_available(requested, **args.oracle_settings)
        except ValueError as exc:
            raise ArgumentError(f"--oracle-setting with --oracle {requested}: {exc}") from None
        notes += [note] if note else []
        if pot is not None:      # before the MD: a tile model may not take this sheet's grid
            try:
                summary, model_notes = model_summary(pot, atoms0, oracle, args.model)
            except ValueError as exc:
                raise ArgumentError(f"--model {args.model} on the {args.repeat[0]} x {args.repeat[1]} sheet "
                                    f"(--repeat): {exc}") from None
    os.makedirs(args.out, exist_ok=True)
    results = {"config": {**cfg, "preset": args.preset, "seed": args.seed, "temperature_K": T, "model": args.model,
                          "repeat": list(args.repeat), "n_atoms": len(atoms0)},
               "oracle": oracle.attrs(), "notes": notes, "paper_seconds": PAPER_SECONDS}

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
    # 2. the potential
    if pot is None:
        pot = train_demo(cfg, oracle, args.repeat, args.seed, args.out, args.workers, progress, results)
        summary, model_notes = model_summary(pot, atoms0, oracle, "demo (ednn.keras)")
    results["model_settings"] = summary
    notes += model_notes
    for note in notes:
        print("NOTE:", note)
    save()
    # 3. Metropolis MC
    mc_frames, mc_info, le = run_mc(pot, atoms0, cfg, T, args.seed, os.path.join(args.out, "mc.npz"), progress)
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
                               os.path.join(args.out, "gr.png"), f"Pristine graphene, {len(atoms0)} atoms, {T:.0f} K")
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 17]))
    timing = time_evaluations(pot, le, atoms0, oracle, cfg["timing_repeats"], rng, other_oracles=args.preset != "tiny")
    timing.update(md_step_with_forces_s=md_sec, mc_seconds_per_move=mc_info["seconds_per_move"])
    results["timing"] = timing
    print("seconds per energy: EDNN full {ednn_full_calculator_s:.4f} (numpy render {ednn_full_numpy_render_s:.4f}), "
          "local dE {ednn_local_dE_s:.4f}, oracle {oracle_energy_s:.4f} ({oracle})".format(**timing))
    save()
    print(f"wrote {os.path.join(args.out, 'results.json')} and gr.png ({time.time() - t_start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
