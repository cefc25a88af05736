"""Cost of the f = 1 energy-density EDNN against the paper's tile CNN, measured in the same run.

Both models see the same context (16 px each side): the density network (``networks.energy_density``,
``--filters`` wide, dilated 3x3 convolutions) and the tile EDNN of the hexagonal presets
(``networks.paper_cnn``, f = 32, c = 16, width ``--cnn-width``). Prints pixels/s of each on a
``--pixels``-square image (medians of ``--repeats`` after a warm-up) and their ratio, then, for a
density potential at 0.25 A/px: the time of energy and energy + forces of one 60-atom cell
(``EDNNCalculator``) and the time of the energy of one ~10^5-atom graphene sheet (numpy render +
one convolution pass). Writes ``density.json`` with ``--out``.

    python bench/density.py                 # ~1-2 min on one core
    python bench/density.py --pixels 1024 --atoms 1e6
    python bench/density.py --space         # + the space frame against the cell grid (issue 26)
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pixels", type=int, default=512)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--cnn-width", type=float, default=0.25)
    ap.add_argument("--atoms", type=float, default=1e5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--space", action="store_true",
                    help="also the space frame ('atoms' readout) against the cell grid, same network, same run")
    ap.add_argument("--forces-atoms", type=float, default=1.24e4,
                    help="sheet size for the cell grid's energy + forces (its dense renderer is quadratic)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import keras

    from ednn_tf import EDNN, networks
    from ednn_tf.apply.calculator import EDNNCalculator
    from ednn_tf.atoms import render
    from ednn_tf.atoms.structures import hexagonal_cell, honeycomb_sheet
    from ednn_tf.model import DensityEDNN
    from ednn_tf.potential import Potential

    keras.utils.set_random_seed(0)
    n = args.pixels
    x = np.random.default_rng(0).random((1, n, n, 3)).astype("float32")
    dens = DensityEDNN(networks.energy_density(16, channels=3, filters=args.filters, seed=0), 16)
    tile = EDNN(networks.paper_cnn(64, 3, width=args.cnn_width, dense=256, seed=0), 32, 16)
    res = {"pixels": n * n, "density_filters": args.filters, "cnn_width": args.cnn_width}
    for name, model in (("density", dens), ("tile_cnn", tile)):
        res[f"{name}_pixels_per_s"] = n * n / median_time(lambda m=model: m.predict_total(x, batch_size=1),
                                                          args.repeats)
    res["density_over_tile_cnn"] = res["density_pixels_per_s"] / res["tile_cnn_pixels_per_s"]

    pot = Potential(dens, 0.25, 0.3, channels=[5, 6, 7], e0={5: 0.0, 6: 0.0, 7: 0.0})
    cell = hexagonal_cell("bnc-random", 0)
    calc = EDNNCalculator(pot)
    res["cell_atoms"], res["cell_grid"] = len(cell), list(calc.grid_shape(cell))
    def evaluate(props):
        calc.reset()   # no cached results: every call renders and evaluates
        calc.calculate(cell, props)

    res["cell_energy_s"] = median_time(lambda: evaluate(["energy"]), args.repeats)
    res["cell_energy_forces_s"] = median_time(lambda: evaluate(["energy", "forces"]), args.repeats)

    k = max(1, int(round(np.sqrt(args.atoms / 4.0 / 2.0))))          # 4 atoms per 2.46 x 4.26 A cell
    sheet = honeycomb_sheet(2 * k, k, 2.46, ("B", "N"))
    shape = pot.grid(sheet.cell.lengths()[:2])[0]
    t0 = time.perf_counter()
    img = render.render(sheet, shape=shape, gamma=pot.gamma, channels=pot.channels)
    res["sheet_render_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dens.predict_total(img[None], batch_size=1)
    res.update(sheet_atoms=len(sheet), sheet_grid=list(shape), sheet_energy_s=time.perf_counter() - t0)
    if args.space:
        res.update(space_comparison(dens, cell, sheet, args))
    for key, value in res.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2)
    return res


def space_comparison(dens, cell, sheet, args):
    """Seconds of the space frame ('atoms' readout: energy + forces + stress) against the cell grid
    ('cell', energy + forces), same network weights: a 60-atom cell through the calculator, the
    sheet's energy (and energy + forces; the cell grid's forces on a ``--forces-atoms`` sheet)."""
    from ednn_tf.apply.calculator import EDNNCalculator
    from ednn_tf.apply.space import predict_structures
    from ednn_tf.atoms.structures import honeycomb_sheet
    from ednn_tf.potential import Potential

    e0 = {5: 0.0, 6: 0.0, 7: 0.0}
    grid, space = (Potential(dens, 0.25, 0.3, channels=[5, 6, 7], e0=e0, readout=r) for r in ("cell", "atoms"))
    out = {}
    for name, pot, props in (("cell_grid", grid, ["energy", "forces"]), ("space", space, ["energy", "forces", "stress"])):
        calc = EDNNCalculator(pot)

        def run(c=calc, p=props):
            c.reset()
            c.calculate(cell, p)

        out[f"{name}_cell_efs_s"] = median_time(run, args.repeats)
    out["space_over_cell_grid_cell"] = out["space_cell_efs_s"] / out["cell_grid_cell_efs_s"]
    sheet.pbc = [True, True, False]
    t0 = time.perf_counter()
    predict_structures(space, [sheet], derivatives=False)
    out["space_sheet_energy_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict_structures(space, [sheet])
    out["space_sheet_energy_forces_s"] = time.perf_counter() - t0
    k = max(1, int(round(np.sqrt(args.forces_atoms / 8.0))))
    small = honeycomb_sheet(2 * k, k, 2.46, ("B", "N"))
    small.pbc = [True, True, False]
    out["forces_sheet_atoms"] = len(small)
    for name, pot in (("cell_grid", grid), ("space", space)):
        calc = EDNNCalculator(pot)
        t0 = time.perf_counter()
        calc.calculate(small, ["energy", "forces"])
        out[f"{name}_forces_sheet_s"] = time.perf_counter() - t0
    return out


if __name__ == "__main__":
    main()
