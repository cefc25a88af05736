"""Presets of ``experiments/graphene_mc.py`` (Section 3.4 / Fig. 13 of Mills et al. 2019): the demo
potential, the reference MD and the Monte Carlo of each preset."""

PAPER_SECONDS = {"ednn_per_energy": 0.39, "dft_per_energy": 9.9}

PRESETS = {
    # seconds: a 1-epoch toy density potential on coarse 0.4 A pixels, a few MD steps and MC sweeps
    "tiny": dict(n_train=24, n_val=8, pixel_size=0.4, gamma=0.5, context=4, filters=4, epochs=1, batch_size=8,
                 lr=3e-3, rattle=(0.01, 0.10), oracle="rebo",
                 md_steps=60, md_equil=20, md_every=5, mc_tune=1, mc_sweeps=2, mc_every=1,
                 r_max=6.0, n_bins=120, timing_repeats=2),
    # minutes: the density potential of the shipped hexagonal-gfn1 model (0.25 A pixels, gamma 0.3 A)
    # with a context of 8 px (2 A each side) and 16 filters, trained on REBO energies of 2000 rattled
    # cells (in-plane sigma 0.01-0.10 A; 1000 K MD gives ~0.054 A). Not yet measured with this potential
    # (the numbers in docs/results.md are those of the former tile demo EDNN).
    "quick": dict(n_train=2000, n_val=200, pixel_size=0.25, gamma=0.3, context=8, filters=16, epochs=20,
                  batch_size=16, lr=3e-3, rattle=(0.01, 0.10), oracle="rebo",
                  md_steps=3500, md_equil=500, md_every=10, mc_tune=30, mc_sweeps=300, mc_every=2,
                  r_max=6.0, n_bins=240, timing_repeats=10),
    # the paper's 0.05 A / gamma 0.2 A image is replaced by 0.1 A pixels with the paper's physical context
    # (32 px = 3.2 A), 5 ps of GFN1-xTB MD; meant for --model or a GPU
    "paper": dict(n_train=5000, n_val=500, pixel_size=0.1, gamma=0.2, context=32, filters=32, epochs=200,
                  batch_size=32, lr=1e-3, rattle=(0.01, 0.10), oracle="gfn1-xtb",
                  md_steps=6000, md_equil=1000, md_every=10, mc_tune=100, mc_sweeps=3000, mc_every=5,
                  r_max=6.0, n_bins=240, timing_repeats=10),
}
TEMPERATURE_K = 1000.0
#: Preset keys that ``--md-steps`` etc. override.
OVERRIDES = ("md_steps", "md_equil", "md_every", "mc_sweeps", "epochs", "n_train")
#: Preset keys of the demo potential (its card records them; another value trains a new one).
DEMO_KEYS = ("n_train", "n_val", "pixel_size", "gamma", "context", "filters", "epochs", "batch_size", "lr", "rattle")
DEFAULT_REPEAT = (5, 3)
