"""Symmetrised inference: exact invariance under every pixel shift and mirror, extensivity kept."""
import keras
import numpy as np
import pytest

from ednn_tf import networks, symmetry
from ednn_tf.model import EDNN


@pytest.fixture(scope="module")
def model():
    """A random (untrained) EDNN f=4, c=2 on 2-channel grids: generic weights, no symmetry learned."""
    keras.utils.set_random_seed(1)
    return EDNN(networks.ising_dense(8, channels=2, seed=1), focus=4, context=2)


def _grids(n=3, h=8, w=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, 2)).astype(np.float32)


def test_plain_ednn_is_not_invariant_under_a_one_pixel_shift(model):
    """The premise: without averaging, a shift that is not a multiple of f changes the output."""
    x = _grids()
    plain, shifted = model.predict_total(x), model.predict_total(np.roll(x, 1, axis=1))
    assert np.max(np.abs(plain - shifted)) > 1e-3 * np.max(np.abs(plain))


@pytest.mark.parametrize("shift", [(1, 0), (0, 3), (5, 7), (3, 1)])
def test_stride1_average_is_invariant_under_every_pixel_shift(model, shift):
    x = _grids()
    ref = model.predict_symmetrised(x)
    got = model.predict_symmetrised(np.roll(x, shift, axis=(1, 2)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)))


def test_stride2_average_is_invariant_under_even_shifts_only(model):
    x = _grids()
    ref = model.predict_symmetrised(x, stride=2)
    np.testing.assert_allclose(model.predict_symmetrised(np.roll(x, (2, 6), axis=(1, 2)), stride=2), ref,
                               rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)))
    odd = model.predict_symmetrised(np.roll(x, 1, axis=1), stride=2)
    assert np.max(np.abs(odd - ref)) > 1e-3 * np.max(np.abs(ref))


def test_mirror_average_is_mirror_invariant(model):
    x = _grids()
    ref = model.predict_symmetrised(x, mirrors=True)
    for axes in [(1,), (2,), (1, 2)]:
        np.testing.assert_allclose(model.predict_symmetrised(np.flip(x, axes), mirrors=True), ref,
                                   rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)))
    # without the mirror average a flip changes the prediction
    assert np.max(np.abs(model.predict_symmetrised(np.flip(x, 1)) - model.predict_symmetrised(x))) > 1e-4


def test_symmetrised_model_stays_extensive(model):
    """E_sym(k x l supercell) = k l E_sym(cell)."""
    x = _grids(2, 8, 8)
    big = np.tile(x, (1, 2, 3, 1))
    np.testing.assert_allclose(model.predict_symmetrised(big, mirrors=True), 6 * model.predict_symmetrised(x, mirrors=True),
                               rtol=1e-5)


def test_symmetrised_equals_mean_over_explicit_rolls(model):
    """The average is what it says: the mean of plain predictions over the listed group elements."""
    x = _grids(2)
    expected = np.mean([model.predict_total(np.roll(np.flip(x, f) if f else x, s, axis=(1, 2)))
                        for f in [(), (1,), (2,), (1, 2)] for s in symmetry.pixel_shifts(4, 2)], axis=0)
    mean, spread = model.predict_symmetrised(x, stride=2, mirrors=True, return_spread=True)
    np.testing.assert_allclose(mean, expected, rtol=1e-10)
    assert np.all(spread > 0)


def test_spread_is_the_std_over_the_group_even_for_a_large_offset():
    """Total energies are large (|E| ~ 1e6 here) and their spread small (~1e-3): the spread must be
    the standard deviation over the group elements, without the cancellation of E[p^2] - E[p]^2
    (which gives ~1e-4 of noise at this offset, 10 % of the answer)."""
    x = _grids(3)
    predict = lambda z: 1e6 + 1e-3 * z[:, 0, 0, 0].astype(np.float64)  # noqa: E731
    shifts, flips = symmetry.pixel_shifts(4, 1), symmetry.mirror_sets(2)
    values = np.array([1e-3 * np.roll(np.flip(x, f) if f else x, s, axis=(1, 2))[:, 0, 0, 0]
                       for f in flips for s in shifts], np.float64)
    mean, spread = symmetry.symmetrised(predict, x, shifts, flips, return_spread=True)
    np.testing.assert_allclose(mean - 1e6, values.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(spread, values.std(axis=0), rtol=1e-6)


def test_bad_arguments_name_the_value(model):
    with pytest.raises(ValueError, match="stride must divide the period: stride 3, period 4"):
        model.predict_symmetrised(_grids(), stride=3)
    with pytest.raises(ValueError, match="not a positive multiple of focus=4"):
        model.predict_symmetrised(_grids(1, 6, 8))
    with pytest.raises(ValueError, match="stride must be an integer >= 1, got stride=0"):
        symmetry.pixel_shifts(4, 0)
    with pytest.raises(ValueError, match="every shift needs 2 entries"):
        symmetry.symmetrised(lambda z: z.sum(axis=(1, 2, 3)), _grids(), [(1,)])
    with pytest.raises(ValueError, match="flip axes must be spatial axes 1..2, got \\(3,\\)"):
        symmetry.symmetrised(lambda z: z.sum(axis=(1, 2, 3)), _grids(), [(0, 0)], flips=[(3,)])


def test_mirror_sets_and_shifts():
    assert symmetry.mirror_sets(2) == [(), (1,), (2,), (1, 2)]
    assert symmetry.mirror_sets(3, mirrors=False) == [()]
    assert len(symmetry.mirror_sets(3)) == 8
    assert symmetry.pixel_shifts(4, 2) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert len(symmetry.pixel_shifts(4, 1, ndim=3)) == 64


def test_predict_batch_size_must_be_positive(model):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got batch_size=0"):
        model.predict_total(_grids(), batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be an integer, got batch_size=2.5"):
        model.predict_symmetrised(_grids(), batch_size=2.5)


def test_symmetrised_rejects_non_finite_input_once(model):
    x = _grids()
    x[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.predict_symmetrised(x, stride=2)
