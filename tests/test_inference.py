"""Streaming and sharded evaluation equals whole-grid evaluation; stripes never drop or double-count."""
import numpy as np
import pytest

from ednn_tf import EDNN, networks, testing
from ednn_tf.apply.inference import ArraySource, evaluate_streaming, shard_rows


@pytest.fixture(scope="module")
def cnn_model():
    return EDNN(networks.paper_cnn(16, channels=2, width=0.25, dense=16, seed=3), focus=8, context=4)


def test_shard_rows_cover_exactly_once():
    for n in [1, 5, 7, 16, 33]:
        for size in [1, 2, 3, 4, 8]:
            blocks = [shard_rows(n, r, size) for r in range(size)]
            rows = np.concatenate([np.arange(a, b) for a, b in blocks])
            np.testing.assert_array_equal(rows, np.arange(n))
            lens = [b - a for a, b in blocks]
            assert max(lens) - min(lens) <= 1
    with pytest.raises(ValueError, match="rank=2, size=2"):
        shard_rows(4, 2, 2)


@pytest.mark.parametrize("chunk,batch,cols", [(1, 7, "auto"), (2, 64, "auto"), (5, 3, "auto"), (2, 64, None),
                                              (2, 4, 1), (5, 16, 2), (1, 8, 3), (3, 5, 7)])
def test_streaming_equals_whole_grid(cnn_model, chunk, batch, cols):
    """Any split into row chunks, column blocks and subnet batches gives the whole-grid tiles."""
    grid = np.random.default_rng(0).normal(size=(40, 24, 2)).astype(np.float32)   # 5 x 3 tiles
    ref = cnn_model.predict_total(grid[None])[0]
    res = evaluate_streaming(cnn_model, ArraySource(grid), grid.shape[:2], tile_rows_per_chunk=chunk,
                             batch_tiles=batch, tile_cols_per_block=cols, keep_map=True)
    assert res["n_tiles"] == 15
    assert abs(res.total - ref) <= 1e-5 * max(1.0, abs(ref))
    np.testing.assert_allclose(res["tile_map"], cnn_model.tile_contributions(grid[None]).numpy()[0], rtol=1e-5, atol=1e-6)


def test_rows_only_source_equals_block_source(cnn_model):
    """A source without ``columns`` (asked for whole stripes, padded and sliced here) gives the same
    tile map as the block source over the same grid, for whole-width and blocked cuts."""
    grid = np.random.default_rng(4).normal(size=(40, 24, 2)).astype(np.float32)
    blocks = ArraySource(grid)

    def rows_only(r0, r1):
        return np.take(grid, np.arange(r0, r1) % 40, axis=0)

    for cols in (None, 1, 2):
        a = evaluate_streaming(cnn_model, blocks, (40, 24), tile_cols_per_block=cols, keep_map=True)
        b = evaluate_streaming(cnn_model, rows_only, (40, 24), tile_cols_per_block=cols, keep_map=True)
        np.testing.assert_array_equal(a["tile_map"], b["tile_map"])
    with pytest.raises(ValueError, match=r"block of shape \(17, 24, 2\) for tile rows 0..0, expected \(16, 24, 2\)"):
        evaluate_streaming(cnn_model, lambda r0, r1: rows_only(r0, r1 + 1), (40, 24))


@pytest.mark.parametrize("size", [2, 3, 4])
def test_uneven_stripes_sum_to_whole(cnn_model, size):
    """5 tile rows over 2, 3 or 4 'ranks': per-rank partial sums add up to the single-process total."""
    grid = np.random.default_rng(1).normal(size=(40, 16, 2)).astype(np.float32)
    whole = evaluate_streaming(cnn_model, ArraySource(grid), grid.shape[:2])
    parts = [evaluate_streaming(cnn_model, ArraySource(grid), grid.shape[:2], row_range=shard_rows(5, r, size))
             for r in range(size)]
    assert sum(p["n_tiles"] for p in parts) == whole["n_tiles"] == 10
    assert abs(sum(p.total for p in parts) - whole.total) < 1e-9 * max(1.0, abs(whole.total))


def test_streaming_exact_ising_large():
    """Exact local operator over a 256x256 lattice streamed in stripes: the exact Ising energy."""
    rng = np.random.default_rng(2)
    s = rng.choice(np.array([-1.0, 1.0], np.float32), size=(256, 256))
    model = EDNN(testing.exact_ising_subnet(1, 1), focus=1, context=1)
    res = evaluate_streaming(model, ArraySource(s), s.shape, tile_rows_per_chunk=16, batch_tiles=4096)
    exact = -np.sum(s * (np.roll(s, -1, 0) + np.roll(s, -1, 1)))
    assert res.total == exact


def test_streaming_bad_input(cnn_model):
    grid = np.zeros((40, 20, 2), np.float32)
    with pytest.raises(ValueError, match="20 in grid_shape=.*focus=8"):
        evaluate_streaming(cnn_model, ArraySource(grid), grid.shape[:2])
    grid = np.zeros((40, 16, 2), np.float32)
    grid[3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_streaming(cnn_model, ArraySource(grid), grid.shape[:2])
    with pytest.raises(ValueError, match="row_range"):
        evaluate_streaming(cnn_model, ArraySource(grid), grid.shape[:2], row_range=(0, 9))
    for bad in (0, -1, "all", 1.5):
        with pytest.raises(ValueError, match=f"tile_cols_per_block must be 'auto', None or an integer >= 1, got {bad!r}"):
            evaluate_streaming(cnn_model, ArraySource(grid), grid.shape[:2], tile_cols_per_block=bad)
