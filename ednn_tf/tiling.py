"""Tiling: periodic padding and focus/context tile extraction (pure functions, no Keras state).

A grid ``(B, H, W, C)`` (or ``(B, D, H, W, C)``) is cut into the non-overlapping ``f``-wide focus
blocks, each surrounded by a ``c``-wide context taken periodically from its neighbours: tiles are
``t = f + 2c`` wide, ``(B, H/f, W/f, t, t, C)`` (3D: ``(B, D/f, H/f, W/f, t, t, t, C)``). Tile
``(i, j)`` covers rows ``i*f - c .. i*f + f + c - 1`` and the same columns in ``j`` (mod H, W).
Spatial sizes may be unknown until call time; ``c`` may exceed the grid (the padding wraps again).
Everything that maps between tiles and grid sites lives here (Keras layer, Monte Carlo, streaming).

Under the TensorFlow backend the tiles come from ``tf.image.extract_patches`` /
``tf.extract_volume_patches``; under any other Keras 3 backend (``KERAS_BACKEND=jax``) from
``keras.ops.take`` gathers with static index tables (``_tiles_from_padded_ops``, tested to give
identical tiles). TensorFlow is imported only under its own backend.
"""
from __future__ import annotations

import keras
import numpy as np

from .util import check_int

__all__ = [
    "check_focus_context", "tile_size", "validate_grid", "periodic_pad", "extract_tiles", "tiles_from_padded",
    "extract_tiles_numpy", "tile_window", "axis_membership", "tiles_containing", "density_window", "TileIndex",
    "fold_tiles",
]


def check_focus_context(focus, context):
    """Validate and return ``(int(focus), int(context))`` (focus >= 1, context >= 0)."""
    return check_int("focus", focus, minimum=1), check_int("context", context, minimum=0)


def tile_size(focus, context) -> int:
    """Width of one tile, ``f + 2c``."""
    focus, context = check_focus_context(focus, context)
    return focus + 2 * context


def validate_grid(shape, focus, check_channels=True):
    """Check a batched grid shape ``(B, *spatial, C)``: rank 4 or 5 and every known spatial
    size a positive multiple of ``focus``. Returns the number of spatial dimensions (2 or 3)."""
    shape = tuple(None if s is None else int(s) for s in shape)
    if len(shape) not in (4, 5):
        raise ValueError(f"EDNN input must be (batch, H, W, channels) or (batch, D, H, W, channels); "
                         f"got rank {len(shape)} with shape {shape}")
    for axis, n in enumerate(shape[1:-1], start=1):
        if n is not None and (n < 1 or n % focus):
            raise ValueError(f"spatial size {n} (axis {axis} of input shape {shape}) is not a positive multiple "
                             f"of focus={focus}")
    if check_channels and shape[-1] is not None and shape[-1] < 1:
        raise ValueError(f"input has {shape[-1]} channels in shape {shape}")
    return len(shape) - 2


def _tf_backend() -> bool:
    return keras.backend.backend() == "tensorflow"


def _wrap_axis(x, axis, context):
    """Periodically pad one axis of ``x`` by ``context`` on each side: slices and a concat when the pad
    fits in the grid, else a gather with indices ``(k - c) mod n`` (wraps repeatedly)."""
    if context == 0:
        return x
    n_static = x.shape[axis]
    if n_static is not None and context <= n_static:
        lead = (slice(None),) * axis
        return keras.ops.concatenate([x[lead + (slice(n_static - context, n_static),)], x,
                                      x[lead + (slice(0, context),)]], axis=axis)
    if not _tf_backend():  # static shapes (JAX, PyTorch): gather with a fixed index table
        return keras.ops.take(x, np.arange(-context, n_static + context) % n_static, axis=axis)
    import tensorflow as tf

    n = tf.shape(x)[axis]
    idx = tf.math.floormod(tf.range(-context, n + context), n)
    return tf.gather(x, idx, axis=axis)


def periodic_pad(x, context: int, axes=None):
    """Pad the spatial ``axes`` (default all) of a grid ``(B, *spatial, C)`` periodically by ``context``
    (a stripe that already carries its halo rows is padded along its columns only: ``axes=(2,)``)."""
    x = keras.ops.convert_to_tensor(x)
    context = check_int("context", context, minimum=0)
    for axis in (range(1, len(x.shape) - 1) if axes is None else axes):
        x = _wrap_axis(x, axis, context)
    return x


def extract_tiles(x, focus: int, context: int):
    """Cut a batched periodic grid into focus/context tiles (shapes in the module docstring) in one
    batched op; differentiable with respect to ``x``."""
    focus, context = check_focus_context(focus, context)
    x = keras.ops.convert_to_tensor(x)
    validate_grid(x.shape, focus)
    return tiles_from_padded(periodic_pad(_assert_grid_sizes(x, focus), context), focus, context)


def _assert_grid_sizes(x, focus):
    """``x``; when a spatial size is unknown until run time (a TensorFlow function traced with ``None``
    sizes), with the run-time form of ``validate_grid``'s size check: InvalidArgumentError
    ``"spatial sizes ... are not all positive multiples of focus=f"`` naming the sizes received."""
    if not _tf_backend() or all(n is not None for n in x.shape[1:-1]):
        return x
    import tensorflow as tf

    sizes = tf.shape(x)[1:-1]
    ok = tf.reduce_all((sizes > 0) & (tf.math.floormod(sizes, focus) == 0))
    check = tf.debugging.Assert(ok, ["EDNN input: spatial sizes", sizes,
                                     f"are not all positive multiples of focus={focus}"])
    with tf.control_dependencies([check]):
        return tf.identity(x)


def tiles_from_padded(xp, focus: int, context: int):
    """Tiles ``(B, *n_i, *(t,)*nd, C)`` of a grid ``xp`` ``(B, *(n_i*f + 2c), C)`` that already carries its
    ``c``-wide halo on every spatial axis (periodic padding, or streaming stripes whose halo rows come
    from the neighbouring stripe)."""
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
    """``tiles_from_padded`` from ``keras.ops`` alone (any backend; static spatial sizes): one ``take``
    per axis with the index table ``i*f + k`` (tile ``i``, offset ``k < t``), reshaped to ``(n, t)``,
    then a transpose moves the tile-grid axes in front of the within-tile axes."""
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
    Returns ``(folded, grid_shape)``, ``grid_shape`` the dynamic ``(B, *grid)`` that unfolds per-tile outputs."""
    if not _tf_backend():  # static tile grid
        grid_shape = (-1,) + tuple(int(s) for s in tiles.shape[1:1 + nd])
        return keras.ops.reshape(tiles, (-1,) + tuple(tiles.shape[1 + nd:])), grid_shape
    import tensorflow as tf

    shp = tf.shape(tiles)
    grid_shape = shp[: 1 + nd]
    folded = tf.reshape(tiles, tf.concat([[-1], shp[1 + nd:]], axis=0))
    folded.set_shape([None] + list(tiles.shape[1 + nd:]))
    return folded, grid_shape


def extract_tiles_numpy(x, focus: int, context: int):
    """Reference tiles of ``x`` ``(B, *spatial, C)`` by explicit per-tile modular slicing (slow; for tests)."""
    focus, context = check_focus_context(focus, context)
    x = np.asarray(x)
    nd = validate_grid(x.shape, focus)
    t = focus + 2 * context
    spatial = x.shape[1:-1]
    grid = tuple(n // focus for n in spatial)
    out = np.empty((x.shape[0],) + grid + (t,) * nd + (x.shape[-1],), dtype=x.dtype)
    for tidx in np.ndindex(*grid):
        sub = x
        for a, rows in enumerate(tile_window(tidx, focus, context, spatial)):
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
    ``(n // f, n)`` table, ``True`` at ``[i, s]`` iff ``i*f - c <= s (mod n) <= i*f + f + c - 1``; the one
    site -> tile map (``tiles_containing`` and ``TileIndex`` are built from it)."""
    focus, context = check_focus_context(focus, context)
    n = int(n)
    if n < 1 or n % focus:
        raise ValueError(f"grid size {n} is not a multiple of focus={focus}")
    # tile i contains s iff (s - (i*f - c)) mod n < f + 2c; a tile at least as wide as the axis holds all
    offs = (np.arange(n)[None, :] - (np.arange(n // focus)[:, None] * focus - context)) % n
    return (offs < focus + 2 * context) | (focus + 2 * context >= n)


def tiles_containing(site, focus: int, context: int, grid_shape):
    """All tile indices whose window (focus plus context) contains grid ``site`` (periodic): an
    ``(n_tiles, nd)`` int array of unique ascending rows (fewer than ``ceil((f+2c)/f)^nd`` on a small grid)."""
    per_axis = [np.flatnonzero(axis_membership(n, focus, context)[:, int(s)]) for s, n in zip(site, grid_shape)]
    mesh = np.meshgrid(*per_axis, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def density_window(sites, n: int, context: int):
    """The f = 1 windows along one periodic axis of ``n`` sites that see any of ``sites``:
    ``(out, read)``, two index arrays mod ``n``. ``out``: the sites within ``context`` of ``sites``
    (one wrapped run: the shortest circular run holding ``sites``, widened by ``context`` on each
    side; all of ``0 .. n-1`` once it would cover the axis); ``read``: the ``len(out) + 2 context``
    sites those windows read (``out`` widened again; the periodic padding of the whole axis when
    ``out`` is the whole axis). A change of the grid at ``sites`` changes only the f = 1 values at
    ``out``, and those are computed from ``read`` alone."""
    context = check_int("context", context, minimum=0)
    n = check_int("n", n, minimum=1)
    s = np.unique(np.mod(np.asarray(sites, dtype=np.int64).ravel(), n))
    if s.size == 0:
        raise ValueError("density_window needs at least one site")
    gaps = np.diff(np.append(s, s[0] + n)) - 1        # free sites after each changed one (circularly)
    k = int(np.argmax(gaps))
    start, length = int(s[(k + 1) % s.size]), n - int(gaps[k])
    if length + 2 * context >= n:
        start, length = context, n - 2 * context      # out = 0 .. n-1 below
    out = (start - context + np.arange(length + 2 * context)) % n
    return out, (out[0] - context + np.arange(out.size + 2 * context)) % n


class TileIndex:
    """Which sites each tile sees and which tiles see each site, for one periodic grid ``grid_shape``
    (``(H, W)`` or ``(D, H, W)``, multiples of ``focus``) and the EDNN's ``focus``, ``context``.

    ``windows``: ``(n_tiles, t, .., t)`` int32, the flat (C-order) site index of every tile entry, cut
    by ``extract_tiles`` (the model's own tiling); tile ``k`` is the flat index into the tile grid.
    ``members``: per axis, its ``axis_membership`` table ``(n_a / f, n_a)``. ``site_ptr``,
    ``site_tiles``: CSR map site -> tiles containing it (unique, ascending; the product of the
    per-axis ``members``, the same map as ``tiles_containing``): ``site_tiles[site_ptr[s]:site_ptr[s+1]]``.
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
