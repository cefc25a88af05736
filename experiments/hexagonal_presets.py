"""Presets and options of ``experiments/hexagonal.py`` (Sections 3.2.1 and 3.3 of Mills et al. 2019):
what each preset trains, on how many cells, and why (measured trade-offs in docs/hexagonal.md)."""
from ednn_tf.atoms.datasets import DEFAULT_RATTLE

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
_CPU = dict(channels="element", rattle=DEFAULT_RATTLE, n_structures=4000, n_train=3200, n_val=400, grid=64, focus=16,
            context=8, width=0.5, dense=256, batch_size=16, lr=1e-3, lr_decay=True, warmup_epochs=0, epochs=100,
            augment=True, baseline="moments", moments=(1,), init="lsuv", oracle="gfn1-xtb", transfer_sizes=(1, 2, 3),
            transfer_counts=(3, 3, 1), timing_sizes=(1, 2, 4, 8, 16), blur_sigma=0.4, blur_widths=(0, 1, 2, 3, 4, 6, 8),
            n_blur=None, sym_stride=2, sym_mirrors=True)
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
    "paper": dict(channels="z", rattle=DEFAULT_RATTLE, n_structures=26449, n_train=18515, n_val=2645, grid=256, focus=64,
                  context=32, width=1.0, dense=1024, batch_size=100, lr=1e-5, lr_decay=False, warmup_epochs=0, epochs=500,
                  augment=False, baseline="none", moments=(1, 2, 3), init="glorot", oracle="gfn1-xtb",
                  transfer_sizes=(1, 2, 3, 4), transfer_counts=(5, 20, 10, 5), timing_sizes=(1, 2, 4, 8, 16),
                  blur_sigma=0.4, blur_widths=(0, 2, 4, 6, 8, 12, 16, 24, 32), n_blur=1000, sym_stride=0, sym_mirrors=False),
    "cpu": _CPU,
    # One GPU, measured on an H100 (docs/hexagonal.md, "Measured: gpu preset"): the cpu preset's data and
    # recipe at twice the resolution (128 x 128, 0.1 A/px; f / c still 3.1 / 1.6 A) with the paper CNN at
    # full width, 200 epochs. Training: EDNN 253 s, CNN 277 s (H100, JAX backend, three runs sharing the
    # GPU). Test MAE 4.6 vs 8.3 meV/A^2. Transfer labels (GFN1-xTB on the CPU) are cached in data/.
    "gpu": dict(_CPU, grid=128, focus=32, context=16, width=1.0, dense=1024, epochs=200, transfer_sizes=(1, 2, 3, 4),
                transfer_counts=(3, 3, 1, 1), blur_widths=(0, 2, 4, 6, 8, 12, 16), sym_stride=4),
    # Seconds, for tests of the script itself: a cheap empirical oracle and a tiny grid.
    "tiny": dict(channels="z", rattle=DEFAULT_RATTLE, n_structures=32, n_train=20, n_val=4, grid=32, focus=8, context=4,
                 width=0.125, dense=16, batch_size=4, lr=1e-3, lr_decay=False, warmup_epochs=1, epochs=2, augment=True,
                 baseline="moments", moments=(1, 2, 3), init="lsuv", oracle="tersoff-bnc", transfer_sizes=(1, 2),
                 transfer_counts=(2, 2), timing_sizes=(1, 2, 4), blur_sigma=0.4, blur_widths=(0, 1, 2, 4), n_blur=None,
                 sym_stride=4, sym_mirrors=True),
}
#: Paper Sec. 3.2.1: test MAE in meV/A^2 after 500 epochs.
PAPER_MAE = {"ednn": 1.122, "cnn": 2.529}

#: Options that override a preset value: preset key -> ``add_argument`` keywords (``type=int`` unless given).
OPTIONS = {
    "oracle": dict(type=str, help="labelling oracle (gfn1-xtb, tersoff-bnc, rebo, lj)"),
    "n_structures": dict(help="structures in the data set (train + val + test)"), "n_train": {}, "n_val": {},
    "rattle": dict(type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="range of the in-plane rattle sigma in A (uniform per cell; out of plane 0.4x)"),
    "grid": dict(help="image pixels per side over the 12.50 x 12.99 A cell"), "focus": {}, "context": {},
    "width": dict(type=float, help="CNN filter multiplier (1.0 = paper)"),
    "dense": dict(help="width of the CNN's hidden dense layer (paper 1024)"),
    "epochs": {}, "batch_size": {}, "lr": dict(type=float),
    "lr_decay": dict(choices=(0, 1), help="cosine-decay the step 100x over training"),
    "baseline": dict(type=str, choices=("moments", "none"),
                     help="fixed image-moment term sum_p alpha_p sum(x^p) in both models (moments) or only E0 (none)"),
    "moments": dict(nargs="+", help="powers p of the image-moment term (default 1 2 3; 1 with --channels element)"),
    "channels": dict(type=str, choices=("z", "element"),
                     help="image: one Z-weighted channel (eqn 2, the paper's) or one channel per element (B, C, N)"),
    "init": dict(type=str, choices=("he", "glorot", "lsuv"),
                 help="CNN kernels: networks.INITIALIZERS, or lsuv = He rescaled to unit std per layer on training images"),
    "warmup_epochs": dict(help="linear warm-up of the step from lr/100 over these epochs"),
    "augment": dict(choices=(0, 1), help="random periodic translations and mirrors of the training images (1) or not (0)"),
    "transfer_sizes": dict(nargs="*", help="supercell sizes k (k x k cells) to label"),
    "transfer_counts": dict(nargs="*", help="structures per transfer size"),
    "timing_sizes": dict(nargs="*", help="k of the k x k repeats timed with the EDNN"),
    "blur_sigma": dict(type=float, help="Gaussian blur width in Angstrom"),
    "blur_widths": dict(nargs="*", help="edge-band widths (px) defining the blurred areas"),
    "n_blur": dict(help="test images used in the blur study (default all)"),
    "sym_stride": dict(help="also report both models averaged over whole-pixel shifts 0, s, 2s, ... < focus per "
                       "axis (s divides focus; 1 = every offset: the EDNN exactly shift invariant; 0 = off)"),
    "sym_mirrors": dict(choices=(0, 1), help="include the mirrors in --sym-stride's average"),
}
