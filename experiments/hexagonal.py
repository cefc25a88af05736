"""Sections 3.2.1 and 3.3 of Mills et al. (2019): EDNN vs a plain CNN on 60-atom hexagonal B-C-N
sheets (Fig. 5), transfer of the EDNN to larger sheets with time vs size (Fig. 9), and the blur
study (Fig. 6).

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

1. data: ``hexagonal_dataset(n, seed)`` (graphene, h-BN, B-C-N mixtures, 0-3 vacancies, rattled;
   12.50 x 12.99 A cell) labelled with ``--oracle`` (GFN1-xTB) through ``label_structures``
   (parallel workers, resumable ``.labels.npz`` checkpoint), rendered with eqn (2) on a
   ``grid x grid`` image (``--channels z``: one Z-weighted channel, the paper's; ``element``: one
   channel per element B, C, N, the cpu preset) and written to ``data/`` (X, Y [eV], and per-sample cell, atomic numbers,
   positions, kind, generator info so the images can be re-rendered).
2. models: the EDNN (paper CNN on f + 2c tiles) and the plain CNN on the whole image, same split,
   epochs, batch, optimiser and the same fixed output map to eV (MSE loss in eV^2):
   ``E = s * mean_tiles(raw) + E0 [+ sum_p alpha_p * sum_pixels(x^p)]``; each tile adds
   ``s/n raw + E0/n [+ sum_p alpha_p sum_focus(x^p)]`` (the plain CNN is one tile, its focus the
   whole image). ``E0/n`` is a constant per tile, i.e. per area, and the moment term is a sum over
   pixels, so the EDNN stays extensive on bigger inputs.
   * ``--baseline none`` (paper preset): ``E0`` = mean training energy, ``s`` = its std.
   * ``--baseline moments`` (cpu, tiny): ``alpha_p`` and ``E0`` by least squares of the training
     energies on ``sum(x^p)``, p = 1, 2, 3, and ``s`` = std of the residual. For well-separated atoms
     ``sum(x^p) = (I/p) sum_i Z_i^p``, so p = 1..3 identify the B, C and N counts from the image
     itself: a per-element reference energy that uses nothing but the input (no atom counts are
     passed in). The networks learn what composition does not explain (166 -> 10 eV std here).
     With ``--channels element`` p = 1 suffices (``--moments`` defaults to 1 there): each channel's
     pixel sum is its element count times a constant, and a blur leaves it unchanged.
   * ``--init he`` draws the CNN kernels He-normal (``networks.paper_cnn(initializer=)``): with
     Glorot kernels a fresh narrow network's output barely depends on its input. ``--init lsuv``
     (cpu, tiny) then rescales every layer to unit output std on 64 training images
     (``networks.normalise_to_data``).
   ``--augment 1`` randomly translates every training image by whole pixels (periodically) and
   mirrors it along x and/or y: exact symmetries, the label is unchanged (cpu, tiny; both models).
3. test: MAE in meV/A^2 (paper's unit) and meV/atom for both; ratio CNN/EDNN (paper: 2.25).
4. transfer: test cells rebuilt unrattled, repeated k x k and *independently* re-rattled with the
   cell's own rattle sigma (genuinely new structures), labelled by the oracle (serial, timed),
   rendered at the same pixel size (k * grid) and predicted by the unchanged EDNN; per-atom error
   vs size. Time vs size: EDNN inference vs oracle wall time (log-log). For k = 2 the exact repeat
   of each base cell is labelled too, which measures the oracle's own finite-size (k-point)
   inconsistency, E(2x2 repeat)/4 - E(cell).
5. blur: inference with a Gaussian blur (``--blur-sigma`` A) on (a) an edge band of each tile's
   context or (b) an equal-area centre square of its focus; MAE vs blurred area. The blur acts on
   what the network sees; the fixed moment term keeps its unblurred value (``learned_part``).

Writes ``results.json``, the two models and PNG plots to ``--out`` (default results/hexagonal-<preset>).
"""
from __future__ import annotations

import argparse
import hashlib
import json
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
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: ``hexagonal_dataset``'s in-plane rattle range (A); data files made with another range carry it in
#: their name.
DEFAULT_RATTLE = (0.05, 0.10)

#: Atomic numbers of the per-element channels (``--channels element``).
ELEMENTS = (5, 6, 7)

PRESETS = {
    # Paper Sec. 3.2.1 / Table 1: 256 x 256 grid, f=64, c=32, the paper CNN at full width, batch 100,
    # Adam 1e-5, MSE, 500 epochs, 18,515 training structures (26,449 in all). Meant for a GPU; the
    # GFN1-xTB labels of 26,449 cells take ~2 core-hours, the transfer labels (4x4 = 960 atoms,
    # ~4 min each on one core) ~1 hour.
    # rattle: range of the in-plane rattle sigma (A). Uncorrelated rattling costs 56 sigma^2 eV/atom
    # with GFN1-xTB (fit on our labels): 3/2 kT per atom at 1100 K for 0.05 A and 4300 K for 0.10 A,
    # so these are strongly perturbed cells, not a thermal ensemble. A cooler set (--rattle 0.02 0.05,
    # 160-1000 K) leaves bond types as the main energy variation, and on it both narrow networks stayed
    # on the constant-prediction plateau for 8-26 epochs (lr 1e-4 .. 1e-3, He or lsuv): docs/hexagonal.md.
    "paper": dict(channels="z", rattle=DEFAULT_RATTLE, n_structures=26449, n_train=18515, n_val=2645, grid=256, focus=64, context=32, width=1.0,
                  dense=1024, batch_size=100, lr=1e-5, lr_decay=False, warmup_epochs=0, epochs=500, augment=False, baseline="none", moments=(1, 2, 3), init="glorot",
                  oracle="gfn1-xtb",
                  transfer_sizes=(1, 2, 3, 4), transfer_counts=(5, 20, 10, 5), timing_sizes=(1, 2, 4, 8, 16),
                  blur_sigma=0.4, blur_widths=(0, 2, 4, 6, 8, 12, 16, 24, 32), n_blur=1000,
                  sym_stride=0, sym_mirrors=False),
    # The same cell and the same physical focus/context (3.1 / 1.6 A wide) on a coarser 64 x 64 grid
    # (0.2 A/px = gamma: the Gaussians stay resolved), the same 13-conv + 2-dense CNN at half the
    # filters and dense 256, 4000 cells (GFN1-xTB labels ~15 min on 2 cores), exact-symmetry
    # augmentation, He kernels rescaled to unit std on training images (lsuv). Measured trade-offs
    # (docs/hexagonal.md): 128 px / width 0.25 / 800 cells gave the same error at the same cost.
    # One image channel per element (B, C, N; --channels z for the paper's single Z-weighted channel):
    # test MAE 10.2 vs 27.9 meV/A^2 for the EDNN, and the per-element pixel sums give exact
    # per-element reference energies (moments p = 1).
    # Transfer stops at 3x3 (~520 atoms, 45-130 s of GFN1-xTB); a 4x4 cell (~930 atoms) takes 6 min on
    # a quiet core and 30+ min on a loaded one: add it with --transfer-sizes 1 2 3 4 --transfer-counts 3 3 1 1.
    "cpu": dict(channels="element", rattle=DEFAULT_RATTLE, n_structures=4000, n_train=3200, n_val=400, grid=64, focus=16, context=8, width=0.5,
                dense=256, batch_size=16, lr=1e-3, lr_decay=True, warmup_epochs=0, epochs=100, augment=True,
                baseline="moments", moments=(1,), init="lsuv", oracle="gfn1-xtb",
                transfer_sizes=(1, 2, 3), transfer_counts=(3, 3, 1), timing_sizes=(1, 2, 4, 8, 16),
                blur_sigma=0.4, blur_widths=(0, 1, 2, 3, 4, 6, 8), n_blur=None, sym_stride=2, sym_mirrors=True),
    # One GPU, measured on an H100 (docs/hexagonal.md, "Measured: gpu preset"): the cpu preset's data and
    # recipe at twice the resolution (128 x 128, 0.1 A/px; f / c still 3.1 / 1.6 A) with the paper CNN at
    # full width, 200 epochs. Training: EDNN 253 s, CNN 277 s (H100, JAX backend, three runs sharing the
    # GPU). Test MAE 4.6 vs 8.3 meV/A^2. Transfer labels (GFN1-xTB on the CPU) are cached in data/.
    "gpu": dict(channels="element", rattle=DEFAULT_RATTLE, n_structures=4000, n_train=3200, n_val=400, grid=128, focus=32, context=16,
                width=1.0, dense=1024, batch_size=16, lr=1e-3, lr_decay=True, warmup_epochs=0, epochs=200, augment=True,
                baseline="moments", moments=(1,), init="lsuv", oracle="gfn1-xtb",
                transfer_sizes=(1, 2, 3, 4), transfer_counts=(3, 3, 1, 1), timing_sizes=(1, 2, 4, 8, 16),
                blur_sigma=0.4, blur_widths=(0, 2, 4, 6, 8, 12, 16), n_blur=None, sym_stride=4, sym_mirrors=True),
    # Seconds, for tests of the script itself: a cheap empirical oracle and a tiny grid.
    "tiny": dict(channels="z", rattle=DEFAULT_RATTLE, n_structures=32, n_train=20, n_val=4, grid=32, focus=8, context=4, width=0.125, dense=16,
                 batch_size=4, lr=1e-3, lr_decay=False, warmup_epochs=1, epochs=2, augment=True, baseline="moments", moments=(1, 2, 3),
                 init="lsuv", oracle="tersoff-bnc",
                 transfer_sizes=(1, 2), transfer_counts=(2, 2), timing_sizes=(1, 2, 4),
                 blur_sigma=0.4, blur_widths=(0, 1, 2, 4), n_blur=None, sym_stride=4, sym_mirrors=True),
}
#: Paper Sec. 3.2.1: test MAE in meV/A^2 after 500 epochs.
PAPER_MAE = {"ednn": 1.122, "cnn": 2.529}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--out", default=None, help="output directory (default results/hexagonal-<preset>)")
    ap.add_argument("--data-dir", default=os.path.join(REPO, "data"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the structures, their split and the networks")
    ap.add_argument("--init-seed", type=int,
                    help="seed of the networks' initial weights, batch order and augmentation only "
                         "(default --seed): repeats of one data set and split")
    ap.add_argument("--oracle", help="labelling oracle (gfn1-xtb, tersoff-bnc, rebo, lj)")
    ap.add_argument("--oracle-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="oracle setting (repeatable; VALUE parsed as JSON), e.g. supercell=2 for a 2x2 "
                         "k-mesh with gfn1-xtb (transfer cells k x k then use supercell=ceil(2/k))")
    ap.add_argument("--n-structures", type=int, help="structures in the data set (train + val + test)")
    ap.add_argument("--rattle", type=float, nargs=2, metavar=("LOW", "HIGH"),
                    help="range of the in-plane rattle sigma in A (uniform per cell; out of plane 0.4x)")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--n-val", type=int)
    ap.add_argument("--grid", type=int, help="image pixels per side over the 12.50 x 12.99 A cell")
    ap.add_argument("--focus", type=int)
    ap.add_argument("--context", type=int)
    ap.add_argument("--width", type=float, help="CNN filter multiplier (1.0 = paper)")
    ap.add_argument("--dense", type=int, help="width of the CNN's hidden dense layer (paper 1024)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-decay", type=int, choices=(0, 1), help="cosine-decay the step 100x over training")
    ap.add_argument("--baseline", choices=("moments", "none"),
                    help="fixed image-moment term sum_p alpha_p sum(x^p) in both models (moments) or only E0 (none)")
    ap.add_argument("--moments", type=int, nargs="+",
                    help="powers p of the image-moment term (default 1 2 3; 1 with --channels element)")
    ap.add_argument("--channels", choices=("z", "element"),
                    help="image: one Z-weighted channel (eqn 2, the paper's) or one channel per element (B, C, N)")
    ap.add_argument("--init", choices=("he", "glorot", "lsuv"),
                    help="CNN kernels: networks.INITIALIZERS, or lsuv = He rescaled to unit std per layer on training images")
    ap.add_argument("--warmup-epochs", type=int, help="linear warm-up of the step from lr/100 over these epochs")
    ap.add_argument("--augment", type=int, choices=(0, 1),
                    help="random periodic translations and mirrors of the training images (1) or not (0)")
    ap.add_argument("--transfer-sizes", type=int, nargs="*", help="supercell sizes k (k x k cells) to label")
    ap.add_argument("--transfer-counts", type=int, nargs="*", help="structures per transfer size")
    ap.add_argument("--timing-sizes", type=int, nargs="*", help="k of the k x k repeats timed with the EDNN")
    ap.add_argument("--blur-sigma", type=float, help="Gaussian blur width in Angstrom")
    ap.add_argument("--blur-widths", type=int, nargs="*", help="edge-band widths (px) defining the blurred areas")
    ap.add_argument("--n-blur", type=int, help="test images used in the blur study (default all)")
    ap.add_argument("--sym-stride", type=int,
                    help="also report both models averaged over whole-pixel shifts at offsets 0, s, 2s, ... < focus "
                         "per axis (s must divide focus; 1 = every offset, which makes the EDNN exactly shift "
                         "invariant; 0 = off)")
    ap.add_argument("--sym-mirrors", type=int, choices=(0, 1), help="include the mirrors in --sym-stride's average")
    ap.add_argument("--workers", type=int, default=2, help="labelling worker processes")
    ap.add_argument("--oracle-threads", type=int, default=1,
                    help="BLAS/OpenMP threads per labelling worker (1 is fastest on a shared machine); the "
                         "serial transfer labelling in this process uses OMP_NUM_THREADS (default 1)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("ednn", "cnn", "transfer", "blur"),
                    help="steps to skip; 'ednn' (train only the CNN, e.g. in a parallel process) also skips "
                         "transfer and blur. A later run with the same --out reuses both saved models. "
                         "'ednn cnn' only prepares the data file (label, render) and the baselines")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for k in cfg:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = tuple(v) if isinstance(v, list) else v
    if cfg["channels"] == "element" and args.moments is None:
        cfg["moments"] = (1,)   # per-element sums: exact element counts, unchanged by a blur
    settings = {}
    for item in args.oracle_setting:
        if "=" not in item:
            raise SystemExit(f"--oracle-setting must be KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        try:
            settings[key] = json.loads(val)
        except ValueError:
            settings[key] = val
    cfg.update(seed=args.seed, init_seed=args.init_seed, preset=args.preset, oracle_settings=settings)
    n_test = cfg["n_structures"] - cfg["n_train"] - cfg["n_val"]
    if min(cfg["n_train"], cfg["n_val"], n_test) < 1:
        raise SystemExit(f"need n_train, n_val >= 1 and n_structures > n_train + n_val, got {cfg['n_structures']}, "
                         f"{cfg['n_train']}, {cfg['n_val']}")
    if cfg["grid"] % cfg["focus"]:
        raise SystemExit(f"--grid {cfg['grid']} must be a multiple of --focus {cfg['focus']}")
    cfg["sym_mirrors"] = bool(cfg["sym_mirrors"])
    if cfg["sym_stride"] < 0 or (cfg["sym_stride"] and cfg["focus"] % cfg["sym_stride"]):
        raise SystemExit(f"--sym-stride must be 0 or divide --focus {cfg['focus']}, got {cfg['sym_stride']}")
    if cfg["focus"] < 1 or cfg["context"] < 0 or cfg["epochs"] < 1 or cfg["batch_size"] < 1:
        raise SystemExit("need focus >= 1, context >= 0, epochs >= 1, batch size >= 1")
    if not 0 <= cfg["warmup_epochs"] <= cfg["epochs"]:
        raise SystemExit(f"--warmup-epochs must be in 0..epochs, got {cfg['warmup_epochs']}")
    if len(cfg["transfer_sizes"]) != len(cfg["transfer_counts"]):
        raise SystemExit(f"--transfer-sizes {cfg['transfer_sizes']} and --transfer-counts "
                         f"{cfg['transfer_counts']} must have the same length")
    if any(k < 1 for k in cfg["transfer_sizes"] + cfg["timing_sizes"]) or any(n < 1 for n in cfg["transfer_counts"]):
        raise SystemExit("transfer/timing sizes and counts must be >= 1")
    if max(cfg["transfer_counts"], default=0) > n_test:
        raise SystemExit(f"transfer counts {cfg['transfer_counts']} exceed the {n_test} test structures")
    if args.blur_widths is None:   # preset widths that fit a changed --context
        cfg["blur_widths"] = tuple(w for w in cfg["blur_widths"] if w <= cfg["context"])
    if any(w < 0 or w > cfg["context"] for w in cfg["blur_widths"]):
        raise SystemExit(f"--blur-widths must lie in 0..context={cfg['context']}, got {cfg['blur_widths']}")
    if args.oracle_threads < 1 or args.workers < 1:
        raise SystemExit("--workers and --oracle-threads must be >= 1")
    args.out = args.out or os.path.join(REPO, "results", f"hexagonal-{args.preset}")
    return args, cfg


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def oracle_tag(oracle):
    """File-name tag of an oracle: its name, plus a hash of the settings when they are not the defaults."""
    tag = oracle.name.replace("/", "-")
    if oracle.settings != type(oracle)(**{}).settings:
        tag += "-" + hashlib.sha1(json.dumps(oracle.settings, sort_keys=True).encode()).hexdigest()[:8]
    return tag


def pack_structures(structs):
    """Per-sample arrays that rebuild the structures: zero-padded numbers/positions plus counts."""
    n_max = max(len(a) for a in structs)
    numbers = np.zeros((len(structs), n_max), np.int16)
    positions = np.zeros((len(structs), n_max, 3), np.float64)
    for i, a in enumerate(structs):
        numbers[i, :len(a)] = a.numbers
        positions[i, :len(a)] = a.positions
    return dict(numbers=numbers, positions=positions, n_atoms=np.array([len(a) for a in structs], np.int32),
                cell=np.array([np.asarray(a.cell) for a in structs]),
                pbc=np.array([a.pbc for a in structs]),
                kind=np.array([a.info.get("kind", "") for a in structs], dtype=object),
                info=np.array([json.dumps(a.info, default=str, sort_keys=True) for a in structs], dtype=object))


def load_structures(path, indices=None):
    """Rebuild the ase.Atoms of a data file written by this script (rows ``indices``, sorted)."""
    from ase import Atoms

    from ednn_tf import data

    arr = data.read_arrays(path, ["numbers", "positions", "n_atoms", "cell", "pbc", "info"], indices=indices)
    out = []
    for z, pos, n, cell, pbc, info in zip(arr["numbers"], arr["positions"], arr["n_atoms"], arr["cell"],
                                          arr["pbc"], arr["info"]):
        a = Atoms(numbers=z[:n], positions=pos[:n], cell=cell, pbc=pbc)
        a.info.update(json.loads(info.decode() if isinstance(info, bytes) else info))
        out.append(a)
    return out


def build_dataset(path, structs, energies, shape, gamma, attrs, progress, channels=None):
    from ednn_tf import data
    from ednn_tf.atoms import render

    X = render.render_many(structs, shape=shape, progress=progress, gamma=gamma, channels=channels)
    return data.write_dataset(path, X, energies, attrs=attrs, **pack_structures(structs))


def sibling_renders(stem):
    """Existing data files of the labelled structures ``stem`` at any grid or channel choice
    (``{stem}_grid<n>[_elements].h5``), smallest file first."""
    import glob
    import re

    pat = re.compile(re.escape(os.path.basename(stem)) + r"_grid\d+(_elements)?\.h5$")
    found = [p for p in glob.glob(glob.escape(stem) + "_grid*.h5") if pat.match(os.path.basename(p))]
    return sorted(found, key=os.path.getsize)


def rerender_dataset(source, path, shape, gamma, channels, progress=False):
    """Write ``path``: the labelled structures of the data file ``source`` rendered on ``shape``
    (Z-weighted, or one channel per element of ``channels``). Labels, structures and provenance
    are copied; no structure is regenerated and nothing is relabelled."""
    from ednn_tf import data
    from ednn_tf.atoms import render

    structs = load_structures(source)
    energies = data.read_arrays(source, ["Y"])["Y"][:, 0]
    cell = structs[0].cell.lengths()[:2]
    attrs = {**data.read_attrs(source), "grid": list(shape), "gamma_A": gamma, "cutoff_gamma": render.DEFAULT_CUTOFF,
             "pixel_size_A": [cell[0] / shape[0], cell[1] / shape[1]],
             "channels": "Z-weighted" if channels is None else list(channels),
             "rendered_from": os.path.basename(source)}
    return build_dataset(path, structs, energies, shape, gamma, attrs, progress, channels=channels)


def ideal_cell(base):
    """The unrattled version of a ``hexagonal_cell`` output (same kind, composition, vacancies),
    rebuilt from its generator record ``base.info``."""
    from ednn_tf.atoms import structures

    info = base.info
    ideal = structures.hexagonal_cell(info["kind"], info["seed"], vacancies=info["vacancies"], rattle=0.0,
                                      rattle_z=0.0, lattice_constant=info["lattice_constant"])
    if not np.array_equal(ideal.numbers, base.numbers):
        raise RuntimeError("rebuilding the unrattled base cell changed its composition")
    return ideal


def local_descriptors(structs, bond_cutoff=1.85):
    """Hand-made local descriptors of ``hexagonal_dataset`` cells, ``(N, 8)``: bond counts for the
    element pairs B-B, B-C, B-N, C-C, C-N, N-N (bonds: pairs closer than ``bond_cutoff`` A), the sum of
    squared bond-length changes (A^2) against the unrattled cell (``ideal_cell``) and the sum of
    squared out-of-plane displacements (A^2). A reference for what a purely local, linear energy
    model can reach; the networks never see these numbers."""
    from ase.neighborlist import neighbor_list

    pairs = [(5, 5), (5, 6), (5, 7), (6, 6), (6, 7), (7, 7)]
    out = np.zeros((len(structs), len(pairs) + 2))
    for k, atoms in enumerate(structs):
        z = atoms.numbers
        ideal = ideal_cell(atoms)
        i, j, d0 = neighbor_list("ijd", ideal, bond_cutoff)
        keep = i < j
        i, j, d0 = i[keep], j[keep], d0[keep]
        lo, hi = np.minimum(z[i], z[j]), np.maximum(z[i], z[j])
        out[k, :len(pairs)] = [np.sum((lo == a) & (hi == b)) for a, b in pairs]
        out[k, -2] = np.sum((atoms.get_distances(i, j, mic=True) - d0) ** 2) if len(i) else 0.0
        out[k, -1] = np.sum((atoms.positions[:, 2] - ideal.positions[:, 2]) ** 2)
    return out


def rattled_supercell(base, k, seed, min_distance=1.0):
    """A new ``k x k`` sheet like ``base`` (a ``hexagonal_cell`` output): :func:`ideal_cell` repeated
    ``k x k`` and rattled with the base cell's in-plane / out-of-plane sigmas, independently for
    every atom (``ednn_tf.atoms.structures.rattle``: redrawn until no two atoms are closer than
    ``min_distance`` A). Deterministic from ``(seed, k)``.
    """
    from ednn_tf.atoms import structures

    info = base.info
    big = structures.supercell(ideal_cell(base), k)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7, int(k)]))
    out = structures.rattle(big, float(info["rattle"]), float(info["rattle_z"]), seed=rng, min_distance=min_distance)
    out.info.update({**info, "generator": "rattled_supercell", "k": int(k), "rattle_seed": int(seed)})
    return out


def label_timed(structs, oracle, path, progress=True, desc="labelling"):
    """Serial, in-process oracle energies (eV) and wall seconds per structure, resumable from a JSON file."""
    from tqdm.auto import tqdm

    from ednn_tf.util import write_json_atomic
    from ednn_tf.labels.oracles import structures_fingerprint

    meta = {"oracle": oracle.name, "settings": oracle.settings, "fingerprint": structures_fingerprint(structs),
            "threads": os.environ.get("OMP_NUM_THREADS")}
    state = {"meta": meta, "energy": {}, "seconds": {}}
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
        if {k: old["meta"].get(k) for k in ("oracle", "settings", "fingerprint")} != \
                {k: meta[k] for k in ("oracle", "settings", "fingerprint")}:
            raise ValueError(f"{path} was written for other structures or another oracle; delete it or use --data-dir")
        state = old
    todo = [i for i in range(len(structs)) if str(i) not in state["energy"]]
    for i in tqdm(todo, desc=desc, unit="structure", disable=not progress or not todo):
        t0 = time.perf_counter()
        e = oracle.energy(structs[i])
        state["seconds"][str(i)] = time.perf_counter() - t0
        state["energy"][str(i)] = e
        write_json_atomic(state, path)
    n = len(structs)
    return (np.array([state["energy"][str(i)] for i in range(n)]),
            np.array([state["seconds"][str(i)] for i in range(n)]))


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def to_ev(raw_model, scale, offset, name, moments=None, crop=0):
    """``raw_model`` followed by the fixed affine map ``raw * scale + offset`` (eV), plus, with
    ``moments = {p: alpha_p}``, the fixed term ``sum_p alpha_p * sum(x**p)`` over the input's central
    region (``crop`` pixels removed on each side: the focus of an EDNN tile). With C > 1 channels
    ``alpha_p`` is a length-C list, one coefficient per channel."""
    import keras

    out = keras.layers.Rescaling(float(scale), offset=float(offset), name="to_eV")(raw_model.output)
    if moments:
        x = keras.layers.Cropping2D(crop, name="focus")(raw_model.input) if crop else raw_model.input
        feats = []
        for p in sorted(moments):
            xp = x if p == 1 else keras.layers.Multiply(name=f"x_pow{p}")([x] * p)
            feats.append(keras.layers.GlobalAveragePooling2D(name=f"mean_x_pow{p}")(xp))
        cat = keras.layers.Concatenate(name="moments")(feats) if len(feats) > 1 else feats[0]
        term = keras.layers.Dense(1, use_bias=False, trainable=False, name="moments_eV")(cat)
        out = keras.layers.Add(name="tile_eV")([out, term])
    model = keras.Model(raw_model.input, out, name=name)
    if moments:
        h, w = (int(d) - 2 * crop for d in raw_model.input.shape[1:3])
        model.get_layer("moments_eV").set_weights(
            [np.array([[a * h * w] for p in sorted(moments) for a in np.atleast_1d(moments[p])])])
    return model


def learned_part(ednn):
    """The EDNN without its fixed moment term (``to_ev(..., moments)``): same focus, context and
    weights, tile value ``s/n raw + E0/n``. Returns ``ednn`` itself if it has no moment term."""
    import keras

    from ednn_tf import EDNN

    sub = ednn.subnet
    if "moments_eV" not in [layer.name for layer in sub.layers]:
        return ednn
    core = keras.Model(sub.input, sub.get_layer("to_eV").output, name=sub.name + "_learned")
    return EDNN(core, focus=ednn.focus, context=ednn.context)


def moment_features(X, powers, batch=256):
    """``sum(X**p)`` per image, power and channel (float64), ``(N, len(powers) * C)``, power-major."""
    C = X.shape[-1]
    out = np.empty((len(X), len(powers) * C))
    for lo in range(0, len(X), batch):
        x = np.asarray(X[lo:lo + batch], np.float64)
        out[lo:lo + batch] = np.concatenate([(x ** p).sum(axis=(1, 2)) for p in powers], axis=1)
    return out


def fit_target_map(E, F=None, powers=()):
    """The fixed part of both models: ``E0`` (constant per training cell), the moment coefficients
    ``alpha_p`` (least squares of E on ``[F, 1]``, or none; a float per power for one channel, a list
    per channel otherwise) and ``scale`` = std of what the CNN learns."""
    E = np.asarray(E, np.float64)
    if powers:
        A = np.column_stack([F, np.ones(len(E))])
        coef = np.linalg.lstsq(A, E, rcond=None)[0]
        per = coef[:-1].reshape(len(powers), -1)
        alphas = {int(p): (float(a[0]) if len(a) == 1 else [float(v) for v in a]) for p, a in zip(powers, per)}
        e0 = float(coef[-1])
        resid = E - A @ coef
    else:
        alphas, e0, resid = {}, float(E.mean()), E - E.mean()
    return {"E0_eV": e0, "moment_coefficients": alphas, "scale_eV": float(resid.std()) or 1.0,
            "train_residual_mae_eV": float(np.mean(np.abs(resid)))}


def build_models(cfg, tmap, seed, x_init=None):
    """The EDNN and the plain CNN, both ending in the same fixed map to eV (see the module docstring).
    With ``cfg["init"] == "lsuv"`` the He-normal kernels are rescaled layer by layer to unit output
    std on the sample images ``x_init`` (tiles of them for the EDNN; ``networks.normalise_to_data``)."""
    import keras

    from ednn_tf import EDNN, networks

    f, c, n = cfg["focus"], cfg["context"], cfg["grid"]
    n_tiles = (n // f) ** 2
    e0, scale, alphas = tmap["E0_eV"], tmap["scale_eV"], {int(k): v for k, v in tmap["moment_coefficients"].items()}
    keras.utils.set_random_seed(seed)
    kernels = "he" if cfg["init"] == "lsuv" else cfg["init"]
    nch = len(ELEMENTS) if cfg["channels"] == "element" else 1
    sub = networks.paper_cnn(f + 2 * c, channels=nch, width=cfg["width"], dense=cfg["dense"], seed=seed,
                             initializer=kernels)
    keras.utils.set_random_seed(seed + 1)
    cnn = networks.plain_cnn(n, n, channels=nch, width=cfg["width"], dense=cfg["dense"], seed=seed + 1,
                             initializer=kernels)
    if cfg["init"] == "lsuv":
        if x_init is None:
            raise ValueError("init='lsuv' needs sample training images x_init")
        from ednn_tf import tiling
        tiles = tiling.fold_tiles(tiling.extract_tiles(np.asarray(x_init, np.float32), f, c), 2)[0]
        networks.normalise_to_data(sub, np.asarray(tiles))
        networks.normalise_to_data(cnn, x_init)
    ednn = EDNN(to_ev(sub, scale / n_tiles, e0 / n_tiles, "paper_cnn_eV", alphas, crop=c), focus=f, context=c)
    plain = to_ev(cnn, scale, e0, "plain_cnn_eV", alphas)
    return ednn, plain


def make_schedule(cfg, steps_per_epoch):
    """Adam step: constant ``lr``, or cosine-decayed 100x over training (``lr_decay``), after a
    linear warm-up from ``lr/100`` over ``warmup_epochs`` (the 13-layer ReLU CNN without
    normalisation can collapse to a constant output in its first epoch at lr 1e-3 without it)."""
    import keras

    lr, warm = cfg["lr"], cfg["warmup_epochs"] * steps_per_epoch
    if not cfg["lr_decay"] and not warm:
        return lr
    decay = max(1, (cfg["epochs"] * steps_per_epoch - warm) if cfg["lr_decay"] else 10 ** 12)
    return keras.optimizers.schedules.CosineDecay(lr / 100 if warm else lr, decay_steps=decay, alpha=0.01,
                                                  warmup_target=lr if warm else None, warmup_steps=warm)


def errors(true_ev, pred_ev, n_atoms, areas):
    from ednn_tf.metrics import energy_errors

    return energy_errors(true_ev, pred_ev, n_atoms, areas)


def predict_ev(model, x, batch_size=32):
    """Float64 ``(batch,)`` predictions in eV of either model: ``EDNN.predict_total`` (float64 sum over
    tiles) or the plain CNN's ``predict``."""
    if hasattr(model, "predict_total"):
        return model.predict_total(x, batch_size=batch_size)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)[:, 0]


def ratio_entries(true_ev, ednn_ev, cnn_ev, areas):
    """CNN / EDNN ratios of the mean and the median absolute error (meV/A^2, the paper's "MAE" is
    a median) and, as ``ratio_ci``, their paired bootstrap 95 % intervals over the test cells
    (``ednn_tf.metrics.error_ratio_ci``)."""
    from ednn_tf.metrics import error_ratio_ci

    t, e, c = (1e3 * np.asarray(v, np.float64) / areas for v in (true_ev, ednn_ev, cnn_ev))
    ci = {stat: error_ratio_ci(t, e, c, stat=stat) for stat in ("mean", "median")}
    return {"mae_ratio_cnn_over_ednn": ci["mean"]["ratio"], "median_ratio_cnn_over_ednn": ci["median"]["ratio"],
            "ratio_ci": ci}


def ratio_summary(ci):
    return ", ".join(f"{stat} ratio {r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}] (95 %; "
                     f"{100 * r['p_ratio_below_2']:.0f} % of resamples below 2)" for stat, r in ci.items())


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def fit_exponent(n, t):
    """Least-squares slope of log t vs log n (None with fewer than two distinct sizes)."""
    n, t = np.asarray(n, float), np.asarray(t, float)
    if len(np.unique(n)) < 2:
        return None
    return float(np.polyfit(np.log(n), np.log(t), 1)[0])


# ------------------------------------------------------------------------------------------------
def main(argv=None):
    args, cfg = parse_args(argv)
    import keras

    from ednn_tf.apply import blur
    from ednn_tf import data, plots, training
    from ednn_tf.labels import oracles
    from ednn_tf.atoms import render, structures
    from ednn_tf.util import write_json_atomic
    from ednn_tf.timing import min_seconds

    progress = not args.no_progress
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    seed, n, f, c = cfg["seed"], cfg["grid"], cfg["focus"], cfg["context"]
    oracle = oracles.get_oracle(cfg["oracle"], **cfg["oracle_settings"])
    tag = oracle_tag(oracle)
    gamma = render.DEFAULT_GAMMA
    results = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
               "oracle": oracle.attrs(), "paper_mae_meV_per_A2": PAPER_MAE}

    def save_results():
        results["wall_seconds"] = time.time() - t_start
        write_json_atomic(json.loads(json.dumps(results, default=_json_default)), os.path.join(args.out, "results.json"))

    # ------------------------------------------------------------ 1. data (cached, resumable)
    N = cfg["n_structures"]
    rattle = tuple(float(r) for r in cfg["rattle"])
    rtag = "" if rattle == DEFAULT_RATTLE else f"_rattle{rattle[0]:g}-{rattle[1]:g}"
    stem = os.path.join(args.data_dir, f"hexagonal_{tag}_n{N}_seed{seed}{rtag}")
    rkw = {"gamma": gamma, "channels": list(ELEMENTS) if cfg["channels"] == "element" else None}
    path = f"{stem}_grid{n}{'_elements' if cfg['channels'] == 'element' else ''}.h5"
    siblings = [] if os.path.exists(path) else sibling_renders(stem)
    if siblings:   # the same labelled cells at another grid or channel choice: re-render, never relabel
        print(f"re-rendering the labelled cells of {siblings[0]} -> {path}")
        rerender_dataset(siblings[0], path, (n, n), gamma, rkw["channels"], progress)
    if not os.path.exists(path):
        print(f"generating {N} hexagonal sheets (seed {seed}) -> {path}")
        t0 = time.time()
        structs = structures.hexagonal_dataset(N, seed, rattle_range=rattle)
        t1 = time.time()
        energies = oracles.label_structures(structs, oracle, n_workers=args.workers, checkpoint=f"{stem}.labels.npz",
                                            progress=progress, threads_per_worker=args.oracle_threads)
        t2 = time.time()
        cell = structs[0].cell.lengths()[:2]
        attrs = {**oracle.attrs(), "unit": "eV", "generator": "ednn_tf.atoms.structures.hexagonal_dataset",
                 "n_structures": N, "seed": seed, "rattle_range_A": list(rattle), "grid": [n, n], "gamma_A": gamma,
                 "cutoff_gamma": render.DEFAULT_CUTOFF, "pixel_size_A": [cell[0] / n, cell[1] / n],
                 "cell_A": cell.tolist(), "channels": "Z-weighted" if rkw["channels"] is None else rkw["channels"],
                 "image": "eqn (2): sum_i Z_i exp(-r^2 / 2 gamma^2) (or one channel per element, weight 1), row = x",
                 "labelling_seconds": t2 - t1}
        build_dataset(path, structs, energies, (n, n), gamma, attrs, progress, channels=rkw["channels"])
        print(f"  labelled in {t2 - t1:.0f} s, total {time.time() - t0:.0f} s")
        del structs
    attrs = data.read_attrs(path)
    meta = data.read_arrays(path, ["Y", "n_atoms", "cell", "kind"])
    E_all = meta["Y"][:, 0]
    areas_all = np.abs(meta["cell"][:, 0, 0] * meta["cell"][:, 1, 1] - meta["cell"][:, 0, 1] * meta["cell"][:, 1, 0])
    n_atoms_all = meta["n_atoms"].astype(np.float64)
    fr = (cfg["n_train"] / N, cfg["n_val"] / N, 1 - (cfg["n_train"] + cfg["n_val"]) / N)
    train_idx, val_idx, test_idx = data.split_indices(N, fr, seed=seed)
    results["dataset"] = {"path": path, "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(test_idx),
                          "pixel_size_A": attrs["pixel_size_A"], "labelling_seconds": attrs.get("labelling_seconds"),
                          "energy_eV": {"min": float(E_all.min()), "max": float(E_all.max()),
                                        "std": float(E_all.std())}}

    # the fixed part of both models (identical for the two): E0 per training cell, optionally the
    # image-moment term sum_p alpha_p sum(x^p) (least squares on the training images), and the scale of
    # what the networks learn
    powers = tuple(cfg["moments"]) if cfg["baseline"] == "moments" else ()
    F_train = None
    if powers:
        X_h5 = data.read_arrays(path, ["X"], indices=train_idx)["X"]
        F_train = moment_features(X_h5, powers)
        del X_h5
    tmap = fit_target_map(E_all[train_idx], F_train, powers)
    results["target_map"] = {**tmap, "baseline": cfg["baseline"], "init": cfg["init"],
                             "E0_per_area_eV_per_A2": tmap["E0_eV"] / float(areas_all[0]),
                             "note": "E = scale * mean_over_tiles(raw) + E0 * area / cell_area "
                                     "+ sum_p alpha_p * sum_pixels(x^p)"}

    test = data.read_arrays(path, ["X", "Y"], indices=test_idx)
    x_test, y_test = test["X"].astype(np.float32), test["Y"][:, 0]
    a_test, n_test_atoms = areas_all[test_idx], n_atoms_all[test_idx]
    kinds = np.array([k.decode() if isinstance(k, bytes) else str(k) for k in meta["kind"][test_idx]])
    carbon = np.array([np.mean(a.numbers == 6) for a in load_structures(path, test_idx)])

    # reference points that need no network: the training mean, and a least-squares fit of the energy
    # on the element counts (B, C, N, ...) -- information the networks must find in the images themselves
    counts = data.read_arrays(path, ["numbers"])["numbers"]
    elements = [z for z in np.unique(counts) if z > 0]
    F = np.stack([(counts == z).sum(axis=1) for z in elements] + [np.ones(N)], axis=1).astype(np.float64)
    coef = np.linalg.lstsq(F[train_idx], E_all[train_idx], rcond=None)[0]
    results["baselines"] = {
        "training_mean": errors(y_test, np.full(len(y_test), E_all[train_idx].mean()), n_test_atoms, a_test),
        "composition_linear": {**errors(y_test, F[test_idx] @ coef, n_test_atoms, a_test),
                               "eV_per_atom": {int(z): float(c) for z, c in zip(elements, coef)},
                               "constant_eV": float(coef[-1])}}
    # and a linear model on hand-made local descriptors (what a purely local energy could reach)
    A = np.column_stack([F, local_descriptors(load_structures(path))])
    coef = np.linalg.lstsq(A[train_idx], E_all[train_idx], rcond=None)[0]
    results["baselines"]["local_descriptors_linear"] = {
        **errors(y_test, A[test_idx] @ coef, n_test_atoms, a_test),
        "features": "element counts, bonds (< 1.85 A) per element pair, sum of squared bond-length "
                    "changes and of squared out-of-plane displacements from the unrattled cell"}

    if "ednn" in args.skip and "cnn" in args.skip:   # data only (e.g. before parallel training processes)
        save_results()
        print(f"data ready: {path}; nothing trained (--skip ednn cnn); wrote {args.out}/results.json")
        return results

    # ------------------------------------------------------------ 2. train (resumable)
    x_init = data.read_arrays(path, ["X"], indices=np.sort(train_idx[:64]))["X"] if cfg["init"] == "lsuv" else None
    mseed = seed if cfg.get("init_seed") is None else cfg["init_seed"]
    ednn, plain = build_models(cfg, tmap, mseed, x_init)
    steps_per_epoch = -(-len(train_idx) // cfg["batch_size"])
    histories, models, preds = {}, {}, {}
    results.setdefault("train_seconds", {})
    for name, model in (("ednn", ednn), ("cnn", plain)):
        if name in args.skip:
            continue
        model_path = os.path.join(args.out, f"{name}.keras")
        info_path = os.path.join(args.out, f"{name}.train.json")
        if os.path.exists(model_path):
            print(f"{name}: reusing {model_path}")
            model = keras.models.load_model(model_path)
            if os.path.exists(info_path):
                with open(info_path) as fh:
                    results["train_seconds"][name] = json.load(fh)["seconds"]
            log = os.path.join(args.out, f"train_{name}", "log.csv")
            if os.path.exists(log):
                hist = np.genfromtxt(log, delimiter=",", names=True)
                histories[f"{name} train"] = np.atleast_1d(hist["loss"]).tolist()
                if "val_loss" in hist.dtype.names:
                    histories[f"{name} validation"] = np.atleast_1d(hist["val_loss"]).tolist()
        else:
            lr = make_schedule(cfg, steps_per_epoch)
            model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
            if keras.backend.backend() == "tensorflow":   # stream from HDF5 through tf.data
                ds = data.h5_dataset(path, batch_size=cfg["batch_size"], indices=train_idx, shuffle=True, seed=mseed)
                if cfg["augment"]:
                    ds = ds.map(lambda x, y: data.periodic_augment(x, y, mseed))
                val = data.h5_dataset(path, batch_size=64, indices=val_idx)
            else:   # JAX / PyTorch (e.g. a GPU node without TensorFlow): in-memory batches
                tr = data.read_arrays(path, ["X", "Y"], indices=train_idx)
                ds = data.ArrayBatches.make(tr["X"], tr["Y"], cfg["batch_size"], seed=mseed, augment=cfg["augment"],
                                           workers=4)
                va = data.read_arrays(path, ["X", "Y"], indices=val_idx)
                val = (va["X"].astype(np.float32), va["Y"].astype(np.float32))
                del tr
            t0 = time.time()
            hist = training.fit(model, ds, epochs=cfg["epochs"], workdir=os.path.join(args.out, f"train_{name}"),
                                validation_data=val, progress=progress, desc=name.upper())
            results["train_seconds"][name] = time.time() - t0
            histories[f"{name} train"] = hist.history["loss"]
            histories[f"{name} validation"] = hist.history.get("val_loss", [])
            training.save_model_atomic(model, model_path)
            write_json_atomic({"seconds": results["train_seconds"][name], "epochs": cfg["epochs"],
                               "note": "wall seconds of the last (possibly resumed) training session"}, info_path)
        models[name] = model
        t0 = time.perf_counter()
        preds[name] = predict_ev(model, x_test)
        results.setdefault("test_inference_seconds", {})[name] = time.perf_counter() - t0
        results.setdefault("test", {})[name] = errors(y_test, preds[name], n_test_atoms, a_test)
        results["test"][name]["params"] = int(model.count_params())
        results["test"][name]["prediction_std_over_label_std"] = float(np.std(preds[name]) / np.std(y_test))
        if np.std(preds[name]) < 1e-4 * np.std(y_test):
            print(f"WARNING: {name} predicts a constant (collapsed ReLU network); its numbers are meaningless")
        r = results["test"][name]
        print(f"{name}: test MAE {r['meV_per_A2']['mean_abs_error']:.3f} meV/A^2, "
              f"{r['meV_per_atom']['mean_abs_error']:.3f} meV/atom ({r['eV']['mean_abs_error']:.4f} eV)")
        save_results()
    if "cnn" in results["test"] and "ednn" in results["test"]:
        results["test"].update(ratio_entries(y_test, preds["ednn"], preds["cnn"], a_test))
        results["test"]["paper_mae_ratio"] = PAPER_MAE["cnn"] / PAPER_MAE["ednn"]
        print(f"MAE ratio CNN / EDNN = {results['test']['mae_ratio_cnn_over_ednn']:.2f} "
              f"(paper {results['test']['paper_mae_ratio']:.2f}); " + ratio_summary(results["test"]["ratio_ci"]))
    results["test_predictions"] = {"true_eV": y_test.tolist(), "test_indices": np.asarray(test_idx).tolist(),
                                   **{f"{name}_eV": p.tolist() for name, p in preds.items()}}
    if cfg["sym_stride"] and len(preds) == 2:
        # symmetrised inference: both models averaged over the same exact symmetries (whole-pixel
        # periodic shifts at offsets 0, s, 2s, ... < f per axis, times the mirrors), the same cost for both
        from ednn_tf import symmetry
        shifts = symmetry.pixel_shifts(f, cfg["sym_stride"], 2)
        flips = symmetry.mirror_sets(2, cfg["sym_mirrors"])
        sym = results["test_symmetrised"] = {"stride_px": cfg["sym_stride"], "mirrors": cfg["sym_mirrors"],
                                             "evaluations_per_cell": len(shifts) * len(flips)}
        p_syms = {}
        for name, model in models.items():
            t0 = time.perf_counter()
            p_sym, spread = symmetry.symmetrised(lambda z, m=model: predict_ev(m, z), x_test, shifts, flips,
                                                 return_spread=True)
            p_syms[name] = p_sym
            results["test_predictions"][f"{name}_symmetrised_eV"] = p_sym.tolist()
            sym[name] = errors(y_test, p_sym, n_test_atoms, a_test)
            sym[name]["seconds"] = time.perf_counter() - t0
            sym[name]["spread_over_symmetries_mean_eV"] = float(np.mean(spread))
            print(f"{name} symmetrised ({sym['evaluations_per_cell']} evaluations per cell): test MAE "
                  f"{sym[name]['meV_per_A2']['mean_abs_error']:.3f} meV/A^2 (spread of the plain model over the "
                  f"symmetries {sym[name]['spread_over_symmetries_mean_eV']:.3f} eV)")
        sym.update(ratio_entries(y_test, p_syms["ednn"], p_syms["cnn"], a_test))
        print(f"symmetrised: MAE ratio CNN / EDNN = {sym['mae_ratio_cnn_over_ednn']:.2f}, "
              f"median ratio {sym['median_ratio_cnn_over_ednn']:.2f}; " + ratio_summary(sym["ratio_ci"]))
        save_results()
    results["test"]["by_kind"] = {
        str(k): {name: float(np.mean(np.abs(preds[name] - y_test)[kinds == k] * 1e3 / a_test[kinds == k]))
                 for name in preds} for k in np.unique(kinds)}
    label = {"ednn": f"EDNN f={f} c={c}", "cnn": "plain CNN (whole image)"}
    for name in preds:
        mae = results["test"][name]["meV_per_A2"]["mean_abs_error"]
        plots.parity_and_error(1e3 * y_test / a_test, 1e3 * preds[name] / a_test,
                               os.path.join(args.out, f"fig5_{name}_parity.png"), quantity="E / A", unit="meV/A^2",
                               color=carbon, label="carbon fraction",
                               title=f"{label[name]}, {tag} test set: MAE {mae:.3f} meV/A^2")
    if histories:
        plots.training_curves(histories, os.path.join(args.out, "training_loss.png"), key="loss [eV^2]")
    ednn = models.get("ednn")
    save_results()
    if ednn is None:
        print("EDNN skipped: no transfer or blur study")
        args.skip = list(args.skip) + ["transfer", "blur"]

    # ------------------------------------------------------------ 3. transfer + time vs size
    if "transfer" not in args.skip:
        test_structs = load_structures(path, test_idx)
        tr = results["transfer"] = {"sizes": {}}
        err_pts = {}
        oracle_atoms, oracle_secs = [], []
        for k, count in zip(cfg["transfer_sizes"], cfg["transfer_counts"]):
            settings = dict(oracle.settings)
            if "supercell" in settings:      # keep the k-point density: k x k cell with ceil(K/k) x ceil(K/k) mesh
                settings["supercell"] = max(1, -(-oracle.settings["supercell"] // k))
            ork = oracles.get_oracle(oracle.name, **settings)
            bases = test_structs[:count]
            structs = bases if k == 1 else [rattled_supercell(b, k, seed=seed * 100003 + i) for i, b in enumerate(bases)]
            tpath = f"{args.data_dir}/hexagonal_transfer_{oracle_tag(ork)}_k{k}_n{count}_seed{seed}_from_{os.path.basename(stem)}.json"
            E_k, secs = label_timed(structs, ork, tpath, progress, desc=f"labelling {k}x{k} ({len(structs[0])} atoms)")
            X_k = render.render_many(structs, shape=(k * n, k * n), **rkw)
            pred = ednn.predict_total(X_k, batch_size=1)
            natoms = np.array([len(s) for s in structs], float)
            area = np.array([oracles.cell_area(s) for s in structs])
            entry = errors(E_k, pred, natoms, area)
            entry.update(k=k, n=count, n_atoms=natoms.tolist(), oracle_settings=settings,
                         oracle_seconds=secs.tolist(), true_eV=E_k.tolist(), pred_eV=pred.tolist(),
                         error_meV_per_atom=(1e3 * (pred - E_k) / natoms).tolist())
            if cfg["sym_stride"]:   # the symmetrised EDNN transfers too (it is extensive as well)
                p_sym = ednn.predict_symmetrised(X_k, stride=cfg["sym_stride"], mirrors=cfg["sym_mirrors"], batch_size=1)
                entry["symmetrised"] = {**errors(E_k, p_sym, natoms, area), "pred_eV": p_sym.tolist()}
            if k == 1:   # a re-labelling of test cells: the oracle is deterministic
                entry["relabel_max_abs_diff_eV"] = float(np.max(np.abs(E_k - y_test[:count])))
            if k == 2:   # the oracle's own finite-size inconsistency on exact repeats
                rep = [structures.supercell(b, 2) for b in bases]
                rpath = tpath.replace(f"_k{k}_", f"_k{k}repeat_")
                E_rep, _ = label_timed(rep, ork, rpath, progress, desc="labelling exact 2x2 repeats")
                gap = 1e3 * (E_rep / 4 - y_test[:count]) / n_test_atoms[:count]
                entry["exact_repeat_gap_meV_per_atom"] = gap.tolist()
                entry["exact_repeat_gap_mean_abs_meV_per_atom"] = float(np.mean(np.abs(gap)))
                tr["oracle_extensivity_gap_meV_per_atom"] = float(np.mean(np.abs(gap)))
            tr["sizes"][str(k)] = entry
            err_pts[int(natoms.mean())] = entry["error_meV_per_atom"]
            oracle_atoms += natoms.tolist()
            oracle_secs += secs.tolist()
            print(f"transfer {k}x{k} ({int(natoms.mean())} atoms, n={count}): MAE "
                  f"{entry['meV_per_atom']['mean_abs_error']:.2f} meV/atom, "
                  f"{entry['meV_per_A2']['mean_abs_error']:.3f} meV/A^2"
                  + (f" (symmetrised {entry['symmetrised']['meV_per_atom']['mean_abs_error']:.2f} meV/atom)"
                     if "symmetrised" in entry else "") + f"; oracle {np.median(secs):.2f} s/structure")
            save_results()
        # EDNN inference time vs size on exact k x k repeats (also: prediction = k^2 x cell's prediction)
        base = test_structs[0]
        x1 = render.render(base, shape=(n, n), **rkw)[None]
        p1 = float(ednn.predict_total(x1, batch_size=1)[0])
        timing = tr["ednn_timing"] = {"k": [], "n_atoms": [], "grid": [], "tiles": [], "inference_seconds": [],
                                      "render_seconds": [], "repeat_rel_deviation": []}
        for k in cfg["timing_sizes"]:
            big = structures.supercell(base, k)
            t0 = time.perf_counter()
            xk = render.render(big, shape=(k * n, k * n), **rkw)[None]
            t_render = time.perf_counter() - t0
            pk = float(ednn.predict_total(xk, batch_size=1)[0])        # also the warm-up
            t_inf = min_seconds(lambda: ednn.predict_total(xk, batch_size=1), repeats=3 if k <= 8 else 1)
            for key, v in (("k", k), ("n_atoms", len(big)), ("grid", k * n), ("tiles", (k * n // f) ** 2),
                           ("inference_seconds", t_inf), ("render_seconds", t_render),
                           ("repeat_rel_deviation", abs(pk - k * k * p1) / abs(k * k * p1))):
                timing[key].append(v)
            print(f"EDNN {k}x{k}: {len(big)} atoms, {k * n}^2 px, {t_inf:.3f} s "
                  f"(render {t_render:.3f} s); pred/k^2 - pred(cell) = {pk / k ** 2 - p1:+.2e} eV")
        tr["ednn_time_exponent"] = fit_exponent(timing["n_atoms"], timing["inference_seconds"])
        # small inputs are dominated by fixed per-call overhead: the slope of the three largest sizes
        tr["ednn_time_exponent_largest3"] = fit_exponent(timing["n_atoms"][-3:], timing["inference_seconds"][-3:])
        tr["ednn_seconds_per_tile_largest"] = timing["inference_seconds"][-1] / timing["tiles"][-1]
        tr["oracle_time_exponent"] = fit_exponent(oracle_atoms, oracle_secs)
        sizes = sorted(err_pts)
        oracle_med = {}
        for a, s in zip(oracle_atoms, oracle_secs):
            oracle_med.setdefault(int(a), []).append(s)
        tr["oracle_seconds_median_by_atoms"] = {str(a): float(np.median(v)) for a, v in sorted(oracle_med.items())}
        plots.transfer_and_timing(
            [err_pts[s] for s in sizes], sizes, timing["n_atoms"], timing["inference_seconds"],
            oracle_atoms, oracle_secs, os.path.join(args.out, "fig9_transfer_timing.png"),
            gap=tr.get("oracle_extensivity_gap_meV_per_atom"),
            title=f"EDNN trained on 60-atom cells, {tag} labels")
        save_results()

    # ------------------------------------------------------------ 4. blur study (inference only)
    if "blur" not in args.skip:
        nb = len(x_test) if cfg["n_blur"] is None else min(cfg["n_blur"], len(x_test))
        xb, yb, ab = x_test[:nb], y_test[:nb], a_test[:nb]
        px = np.asarray(attrs["pixel_size_A"], float)
        sigma_px = cfg["blur_sigma"] / px
        x_blurred = blur.gaussian_blur(xb, sigma_px)
        t = f + 2 * c
        clean = preds["ednn"][:nb]
        no_blur_mae = float(np.mean(np.abs(clean - yb) * 1e3 / ab))
        # With the fixed moment term, blurring the focus changes sum(x^2), sum(x^3) (it flattens the
        # peaks) and the fixed term's estimate of the composition with it: that measures the image
        # moments, not what the network learned. The main curves therefore blur only what the
        # network sees, with the fixed term on the unblurred image; the full model's are kept too.
        learned = learned_part(ednn)
        fixed = clean - learned.predict_total(xb, batch_size=32) if learned is not ednn else 0.0
        bl = results["blur"] = {"sigma_A": cfg["blur_sigma"], "sigma_px": sigma_px.tolist(), "n_images": nb,
                                "tile_px": t, "focus_px": f, "no_blur_mae_meV_per_A2": no_blur_mae, "widths_px": [], "area_px": [], "area_fraction_of_tile": [],
                                "fixed_term_on_unblurred_image": learned is not ednn,
                                "edge_mae_meV_per_A2": [], "centre_mae_meV_per_A2": [],
                                "edge_shift_meV_per_A2": [], "centre_shift_meV_per_A2": []}
        if learned is not ednn:
            bl.update(full_model_edge_mae_meV_per_A2=[], full_model_centre_mae_meV_per_A2=[])
        for w in cfg["blur_widths"]:
            area = blur.band_area(t, w)
            bl["widths_px"].append(w)
            bl["area_px"].append(area)
            bl["area_fraction_of_tile"].append(area / t ** 2)
            for kind, mask in (("edge", blur.edge_mask(t, area)), ("centre", blur.centre_mask(t, area))):
                p = fixed + blur.predict_with_blur(learned, xb, mask, x_blurred=x_blurred, batch_size=32)
                bl[f"{kind}_mae_meV_per_A2"].append(float(np.mean(np.abs(p - yb) * 1e3 / ab)))
                bl[f"{kind}_shift_meV_per_A2"].append(float(np.mean(np.abs(p - clean) * 1e3 / ab)))
                if learned is not ednn:
                    q = blur.predict_with_blur(ednn, xb, mask, x_blurred=x_blurred, batch_size=32)
                    bl[f"full_model_{kind}_mae_meV_per_A2"].append(float(np.mean(np.abs(q - yb) * 1e3 / ab)))
            print(f"blur {area:5d} px ({area / t ** 2:5.1%} of tile): MAE edge {bl['edge_mae_meV_per_A2'][-1]:.3f}, "
                  f"centre {bl['centre_mae_meV_per_A2'][-1]:.3f} meV/A^2")
        plots.blur_curves(np.array(bl["area_fraction_of_tile"]), bl["edge_mae_meV_per_A2"], bl["centre_mae_meV_per_A2"],
                          os.path.join(args.out, "fig6_blur.png"), focus_fraction=f * f / t ** 2,
                          ylabel="test MAE [meV/A^2]" + (" (network input blurred)" if learned is not ednn else ""),
                          baseline=bl["no_blur_mae_meV_per_A2"],
                          title=f"Gaussian blur sigma = {cfg['blur_sigma']} A on part of every tile (t={t}, f={f})")
        save_results()

    print(f"wrote {args.out}/results.json and plots in {time.time() - t_start:.0f} s")
    return results


if __name__ == "__main__":
    main()
