"""Tests for ednn_tf.atoms.render: eqn (2) images of atomic structures (lengths in Angstrom)."""
import math

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from ednn_tf.atoms.structures import honeycomb_sheet  # noqa: E402
from ednn_tf.atoms.cells import DEFAULT_CUTOFF, grid_coordinates, shape_for_cell, truncation_error
from ednn_tf.atoms.io import StructureFileNotFoundError, render_file
from ednn_tf.atoms.render import render, render_many
from ednn_tf.atoms.render_tf import render_tf

GAMMA = 0.2


def hexagonal_sheet(repeat=(5, 3), species=("C", "C"), a=2.46):
    """Flat honeycomb sheet (``structures.honeycomb_sheet``): (5, 3) gives the 60-atom 12.30 x 12.78 A cell."""
    return honeycomb_sheet(repeat[0], repeat[1], lattice_constant=a, symbols=species)


def brute_force(positions, numbers, lengths, shape, gamma=GAMMA, cutoff=DEFAULT_CUTOFF):
    """Direct evaluation of eqn (2) with every periodic image within the per-axis cutoff."""
    R = cutoff * gamma
    out = np.zeros(shape)
    axes = [np.arange(n) * (L / n) for L, n in zip(lengths, shape)]
    for p, z in zip(np.asarray(positions, float), numbers):
        prof = []
        for a in range(2):
            m = np.arange(-int(R / lengths[a]) - 2, int(R / lengths[a]) + 3)
            d = axes[a][:, None] - (p[a] % lengths[a]) + lengths[a] * m[None, :]
            prof.append((np.exp(-0.5 * (d / gamma) ** 2) * (np.abs(d) <= R)).sum(axis=1))
        out += z * np.outer(prof[0], prof[1])
    return out


@pytest.fixture(scope="module")
def sheet():
    """60-atom h-BN/graphene-like cell (12.78 x 12.30 A) with some C and displacements."""
    atoms = hexagonal_sheet((5, 3), species=("B", "N"))
    atoms.numbers[::7] = 6
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
    return atoms


# --------------------------------------------------------------------------- numerics
def test_integral_of_one_gaussian_within_truncation_bound():
    L, n, Z = 6.0, 240, 7  # h = 0.025 A, fine grid
    img = render([[2.31, 3.17]], [Z], (L, L), (n, n), dtype=np.float64)
    integral = img.sum() * (L / n) ** 2
    exact = Z * 2 * math.pi * GAMMA**2
    assert abs(integral / exact - 1) <= truncation_error(DEFAULT_CUTOFF)
    # A short cutoff loses the documented Gaussian tail: 1 - erf(c/sqrt2)^2 < exp(-c^2/2).
    c = 3.0
    img3 = render([[2.31, 3.17]], [Z], (L, L), (n, n), cutoff=c, dtype=np.float64)
    rel3 = img3.sum() * (L / n) ** 2 / exact
    assert rel3 < 1
    assert abs(rel3 - math.erf(c / math.sqrt(2)) ** 2) < 1e-3
    assert 1 - rel3 <= truncation_error(c)


def test_peak_value_and_axis_convention():
    """img[ix, iy, 0]: row = x.  An atom on pixel (10, 30) peaks there with value Z."""
    img = render([[1.0, 3.0, 5.0]], [6], (8.0, 8.0), (80, 80), dtype=np.float64)
    assert img.shape == (80, 80, 1)
    assert np.unravel_index(np.argmax(img[..., 0]), (80, 80)) == (10, 30)
    assert img[10, 30, 0] == pytest.approx(6.0, rel=1e-12)
    x, y = grid_coordinates((8.0, 8.0), (80, 80))
    assert x[10] == pytest.approx(1.0) and y[30] == pytest.approx(3.0)
    assert x[-1] == pytest.approx(8.0 - 0.1)  # no endpoint duplicating pixel 0


@pytest.mark.parametrize("method", ["dense", "tiled"])
def test_matches_brute_force(method):
    rng = np.random.default_rng(1)
    L, shape = (5.3, 4.1), (106, 82)
    pos = rng.uniform(-3.0, 9.0, (25, 3))
    Z = rng.integers(1, 10, 25)
    img = render(pos, Z, L, shape, dtype=np.float64, method=method)[..., 0]
    np.testing.assert_allclose(img, brute_force(pos, Z, L, shape), rtol=0, atol=1e-12)


def test_tiny_cell_many_images_and_crowded_tiles():
    rng = np.random.default_rng(2)
    # cell smaller than the Gaussian window: several images overlap one pixel
    pos, Z = rng.uniform(0, 1, (4, 2)), [1, 2, 3, 4]
    img = render(pos, Z, (0.9, 1.1), (7, 5), gamma=0.25, dtype=np.float64, method="tiled")
    np.testing.assert_allclose(img[..., 0], brute_force(pos, Z, (0.9, 1.1), (7, 5), 0.25), atol=1e-12)
    # 2000 atoms in one spot overflow the dense per-tile capacity
    pos = rng.normal(5.0, 0.3, (2000, 2))
    Z = np.full(2000, 6)
    a = render(pos, Z, (10, 10), (200, 200), dtype=np.float64, method="dense")
    b = render(pos, Z, (10, 10), (200, 200), dtype=np.float64, method="tiled")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * a.max())


def test_atom_across_periodic_boundary_equals_wrapped_copy():
    L, shape = (6.0, 5.0), (120, 100)
    for method in ("dense", "tiled"):
        outside = render([[-0.1, 2.0], [3.0, -0.07]], [6, 7], L, shape, dtype=np.float64, method=method)
        wrapped = render([[6.0 - 0.1, 2.0], [3.0, 5.0 - 0.07]], [6, 7], L, shape, dtype=np.float64,
                         method=method)
        np.testing.assert_allclose(outside, wrapped, rtol=0, atol=1e-12)
        # The Gaussian really wraps: mass on both sides of the x boundary.
        assert outside[0, 40, 0] > 0.5 * 6 and outside[-1, 40, 0] > 0.5 * 6
    # Shifting every atom by whole pixels is a roll of the image.
    base = render([[1.0, 2.0]], [5], L, shape, dtype=np.float64)
    moved = render([[1.0 + 3 * 0.05, 2.0 - 7 * 0.05]], [5], L, shape, dtype=np.float64)
    np.testing.assert_allclose(moved, np.roll(base, (3, -7), axis=(0, 1)), atol=1e-12)


@pytest.mark.parametrize("method", ["dense", "tiled"])
def test_supercell_is_tiling(sheet, method):
    shape = (128, 123)
    cell_img = render(sheet, shape=shape, method=method)
    super_img = render(sheet.repeat((2, 2, 1)), shape=(256, 246), method=method)
    np.testing.assert_allclose(super_img, np.tile(cell_img, (2, 2, 1)), rtol=0, atol=2e-5 * cell_img.max())


def test_channels_weighted_by_Z_sum_to_default(sheet):
    img = render(sheet, shape=(96, 92), dtype=np.float64)
    chans = render(sheet, shape=(96, 92), channels=[6, "B", 7], dtype=np.float64)
    assert chans.shape == (96, 92, 3)
    np.testing.assert_allclose((chans * np.array([6, 5, 7])).sum(-1, keepdims=True), img, atol=1e-12)
    # each channel has unit weight: its integral is (count) * 2 pi gamma^2
    counts = [np.sum(sheet.numbers == z) for z in (6, 5, 7)]
    integrals = chans.sum(axis=(0, 1)) * (sheet.cell[0, 0] / 96) * (sheet.cell[1, 1] / 92)
    np.testing.assert_allclose(integrals, np.array(counts) * 2 * math.pi * GAMMA**2, rtol=1e-6)


def test_dtype_layout_and_out(sheet):
    img = render(sheet)
    assert img.dtype == np.float32 and img.shape == (256, 256, 1) and img.flags.c_contiguous
    out = np.full((256, 256, 1), np.nan, np.float32)
    assert render(sheet, out=out) is out
    np.testing.assert_array_equal(out, img)


def test_3d_volume_matches_outer_product():
    pos, Z, L = [[1.0, 2.0, 3.0]], [8], (4.0, 5.0, 6.0)
    vol = render(pos, Z, L, (40, 50, 60), dtype=np.float64)
    assert vol.shape == (40, 50, 60, 1)
    x, y, z = grid_coordinates(L, (40, 50, 60))
    d = [(c - p + Lc / 2) % Lc - Lc / 2 for c, p, Lc in zip((x, y, z), pos[0], L)]  # minimum image
    g = [np.exp(-0.5 * (di / GAMMA) ** 2) * (np.abs(di) <= DEFAULT_CUTOFF * GAMMA) for di in d]
    np.testing.assert_allclose(vol[..., 0], 8 * np.einsum("i,j,k->ijk", *g), atol=1e-12)


def test_shape_for_cell_paper_resolution(sheet):
    assert shape_for_cell(sheet.cell) == (246, 256)  # ~0.05 A/px like the paper
    assert shape_for_cell((12.5, 13.0), pixel_size=12.5 / 256) == (256, 266)
    assert shape_for_cell(sheet, pixel_size=0.05, multiple_of=64) == (256, 256)


# --------------------------------------------------------------------------- batch + files
def test_render_many_and_progress(sheet, capsys):
    other = hexagonal_sheet((5, 3))
    batch = render_many([sheet, other, (other.positions, other.numbers, other.cell)],
                        shape=(64, 64), progress=True)
    assert batch.shape == (3, 64, 64, 1)
    np.testing.assert_array_equal(batch[0], render(sheet, shape=(64, 64)))
    np.testing.assert_array_equal(batch[1], batch[2])


@pytest.mark.parametrize("fmt,name", [("extxyz", "s.extxyz"), ("vasp", "POSCAR"), ("cif", "s.cif")])
def test_render_file_formats(sheet, tmp_path, fmt, name):
    path = tmp_path / name
    write(path, sheet, format=fmt)
    np.testing.assert_allclose(render_file(path, shape=(64, 64)), render(sheet, shape=(64, 64)),
                               atol=1e-4)


def test_render_file_xyz_needs_cell(sheet, tmp_path):
    path = tmp_path / "plain.xyz"
    write(path, sheet, format="xyz")
    assert "Lattice" not in path.read_text()
    with pytest.raises(ValueError, match=r"plain\.xyz.*no cell.*cell=\(Lx, Ly\)"):
        render_file(path, shape=(64, 64))
    lengths = sheet.cell.lengths()[:2]
    np.testing.assert_allclose(render_file(path, shape=(64, 64), cell=lengths),
                               render(sheet, shape=(64, 64)), atol=1e-4)


def test_render_file_missing_and_corrupt(tmp_path):
    missing = tmp_path / "nope.xyz"
    with pytest.raises(StructureFileNotFoundError, match="nope.xyz"):
        render_file(missing)
    with pytest.raises(ValueError, match="nope.xyz"):  # also a ValueError
        render_file(missing)
    bad = tmp_path / "bad.xyz"
    bad.write_text("this is\nnot a structure\n")
    with pytest.raises(ValueError, match=r"could not read structure file .*bad\.xyz"):
        render_file(bad)


# --------------------------------------------------------------------------- bad input
POS, Z2, CELL = [[0.0, 0.0], [1.0, 1.0]], [6, 7], (5.0, 5.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cell=[[5, 0.5, 0], [0, 5, 0], [0, 0, 5]]), r"orthorhombic.*0\.5"),
        (dict(cell=(5.0, -1.0)), r"> 0.*-1\.0"),
        (dict(cell=(5.0, float("nan"))), r"finite.*nan"),
        (dict(cell=None), r"cell.*None"),
        (dict(numbers=["C", "Xx"]), r"unknown element symbol 'Xx'"),
        (dict(numbers=[6, 0]), r"1\.\.118, got 0"),
        (dict(numbers=[6, 6.5]), r"integers, got 6\.5"),
        (dict(numbers=[6]), r"2 atoms but numbers has 1"),
        (dict(positions=[[0.0, np.nan], [1.0, 1.0]]), r"finite.*nan"),
        (dict(positions=[[0.0, np.inf], [1.0, 1.0]]), r"finite.*inf"),
        (dict(positions=[0.0, 1.0]), r"\(N, 2\) or \(N, 3\).*\(2,\)"),
        (dict(shape=(0, 64)), r">= 1.*\(0, 64\)"),
        (dict(shape=(64, -3)), r">= 1.*\(64, -3\)"),
        (dict(shape=(64, 2.5)), r"integers.*2\.5"),
        (dict(shape=(64,)), r"2 or 3 entries.*\(64,\)"),
        (dict(gamma=0.0), r"gamma.*0\.0"),
        (dict(cutoff=-1), r"cutoff.*-1"),
        (dict(dtype=np.int32), r"dtype.*int32"),
        (dict(method="fast"), r"method.*'fast'"),
        (dict(channels=[6]), r"\[7\] are not in channels \[6\]"),
        (dict(channels=[6, 6, 7]), r"repeat"),
        (dict(shape=(8, 8, 8)), r"3D grid needs \(N, 3\) positions"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = dict(positions=POS, numbers=Z2, cell=CELL, shape=(32, 32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        render(args.pop("positions"), **args)


def test_bad_atoms_inputs():
    no_cell = Atoms("C2", positions=[[0, 0, 0], [1, 1, 0]])
    with pytest.raises(ValueError, match=r"no cell.*cell=\(Lx, Ly\)"):
        render(no_cell)
    ghost = Atoms("CX", positions=[[0, 0, 0], [1, 1, 0]], cell=[5, 5, 5])
    with pytest.raises(ValueError, match="1..118, got 0"):
        render(ghost)
    with pytest.raises(ValueError, match="numbers must be None"):
        render(hexagonal_sheet((1, 1)), numbers=[6, 6, 6, 6])
    with pytest.raises(ValueError, match="pixel_size.*0"):
        shape_for_cell((5, 5), pixel_size=0)


# --------------------------------------------------------------------------- TensorFlow
@pytest.mark.parametrize("cutoff", [None, DEFAULT_CUTOFF])
def test_tf_matches_numpy(sheet, cutoff):
    import tensorflow as tf

    L = sheet.cell.lengths()[:2]
    ref = render(sheet, shape=(128, 123))
    got = render_tf(tf.constant(sheet.positions, tf.float32), sheet.numbers, L, (128, 123), cutoff=cutoff)
    assert got.shape == (128, 123, 1) and got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5 * ref.max())
    got64 = render_tf(tf.constant(sheet.positions, tf.float64), sheet.numbers, L, (128, 123), cutoff=cutoff)
    ref64 = render(sheet, shape=(128, 123), dtype=np.float64)
    np.testing.assert_allclose(got64.numpy(), ref64, rtol=0, atol=(1e-12 if cutoff else 1e-7) * ref64.max())
    chans = render_tf(tf.constant(sheet.positions, tf.float64), sheet.numbers, sheet.cell, (64, 60),
                      cutoff=cutoff, channels=["B", "C", "N"])
    np.testing.assert_allclose(chans.numpy(), render(sheet, shape=(64, 60), channels=["B", "C", "N"],
                                                     dtype=np.float64), atol=1e-7)


def test_tf_gradient_matches_finite_differences():
    import tensorflow as tf

    rng = np.random.default_rng(3)
    L, shape = (3.0, 2.6), (30, 26)
    pos0 = rng.uniform(0, 1, (5, 3)) * [3.0, 2.6, 1.0]
    pos0[0, :2] = [-0.05, 2.55]  # straddles both periodic boundaries
    Z = [6, 5, 7, 6, 1]
    weights = tf.constant(rng.normal(size=shape + (1,)))

    def loss(p):
        return tf.reduce_sum(render_tf(p, Z, L, shape) * weights)

    p = tf.Variable(pos0)
    with tf.GradientTape() as tape:
        value = loss(p)
    grad = tape.gradient(value, p).numpy()
    assert np.all(grad[:, 2] == 0)  # z does not enter a 2D image
    eps = 1e-5
    fd = np.zeros_like(pos0)
    for i in range(pos0.shape[0]):
        for a in range(2):
            hi, lo = pos0.copy(), pos0.copy()
            hi[i, a] += eps
            lo[i, a] -= eps
            fd[i, a] = (loss(tf.constant(hi)) - loss(tf.constant(lo))).numpy() / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_tf_bad_input():
    import tensorflow as tf

    with pytest.raises(ValueError, match=r"finite.*nan"):
        render_tf(tf.constant([[np.nan, 0.0]]), [6], (5, 5), (8, 8))
    with pytest.raises(ValueError, match="orthorhombic"):
        render_tf(tf.constant([[0.0, 0.0]]), [6], [[5, 1, 0], [0, 5, 0], [0, 0, 5]], (8, 8))
    with pytest.raises(ValueError, match=r">= 1.*\(0, 8\)"):
        render_tf(tf.constant([[0.0, 0.0]]), [6], (5, 5), (0, 8))
    with pytest.raises(ValueError, match="unknown element symbol 'Q'"):
        render_tf(tf.constant([[0.0, 0.0]]), ["Q"], (5, 5), (8, 8))
