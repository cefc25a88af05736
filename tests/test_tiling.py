"""Tiling against an explicit numpy slicing reference, and its validation."""
import numpy as np
import pytest
import tensorflow as tf

from ednn_tf import tiling
from ednn_tf.layers import TileLayer


@pytest.mark.parametrize("shape", [(2, 6, 6), (3, 6, 12), (1, 4, 8)])
@pytest.mark.parametrize("focus,context", [(1, 0), (1, 1), (1, 2), (2, 1), (2, 3), (4, 2)])
@pytest.mark.parametrize("channels", [1, 3])
def test_2d_tiles_equal_numpy_reference(shape, focus, context, channels):
    if any(n % focus for n in shape[1:]):
        pytest.skip("size not a multiple of focus")
    rng = np.random.default_rng(hash((shape, focus, context, channels)) % 2**32)
    x = rng.normal(size=shape + (channels,)).astype(np.float32)
    got = tiling.extract_tiles(x, focus, context).numpy()
    ref = tiling.extract_tiles_numpy(x, focus, context)
    t = focus + 2 * context
    assert got.shape == (shape[0], shape[1] // focus, shape[2] // focus, t, t, channels)
    np.testing.assert_array_equal(got, ref)


def test_tile_window_convention():
    """Tile (i, j) covers rows i*f-c .. i*f+f+c-1 (mod H): check one tile by hand."""
    H, W, f, c = 6, 8, 2, 1
    x = np.arange(H * W, dtype=np.float32).reshape(1, H, W, 1)
    tiles = tiling.extract_tiles(x, f, c).numpy()
    i, j = 0, 3
    rows = np.arange(i * f - c, i * f + f + c) % H      # [5, 0, 1, 2]
    cols = np.arange(j * f - c, j * f + f + c) % W      # [5, 6, 7, 0]
    np.testing.assert_array_equal(tiles[0, i, j, :, :, 0], x[0][np.ix_(rows, cols)][..., 0])
    np.testing.assert_array_equal(tiling.tile_window((i, j), f, c, (H, W))[0], rows)


@pytest.mark.parametrize("shape", [(2, 4, 4, 2, 1), (1, 2, 4, 6, 3)])
@pytest.mark.parametrize("focus,context", [(1, 1), (2, 1), (2, 0)])
def test_3d_tiles_equal_numpy_reference(shape, focus, context):
    if any(n % focus for n in shape[1:-1]):
        pytest.skip("size not a multiple of focus")
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    got = tiling.extract_tiles(x, focus, context).numpy()
    np.testing.assert_array_equal(got, tiling.extract_tiles_numpy(x, focus, context))
    t = focus + 2 * context
    assert got.shape == (shape[0],) + tuple(n // focus for n in shape[1:-1]) + (t, t, t, shape[-1])


@pytest.mark.parametrize("focus,context", [(1, 5), (2, 7), (1, 9)])
def test_context_larger_than_grid_wraps(focus, context):
    x = np.random.default_rng(2).normal(size=(2, 4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(tiling.extract_tiles(x, focus, context).numpy(),
                                  tiling.extract_tiles_numpy(x, focus, context))


def test_unknown_spatial_sizes_in_graph():
    """Sizes unknown at trace time: one traced function serves several grid sizes."""
    layer = TileLayer(2, 3)
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 2), tf.float32)])
    for shape in [(1, 4, 6, 2), (3, 8, 2, 2), (1, 2, 2, 2)]:   # c=3 > 2 exercises the gather path
        x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(fn(x).numpy(), tiling.extract_tiles_numpy(x, 2, 3))


def test_periodic_pad_is_wrap():
    x = np.random.default_rng(4).normal(size=(2, 5, 3, 2)).astype(np.float32)
    for c in (0, 1, 3, 7):
        np.testing.assert_array_equal(tiling.periodic_pad(x, c).numpy(),
                                      np.pad(x, ((0, 0), (c, c), (c, c), (0, 0)), mode="wrap"))


def test_tiles_containing_matches_windows():
    grid, f, c = (8, 6), 2, 1
    for site in [(0, 0), (3, 5), (7, 2)]:
        got = {tuple(t) for t in tiling.tiles_containing(site, f, c, grid)}
        ref = {(i, j) for i in range(4) for j in range(3)
               if site[0] in tiling.tile_window((i, j), f, c, grid)[0]
               and site[1] in tiling.tile_window((i, j), f, c, grid)[1]}
        assert got == ref and len(got) == 4   # ceil((f+2c)/f)^2 = 2^2 tiles for f=2, c=1


def test_extract_tiles_gradient_counts_copies():
    """d(sum of all tile pixels)/dx = number of tiles each pixel appears in = (t/f)^2."""
    x = tf.constant(np.random.default_rng(5).normal(size=(1, 6, 6, 1)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        s = tf.reduce_sum(tiling.extract_tiles(x, 2, 1))
    np.testing.assert_allclose(tape.gradient(s, x).numpy(), 4.0)


@pytest.mark.parametrize("focus,context,match", [
    (0, 1, "focus=0"), (-2, 1, "focus=-2"), (1.5, 1, "focus=1.5"), (1, -1, "context=-1"), (1, 0.5, "context=0.5"),
])
def test_bad_focus_context(focus, context, match):
    with pytest.raises(ValueError, match=match):
        TileLayer(focus, context)
    with pytest.raises(ValueError, match=match):
        tiling.extract_tiles(np.zeros((1, 4, 4, 1), np.float32), focus, context)


def test_size_not_multiple_of_focus():
    with pytest.raises(ValueError, match=r"spatial size 7 .* focus=2"):
        tiling.extract_tiles(np.zeros((1, 8, 7, 1), np.float32), 2, 1)
    with pytest.raises(ValueError, match=r"spatial size 6 .* focus=4"):
        TileLayer(4, 1)(np.zeros((1, 6, 8, 1), np.float32))


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4), (1, 2, 2, 2, 2, 1)])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match=f"rank {len(shape)}"):
        TileLayer(1, 1)(np.zeros(shape, np.float32))


def test_non_finite_rejected_when_checking():
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        TileLayer(1, 1, check_finite=True)(x)
    out = TileLayer(1, 1)(x)   # default: no check, NaN propagates
    assert np.isnan(out.numpy()).sum() == 9


def test_tilelayer_config_round_trip():
    layer = TileLayer(2, 3, check_finite=True, name="t")
    clone = TileLayer.from_config(layer.get_config())
    assert (clone.focus, clone.context, clone.check_finite, clone.name) == (2, 3, True, "t")
    assert layer.compute_output_shape((None, 8, None, 3)) == (None, 4, None, 8, 8, 3)


# ------------------------------------------------------------------------------------------------
# the keras.ops tiling used under non-TensorFlow backends (JAX, PyTorch), checked here under TF
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,focus,context", [
    ((2, 6, 6, 1), 1, 1), ((3, 6, 12, 3), 2, 3), ((1, 8, 4, 2), 4, 2), ((2, 4, 4, 1), 2, 0),
    ((1, 4, 6, 2, 1), 2, 1), ((2, 2, 4, 6, 3), 1, 1)])
def test_ops_tiling_equals_numpy_reference(shape, focus, context):
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    padded = np.asarray(tiling.periodic_pad(x, context))
    got = np.asarray(tiling._tiles_from_padded_ops(padded, focus, context))
    np.testing.assert_array_equal(got, tiling.extract_tiles_numpy(x, focus, context))


def test_ops_tiling_rejects_a_padded_size_that_is_not_n_f_plus_2c():
    with pytest.raises(ValueError, match="size 7"):
        tiling._tiles_from_padded_ops(np.zeros((1, 7, 6, 1), np.float32), 2, 1)


JAX_SCRIPT = r"""
import os, sys, numpy as np
os.environ["KERAS_BACKEND"] = "jax"
import keras
assert keras.backend.backend() == "jax"
import ednn_tf
from ednn_tf import tiling, networks
assert "tensorflow" not in sys.modules, "ednn_tf's core imported TensorFlow under the JAX backend"
rng = np.random.default_rng(0)
x = rng.normal(size=(2, 8, 12, 2)).astype(np.float32)
for f, c in [(2, 1), (4, 2), (1, 5)]:
    np.testing.assert_array_equal(np.asarray(tiling.extract_tiles(x, f, c)), tiling.extract_tiles_numpy(x, f, c))
keras.utils.set_random_seed(0)
m = ednn_tf.EDNN(networks.ising_dense(ednn_tf.tile_size(2, 1), channels=2), focus=2, context=1)
m.compile(optimizer="adam", loss="mse")
m.fit(x, np.ones((2, 1)), epochs=1, verbose=0)
big = np.tile(x, (1, 3, 2, 1))          # a 3 x 2 periodic repeat: exactly 6x the total
p1, p6 = m.predict_total(x), m.predict_total(big)
np.testing.assert_allclose(p6, 6 * p1, rtol=1e-5)
np.testing.assert_allclose(np.asarray(m.predict(x, verbose=0))[:, 0], p1, rtol=1e-5)
print("OK", p1)
"""


def test_ednn_under_the_jax_backend_without_tensorflow(tmp_path):
    """Under ``KERAS_BACKEND=jax`` the core never imports TensorFlow, the tiles equal the numpy
    reference, training runs and the total of a 3 x 2 periodic repeat is 6x the cell's."""
    pytest.importorskip("jax")
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
