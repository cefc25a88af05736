"""Sections 3.2.1 and 3.3 of Mills et al. (2019): EDNN vs a plain CNN on 60-atom hexagonal B-C-N
sheets (Fig. 5), transfer of the EDNN to larger sheets with time vs size (Fig. 9), and the blur
study (Fig. 6). Presets, steps and measured numbers in detail: docs/hexagonal.md.

    python experiments/hexagonal.py                    # cpu preset (~50 min on 2 shared cores)
    python experiments/hexagonal.py --preset gpu       # 128 px, full-width CNN, 200 epochs (~10 min on an H100)
    python experiments/hexagonal.py --preset paper     # the paper's grid/network/budget (GPU)
    python experiments/hexagonal.py --preset tiny      # seconds, for tests (Tersoff oracle)
    python experiments/hexagonal.py --epochs 200 --out results/hex200
    KERAS_BACKEND=jax python experiments/hexagonal.py --preset gpu   # a GPU node with JAX, no TensorFlow

The labelled cells are kept in every data file; a data file for another ``--grid`` or ``--channels``
is re-rendered from any existing one of the same cells (``sibling_renders``), never relabelled.
The EDNN and the CNN can train in two processes (``--skip cnn`` / ``--skip ednn`` with separate
``--out``); copying ``cnn.keras`` next to ``ednn.keras`` and rerunning combines them.

Steps (every one cached or resumable; rerunning the same command continues where it stopped):

1. data (``ednn_tf.labels.labelling.prepare_dataset``, ``ednn_tf.atoms.datasets``): cells of
   ``hexagonal_dataset(n, seed)`` (graphene, h-BN, B-C-N mixtures, 0-3 vacancies, rattled; 12.50 x
   12.99 A) labelled with ``--oracle`` (GFN1-xTB; parallel workers, resumable ``.labels.npz``),
   rendered with eqn (2) on a ``grid x grid`` image (``--channels z``: one Z-weighted channel, the
   paper's; ``element``: one channel per element B, C, N, the cpu preset) and written to ``data/``
   with every structure, so the images can be re-rendered.
2. models (``ednn_tf.atoms.targets``, ``training.train_or_reuse``): the EDNN (paper CNN on f + 2c
   tiles) and the plain CNN on the whole image, same split, epochs, batch, optimiser and the same
   fixed output map to eV (MSE loss in eV^2), ``E = s * mean_tiles(raw) + E0 [+ sum_p alpha_p *
   sum_pixels(x^p)]``, extensive on bigger inputs (``targets``). ``--baseline none`` (paper): ``E0`` =
   mean training energy, ``s`` = its std; ``moments`` (cpu, tiny): ``alpha_p`` and ``E0`` by least
   squares on ``sum(x^p)`` (p = 1..3 identify the B, C, N counts from the image itself; with
   ``--channels element`` p = 1 suffices and is the default), ``s`` = std of the residual.
   ``--init he``: He-normal CNN kernels; ``lsuv`` (cpu, tiny) then rescales every layer to unit
   output std on 64 training images. ``--augment 1``: random whole-pixel periodic shifts and mirrors
   of the training images (exact symmetries, label unchanged; cpu, tiny; both models).
3. test: MAE in meV/A^2 (paper's unit) and meV/atom for both; ratio CNN/EDNN (paper: 2.25).
4. transfer (``ednn_tf.apply.studies``): test cells rebuilt unrattled, repeated k x k and
   *independently* re-rattled (new structures), labelled by the oracle (serial, timed), rendered at
   the same pixel size and predicted by the unchanged EDNN: per-atom error vs size, and EDNN vs
   oracle time vs size (log-log). The exact 2x2 repeats measure the oracle's own finite-size gap.
5. blur: a Gaussian blur (``--blur-sigma`` A) on an edge band of each tile's context or an
   equal-area centre square of its focus; MAE vs blurred area (the fixed moment term unblurred).

Writes ``results.json``, the two models, the EDNN once more as a self-describing Potential
(``potential.keras``: image settings and card inside, for ``ednn_tf.load_potential``,
``EDNNCalculator`` and ``experiments/graphene_mc.py --model``) and PNG plots to ``--out`` (default
results/hexagonal-<preset>).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":
    # GFN1-xTB (tblite: OpenMP + MKL) on a loaded 2-core machine runs 5-10x slower with 2 threads than
    # with 1 (measured: 59 atoms 0.26 s vs 1-40 s). The in-process transfer labelling uses these; they must
    # be set before numpy/MKL/OpenMP start (export them to override). TensorFlow is not affected.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from ednn_tf.atoms.targets import ELEMENTS  # noqa: E402

from hexagonal_presets import OPTIONS, PAPER_MAE, PRESETS  # noqa: E402  (beside this script)


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--out", help="output directory (default results/hexagonal-<preset>)")
    ap.add_argument("--data-dir", default=os.path.join(REPO, "data"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the structures, their split and the networks")
    ap.add_argument("--init-seed", type=int, help="seed of the networks' initial weights, batch order and "
                    "augmentation only (default --seed): repeats of one data set and split")
    ap.add_argument("--oracle-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="oracle setting (repeatable; VALUE parsed as JSON), e.g. supercell=2 for a 2x2 "
                         "k-mesh with gfn1-xtb (transfer cells k x k then use supercell=ceil(2/k))")
    for key, kw in OPTIONS.items():
        ap.add_argument("--" + key.replace("_", "-"), **{"type": int, **kw})
    ap.add_argument("--workers", type=int, default=2, help="labelling worker processes")
    ap.add_argument("--oracle-threads", type=int, default=1,
                    help="BLAS/OpenMP threads per labelling worker (1 is fastest on a shared machine); the "
                         "serial transfer labelling in this process uses OMP_NUM_THREADS (default 1)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("ednn", "cnn", "transfer", "blur"),
                    help="steps to skip; 'ednn' (train only the CNN, e.g. in a parallel process) also skips "
                         "transfer and blur. A later run with the same --out reuses both saved models. "
                         "'ednn cnn' only prepares the data file (label, render) and the baselines")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _opt(key):
    return "--" + key.replace("_", "-")


def _check(cfg, args):
    """ArgumentError naming the first bad value (option and allowed range); all before any work."""
    from ednn_tf.labels import oracles
    from ednn_tf.util import ArgumentError, check_batch_size, check_float, check_int

    for k in ("n_structures", "n_train", "n_val", "focus", "grid", "dense", "epochs"):
        check_int(_opt(k), cfg[k], minimum=1)
    f, c = cfg["focus"], check_int("--context", cfg["context"], minimum=0)
    n_test = cfg["n_structures"] - cfg["n_train"] - cfg["n_val"]
    if n_test < 1:
        raise ArgumentError(f"--n-structures must be > --n-train + --n-val = {cfg['n_train'] + cfg['n_val']} (the rest "
                            f"are the test cells), got --n-structures={cfg['n_structures']}")
    if cfg["grid"] % f:
        raise ArgumentError(f"--grid must be a multiple of --focus {f}, got --grid={cfg['grid']}")
    check_float("--width", cfg["width"], minimum=0, strict=True)
    check_float("--lr", cfg["lr"], minimum=0, strict=True)
    check_batch_size("--batch-size", cfg["batch_size"], cfg["n_train"], "--n-train")
    if not 0 <= check_int("--warmup-epochs", cfg["warmup_epochs"]) <= cfg["epochs"]:
        raise ArgumentError(f"--warmup-epochs must be in 0..{cfg['epochs']} (--epochs), got "
                            f"--warmup-epochs={cfg['warmup_epochs']}")
    low, high = cfg["rattle"]
    check_float("--rattle HIGH", high, minimum=check_float("--rattle LOW", low, minimum=0))
    for p in cfg["moments"]:
        check_int("--moments", p, minimum=1)
    stride = check_int("--sym-stride", cfg["sym_stride"], minimum=0)
    if stride and f % stride:
        raise ArgumentError(f"--sym-stride must be 0 or divide --focus {f}, got --sym-stride={stride}")
    sizes, counts = cfg["transfer_sizes"], cfg["transfer_counts"]
    if len(sizes) != len(counts):
        raise ArgumentError(f"--transfer-counts must have one count per --transfer-sizes {list(sizes)} (the same "
                            f"length), got --transfer-counts={list(counts)}")
    for k in sizes:
        check_int("--transfer-sizes", k, minimum=1)
    for n in counts:
        if not 1 <= check_int("--transfer-counts", n) <= n_test:
            raise ArgumentError(f"--transfer-counts must be in 1..{n_test} (the test cells), got --transfer-counts={n}")
    for k in cfg["timing_sizes"]:
        check_int("--timing-sizes", k, minimum=1)
    check_float("--blur-sigma", cfg["blur_sigma"], minimum=0, strict=True)
    for w in cfg["blur_widths"]:
        if not 0 <= check_int("--blur-widths", w) <= c:
            raise ArgumentError(f"--blur-widths must be in 0..{c} (--context), got --blur-widths={w}")
    if cfg["n_blur"] is not None:
        check_int("--n-blur", cfg["n_blur"], minimum=1)
    for k in ("seed", "init_seed"):
        if cfg[k] is not None:
            check_int(_opt(k), cfg[k], minimum=0)
    check_int("--workers", args.workers, minimum=1)
    check_int("--oracle-threads", args.oracle_threads, minimum=1)
    try:
        oracles.get_oracle(cfg["oracle"], **cfg["oracle_settings"])
    except ValueError as exc:
        raise ArgumentError(f"--oracle {cfg['oracle']} with --oracle-setting {cfg['oracle_settings']}: {exc}") from None
    _check_backups(args.out, cfg["epochs"])


def _check_backups(out, epochs):
    """ArgumentError for a model's training backup in ``out`` past ``epochs`` (a rerun with fewer --epochs)."""
    for name in ("ednn", "cnn"):
        backup = os.path.join(out, f"train_{name}", "backup")
        if os.path.isdir(backup) and not os.path.exists(os.path.join(out, f"{name}.keras")):
            from ednn_tf import training   # imports Keras: only when there is a backup
            training.check_backup(backup, epochs)


def parse_args(argv=None):
    """``(args, cfg)``: the preset of ``--preset`` with the options given, checked before any work: a
    bad value ends the script with one line naming it and the allowed range, exit status 2."""
    from ednn_tf.cli import parse_setting
    from ednn_tf.util import ArgumentError, argument_errors

    ap = _parser()
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for k in OPTIONS:
        v = getattr(args, k)
        if v is not None:
            cfg[k] = tuple(v) if isinstance(v, list) else v
    if cfg["channels"] == "element" and args.moments is None:
        cfg["moments"] = (1,)   # per-element sums: exact element counts, unchanged by a blur
    args.out = args.out or os.path.join(REPO, "results", f"hexagonal-{args.preset}")
    with argument_errors(ap):
        try:
            settings = dict(map(parse_setting, args.oracle_setting))
        except ValueError as exc:
            raise ArgumentError(f"--oracle-setting: {exc}") from None
        cfg.update(seed=args.seed, init_seed=args.init_seed, preset=args.preset, oracle_settings=settings,
                   sym_mirrors=bool(cfg["sym_mirrors"]))
        if args.blur_widths is None:   # preset widths that fit a changed --context
            cfg["blur_widths"] = tuple(w for w in cfg["blur_widths"] if w <= cfg["context"])
        _check(cfg, args)
    return args, cfg


def train_and_test(args, cfg, d, tag, results, save):
    """Steps 2-3: train (or reuse) the EDNN and the CNN; test errors, ratios, symmetrised errors and
    the Fig. 5 plots."""
    from ednn_tf import plots
    from ednn_tf.apply import studies
    from ednn_tf.atoms import targets
    from ednn_tf.metrics import no_better_than

    y, a, preds = d["y"], d["areas"], d.setdefault("preds", {})

    def test(name, model):
        preds[name], results.setdefault("test", {})[name], sec = studies.test_errors(
            name, model, d["x"], y, d["n_atoms"], a)
        results.setdefault("test_inference_seconds", {})[name] = sec
        save()

    models, histories, _ = targets.train_models(
        cfg, d["tmap"], d["path"], d["train"], d["val"], args.out, [n for n in ("ednn", "cnn") if n not in args.skip],
        cfg["seed"] if cfg.get("init_seed") is None else cfg["init_seed"], not args.no_progress, test,
        results.setdefault("train_seconds", {}))
    entries, results["test_predictions"], sym = studies.comparison(
        models, preds, d, cfg["focus"], cfg["sym_stride"], cfg["sym_mirrors"], PAPER_MAE["cnn"] / PAPER_MAE["ednn"])
    results["test"].update(entries)
    if sym is not None:
        results["test_symmetrised"] = sym
    label = {"ednn": f"EDNN f={cfg['focus']} c={cfg['context']}", "cnn": "plain CNN (whole image)"}
    for name in preds:
        mae = results["test"][name]["meV_per_A2"]["mean_abs_error"]
        plots.parity_and_error(1e3 * y / a, 1e3 * preds[name] / a, os.path.join(args.out, f"fig5_{name}_parity.png"),
                               quantity="E / A", unit="meV/A^2", color=d["carbon"], label="carbon fraction",
                               title=f"{label[name]}, {tag} test set: MAE {mae:.3f} meV/A^2")
        composition = results.get("baselines", {}).get("composition_linear")
        warning = composition and no_better_than(mae, composition["meV_per_A2"]["mean_abs_error"],
                                                 "a linear fit on the element counts alone")
        if warning:
            results.setdefault("warnings", []).append(f"{name}: {warning}")
            print(f"WARNING: {label[name]}: {warning}", file=sys.stderr)
    if histories:
        plots.training_curves(histories, os.path.join(args.out, "training_loss.png"), key="loss [eV^2]")
    save()
    return models


def save_potential(args, cfg, d, ednn, oracle, rkw, results):
    """The EDNN as a self-describing :class:`ednn_tf.potential.Potential`, ``potential.keras`` beside
    ``ednn.keras`` (``ednn_tf.load_potential``, ``EDNNCalculator``, ``experiments/graphene_mc.py
    --model``): its fixed ``grid x grid`` image of the training cell as a per-axis pixel size (A), the
    data's gamma (A), the renderer's cutoff (gammas) and channels. The map to eV (``E0`` per tile, the
    moment term) is inside the EDNN, so ``e0`` is 0 for B, C, N and ``scale`` 1. Returns its path."""
    from ednn_tf import training
    from ednn_tf.atoms import render
    from ednn_tf.atoms.datasets import load_structures
    from ednn_tf.potential import Potential

    cell = load_structures(d["path"], [int(d["train"][0])])[0].cell.lengths()[:2]
    test = results.get("test", {}).get("ednn", {})
    card = {"name": f"hexagonal-{cfg['preset']}", "source": "experiments/hexagonal.py", "oracle": oracle.name,
            "oracle_settings": oracle.settings, "data": os.path.basename(d["path"]), "cell_A": cell.tolist(),
            "grid": [cfg["grid"], cfg["grid"]], "network": {k: cfg[k] for k in ("focus", "context", "width", "dense")},
            "energy": "E = EDNN(image): the fixed map to eV (E0 per tile, moment term) is inside the EDNN",
            "test_mae_meV_per_A2": test.get("meV_per_A2", {}).get("mean_abs_error"),
            "test_mae_meV_per_atom": test.get("meV_per_atom", {}).get("mean_abs_error")}
    pot = Potential(ednn, tuple(float(L) / cfg["grid"] for L in cell), gamma=rkw["gamma"], cutoff=render.DEFAULT_CUTOFF,
                    channels=rkw["channels"], e0={z: 0.0 for z in ELEMENTS}, scale=1.0, card=card)
    return training.save_model_atomic(pot, os.path.join(args.out, "potential.keras"))


def transfer(args, cfg, d, ednn, oracle, stem, rkw, tag, results, save):
    """Step 4: transfer to new k x k sheets and EDNN time vs size (Fig. 9)."""
    from ednn_tf import plots
    from ednn_tf.apply import studies
    from ednn_tf.atoms.datasets import load_structures

    bases = load_structures(d["path"], d["test"])
    tr, pts = studies.transfer_study(ednn, bases, d["y"], oracle, cfg["transfer_sizes"], cfg["transfer_counts"],
                                     cfg["seed"], args.data_dir, stem, rkw, cfg["grid"], cfg["sym_stride"],
                                     cfg["sym_mirrors"], not args.no_progress, lambda tr: save(transfer=tr))
    results["transfer"] = tr
    timing = studies.timing_study(ednn, bases[0], cfg["grid"], cfg["focus"], cfg["timing_sizes"], rkw, tr, pts)
    sizes = sorted(pts["errors"])
    plots.transfer_and_timing(
        [pts["errors"][s] for s in sizes], sizes, timing["n_atoms"], timing["inference_seconds"],
        pts["oracle_atoms"], pts["oracle_seconds"], os.path.join(args.out, "fig9_transfer_timing.png"),
        gap=tr.get("oracle_extensivity_gap_meV_per_atom"), title=f"EDNN trained on 60-atom cells, {tag} labels")
    save()


def blur_step(args, cfg, d, ednn, results, save):
    """Step 5: the blur study (inference only, Fig. 6; ``studies.blur_study``)."""
    from ednn_tf import plots
    from ednn_tf.apply import studies

    bl = studies.blur_study(ednn, d["x"], d["y"], d["areas"], d["preds"]["ednn"], cfg["blur_sigma"],
                                              d["attrs"]["pixel_size_A"], cfg["blur_widths"], cfg["n_blur"])
    t, f = bl["tile_px"], bl["focus_px"]
    plots.blur_curves(np.array(bl["area_fraction_of_tile"]), bl["edge_mae_meV_per_A2"], bl["centre_mae_meV_per_A2"],
                      os.path.join(args.out, "fig6_blur.png"), focus_fraction=f * f / t ** 2,
                      ylabel="test MAE [meV/A^2]" + (" (network input blurred)" if bl["fixed_term_on_unblurred_image"]
                                                     else ""),
                      baseline=bl["no_blur_mae_meV_per_A2"],
                      title=f"Gaussian blur sigma = {cfg['blur_sigma']} A on part of every tile (t={t}, f={f})")
    save(blur=bl)


def main(argv=None):
    args, cfg = parse_args(argv)
    from ednn_tf.atoms import datasets, render, targets
    from ednn_tf.labels import labelling, oracles
    from ednn_tf.util import write_json_atomic

    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    oracle = oracles.get_oracle(cfg["oracle"], **cfg["oracle_settings"])
    tag = datasets.oracle_tag(oracle)
    results = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
               "oracle": oracle.attrs(), "paper_mae_meV_per_A2": PAPER_MAE}

    def save(**entries):
        results.update(entries, wall_seconds=time.time() - t_start)
        write_json_atomic(results, os.path.join(args.out, "results.json"))

    # 1. data (cached, resumable), the fixed part of both models (``targets``), no-network baselines
    rkw = {"gamma": render.DEFAULT_GAMMA, "channels": list(ELEMENTS) if cfg["channels"] == "element" else None}
    stem, path = labelling.prepare_dataset(cfg, oracle, args.data_dir, rkw["channels"], rkw["gamma"], args.workers,
                                           args.oracle_threads, not args.no_progress)
    d = datasets.split_data(path, cfg["n_train"], cfg["n_val"], cfg["seed"])
    powers = tuple(cfg["moments"]) if cfg["baseline"] == "moments" else ()
    tmap = d["tmap"] = targets.data_target_map(path, d["train"], d["table"]["E"][d["train"]], powers)
    e0_area = tmap["E0_eV"] / float(d["table"]["area"][0])
    note = "E = scale * mean_over_tiles(raw) + E0 * area / cell_area + sum_p alpha_p * sum_pixels(x^p)"
    results.update(dataset=d["summary"], baselines=datasets.reference_baselines(path, d["table"], d["train"], d["test"]),
                   target_map={**tmap, "baseline": cfg["baseline"], "init": cfg["init"],
                               "E0_per_area_eV_per_A2": e0_area, "note": note})
    if "ednn" in args.skip and "cnn" in args.skip:   # data only (e.g. before parallel training processes)
        save()
        print(f"data ready: {path}; nothing trained (--skip ednn cnn); wrote {args.out}/results.json")
        return results
    # 2-3. train (resumable), test
    models = train_and_test(args, cfg, d, tag, results, save)
    ednn = models.get("ednn")
    if ednn is None:
        print("EDNN skipped: no transfer or blur study")
        args.skip = list(args.skip) + ["transfer", "blur"]
    else:
        save(potential=save_potential(args, cfg, d, ednn, oracle, rkw, results))
    if "transfer" not in args.skip:   # 4. transfer + time vs size
        transfer(args, cfg, d, ednn, oracle, stem, rkw, tag, results, save)
    if "blur" not in args.skip:       # 5. blur study (inference only)
        blur_step(args, cfg, d, ednn, results, save)
    print(f"wrote {args.out}/results.json and plots in {time.time() - t_start:.0f} s")
    return results


if __name__ == "__main__":
    main()
