"""Atom-move Monte Carlo with an EDNN: local dE from the affected tiles (tile EDNN) or pixels (density
Potential) equals the full difference."""
import os

import keras
import numpy as np
import pytest

from conftest import requires_oracle, smooth_subnet
import ednn_tf
from ednn_tf import EDNN, networks
from ednn_tf.apply.atom_mc import AtomicLocalEnergy, AtomMetropolis
from ednn_tf.apply.calculator import EDNNCalculator
from ednn_tf.apply.thermo import radial_distribution, rdf_peaks
from ednn_tf.atoms.cells import truncation_error
from ednn_tf.atoms.render import render
from ednn_tf.atoms.structures import hexagonal_cell
from ednn_tf.model import DensityEDNN
from ednn_tf.potential import Potential

SHAPE = (64, 64)
FOCUS, CONTEXT = 16, 8


@pytest.fixture(scope="module")
def model64():
    return EDNN(smooth_subnet(FOCUS + 2 * CONTEXT, "float64"), FOCUS, CONTEXT, dtype="float64")


@pytest.fixture(scope="module")
def model32():
    sub = networks.paper_cnn(FOCUS + 2 * CONTEXT, width=0.125, dense=16, seed=3)
    return EDNN(keras.Model(sub.input, keras.layers.Rescaling(100.0)(sub.output)), FOCUS, CONTEXT)


@pytest.fixture(scope="module")
def density_potential():
    """The small random density Potential of tests/test_potential.py (c = 3, float64, B/C/N channels)."""
    sub = networks.energy_density(3, channels=3, filters=6, seed=4, dtype="float64")
    return Potential(DensityEDNN(sub, 3, dtype="float64"), pixel_size=0.3, gamma=0.35, channels=[5, 6, 7],
                     e0={5: -1.5, 6: -2.0, 7: -2.5}, scale=0.7, card={"name": "test"})


def _bnc_cell(seed=1):
    """12.30 x 12.78 A B/C/N cell (41 x 43 px at 0.3 A) with atoms on both periodic boundaries."""
    a = hexagonal_cell("bnc-random", seed, repeat=(5, 3), lattice_constant=2.46, rattle=0.05)
    a.positions[0, :2] = [0.05, 0.10]
    a.positions[1, :2] = [12.25, 6.0]
    return a


def _cell(seed=0):
    a = hexagonal_cell("graphene", seed=seed, rattle=0.05)
    a.positions[0, :2] = [0.05, 0.10]          # stamps wrap around both periodic boundaries
    a.positions[1, :2] = [12.45, 6.0]
    return a


def _full(model, atoms, dtype):
    """Reference: full numpy render + full model evaluation, float64 sum of the tiles."""
    img = render(atoms, shape=SHAPE, gamma=0.2, cutoff=6.0, dtype=np.float64)[None].astype(dtype)
    return float(np.asarray(model.tile_contributions(img), np.float64).sum())


def _moves(rng, atoms, n):
    """Random moves, including ones that cross the periodic boundary."""
    out = [(0, atoms.positions[0] + [-0.12, -0.2, 0.0]),      # across x = 0 and y = 0
           (1, atoms.positions[1] + [0.15, 0.05, 0.0])]       # across x = Lx
    for _ in range(n):
        i = int(rng.integers(len(atoms)))
        out.append((i, atoms.positions[i] + np.r_[rng.uniform(-0.4, 0.4, 2), 0.0]))
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_local_delta_equals_full_rerender(model64, model32, dtype):
    model = model64 if dtype == "float64" else model32
    rng = np.random.default_rng(1)
    atoms = _cell()
    le = AtomicLocalEnergy(model, atoms, SHAPE, gamma=0.2, cutoff=6.0)
    e_ref = _full(model, atoms, dtype)
    scale = float(np.abs(le.contributions).sum())
    tol = 1e-11 * scale if dtype == "float64" else 3e-6 * scale
    assert le.energy == pytest.approx(e_ref, abs=tol)
    changed = 0.0
    for k, (i, new) in enumerate(_moves(rng, atoms, 10)):
        dE = le.delta_energy(i, new)
        before = le.atoms.copy()
        after = before.copy()
        after.positions[i] = new
        ref = _full(model, after, dtype) - _full(model, before, dtype)
        assert dE == pytest.approx(ref, abs=tol), (k, i)
        changed = max(changed, abs(ref))
        if k % 2 == 0:                 # accept every other move: the cache must follow
            le.accept()
            assert le.energy == pytest.approx(_full(model, le.atoms, dtype), abs=tol)
        else:
            le.reject()
    assert changed > 100 * tol         # the moves change the energy: the check is not vacuous
    assert abs(le.refresh()) <= tol    # incremental image == fresh render (round-off only)


def test_element_channels():
    """One channel per element (h-BN, channels B and N): stamps go to the atom's own channel."""
    model = EDNN(smooth_subnet(FOCUS + 2 * CONTEXT, "float64", seed=7, channels=2), FOCUS, CONTEXT, dtype="float64")
    atoms = hexagonal_cell("hbn", seed=2, rattle=0.05)
    le = AtomicLocalEnergy(model, atoms, SHAPE, channels=["B", "N"])
    rng = np.random.default_rng(3)

    def full(a):
        img = render(a, shape=SHAPE, channels=["B", "N"], dtype=np.float64)[None]
        return float(np.asarray(model.tile_contributions(img)).sum())

    for i in (0, 1, 17, 40):       # both elements
        new = le.positions[i] + np.r_[rng.uniform(-0.3, 0.3, 2), 0.0]
        after = le.atoms.copy()
        after.positions[i] = new
        ref = full(after) - full(le.atoms)
        assert le.delta_energy(i, new) == pytest.approx(ref, abs=1e-11)
        le.accept()
    with pytest.raises(ValueError, match="channel"):
        AtomicLocalEnergy(model, atoms, SHAPE)          # the model wants 2 channels


def test_only_affected_tiles_change(model64):
    atoms = _cell()
    le = AtomicLocalEnergy(model64, atoms, SHAPE, gamma=0.2, cutoff=6.0)
    i, new = 0, atoms.positions[0] + [-0.3, 0.2, 0.0]
    aff = {tuple(t) for t in le.affected_tiles(i, new)}
    before = le.contributions
    le.move(i, new)
    le.refresh()
    diff = np.abs(le.contributions - before) > 1e-13
    changed = {tuple(t) for t in np.argwhere(diff)}
    assert changed and changed <= aff          # every changed tile was re-evaluated
    assert len(aff) < before.size              # ... and not every tile is affected


def test_reject_keeps_state(model64):
    le = AtomicLocalEnergy(model64, _cell(), SHAPE)
    img, pos, e = le.image.copy(), le.positions, le.energy
    le.delta_energy(5, pos[5] + [0.2, 0.1, 0.0])
    le.reject()
    assert np.array_equal(le.image, img) and np.array_equal(le.positions, pos) and le.energy == e
    with pytest.raises(RuntimeError, match="delta_energy"):
        le.accept()


def test_bad_input(model64):
    atoms = _cell()
    with pytest.raises(ValueError, match="multiple of the model's focus"):
        AtomicLocalEnergy(model64, atoms, (60, 64))
    with pytest.raises(ValueError, match="2D"):
        AtomicLocalEnergy(model64, atoms, (64, 64, 64))
    with pytest.raises(ValueError, match="ase.Atoms"):
        AtomicLocalEnergy(model64, atoms.positions, SHAPE)
    skew = atoms.copy()
    skew.cell[1, 0] = 1.0
    with pytest.raises(ValueError, match="orthorhombic"):
        AtomicLocalEnergy(model64, skew, SHAPE)
    le = AtomicLocalEnergy(model64, atoms, SHAPE)
    with pytest.raises(ValueError, match="got 60"):
        le.delta_energy(60, [0, 0, 0])
    with pytest.raises(ValueError, match="nan"):
        le.delta_energy(3, [np.nan, 0.0])
    with pytest.raises(ValueError, match="temperature"):
        AtomMetropolis(le, -5.0)
    with pytest.raises(ValueError, match="step"):
        AtomMetropolis(le, 1000.0, step=0.0)


def test_metropolis_runs_and_cache_stays_exact(model64):
    le = AtomicLocalEnergy(model64, _cell(), SHAPE)
    mc = AtomMetropolis(le, temperature=1000.0, step=0.05, seed=0)
    step = mc.tune(2, target=0.4)
    assert step > 0 and step != 0.05
    rec = mc.run(2, every=1)
    assert rec["positions"].shape == (2, 60, 3) and rec["energy"].shape == (2,)
    assert 0.0 < rec["acceptance"] < 1.0
    assert np.array_equal(rec["positions"][-1, :, 2], _cell().positions[:, 2])   # in-plane moves only
    assert le.energy == pytest.approx(le.full_energy(), abs=1e-10 * np.abs(le.contributions).sum())


def test_density_potential_local_updates_are_exact(density_potential):
    """A density Potential: each dE equals E(after) - E(before) of EDNNCalculator(potential) (untruncated
    Gaussians) within the 6-gamma truncation of the stamps, each from a window of the grid; after
    accepted and rejected moves the cached energy equals a full re-evaluation (round-off)."""
    atoms = _bnc_cell()
    le = AtomicLocalEnergy(density_potential, atoms)
    assert le.shape == (41, 43) and le.index is None and le.n_terms == 41 * 43
    assert le.reference_energy == pytest.approx(density_potential.reference_energy(atoms.numbers), rel=1e-15)
    net = float(np.abs(le.contributions).sum())
    tol = truncation_error(6.0) * net                  # a relative image error exp(-18) of the stamps
    assert le.energy == pytest.approx(EDNNCalculator(density_potential).get_potential_energy(atoms), abs=tol)
    rng, changed = np.random.default_rng(2), 0.0
    for k, (i, new) in enumerate(_moves(rng, le.atoms, 8)):
        n0 = le.n_evaluated_tiles
        dE = le.delta_energy(i, new)
        assert 0 < le.n_evaluated_tiles - n0 < le.n_terms / 2, k          # a window, not the whole grid
        after = le.atoms.copy()
        after.positions[i] = new
        ref = EDNNCalculator(density_potential).get_potential_energy(after) - \
            EDNNCalculator(density_potential).get_potential_energy(le.atoms)
        assert dE == pytest.approx(ref, abs=tol), (k, i)
        changed = max(changed, abs(ref))
        if k % 3 != 2:                 # accept two moves in three
            le.accept()
        assert le.energy == pytest.approx(le.full_energy(), rel=1e-12, abs=1e-12 * net), k
    assert changed > 1e3 * tol
    assert abs(le.refresh()) < 1e-12 * net


def test_density_changed_pixels_lie_in_the_window(density_potential):
    """Every pixel value a move changes is one of ``affected_tiles`` (the stamps dilated by c)."""
    le = AtomicLocalEnergy(density_potential, _bnc_cell())
    i, new = 0, le.positions[0] + [-0.3, 0.2, 0.0]            # across x = 0
    aff = {tuple(t) for t in le.affected_tiles(i, new)}
    before = le.contributions
    le.move(i, new)
    le.refresh()
    changed = {tuple(t) for t in np.argwhere(np.abs(le.contributions - before) > 1e-14)}
    assert changed and changed <= aff and len(aff) < before.size
    assert min(p[0] for p in aff) == 0 and max(p[0] for p in aff) == 40     # the window wraps around x


def test_density_metropolis_and_bad_settings(density_potential, tmp_path):
    path = tmp_path / "p.keras"
    density_potential.save(path)
    le = AtomicLocalEnergy(str(path), _bnc_cell(3))             # a Potential's path works too
    mc = AtomMetropolis(le, temperature=1000.0, step=0.05, seed=1)
    mc.sweep(1)
    assert 0.0 < mc.acceptance < 1.0
    assert le.energy == pytest.approx(le.full_energy(), abs=1e-12 * np.abs(le.contributions).sum())
    with pytest.raises(ValueError, match="carries its own image settings"):
        AtomicLocalEnergy(density_potential, _bnc_cell(), (41, 43))
    with pytest.raises(ValueError, match="needs the image shape"):
        AtomicLocalEnergy(density_potential.ednn, _bnc_cell())
    si = _bnc_cell()
    si.numbers[5] = 14
    with pytest.raises(ValueError, match=r"got \['Si'\]"):
        AtomicLocalEnergy(density_potential, si)


CELLGRID = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hexagonal-gfn1-cellgrid.keras")


def test_trained_cell_grid_potential_and_the_refusal_of_the_space_readout():
    """``AtomicLocalEnergy`` on the previous shipped hexagonal-gfn1 (the cell-grid readout, kept as a
    fixture) on a 24-atom cell (30 x 35 px: every move's window is the whole grid) agrees with its
    calculator; the shipped space potential (per-atom readout) is refused by name."""
    atoms = hexagonal_cell("graphene", 0, repeat=(3, 2), rattle=0.05, rattle_z=0.0)
    le = AtomicLocalEnergy(CELLGRID, atoms)
    assert le.shape == (30, 35) and le.stretch[1] > 0
    e = EDNNCalculator(CELLGRID).get_potential_energy(atoms)
    assert le.energy == pytest.approx(e, abs=1e-6 * len(atoms))
    new = le.positions[4] + [0.07, -0.05, 0.0]
    dE = le.move(4, new)
    assert le.energy == pytest.approx(le.full_energy(), abs=1e-4)      # float32 network: round-off
    assert dE == pytest.approx(le.energy - e, abs=1e-4)
    if ednn_tf.load_potential("hexagonal-gfn1").readout == "atoms":
        with pytest.raises(ValueError, match="'cell'-readout potentials only"):
            AtomicLocalEnergy("hexagonal-gfn1", atoms)


def test_radial_distribution_of_lattice_and_ideal_gas():
    a = hexagonal_cell("graphene", seed=0, rattle=0.0)           # a = 2.50 A: bond 1.443 A
    r, g = radial_distribution(a.positions, a.cell, r_max=6.0, n_bins=300)
    peaks = rdf_peaks(r, g, n_peaks=3, smooth=0.0)
    np.testing.assert_allclose(peaks, [2.5 / np.sqrt(3), 2.5, 5.0 / np.sqrt(3)], atol=0.02)
    # coordination: integral of rho g(r) 2 pi r dr up to 1.7 A is 3 for graphene
    rho = len(a) / (a.cell[0, 0] * a.cell[1, 1])
    dr = r[1] - r[0]
    assert np.sum(rho * g[r < 1.7] * 2 * np.pi * r[r < 1.7] * dr) == pytest.approx(3.0, rel=1e-6)
    # uniform random points: g(r) = 1 (beyond r_max = half the cell, periodic images included)
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (400, 30, 3)) * [10.0, 11.0, 0.0]
    r, g = radial_distribution(frames, [10.0, 11.0, 20.0], r_max=8.0, n_bins=16)
    np.testing.assert_allclose(g, 1.0, atol=0.08)
    with pytest.raises(ValueError, match="r_max"):
        radial_distribution(frames, [10.0, 11.0, 20.0], r_max=-1.0)


def test_local_move_re_evaluates_a_few_tiles_and_matches_the_full_difference():
    """A local dE on 2 x 2 cells of the hexagonal setting (0.1 A pixels, gamma 0.2 A, f = 32,
    c = 16) re-evaluates under a quarter of the 64 tiles and equals the difference of two full
    evaluations. Its speed against a full evaluation is measured by ``bench/mc.py``."""
    f, c, px = 32, 16, 128
    model = EDNN(networks.paper_cnn(f + 2 * c, width=0.25, dense=64, seed=0), f, c)
    atoms = hexagonal_cell("graphene", seed=0).repeat((2, 2, 1))
    le = AtomicLocalEnergy(model, atoms, (2 * px, 2 * px))
    rng = np.random.default_rng(0)
    moves = [(int(i), le.positions[i] + np.r_[rng.uniform(-0.1, 0.1, 2), 0]) for i in rng.integers(240, size=6)]
    e0 = le.full_energy()
    n0 = le.n_evaluated_tiles
    des = [le.delta_energy(*m) for m in moves]
    tiles_per_move = (le.n_evaluated_tiles - n0) / len(moves)
    assert tiles_per_move < le.index.n_tiles / 4
    i, new = moves[0]
    moved = atoms.copy()
    moved.positions[i] = new
    e1 = AtomicLocalEnergy(model, moved, (2 * px, 2 * px)).full_energy()
    assert des[0] == pytest.approx(e1 - e0, abs=1e-4 * max(1.0, abs(e1 - e0)))


@requires_oracle("rebo")   # the tiny preset's MD runs on REBO
def test_graphene_mc_script_tiny(tmp_path):
    """experiments/graphene_mc.py as a program (tiny preset): results, plot, cached rerun; the demo
    model is a Potential that a second run takes as ``--model`` on another sheet (``--repeat``)."""
    import os

    from conftest import run_experiment
    from ednn_tf.potential import load_potential

    out = str(tmp_path / "out")
    saved = run_experiment("graphene_mc", out, "--preset", "tiny", "--no-progress")
    assert os.path.isfile(os.path.join(out, "gr.png")) and not os.path.exists(os.path.join(out, "ednn.json"))
    pot = load_potential(os.path.join(out, "ednn.keras"))               # self-describing: no sidecar
    assert pot.card["demo"]["pixel_size"] == 0.4 and pot.card["training"] == saved["training"]
    assert saved["model_settings"]["grid"] == [31, 32] and saved["model_settings"]["context"] == 4
    assert len(saved["gr"]["peaks_md_A"]) == 3 and len(saved["gr"]["peak_difference_A"]) == 3
    assert abs(saved["gr"]["peaks_md_A"][0] - 1.44) < 0.05          # C-C bond of the a = 2.50 A cell
    assert saved["md"]["frames"] == 8 and abs(saved["md"]["mean_temperature_K"] - 766.6) < 0.1   # 25..60 fs
    for key in ("ednn_full_calculator_s", "ednn_local_dE_s", "oracle_energy_s"):
        assert saved["timing"][key] > 0
    assert 0 <= saved["mc"]["acceptance"] <= 1 and 0 < saved["mc"]["windows_per_move"] <= 31 * 32
    again = run_experiment("graphene_mc", out, "--preset", "tiny", "--no-progress")   # reuses md/model/mc
    assert again["gr"] == saved["gr"] and again["training"] == saved["training"]
    other = run_experiment("graphene_mc", str(tmp_path / "other"), "--preset", "tiny", "--no-progress",
                           "--model", os.path.join(out, "ednn.keras"), "--repeat", "3", "2", "--md-steps", "11",
                           "--md-equil", "1", "--oracle-setting", 'potential="CH.rebo"')
    assert other["config"]["n_atoms"] == 24 and other["md"]["frames"] == 2 and "training" not in other
    assert other["oracle"]["oracle_settings"] == {"potential": "CH.rebo"} and other["notes"] == []
    assert other["model_settings"]["grid"] == [19, 22]                  # 7.50 x 8.66 A at 0.4 A/px
