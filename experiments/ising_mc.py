"""Metropolis Monte Carlo with a trained Ising EDNN as the Hamiltonian (issue 5, item 3).

    python experiments/ising_mc.py --model results/ising-quick/model_c1.keras       # quick: a few minutes
    python experiments/ising_mc.py --model results/ising-paper/model_c1.keras --preset paper
    python experiments/ising_mc.py --model exact --preset tiny                        # smoke test, seconds

The EDNN (trained on 8x8, f=1, c=1 by ``experiments/ising.py``) is applied unchanged to 32x32
and 64x64 lattices and sampled with the exact colour-parallel Metropolis of ``ednn_tf.apply.lattice_mc`` over
``T`` in [1.5, 3.5]. The same sampler runs with an exact-energy sub-network (the true
nearest-neighbour Hamiltonian), and Onsager's exact energy is drawn for reference. Per lattice
size and Hamiltonian: energy per spin, <|m|>, specific heat and Binder cumulant vs ``T``; ``Tc``
from the crossing of the Binder cumulants of the two sizes. ``--model exact`` uses the exact
sub-network for the "EDNN" as well (a check of the script itself).

Writes ``results.json``, ``thermodynamics.png`` and one ``.npz`` of raw records per run to
``--out``. Interrupt at any time: rerunning the same command reuses finished runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from ednn_tf.util import ArgumentError, argument_errors, check_int  # noqa: E402

_NEAR_TC = (2.15, 2.2, 2.3, 2.35)
PRESETS = {
    # seconds: checks the script end to end
    "tiny": dict(sizes=(8, 16), temps=(1.5, 2.0, 2.3, 2.6, 3.5), replicas=1, burn=20, sweeps=60, blocks=4),
    # a few minutes on 2 CPU cores (noisy near Tc: single-flip dynamics slows down there)
    "quick": dict(sizes=(32, 64), temps=tuple(np.round(np.linspace(1.5, 3.5, 9), 4)) + _NEAR_TC, replicas=2,
                  burn=150, sweeps=450, blocks=10),
    # hours on 2 CPU cores
    "paper": dict(sizes=(32, 64), temps=tuple(np.round(np.linspace(1.5, 3.5, 21), 4))
                  + tuple(np.round(np.arange(2.2, 2.345, 0.02), 4)), replicas=4, burn=2000, sweeps=20000, blocks=20),
}


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join("results", "ising-quick", "model_c1.keras"),
                    help="trained lattice EDNN (.keras), or 'exact' for the exact-energy sub-network")
    ap.add_argument("--out", default=None, help="output directory (default results/ising-mc-<preset>)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs="+", help="lattice sizes L (two or more for Binder crossings)")
    ap.add_argument("--sweeps", type=int, help="recorded sweeps per run")
    ap.add_argument("--burn", type=int, help="burn-in sweeps per run")
    ap.add_argument("--replicas", type=int, help="replicas per temperature")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def parse_args(argv=None):
    """``(args, cfg)``: the preset of ``--preset`` with the options given, checked before any work: a
    bad value ends the script with one line naming it and the allowed range, exit status 2 (the model
    file is checked at the start of ``main``, also before any work)."""
    ap = _parser()
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for k in ("sizes", "sweeps", "burn", "replicas"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = tuple(v) if isinstance(v, list) else v
    with argument_errors(ap):
        for L in cfg["sizes"]:
            check_int("--sizes", L, minimum=1)
        check_int("--replicas", cfg["replicas"], minimum=1)
        check_int("--burn", cfg["burn"], minimum=0)
        check_int("--sweeps", cfg["sweeps"], minimum=cfg["blocks"])   # one block average needs >= 1 sweep each
        check_int("--seed", args.seed, minimum=0)
    cfg["temps"] = tuple(sorted(set(float(t) for t in cfg["temps"])))
    cfg.update(seed=args.seed, preset=args.preset, model=args.model)
    args.out = args.out or os.path.join("results", f"ising-mc-{args.preset}")
    return args, cfg


def load_model(path):
    """The EDNN to sample: a ``.keras`` file, or ``'exact'`` for the exact Ising sub-network."""
    from ednn_tf import EDNN, testing
    if path == "exact":
        return EDNN(testing.exact_ising_subnet(1, 1), focus=1, context=1)
    if not os.path.exists(path):
        raise ArgumentError(f"--model: model file {path!r} not found: train one with `python experiments/ising.py` "
                            f"(it writes <out>/model_c1.keras) or pass --model exact")
    from ednn_tf.model import load_ednn
    try:
        model = load_ednn(path)
    except (ValueError, TypeError) as exc:
        raise ArgumentError(f"--model: {exc}") from None
    return model


def run_one(model, L, cfg, seed, path, progress, label):
    """Burn-in plus recorded sweeps of all temperatures x replicas at once; cached in ``path``."""
    from ednn_tf.apply.lattice_mc import Metropolis
    if os.path.exists(path):
        print(f"{label}: reusing {path}")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    temps = np.repeat(np.asarray(cfg["temps"]), cfg["replicas"])
    mc = Metropolis(model, np.ones((len(temps), L, L), np.float32), temps, seed=seed)
    t0 = time.time()
    print(f"{label}: {len(temps)} replicas of {L}x{L}, {mc.n_colours} colours, "
          f"{cfg['burn']} burn-in + {cfg['sweeps']} recorded sweeps")
    if cfg["burn"]:
        mc.run(cfg["burn"], every=max(1, cfg["burn"] // 20), progress=progress)
    rec = mc.run(cfg["sweeps"], progress=progress)
    seconds = time.time() - t0
    out = dict(energy=rec["energy"], magnetisation=rec["magnetisation"], temperatures=temps,
               acceptance=mc.acceptance, final_spins=mc.spins[..., 0].astype(np.int8),
               seconds=np.float64(seconds), attempts_per_s=np.float64((cfg["burn"] + cfg["sweeps"]) * temps.size * L * L
                                                                      / seconds))
    tmp = path[:-4] + f".tmp{os.getpid()}.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def plot(results, cfg, onsager, tc_exact, path):
    """Four panels vs T: energy per spin, <|m|>, specific heat, Binder cumulant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ednn_tf import plots
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex=True)
    panels = [("energy_per_site", "E / N [J]"), ("abs_magnetisation", "<|m|>"),
              ("specific_heat", "C / N [k_B]"), ("binder", "Binder cumulant U")]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, ylabel) in zip(axes.ravel(), panels):
        for k, L in enumerate(cfg["sizes"]):
            for ham, style in (("ednn", dict(marker="o", ls="-")), ("exact", dict(marker="s", ls="--", mfc="none"))):
                th = results["runs"][ham][str(L)]["thermo"]
                ax.errorbar(th["T"], th[key], yerr=th[key + "_err"], color=colours[k % len(colours)], ms=4,
                            capsize=2, label=f"{'EDNN' if ham == 'ednn' else 'exact H'}, L={L}", **style)
        ax.axvline(tc_exact, color="0.6", lw=0.8)
        ax.set_ylabel(ylabel)
    tt = np.linspace(min(cfg["temps"]), max(cfg["temps"]), 200)
    axes[0, 0].plot(tt, [onsager(t) for t in tt], color="k", lw=1, label="Onsager (L = inf)")
    for ham, ls in (("ednn", "-"), ("exact", "--")):
        tc = results["tc_binder"].get(ham)
        if tc is not None:
            axes[1, 1].axvline(tc, color="k", ls=ls, lw=0.8, label=f"Tc {ham} = {tc:.3f}")
    axes[0, 0].legend(fontsize=7)
    axes[1, 1].legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("T [J / k_B]")
    fig.suptitle(f"Metropolis with the EDNN energy vs the exact Ising Hamiltonian "
                 f"({cfg['preset']} preset, {cfg['burn']} + {cfg['sweeps']} sweeps, {cfg['replicas']} replicas)")
    return plots.save(fig, path)


def main(argv=None):
    args, cfg = parse_args(argv)
    from ednn_tf import EDNN, ising, testing
    from ednn_tf.apply.thermo import binder_crossing, thermodynamics
    from ednn_tf.util import write_json_atomic

    progress = not args.no_progress
    t_start = time.time()
    with argument_errors(_parser()):   # the checks that need the model file, before any work
        hamiltonians = {"ednn": load_model(args.model),
                        "exact": EDNN(testing.exact_ising_subnet(1, 1), focus=1, context=1)}
        focus = hamiltonians["ednn"].focus
        for L in cfg["sizes"]:
            if L % focus:
                raise ArgumentError(f"--sizes must be multiples of the model's focus {focus}, got --sizes={L}")
    exact_model = hamiltonians["exact"]
    os.makedirs(args.out, exist_ok=True)
    results = {"config": {**cfg, "sizes": list(cfg["sizes"]), "temps": list(cfg["temps"])},
               "onsager": {str(t): float(ising.onsager_energy_per_spin(t)) for t in cfg["temps"]},
               "tc_exact": float(ising.TC), "runs": {"ednn": {}, "exact": {}}, "tc_binder": {}}
    for ham, model in hamiltonians.items():
        for k, L in enumerate(cfg["sizes"]):
            rec = run_one(model, L, cfg, cfg["seed"] + 1000 * k + (0 if ham == "ednn" else 500),
                          os.path.join(args.out, f"run_{ham}_L{L}.npz"), progress, f"{ham} L={L}")
            th = thermodynamics(rec["energy"], rec["magnetisation"], rec["temperatures"], L * L, n_blocks=cfg["blocks"])
            entry = {"thermo": {k2: v.tolist() for k2, v in th.items()},
                     "acceptance_mean": float(np.mean(rec["acceptance"])),
                     "seconds": float(rec["seconds"]), "attempts_per_s": float(rec["attempts_per_s"])}
            if ham == "ednn":  # how far the learned energy is from the truth on its own samples
                spins = rec["final_spins"][..., None].astype(np.float32)
                e_true = exact_model.predict_total(spins, batch_size=16)
                e_model = model.predict_total(spins, batch_size=16)
                entry["final_config_energy_error_per_site"] = {
                    "mean_abs": float(np.mean(np.abs(e_model - e_true)) / L ** 2),
                    "max_abs": float(np.max(np.abs(e_model - e_true)) / L ** 2)}
            results["runs"][ham][str(L)] = entry
            write_json_atomic(results, os.path.join(args.out, "results.json"))
    if len(cfg["sizes"]) >= 2:
        small, large = str(min(cfg["sizes"])), str(max(cfg["sizes"]))
        for ham in hamiltonians:
            a, b = results["runs"][ham][small]["thermo"], results["runs"][ham][large]["thermo"]
            results["tc_binder"][ham] = binder_crossing(a["T"], a["binder"], b["binder"])
    results["wall_seconds"] = time.time() - t_start
    write_json_atomic(results, os.path.join(args.out, "results.json"))
    plot(results, cfg, ising.onsager_energy_per_spin, float(ising.TC), os.path.join(args.out, "thermodynamics.png"))
    for L in cfg["sizes"]:
        e_th, x_th = results["runs"]["ednn"][str(L)]["thermo"], results["runs"]["exact"][str(L)]["thermo"]
        dev = np.max(np.abs(np.subtract(e_th["energy_per_site"], x_th["energy_per_site"])))
        print(f"L={L}: max |E/N (EDNN) - E/N (exact)| over T = {dev:.4f} J; "
              f"EDNN MC {results['runs']['ednn'][str(L)]['attempts_per_s']:.3g} attempts/s")
    print(f"Tc from Binder crossings: EDNN {results['tc_binder'].get('ednn')}, exact H {results['tc_binder'].get('exact')}, "
          f"Onsager {ising.TC:.4f}")
    print(f"wrote {args.out}/results.json and thermodynamics.png in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
