"""Streaming (and sharded) evaluation of an EDNN on grids too large to hold at once.

The grid is never materialised: a *row source* produces any band of grid rows on demand (with
periodic wrap), e.g. by rendering only the atoms near a stripe of a procedurally generated sheet.
Each chunk of tile rows is requested with its ``c``-wide halo, padded periodically along the
columns, cut a block of tile columns at a time by ``tiling.tiles_from_padded`` (as the Keras
layer) and evaluated by ``EDNN.tile_values`` in batches; sums are float64 (``model.sum_tiles``).
A source that can render a block of columns alone (``columns = True``) is asked for one block at a
time, so peak memory (one block of the grid plus its tiles) grows with neither the grid's height
nor its width; for a rows-only source the stripe is the whole width.

With Horovod each rank takes a contiguous block of tile rows (``shard_rows``) and the float64
partial sums are combined by one allreduce at the end.
"""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from .. import tiling
from ..model import sum_tiles
from ..util import check_int

__all__ = ["ArraySource", "shard_rows", "evaluate_streaming", "evaluate_sharded", "StreamResult"]


class ArraySource:
    """Block source over an in-memory grid ``(H, W, C)`` (or ``(H, W)``): ``source(r0, r1, c0=0,
    c1=W)`` with periodic wrap of rows and columns."""

    columns = True

    def __init__(self, grid):
        grid = np.asarray(grid)
        self.grid = grid[..., None] if grid.ndim == 2 else grid
        if self.grid.ndim != 3:
            raise ValueError(f"grid must be (H, W) or (H, W, C), got shape {grid.shape}")
        self.shape = self.grid.shape

    def __call__(self, r0, r1, c0=0, c1=None):
        rows = np.take(self.grid, np.arange(r0, r1) % self.shape[0], axis=0)
        if (c0, c1) in ((0, None), (0, self.shape[1])):
            return rows
        return np.take(rows, np.arange(c0, c1) % self.shape[1], axis=1)


def shard_rows(n_rows: int, rank: int, size: int):
    """Contiguous block ``[start, stop)`` of ``n_rows`` tile rows for ``rank`` of ``size``.

    Blocks differ in length by at most one (the first ``n_rows % size`` ranks take one more), cover
    every row exactly once and never overlap, whatever ``n_rows`` and ``size``.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank}, size={size}")
    base, extra = divmod(int(n_rows), size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class StreamResult(dict):
    """``total`` (float64), ``n_tiles``, ``seconds``, ``tiles_per_s`` and, if asked, ``tile_map``."""

    @property
    def total(self):
        return self["total"]


def _tile_runner(model, channels):
    """``model.tile_values`` on a flat stack ``(m, t, t, C)`` of tiles, traced once for any ``m``."""
    spec = tf.TensorSpec((None, model.tile_size, model.tile_size, channels), tf.float32)
    return tf.function(lambda tiles: model.tile_values(tiles, training=False), input_signature=[spec])


def _stream_plan(model, grid_shape, row_range, tile_rows_per_chunk, batch_tiles, tile_cols_per_block):
    """Validated ``(W, n_cols, start, stop, cols_per_block)`` of ``evaluate_streaming``."""
    f = model.focus
    H, W = (int(s) for s in grid_shape)
    for n in (H, W):
        if n < 1 or n % f:
            raise ValueError(f"grid size {n} in grid_shape={tuple(grid_shape)} is not a positive multiple of focus={f}")
    n_rows, n_cols = H // f, W // f
    start, stop = (0, n_rows) if row_range is None else (int(row_range[0]), int(row_range[1]))
    if not 0 <= start <= stop <= n_rows:
        raise ValueError(f"row_range {row_range} outside the {n_rows} tile rows")
    rows, batch = check_int("tile_rows_per_chunk", tile_rows_per_chunk, 1), check_int("batch_tiles", batch_tiles, 1)
    if tile_cols_per_block is None:
        cols = n_cols
    elif tile_cols_per_block == "auto":
        cols = max(1, 4 * batch // rows)
    elif isinstance(tile_cols_per_block, (int, np.integer)) and tile_cols_per_block >= 1:
        cols = int(tile_cols_per_block)
    else:
        raise ValueError(f"tile_cols_per_block must be 'auto', None or an integer >= 1, got {tile_cols_per_block!r}")
    return W, n_cols, start, stop, min(cols, n_cols)


def _checked(block, want, where):
    """``block`` as float32 ``(rows, cols, C)``, checked against the expected ``want = (rows, cols)``."""
    block = np.asarray(block, dtype=np.float32)
    block = block[..., None] if block.ndim == 2 else block
    if block.shape[:2] != want:
        raise ValueError(f"source returned a block of shape {block.shape} for {where}, expected {want + block.shape[2:]}")
    if not np.all(np.isfinite(block)):
        raise ValueError(f"source returned non-finite values for {where}")
    return block


def _block_fetcher(source, r, r_end, f, c, W):
    """``fetch(q, q_end)``: the padded block ``(1, (r_end - r) f + 2c, (q_end - q) f + 2c, C)`` of tile rows
    ``r .. r_end-1`` and tile columns ``q .. q_end-1`` with its ``c``-wide halo. A source with
    ``columns = True`` is asked for each block alone (memory independent of the grid's width); any
    other source for the whole stripe once, padded periodically along the columns and sliced."""
    rows = (r_end - r) * f + 2 * c
    where = f"tile rows {r}..{r_end - 1}"
    if getattr(source, "columns", False):
        def fetch(q, q_end):
            want = (rows, (q_end - q) * f + 2 * c)
            return _checked(source(r * f - c, r_end * f + c, q * f - c, q_end * f + c), want,
                            f"{where}, tile columns {q}..{q_end - 1}")[None]
        return fetch
    stripe = _checked(source(r * f - c, r_end * f + c), (rows, W), where)
    padded = tiling.periodic_pad(stripe[None], c, axes=(2,))            # (1, rows, W + 2c, C)
    return lambda q, q_end: padded[:, :, q * f:q_end * f + 2 * c]


def _stripe_values(model, run, fetch, n_rows, n_cols, cols, batch):
    """``(values, run)``: per-tile values ``(n_rows, n_cols)`` of one stripe, ``cols`` tile columns (one
    ``fetch``) at a time, ``batch`` tiles a sub-network call; ``run`` (the traced sub-network) is
    made on the first block when None."""
    f, c = model.focus, model.context
    block = np.empty((n_rows, n_cols), np.float32)
    for q in range(0, n_cols, cols):
        q_end = min(n_cols, q + cols)
        tiles = tiling.tiles_from_padded(fetch(q, q_end), f, c)          # (1, n_rows, q_end - q, t, t, C)
        flat, _ = tiling.fold_tiles(tiles, 2)
        run = run or _tile_runner(model, int(flat.shape[-1]))
        out = np.concatenate([run(flat[lo:lo + batch]).numpy() for lo in range(0, int(flat.shape[0]), batch)])
        block[:, q:q_end] = out.reshape(n_rows, q_end - q)
    return block, run


def evaluate_streaming(model, source, grid_shape, *, row_range=None, tile_rows_per_chunk=1, batch_tiles=256,
                       tile_cols_per_block="auto", keep_map=False, map_writer=None, progress=False, desc="tiles",
                       atoms_per_tile=None):
    """Evaluate ``model`` (an ``EDNN``) over tile rows ``row_range`` of a 2D grid, streaming.

    ``source(r0, r1)`` returns grid rows ``r0 .. r1-1`` as ``(r1 - r0, W, C)``, wrapping rows outside
    ``[0, H)`` periodically; a source with the attribute ``columns = True`` is instead called as
    ``source(r0, r1, c0, c1)`` for each block of columns (``c0 < 0``, ``c1 > W`` wrap), so the memory
    grows with neither the grid's height nor its width (``ArraySource``, ``PorousSheet.row_source``); ``grid_shape`` is ``(H, W)`` (multiples of ``focus``); ``row_range``
    ``(start, stop)`` the tile rows (default all ``H / f``). Memory knobs: ``tile_rows_per_chunk``
    rows per ``source`` call, ``batch_tiles`` tiles per sub-network call (traced once for any
    batch), ``tile_cols_per_block`` tile columns cut at a time (``"auto"``: enough to fill four
    batches; ``None``: the whole width). ``keep_map`` returns the per-tile contributions
    ``(rows, W / f)`` float32 as ``tile_map``; ``map_writer(first_tile_row, block)`` receives each
    chunk's (e.g. to write an HDF5 map stripe by stripe); ``progress`` shows a tqdm bar (with
    ``atoms_per_tile`` also atoms/s). Returns a ``StreamResult`` with the float64 ``total``.
    """
    f, c = model.focus, model.context
    W, n_cols, start, stop, cols = _stream_plan(model, grid_shape, row_range, tile_rows_per_chunk, batch_tiles,
                                                tile_cols_per_block)
    run, partials, tile_map, n_done, bar = None, [], [], 0, None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=(stop - start) * n_cols, desc=desc, unit="tile", dynamic_ncols=True)
    t0 = time.perf_counter()
    for r in range(start, stop, tile_rows_per_chunk):
        r_end = min(stop, r + tile_rows_per_chunk)
        block, run = _stripe_values(model, run, _block_fetcher(source, r, r_end, f, c, W), r_end - r, n_cols, cols,
                                    int(batch_tiles))
        partials.append(sum_tiles(block))
        if keep_map:
            tile_map.append(block)
        if map_writer is not None:
            map_writer(r, block)
        n_done += block.size
        if bar is not None:
            bar.update(block.size)
            if atoms_per_tile:
                el = time.perf_counter() - t0
                bar.set_postfix(atoms_per_s=f"{n_done * atoms_per_tile / max(el, 1e-9):.3g}", refresh=False)
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    res = StreamResult(total=float(sum_tiles(partials)), n_tiles=n_done, seconds=dt,
                       tiles_per_s=n_done / max(dt, 1e-12), row_range=(start, stop))
    if keep_map:
        res["tile_map"] = np.concatenate(tile_map, axis=0) if tile_map else np.zeros((0, n_cols), np.float32)
    return res


def evaluate_sharded(model, source, grid_shape, n_tile_rows=None, **kwargs):
    """``evaluate_streaming`` on this Horovod rank's block of tile rows, then one float64 allreduce.

    Without Horovod (or with one process) this is ``evaluate_streaming`` over every row.
    ``n_tile_rows`` restricts the work to the first rows of the grid (a timing sample of a grid too
    large to finish). The returned ``total`` is the evaluated rows' sum over all ranks;
    ``local_total`` and ``row_range`` are this rank's.
    """
    from .. import distributed

    rank, size = distributed.rank(), distributed.size()
    n_rows = int(grid_shape[0]) // model.focus
    if n_tile_rows is not None:
        if not 1 <= n_tile_rows <= n_rows:
            raise ValueError(f"n_tile_rows must be in 1..{n_rows}, got {n_tile_rows}")
        n_rows = int(n_tile_rows)
    rr = shard_rows(n_rows, rank, size)
    res = evaluate_streaming(model, source, grid_shape, row_range=rr, **kwargs)
    res["local_total"] = res["total"]
    res["rank"], res["size"] = rank, size
    res["total"] = float(distributed.allreduce_sum(np.float64(res["total"])))          # identity on one rank
    res["n_tiles_all"] = int(distributed.allreduce_sum(np.float64(res["n_tiles"])))
    return res
