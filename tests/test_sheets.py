"""Procedural sheets: deterministic, band renders equal the whole image, streaming equals whole-sheet EDNN."""
import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from ednn_tf import EDNN, networks
from ednn_tf.atoms import render
from ednn_tf.apply.inference import evaluate_streaming, shard_rows
from ednn_tf.atoms.sheets import PorousSheet


@pytest.fixture(scope="module")
def sheet():
    return PorousSheet((28, 16), seed=1)


def test_deterministic_and_counts(sheet):
    a = sheet.to_atoms()
    b = PorousSheet((28, 16), seed=1).to_atoms()
    np.testing.assert_array_equal(a.positions, b.positions)
    assert len(PorousSheet((28, 16), seed=2).to_atoms()) != len(a) or not np.array_equal(
        PorousSheet((28, 16), seed=2).to_atoms().positions, a.positions)
    assert sheet.count_atoms(band=7.3) == len(a) < 4 * 28 * 16
    # closest pair by a neighbour list (get_all_distances(mic=True) builds N^2 x 27 vectors: 1.4 GB here)
    d = neighbor_list("d", a, 1.6)
    assert d.size and d.min() > 1.3   # ideal lattice: bond 1.42 A


def test_bands_equal_whole_image(sheet):
    H, W = 384, 256
    full = render.render(sheet.to_atoms(), shape=(H, W))
    src = sheet.row_source((H, W))
    for r0, r1 in [(0, 64), (100, 229), (-32, 40), (350, 420)]:
        np.testing.assert_allclose(src(r0, r1), np.take(full, np.arange(r0, r1) % H, axis=0), atol=2e-6)


def test_blocks_equal_whole_image(sheet):
    """Blocks of columns (inside, across both periodic edges, wider than a margin) equal the whole image."""
    H, W = 384, 256
    full = render.render(sheet.to_atoms(), shape=(H, W))
    src = sheet.row_source((H, W))
    assert src.columns
    for (r0, r1), (c0, c1) in [((0, 64), (0, 40)), ((100, 229), (-24, 16)), ((-32, 40), (230, 290)),
                               ((350, 420), (7, 8)), ((5, 9), (0, 256))]:
        want = np.take(np.take(full, np.arange(r0, r1) % H, axis=0), np.arange(c0, c1) % W, axis=1)
        np.testing.assert_allclose(src(r0, r1, c0, c1), want, atol=2e-6)


def test_streamed_sheet_equals_whole_sheet_model(sheet):
    H, W = 192, 128
    model = EDNN(networks.paper_cnn(32, width=0.125, dense=8, seed=0), focus=16, context=8)
    whole = model.predict_total(render.render(sheet.to_atoms(), shape=(H, W))[None])[0]
    src = sheet.row_source((H, W))
    parts = [evaluate_streaming(model, src, (H, W), row_range=shard_rows(H // 16, r, 5), batch_tiles=16,
                                tile_cols_per_block=3) for r in range(5)]   # 12 tile rows over 5 'ranks': uneven
    assert abs(sum(p.total for p in parts) - whole) < 1e-5 * max(1.0, abs(whole))   # blocks of 3 of the 8 columns
