"""ASE calculator on an EDNN: autodiff forces, consistency with the numpy path, symmetry, ASE use."""
import keras
import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError

from conftest import smooth_subnet
from ednn_tf import EDNN, networks
from ednn_tf.apply.calculator import EDNNCalculator
from ednn_tf.atoms.render import render
from ednn_tf.atoms.structures import hexagonal_cell

SHAPE = (64, 64)          # 0.195 x 0.203 A pixels over the 12.50 x 12.99 A cell
FOCUS, CONTEXT = 16, 8    # 32 x 32 tiles, 4 x 4 of them


@pytest.fixture(scope="module")
def model64():
    return EDNN(smooth_subnet(FOCUS + 2 * CONTEXT, "float64"), FOCUS, CONTEXT, dtype="float64")


@pytest.fixture(scope="module")
def model32():
    keras.utils.set_random_seed(3)
    sub = networks.paper_cnn(FOCUS + 2 * CONTEXT, width=0.125, dense=16, seed=3)
    return EDNN(sub, FOCUS, CONTEXT)


@pytest.fixture(scope="module")
def calc64(model64):
    return EDNNCalculator(model64, shape=SHAPE, gamma=0.2, cutoff=None)


@pytest.fixture
def atoms():
    a = hexagonal_cell("graphene", seed=4, rattle=0.08)
    a.positions[0, :2] = [0.03, 12.95]    # an atom whose Gaussian wraps around both boundaries
    return a


def _fd_forces(calc, atoms, pairs, h):
    out = []
    for i, a in pairs:
        p = atoms.copy()
        p.positions[i, a] += h
        ep = calc.get_potential_energy(p)
        p.positions[i, a] -= 2 * h
        em = calc.get_potential_energy(p)
        out.append(-(ep - em) / (2 * h))
    return np.array(out)


# ---------------------------------------------------------------------------------------------
def test_forces_equal_finite_differences_float64(calc64, atoms):
    forces = calc64.get_forces(atoms)
    assert forces.shape == (len(atoms), 3) and forces.dtype == np.float64
    assert np.all(forces[:, 2] == 0.0)                       # 2D model: E independent of z
    pairs = [(i, a) for i in (0, 7, 31, 59) for a in (0, 1)]
    fd = _fd_forces(calc64, atoms, pairs, h=1e-5)
    ad = np.array([forces[i, a] for i, a in pairs])
    assert np.abs(ad).max() > 1e-2                           # not a vacuous comparison
    np.testing.assert_allclose(ad, fd, rtol=0, atol=1e-7 * max(1.0, np.abs(ad).max()))


def test_forces_float32_model(atoms):
    """A float32 model: same plumbing, finite differences limited by float32 energies."""
    model = EDNN(smooth_subnet(FOCUS + 2 * CONTEXT, "float32", seed=5), FOCUS, CONTEXT)
    calc = EDNNCalculator(model, shape=SHAPE, gamma=0.2)
    forces = calc.get_forces(atoms)
    assert forces.dtype == np.float64
    pairs = [(i, a) for i in (0, 12, 40) for a in (0, 1)]
    fd = _fd_forces(calc, atoms, pairs, h=2e-3)
    ad = np.array([forces[i, a] for i, a in pairs])
    assert np.linalg.norm(ad) > 1e-2
    assert np.linalg.norm(ad - fd) <= 1e-2 * np.linalg.norm(ad)


@pytest.mark.parametrize("cutoff", [None, 6.0])
def test_energy_equals_predict_total_of_numpy_render(model32, model64, atoms, cutoff):
    """The calculator's energy equals the numpy data path: render -> EDNN total. (predict_total
    feeds float32 images, so the float64 model is called on the float64 image directly.)"""
    # untruncated Gaussians (cutoff=None) differ from the cutoff-6 training images by <= exp(-18)
    for model, rtol in ((model32, 2e-6), (model64, 1e-10 if cutoff else 1e-7)):
        calc = EDNNCalculator(model, shape=SHAPE, gamma=0.2, cutoff=cutoff)
        e = calc.get_potential_energy(atoms)
        if model is model32:
            ref = model.predict_total(render(atoms, shape=SHAPE, gamma=0.2, cutoff=6.0)[None])[0]
        else:
            img = render(atoms, shape=SHAPE, gamma=0.2, cutoff=6.0, dtype=np.float64)[None]
            ref = float(model(img).numpy()[0, 0])
        assert e == pytest.approx(ref, rel=rtol, abs=rtol)
        tiles = calc.get_tile_energies(atoms)
        assert tiles.shape == (SHAPE[0] // FOCUS, SHAPE[1] // FOCUS)
        assert tiles.sum() == pytest.approx(e, rel=1e-12, abs=1e-12)
        assert calc.get_property("free_energy", atoms) == e


def test_element_channels_energy_and_forces():
    """channels=["B", "N"]: a 2-channel model on h-BN; energy as the numpy path, forces as FD."""
    model = EDNN(smooth_subnet(FOCUS + 2 * CONTEXT, "float64", seed=9, channels=2), FOCUS, CONTEXT,
                 dtype="float64")
    atoms = hexagonal_cell("hbn", seed=1, rattle=0.06)
    calc = EDNNCalculator(model, shape=SHAPE, channels=["B", "N"], cutoff=6.0)
    img = render(atoms, shape=SHAPE, channels=["B", "N"], dtype=np.float64)[None]
    assert calc.get_potential_energy(atoms) == pytest.approx(float(model(img).numpy()[0, 0]), rel=1e-10)
    smooth = EDNNCalculator(model, shape=SHAPE, channels=["B", "N"])
    f = smooth.get_forces(atoms)
    pairs = [(0, 0), (1, 1), (30, 0)]
    np.testing.assert_allclose([f[i, a] for i, a in pairs], _fd_forces(smooth, atoms, pairs, 1e-5), atol=1e-7)
    carbon = atoms.copy()
    carbon.numbers[0] = 6
    with pytest.raises(ValueError, match="not in channels"):
        calc.get_potential_energy(carbon)


def test_translation_by_tile_stride_is_a_symmetry(calc64, atoms):
    """Rigid shifts by k * focus pixels permute the tiles: E unchanged. A one-pixel shift is not a
    symmetry of the grid, and E changes (so the check is not vacuous)."""
    L = atoms.cell.lengths()[:2]
    stride = FOCUS * L / np.array(SHAPE)          # A
    e0 = calc64.get_potential_energy(atoms)
    for shift in ([stride[0], 0], [2 * stride[0], 0], [0, stride[1]], [-stride[0], 3 * stride[1]]):
        moved = atoms.copy()
        moved.positions[:, :2] += shift
        assert calc64.get_potential_energy(moved) == pytest.approx(e0, rel=1e-11, abs=1e-11)
    moved = atoms.copy()
    moved.positions[:, 0] += L[0] / SHAPE[0]
    assert abs(calc64.get_potential_energy(moved) - e0) > 1e-6


def test_net_force_vanishes_on_average_over_one_tile_stride(calc64, atoms):
    """The grid breaks continuous translation symmetry, so sum_i F_i != 0 in general; but E is
    periodic under rigid shifts with period focus*pixel, hence the net force averaged over one
    period is zero (uniform samples of a smooth periodic function: exponentially accurate)."""
    Lx = atoms.cell.lengths()[0]
    period = FOCUS * Lx / SHAPE[0]
    m = 64   # E(t) is smooth but not band-limited to the pixel scale: ~4 samples per pixel needed
    net = []
    for k in range(m):
        moved = atoms.copy()
        moved.positions[:, 0] += k * period / m
        net.append(calc64.get_forces(moved)[:, 0].sum())
    net = np.array(net)
    assert np.abs(net).max() > 1e-2                 # net force is not zero pointwise ...
    assert abs(net.mean()) < 1e-6 * np.abs(net).max()   # ... but averages to zero


def test_stress_not_implemented(calc64, atoms):
    atoms.calc = calc64
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_ase_workflow_md_and_caching(calc64, atoms):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms.calc = calc64
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    assert np.isfinite(e) and f.shape == (60, 3)
    assert np.array_equal(atoms.get_forces(), f)             # cached, no recomputation
    n_fn = len(calc64._functions)
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    atoms.set_momenta(np.zeros((60, 3)))
    e_tot0 = atoms.get_total_energy()
    dyn.run(8)
    assert len(calc64._functions) == n_fn                    # same atoms/cell/grid: no new graph
    # conservative forces: total energy conserved to integrator accuracy
    assert abs(atoms.get_total_energy() - e_tot0) < 1e-3 * max(1.0, np.abs(f).max())


def test_save_load_model_path(model64, atoms, tmp_path):
    path = tmp_path / "ednn.keras"
    model64(np.zeros((1,) + SHAPE + (1,)))
    model64.save(path)
    calc = EDNNCalculator(str(path), shape=SHAPE, gamma=0.2)
    ref = EDNNCalculator(model64, shape=SHAPE, gamma=0.2)
    assert calc.get_potential_energy(atoms) == pytest.approx(ref.get_potential_energy(atoms), rel=1e-12)
    np.testing.assert_allclose(calc.get_forces(atoms), ref.get_forces(atoms), rtol=1e-10, atol=1e-12)


def test_pixel_size_gives_the_same_grid(model64, atoms):
    a = EDNNCalculator(model64, pixel_size=0.2, gamma=0.2)
    assert a.grid_shape(atoms) == SHAPE
    b = EDNNCalculator(model64, shape=SHAPE, gamma=0.2)
    assert a.get_potential_energy(atoms) == pytest.approx(b.get_potential_energy(atoms), rel=1e-12)
    big = atoms.repeat((2, 1, 1))
    assert a.grid_shape(big) == (128, 64)
    assert a.get_tile_energies(big).shape == (8, 4)


def test_bad_input(model64, atoms, tmp_path):
    with pytest.raises(ValueError, match="multiple of the model's focus"):
        EDNNCalculator(model64, shape=(60, 64))
    with pytest.raises(ValueError, match="exactly one of shape and pixel_size"):
        EDNNCalculator(model64)
    with pytest.raises(ValueError, match="exactly one"):
        EDNNCalculator(model64, shape=SHAPE, pixel_size=0.2)
    with pytest.raises(ValueError, match="gamma"):
        EDNNCalculator(model64, shape=SHAPE, gamma=-1.0)
    with pytest.raises(ValueError, match="not_there.keras"):
        EDNNCalculator(str(tmp_path / "not_there.keras"), shape=SHAPE)
    with pytest.raises(ValueError, match="channel"):
        EDNNCalculator(model64, shape=SHAPE, channels=["C", "B"])
    with pytest.raises(ValueError, match="3D"):
        EDNNCalculator(model64, shape=(64, 64, 64))
    with pytest.raises(ValueError, match="got int"):
        EDNNCalculator(3, shape=SHAPE)
    calc = EDNNCalculator(model64, shape=SHAPE)
    skew = atoms.copy()
    skew.cell[1, 0] = 1.0
    with pytest.raises(ValueError, match="orthorhombic"):
        calc.get_potential_energy(skew)
    flat = atoms.copy()
    flat.pbc = False
    with pytest.raises(ValueError, match="pbc"):
        calc.get_potential_energy(flat)
    bad = atoms.copy()
    bad.positions[3, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        calc.get_potential_energy(bad)
