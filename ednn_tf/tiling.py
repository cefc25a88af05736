"""Tiling: periodic padding and focus/context tile extraction (pure functions, no Keras state).

An input grid of spatial size ``H x W`` (or ``D x H x W``) with ``C`` channels is cut into the
non-overlapping ``f``-wide focus blocks; each block is surrounded by a ``c``-wide context taken
periodically from its neighbours, so every tile is ``t = f + 2c`` wide. Tile ``(i, j)`` covers
input rows ``i*f - c .. i*f + f + c - 1`` and columns ``j*f - c .. j*f + f + c - 1`` (mod H, W).

Everything that cuts tiles or maps between tiles and grid sites lives here and is shared by the
Keras layer, the Monte Carlo code and the streaming inference.

Shapes:

* 2D: ``(B, H, W, C) -> (B, H/f, W/f, t, t, C)``
* 3D: ``(B, D, H, W, C) -> (B, D/f, H/f, W/f, t, t, t, C)``

``H``, ``W``, ``D`` may be unknown until call time; ``c`` may exceed the grid size (the padding
wraps as many times as needed).

Backends: under Keras' TensorFlow backend (the default) the tiles come from
``tf.image.extract_patches`` / ``tf.extract_volume_patches``. Under any other Keras 3 backend
(JAX, PyTorch: ``KERAS_BACKEND=jax``) the same functions use two or three ``keras.ops.take``
gathers with static index tables instead (``_tiles_from_padded_ops``; tested to give identical
tiles), so an EDNN also trains on machines that have JAX but no TensorFlow. TensorFlow is imported
only when the TensorFlow backend is in use.
"""
from __future__ import annotations

import keras
import numpy as np

__all__ = [
    "check_focus_context", "tile_size", "validate_grid", "periodic_pad", "extract_tiles", "tiles_from_padded",
    "extract_tiles_numpy", "tile_window", "axis_membership", "tiles_containing", "TileIndex", "fold_tiles",
]


def check_focus_context(focus, context):
    """Validate and return ``(int(focus), int(context))``; raise ValueError naming bad values."""
    if isinstance(focus, bool) or not isinstance(focus, (int, np.integer)) or focus < 1:
        raise ValueError(f"focus must be an integer >= 1, got focus={focus!r}")
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 0:
        raise ValueError(f"context must be an integer >= 0, got context={context!r}")
    return int(focus), int(context)


def tile_size(focus, context) -> int:
    """Width of one tile, ``f + 2c``."""
    focus, context = check_focus_context(focus, context)
    return focus + 2 * context


def validate_grid(shape, focus, check_channels=True):
    """Check a batched grid shape ``(B, *spatial, C)``: rank 4 or 5 and every known spatial
    size a positive multiple of ``focus``. Returns the number of spatial dimensions (2 or 3)."""
    shape = tuple(None if s is None else int(s) for s in shape)
    if len(shape) not in (4, 5):
        raise ValueError(
            f"EDNN input must be (batch, H, W, channels) or (batch, D, H, W, channels); "
            f"got rank {len(shape)} with shape {shape}")
    for axis, n in enumerate(shape[1:-1], start=1):
        if n is not None and (n < 1 or n % focus):
            raise ValueError(
                f"spatial size {n} (axis {axis} of input shape {shape}) is not a positive multiple "
                f"of focus={focus}")
    if check_channels and shape[-1] is not None and shape[-1] < 1:
        raise ValueError(f"input has {shape[-1]} channels in shape {shape}")
    return len(shape) - 2


def _tf_backend() -> bool:
    return keras.backend.backend() == "tensorflow"


def _wrap_axis(x, axis, context):
    """Periodically pad one axis of ``x`` by ``context`` on each side.

    Built from slices and a concat when the pad fits in the grid (the usual case); for
    ``context > n`` the axis is gathered with indices ``(k - c) mod n`` so it wraps repeatedly.
    """
    if context == 0:
        return x
    n_static = x.shape[axis]
    if n_static is not None and context <= n_static:
        sl_hi = [slice(None)] * len(x.shape)
        sl_hi[axis] = slice(n_static - context, n_static)
        sl_lo = [slice(None)] * len(x.shape)
        sl_lo[axis] = slice(0, context)
        return keras.ops.concatenate([x[tuple(sl_hi)], x, x[tuple(sl_lo)]], axis=axis)
    if not _tf_backend():  # static shapes (JAX, PyTorch): gather with a fixed index table
        return keras.ops.take(x, np.arange(-context, n_static + context) % n_static, axis=axis)
    import tensorflow as tf

    n = tf.shape(x)[axis]
    idx = tf.math.floormod(tf.range(-context, n + context), n)
    return tf.gather(x, idx, axis=axis)


def periodic_pad(x, context: int, axes=None):
    """Pad spatial axes of a batched grid ``(B, *spatial, C)`` periodically by ``context``.

    ``axes`` (default: every spatial axis) selects which axes wrap; a stripe that already carries
    its halo rows is padded along its columns only (``axes=(2,)``).
    """
    x = keras.ops.convert_to_tensor(x)
    _, context = check_focus_context(1, context)
    for axis in (range(1, len(x.shape) - 1) if axes is None else axes):
        x = _wrap_axis(x, axis, context)
    return x


def extract_tiles(x, focus: int, context: int):
    """Cut a batched periodic grid into focus/context tiles in one batched op.

    ``(B, H, W, C) -> (B, H/f, W/f, f+2c, f+2c, C)`` via ``tf.image.extract_patches``;
    ``(B, D, H, W, C) -> (B, D/f, H/f, W/f, t, t, t, C)`` via ``tf.extract_volume_patches``
    (gathers under other Keras backends). Differentiable with respect to ``x``.
    """
    focus, context = check_focus_context(focus, context)
    x = keras.ops.convert_to_tensor(x)
    validate_grid(x.shape, focus)
    return tiles_from_padded(periodic_pad(x, context), focus, context)


def tiles_from_padded(xp, focus: int, context: int):
    """Tiles of a grid that already carries its ``c``-wide halo on every spatial axis.

    ``xp`` is ``(B, *(n_i*f + 2c), C)``; the result is ``(B, *n_i, *(t,)*nd, C)``. Used by
    ``extract_tiles`` (after periodic padding) and by streaming inference (stripes whose halo rows
    come from the neighbouring stripe, not from a wrap of the stripe itself).
    """
    focus, context = check_focus_context(focus, context)
    xp = keras.ops.convert_to_tensor(xp)
    nd = len(xp.shape) - 2
    if nd not in (2, 3):
        raise ValueError(f"padded grid must be (B, H, W, C) or (B, D, H, W, C), got shape {tuple(xp.shape)}")
    if not _tf_backend():
        return _tiles_from_padded_ops(xp, focus, context)
    import tensorflow as tf

    t = focus + 2 * context
    channels = xp.shape[-1] if xp.shape[-1] is not None else tf.shape(xp)[-1]
    if nd == 2:
        p = tf.image.extract_patches(xp, sizes=[1, t, t, 1], strides=[1, focus, focus, 1],
                                     rates=[1, 1, 1, 1], padding="VALID")
    else:
        p = tf.extract_volume_patches(xp, ksizes=[1, t, t, t, 1], strides=[1, focus, focus, focus, 1],
                                      padding="VALID")
    shp = tf.shape(p)
    out = tf.reshape(p, tf.concat([shp[:-1], [t] * nd, [channels]], axis=0))
    static = ([xp.shape[0]] + [None if s is None else (s - 2 * context) // focus for s in xp.shape[1:-1]]
              + [t] * nd + [xp.shape[-1]])
    out.set_shape(static)
    return out


def _tiles_from_padded_ops(xp, focus: int, context: int):
    """``tiles_from_padded`` from ``keras.ops`` alone (any backend; static spatial sizes).

    One ``take`` per spatial axis with the index table ``i*f + k`` (tile ``i``, offset ``k < t``)
    turns axis ``a`` of length ``n*f + 2c`` into ``n*t`` rows, reshaped to ``(n, t)``; a final
    transpose moves the tile-grid axes in front of the within-tile axes.
    """
    nd = len(xp.shape) - 2
    t = focus + 2 * context
    spatial = tuple(xp.shape[1:-1])
    if any(s is None for s in spatial):
        raise ValueError(f"the keras.ops tiling needs static spatial sizes, got shape {tuple(xp.shape)}")
    grid = []
    for a, s in enumerate(spatial):
        n = (int(s) - 2 * context) // focus
        if n < 1 or n * focus + 2 * context != s:
            raise ValueError(f"padded axis {a + 1} has size {s}, not n*focus + 2*context "
                             f"(focus={focus}, context={context})")
        grid.append(n)
    out = xp
    for a, n in enumerate(grid):  # axis 1 + 2a: after earlier axes were split into (n, t) pairs
        axis = 1 + 2 * a
        idx = (np.arange(n)[:, None] * focus + np.arange(t)[None, :]).ravel()
        out = keras.ops.take(out, idx, axis=axis)
        shape = tuple(out.shape)
        out = keras.ops.reshape(out, (-1,) + shape[1:axis] + (n, t) + shape[axis + 1:])
    # (B, n1, t, n2, t[, n3, t], C) -> (B, n1, n2[, n3], t, t[, t], C)
    perm = [0] + [1 + 2 * a for a in range(nd)] + [2 + 2 * a for a in range(nd)] + [1 + 2 * nd]
    return keras.ops.transpose(out, perm)


def fold_tiles(tiles, nd: int):
    """Fold the tile-grid axes into the batch axis: ``(B, *grid, *tile, C) -> (B*prod(grid), *tile, C)``.

    Returns ``(folded, grid_shape)`` where ``grid_shape`` is the dynamic ``(B, *grid)`` shape needed
    to unfold per-tile outputs.
    """
    if not _tf_backend():  # static tile grid
        grid_shape = (-1,) + tuple(int(s) for s in tiles.shape[1:1 + nd])
        return keras.ops.reshape(tiles, (-1,) + tuple(tiles.shape[1 + nd:])), grid_shape
    import tensorflow as tf

    shp = tf.shape(tiles)
    grid_shape = shp[: 1 + nd]
    tile_part = shp[1 + nd:]
    folded = tf.reshape(tiles, tf.concat([[-1], tile_part], axis=0))
    folded.set_shape([None] + list(tiles.shape[1 + nd:]))
    return folded, grid_shape


def extract_tiles_numpy(x, focus: int, context: int):
    """Reference implementation with explicit per-tile modular slicing (slow; for tests).

    ``x`` is ``(B, *spatial, C)`` with 2 or 3 spatial axes.
    """
    focus, context = check_focus_context(focus, context)
    x = np.asarray(x)
    nd = validate_grid(x.shape, focus)
    t = focus + 2 * context
    spatial = x.shape[1:-1]
    grid = tuple(n // focus for n in spatial)
    out = np.empty((x.shape[0],) + grid + (t,) * nd + (x.shape[-1],), dtype=x.dtype)
    for tidx in np.ndindex(*grid):
        sub = x
        for a, (i, n) in enumerate(zip(tidx, spatial)):
            rows = (np.arange(i * focus - context, i * focus + focus + context)) % n
            sub = np.take(sub, rows, axis=1 + a)
        out[(slice(None),) + tidx] = sub
    return out


def tile_window(tile_index, focus: int, context: int, grid_shape):
    """Grid indices covered by a tile: a tuple (one per spatial axis) of index arrays, mod size."""
    focus, context = check_focus_context(focus, context)
    return tuple(np.arange(i * focus - context, i * focus + focus + context) % n
                 for i, n in zip(tile_index, grid_shape))


def axis_membership(n: int, focus: int, context: int):
    """Which tiles along one periodic axis of ``n`` sites contain which coordinate: a boolean
    ``(n // f, n)`` table, ``True`` at ``[i, s]`` iff ``i*f - c <= s (mod n) <= i*f + f + c - 1``.

    The one site -> tile map: ``tiles_containing`` and ``TileIndex`` are both built from it.
    """
    focus, context = check_focus_context(focus, context)
    n = int(n)
    if n < 1 or n % focus:
        raise ValueError(f"grid size {n} is not a multiple of focus={focus}")
    # tile i contains s iff (s - (i*f - c)) mod n < f + 2c; a tile at least as wide as the axis holds all
    offs = (np.arange(n)[None, :] - (np.arange(n // focus)[:, None] * focus - context)) % n
    return (offs < focus + 2 * context) | (focus + 2 * context >= n)


def tiles_containing(site, focus: int, context: int, grid_shape):
    """All tile indices whose window (focus plus context) contains grid ``site`` (periodic).

    Returns an ``(n_tiles, nd)`` int array with unique rows in ascending order (fewer than
    ``ceil((f+2c)/f)^nd`` when the grid is smaller than a tile).
    """
    per_axis = [np.flatnonzero(axis_membership(n, focus, context)[:, int(s)]) for s, n in zip(site, grid_shape)]
    mesh = np.meshgrid(*per_axis, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


class TileIndex:
    """Which sites each tile sees and which tiles see each site, for one periodic grid.

    Args:
        grid_shape: spatial sizes ``(H, W)`` or ``(D, H, W)``, each a positive multiple of ``focus``.
        focus, context: the EDNN's ``f`` and ``c``.

    Attributes:
        windows: ``(n_tiles, t, .., t)`` int32 -- flat (C-order) site index of every tile entry,
            obtained by cutting a grid of site indices with ``extract_tiles`` (the model's own
            tiling); tile ``k`` is the flat index of the tile grid ``(H/f, W/f)``.
        members: per axis, the ``axis_membership`` table ``(n_a / f, n_a)`` of that axis.
        site_ptr, site_tiles: CSR map site -> tiles containing it (unique, ascending):
            tiles of flat site ``s`` are ``site_tiles[site_ptr[s]:site_ptr[s+1]]`` (the product of
            the per-axis ``members``, the same map as ``tiles_containing``).
    """

    def __init__(self, grid_shape, focus, context):
        self.focus, self.context = check_focus_context(focus, context)
        grid_shape = tuple(int(n) for n in grid_shape)
        if len(grid_shape) not in (2, 3):
            raise ValueError(f"grid_shape must have 2 or 3 spatial sizes, got {grid_shape!r}")
        validate_grid((1, *grid_shape, 1), self.focus)
        self.grid_shape = grid_shape
        self.ndim = len(grid_shape)
        self.tile_grid = tuple(n // self.focus for n in grid_shape)
        self.tile_size = self.focus + 2 * self.context
        self.n_sites = int(np.prod(grid_shape))
        self.n_tiles = int(np.prod(self.tile_grid))
        if self.n_sites >= 2 ** 31:
            raise ValueError(f"grid {grid_shape} has {self.n_sites} sites, more than int32 indices allow")
        ids = np.arange(self.n_sites, dtype=np.int32).reshape((1, *grid_shape, 1))
        win = keras.ops.convert_to_numpy(extract_tiles(ids, self.focus, self.context))
        self.windows = win.reshape((self.n_tiles,) + (self.tile_size,) * self.ndim)
        self.members = tuple(axis_membership(n, self.focus, self.context) for n in grid_shape)
        self.site_ptr, self.site_tiles = self._site_map()

    def _site_map(self):
        """CSR ``(site_ptr, site_tiles)`` of the product of the per-axis membership tables."""
        sites = tiles = np.zeros(1, np.int64)
        for n, nt, member in zip(self.grid_shape, self.tile_grid, self.members):
            tile_a, site_a = np.nonzero(member)                  # (tile, coordinate) pairs of this axis
            sites = (sites[:, None] * n + site_a[None, :]).ravel()
            tiles = (tiles[:, None] * nt + tile_a[None, :]).ravel()
        order = np.lexsort((tiles, sites))
        sites, tiles = sites[order], tiles[order]
        return np.searchsorted(sites, np.arange(self.n_sites + 1)).astype(np.int64), tiles.astype(np.int32)

    def flat_sites(self, sites):
        """Validate sites ``(n, ndim)`` (or one site ``(ndim,)``) and return flat int32 indices ``(n,)``."""
        arr = np.asarray(sites)
        if arr.ndim == 1 and arr.shape[0] == self.ndim:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != self.ndim:
            raise ValueError(f"sites must be an (n, {self.ndim}) integer array, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"sites must be integers, got {arr.ravel()[:6]!r}")
            arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= np.array(self.grid_shape))
        if np.any(bad):
            row = arr[np.flatnonzero(bad.any(axis=1))[0]]
            raise ValueError(f"site {tuple(int(v) for v in row)} is outside the grid {self.grid_shape}")
        return np.ravel_multi_index(tuple(arr.T), self.grid_shape).astype(np.int32)

    def tiles_of(self, flat_sites):
        """Tiles containing each flat site: ``(entry_tiles, entry_segment)``, one entry per
        (site, tile) pair; ``entry_segment[e]`` is the position of the entry's site in ``flat_sites``."""
        s = np.asarray(flat_sites, np.int64)
        lo, hi = self.site_ptr[s], self.site_ptr[s + 1]
        counts = hi - lo
        seg = np.repeat(np.arange(len(s), dtype=np.int32), counts)
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        entries = self.site_tiles[starts + np.arange(int(counts.sum()))]
        return entries.astype(np.int32), seg

    def tile_coords(self, flat_tiles):
        """Tile-grid coordinates ``(n, ndim)`` of flat tile indices."""
        return np.stack(np.unravel_index(np.asarray(flat_tiles), self.tile_grid), axis=1)
