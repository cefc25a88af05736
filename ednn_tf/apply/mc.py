"""Monte Carlo with a lattice EDNN as the Hamiltonian: local energy differences and exact
colour-parallel Metropolis.

An EDNN's energy is a sum of tile terms, ``E = sum_k g(tile_k)``. Flipping site ``s`` changes
only the tiles whose window (focus plus context) contains ``s`` — ``ceil((f+2c)/f)^d`` or so of
them, 9 for ``f = c = 1`` — so

    dE(s) = sum_{k contains s} [ g(tile_k with s flipped) - g(tile_k) ]

needs the sub-network on those tiles only; the old terms ``g(tile_k)`` are kept in a cache of
per-tile contributions. ``LocalEnergy`` exposes this for arbitrary sites of one lattice.

Flipping many sites at once is exact only when no tile contains two of them: then every
proposed flip changes a disjoint set of tiles and the acceptance of one never changes the
``dE`` of another. ``lattice_colouring`` partitions the sites into such classes (``t^d`` colours
for tile width ``t = f + 2c`` when the size is a multiple of ``t``; a few more otherwise), and
``Metropolis`` updates one colour at a time: all sites of the colour (of all replicas) in ONE
batched sub-network call, accept each with ``min(1, exp(-dE/T))``, and write back the accepted
spins and tile terms. Each colour update satisfies detailed balance for the EDNN's own energy,
so a sweep over the colours samples ``exp(-E_EDNN/T)`` exactly (up to float32 round-off of the
tile terms).

All tile bookkeeping comes from ``tiling``: the window of every tile is read off by cutting a
grid of site indices with ``tiling.extract_tiles`` — the same function the model uses — so the
Monte Carlo code cannot disagree with the model about which sites a tile sees.

Conventions: a move negates every channel of one site (the Ising spin flip ``s -> -s``);
energies are in the model's unit (``J`` for Ising); temperatures are ``k_B T`` in the same unit.
"""
from __future__ import annotations

import math

import numpy as np

from ..util import check_positive
import tensorflow as tf

from .. import tiling

__all__ = ["TileIndex", "lattice_colouring", "colouring_1d", "LocalEnergy", "Metropolis", "thermodynamics",
           "binder_crossing", "BINDER_ISING_2D"]

#: Binder cumulant of the 2D Ising model at Tc on square periodic lattices (Kamieniarz & Bloete 1993)
BINDER_ISING_2D = 0.61069


# ------------------------------------------------------------------------------------------------
# tile <-> site index maps
# ------------------------------------------------------------------------------------------------
class TileIndex:
    """Which sites each tile sees and which tiles see each site, for one periodic grid.

    Args:
        grid_shape: spatial sizes ``(H, W)`` or ``(D, H, W)``, each a positive multiple of ``focus``.
        focus, context: the EDNN's ``f`` and ``c``.

    Attributes:
        windows: ``(n_tiles, t, .., t)`` int32 — flat (C-order) site index of every tile entry,
            obtained by cutting a grid of site indices with ``tiling.extract_tiles``; tile ``k`` is
            the flat index of the tile grid ``(H/f, W/f)``.
        site_ptr, site_tiles: CSR map site -> tiles containing it (unique, ascending):
            tiles of flat site ``s`` are ``site_tiles[site_ptr[s]:site_ptr[s+1]]``.
    """

    def __init__(self, grid_shape, focus, context):
        self.focus, self.context = tiling.check_focus_context(focus, context)
        grid_shape = tuple(int(n) for n in grid_shape)
        if len(grid_shape) not in (2, 3):
            raise ValueError(f"grid_shape must have 2 or 3 spatial sizes, got {grid_shape!r}")
        tiling.validate_grid((1, *grid_shape, 1), self.focus)
        self.grid_shape = grid_shape
        self.ndim = len(grid_shape)
        self.tile_grid = tuple(n // self.focus for n in grid_shape)
        self.tile_size = self.focus + 2 * self.context
        self.n_sites = int(np.prod(grid_shape))
        self.n_tiles = int(np.prod(self.tile_grid))
        if self.n_sites >= 2 ** 31:
            raise ValueError(f"grid {grid_shape} has {self.n_sites} sites, more than int32 indices allow")
        ids = tf.reshape(tf.range(self.n_sites, dtype=tf.int32), (1, *grid_shape, 1))
        win = tiling.extract_tiles(ids, self.focus, self.context).numpy()
        self.windows = win.reshape((self.n_tiles,) + (self.tile_size,) * self.ndim)
        # inverse map: unique (site, tile) pairs sorted by site (a site can repeat in a window
        # when the tile is wider than the grid)
        flat = self.windows.reshape(self.n_tiles, -1).astype(np.int64)
        key = flat * self.n_tiles + np.arange(self.n_tiles, dtype=np.int64)[:, None]
        key = np.unique(key.ravel())
        sites, tiles = key // self.n_tiles, key % self.n_tiles
        self.site_tiles = tiles.astype(np.int32)
        self.site_ptr = np.searchsorted(sites, np.arange(self.n_sites + 1)).astype(np.int64)

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


# ------------------------------------------------------------------------------------------------
# colouring
# ------------------------------------------------------------------------------------------------
def colouring_1d(n, tile_size):
    """Colour a periodic chain of ``n`` sites so that same-coloured sites are at cyclic distance
    ``>= tile_size`` (hence never inside one ``tile_size``-wide window).

    The chain is cut into ``q = n // t`` blocks of length ``t`` or a little more (the ``n mod t``
    leftover sites spread over the blocks); a site's colour is its position in its block. That
    gives ``t + ceil((n mod t) / q)`` colours (``t`` when ``t`` divides ``n``); the extra colours
    hold few sites. If ``t >= n`` every site gets its own colour. Returns ``(colours, n_colours)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got n={n!r}")
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
        raise ValueError(f"tile_size must be a positive integer, got tile_size={tile_size!r}")
    n, t = int(n), int(tile_size)
    if t >= n:
        return np.arange(n), n
    q, r = divmod(n, t)
    lengths = np.full(q, t + r // q)
    lengths[: r % q] += 1
    colours = np.concatenate([np.arange(k) for k in lengths])
    return colours, int(lengths.max())


def lattice_colouring(grid_shape, focus, context):
    """Sublattice colouring for exact parallel updates: no tile window contains two sites of one
    colour. Tile windows are products of ``t``-wide periodic intervals (``t = f + 2c``), so the
    colouring is the product of ``colouring_1d`` along each axis (two distinct sites of one
    colour differ on some axis, where they are ``>= t`` apart). ``t^d`` colours — the minimum,
    since one tile's ``t^d`` sites must all differ — when ``t`` divides every size.

    Returns ``(colours, n_colours)`` with ``colours`` an int array of ``grid_shape``.
    """
    focus, context = tiling.check_focus_context(focus, context)
    grid_shape = tuple(int(n) for n in grid_shape)
    tiling.validate_grid((1, *grid_shape, 1), focus)
    t = focus + 2 * context
    per_axis = [colouring_1d(n, t) for n in grid_shape]
    colours = np.zeros(grid_shape, np.int64)
    for axis, (col, k) in enumerate(per_axis):
        shape = [1] * len(grid_shape)
        shape[axis] = -1
        colours = colours * k + col.reshape(shape)
    return colours, int(np.prod([k for _, k in per_axis]))


# ------------------------------------------------------------------------------------------------
# shared state: lattice(s) + cache of tile contributions
# ------------------------------------------------------------------------------------------------
def _check_model(model):
    for attr in ("focus", "context", "subnet", "tile_contributions"):
        if not hasattr(model, attr):
            raise ValueError(f"model must be an ednn_tf.EDNN (missing {attr!r}), got {type(model).__name__}")


class _LatticeState:
    """Replicas of one lattice stored site-major, ``x: (n_sites, R, C)`` float32, and the cache of
    tile contributions ``(n_tiles, R)``; shared by ``LocalEnergy`` and ``Metropolis``."""

    def __init__(self, model, spins, ndim):
        _check_model(model)
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got ndim={ndim!r}")
        x = np.asarray(spins)
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"spins must be numeric, got dtype {x.dtype}")
        if x.ndim == ndim + 1:
            x = x[..., None]
        if x.ndim != ndim + 2:
            raise ValueError(f"spins must have shape (replicas, *{ndim} spatial sizes[, channels]), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("spins contain NaN or inf")
        tiling.validate_grid(x.shape, model.focus)
        self.model = model
        self.subnet = model.subnet
        self.ndim = ndim
        self.index = TileIndex(x.shape[1:-1], model.focus, model.context)
        self.n_replicas, self.channels = x.shape[0], x.shape[-1]
        self.grid_shape = self.index.grid_shape
        t = self.index.tile_size
        self._tile_shape = (t,) * ndim + (self.channels,)
        self._perm = [0, ndim + 1] + list(range(1, ndim + 1)) + [ndim + 2]
        self._windows = tf.constant(self.index.windows, tf.int32)
        x32 = x.astype(np.float32)
        site_major = np.moveaxis(x32.reshape(self.n_replicas, -1, self.channels), 0, 1)
        self._x = tf.Variable(site_major, trainable=False, name="spins")
        self._cache = tf.Variable(self._full_contributions(x32), trainable=False, name="tile_cache")

    # -- helpers ---------------------------------------------------------------------------------
    def _full_contributions(self, x):
        """Per-tile terms ``(n_tiles, R)`` from one full model evaluation of ``x (R, *grid, C)``."""
        c = self.model.tile_contributions(tf.convert_to_tensor(x, tf.float32))
        c = tf.cast(tf.reshape(c, (self.n_replicas, self.index.n_tiles)), tf.float32)
        return tf.transpose(c).numpy()

    def _tile_terms(self, x, entry_tiles, entry_sites=None):
        """Sub-network on the windows of ``entry_tiles`` (int32 ``(E,)``) read from site-major ``x``;
        if ``entry_sites`` is given, the site ``entry_sites[e]`` is negated in tile ``e`` first.
        Returns float32 ``(E, R)`` — one batched sub-network call over all entries and replicas."""
        win = tf.gather(self._windows, entry_tiles)              # (E, t, .., t)
        vals = tf.gather(x, win)                                 # (E, t, .., t, R, C)
        if entry_sites is not None:
            hit = tf.equal(win, tf.reshape(entry_sites, [-1] + [1] * self.ndim))
            hit = tf.reshape(hit, tf.concat([tf.shape(hit), [1, 1]], 0))
            vals = tf.where(hit, -vals, vals)
        vals = tf.transpose(vals, self._perm)                    # (E, R, t, .., t, C)
        out = self.subnet(tf.reshape(vals, (-1,) + self._tile_shape), training=False)
        return tf.reshape(tf.cast(out, tf.float32), (-1, self.n_replicas))

    def _delta(self, x, cache, entry_tiles, entry_seg, entry_sites, n_sites):
        """Per-site energy change of a single flip ``(n_sites, R)`` float64, plus new/old terms."""
        new = self._tile_terms(x, entry_tiles, entry_sites)
        old = tf.gather(cache, entry_tiles)
        d = tf.cast(new, tf.float64) - tf.cast(old, tf.float64)
        return tf.math.unsorted_segment_sum(d, entry_seg, n_sites), new, old

    # -- public read-outs ------------------------------------------------------------------------
    @property
    def spins_array(self):
        """Current configurations ``(R, *grid, C)`` float32 (numpy copy)."""
        x = np.moveaxis(self._x.numpy(), 1, 0)
        return x.reshape((self.n_replicas, *self.grid_shape, self.channels))

    @property
    def contributions(self):
        """Cached per-tile terms ``(R, *tile_grid)`` float32 (numpy copy)."""
        return self._cache.numpy().T.reshape((self.n_replicas, *self.index.tile_grid))

    def total_energy(self):
        """Energy of each replica from the cache, float64 ``(R,)`` (sum of tile terms in float64)."""
        return tf.reduce_sum(tf.cast(self._cache, tf.float64), axis=0).numpy()

    def full_energy(self):
        """Energy of each replica from a full model re-evaluation, float64 ``(R,)``."""
        return self.model.predict_total(self.spins_array, batch_size=8)

    def refresh(self):
        """Recompute the whole cache with the full model; returns the largest change of a total
        (a consistency check: float32 round-off only)."""
        before = self.total_energy()
        self._cache.assign(self._full_contributions(self.spins_array))
        return float(np.max(np.abs(self.total_energy() - before)))


# ------------------------------------------------------------------------------------------------
class LocalEnergy(_LatticeState):
    """One lattice and its per-tile contributions, with energy changes of single-site flips
    computed from the affected tiles only.

    Args:
        model: a lattice ``ednn_tf.EDNN`` (focus ``f``, context ``c``).
        spins: one configuration ``(H, W)`` or ``(H, W, C)`` (``ndim=3``: ``(D, H, W[, C])``).
        ndim: number of spatial axes (2 or 3).

    ``delta_energy(sites)`` returns, for each site independently, ``E(s flipped) - E`` (float64);
    ``flip(sites)`` flips the sites, updates only the affected tiles of the cache and returns the
    total energy change. ``energy`` is the float64 sum of the cached tile terms.

    Example::

        le = LocalEnergy(model, spins)          # spins (L, L), model an EDNN with f=1, c=1
        dE = le.delta_energy([[3, 4], [0, 0]])  # 2 sub-network batches of 9 tiles each, one call
        le.flip([[3, 4]])
    """

    def __init__(self, model, spins, ndim=2):
        x = np.asarray(spins)
        if x.ndim not in (ndim, ndim + 1):
            raise ValueError(f"spins must have shape (*{ndim} spatial sizes[, channels]), got {x.shape}")
        super().__init__(model, x[None], ndim)
        spec = tf.TensorSpec([None], tf.int32)
        self._delta_fn = tf.function(self._delta_graph, input_signature=[spec, spec, spec, tf.TensorSpec([], tf.int32)])
        self._terms_fn = tf.function(lambda tiles: self._tile_terms(self._x, tiles), input_signature=[spec])

    def _delta_graph(self, entry_tiles, entry_seg, entry_sites, n):
        return self._delta(self._x, self._cache, entry_tiles, entry_seg, entry_sites, n)[0]

    @property
    def spins(self):
        """Current configuration ``(*grid, C)`` (numpy copy)."""
        return self.spins_array[0]

    @property
    def energy(self):
        """Total energy (float64) from the cached tile terms."""
        return float(self.total_energy()[0])

    def affected_tiles(self, site):
        """Tile-grid coordinates ``(n, ndim)`` of the tiles whose window contains ``site``."""
        s = self.index.flat_sites(site)
        tiles, _ = self.index.tiles_of(s)
        return self.index.tile_coords(tiles)

    def delta_energy(self, sites):
        """Energy change of flipping each of ``sites`` ``(n, ndim)`` alone, float64 ``(n,)``.

        All affected tiles of all sites go through the sub-network in one batched call; the
        state is not changed.
        """
        s = self.index.flat_sites(sites)
        if len(s) == 0:
            return np.zeros(0)
        tiles, seg = self.index.tiles_of(s)
        d = self._delta_fn(tf.constant(tiles), tf.constant(seg), tf.constant(s[seg]), tf.constant(len(s), tf.int32))
        return d.numpy()[:, 0]

    def flip(self, sites):
        """Flip ``sites`` ``(n, ndim)`` (a site listed twice flips back), recompute the union of
        their affected tiles, update the cache; return the total energy change (float64)."""
        s = self.index.flat_sites(sites)
        s, counts = np.unique(s, return_counts=True)
        s = s[counts % 2 == 1].astype(np.int32)
        if len(s) == 0:
            return 0.0
        idx = tf.constant(s[:, None])
        self._x.scatter_nd_update(idx, -tf.gather(self._x, s))
        tiles = np.unique(self.index.tiles_of(s)[0]).astype(np.int32)
        new = self._terms_fn(tf.constant(tiles))
        old = tf.gather(self._cache, tiles)
        self._cache.scatter_nd_update(tf.constant(tiles[:, None]), new)
        return float(tf.reduce_sum(tf.cast(new, tf.float64) - tf.cast(old, tf.float64)).numpy())


# ------------------------------------------------------------------------------------------------
class Metropolis(_LatticeState):
    """Exact colour-parallel single-spin-flip Metropolis for a lattice EDNN, many replicas at once.

    Each sweep visits the colours of ``lattice_colouring`` in order. For one colour, every site of
    the colour in every replica proposes a flip; the affected tiles of all of them (disjoint by
    construction, together about one tile grid per replica) go through the sub-network in ONE
    call, ``dE`` is the sum of (new - cached old) per site, and each flip is accepted with
    probability ``min(1, exp(-dE/T))`` of its replica's temperature. Accepted spins and their
    tiles' new terms are written back. The whole sweep is one ``tf.function`` with fixed shapes
    (index arrays precomputed per colour), so it traces once.

    Args:
        model: a lattice ``ednn_tf.EDNN``.
        spins: initial configurations ``(R, H, W)`` or ``(R, H, W, C)`` (``ndim=3``: one more axis).
        temperatures: ``k_B T`` (energy unit of the model), a scalar or ``(R,)``; all > 0.
        seed: seed of the random stream (``None``: nondeterministic).
        ndim: number of spatial axes (2 or 3).
        jit_compile: passed to ``tf.function`` (XLA); off by default (oneDNN is faster on CPU).

    Example::

        T = np.linspace(1.5, 3.5, 8)
        mc = Metropolis(model, np.ones((8, 32, 32)), T, seed=0)
        mc.run(200)                               # burn-in
        obs = mc.run(1000)                        # obs["energy"]: (1000, 8) float64 totals
    """

    def __init__(self, model, spins, temperatures, seed=None, ndim=2, jit_compile=False):
        super().__init__(model, spins, ndim)
        self.colours, self.n_colours = lattice_colouring(self.grid_shape, model.focus, model.context)
        flat_col = self.colours.ravel()
        self._groups = []
        for k in range(self.n_colours):
            sites = np.flatnonzero(flat_col == k).astype(np.int32)
            tiles, seg = self.index.tiles_of(sites)
            if len(np.unique(tiles)) != len(tiles):  # pragma: no cover - guaranteed by the colouring
                raise RuntimeError(f"colour {k} has two sites in one tile")
            self._groups.append(tuple(tf.constant(a) for a in (sites, sites[:, None], tiles, tiles[:, None], seg,
                                                              sites[seg])))
        self._T = tf.Variable(np.ones(self.n_replicas), dtype=tf.float64, trainable=False, name="temperature")
        self.set_temperatures(temperatures)
        self._rng = (tf.random.Generator.from_seed(int(seed)) if seed is not None
                     else tf.random.Generator.from_non_deterministic_state())
        self._accepted = tf.Variable(tf.zeros(self.n_replicas, tf.float64), trainable=False)
        self._attempted = 0
        self._sweeps_fn = tf.function(self._sweeps_graph, jit_compile=jit_compile,
                                      input_signature=[tf.TensorSpec([], tf.int32)])

    # -- configuration -----------------------------------------------------------------------------
    def set_temperatures(self, temperatures):
        """Set ``k_B T`` per replica (scalar or ``(R,)``, every value finite and > 0)."""
        T = np.asarray(temperatures, np.float64)
        if T.ndim == 0:
            T = np.full(self.n_replicas, float(T))
        if T.shape != (self.n_replicas,):
            raise ValueError(f"temperatures must be a scalar or shape ({self.n_replicas},), got shape {T.shape}")
        if not np.all(np.isfinite(T)) or np.any(T <= 0):
            raise ValueError(f"temperatures must be finite and > 0, got {T}")
        self._T.assign(T)

    @property
    def temperatures(self):
        """``(R,)`` float64."""
        return self._T.numpy()

    @property
    def spins(self):
        """Current configurations ``(R, *grid, C)`` (numpy copy)."""
        return self.spins_array

    @property
    def acceptance(self):
        """Fraction of accepted flips per replica since construction ``(R,)``."""
        return self._accepted.numpy() / max(self._attempted, 1)

    # -- the update --------------------------------------------------------------------------------
    def _colour_update(self, group):
        sites, sites_col, tiles, tiles_col, seg, entry_sites = group
        n = sites.shape[0]
        dE, new, old = self._delta(self._x, self._cache, tiles, seg, entry_sites, n)      # (n, R)
        u = self._rng.uniform((n, self.n_replicas), dtype=tf.float64)
        accept = tf.math.log(u) < -dE / self._T[None, :]
        xs = tf.gather(self._x, sites)                                                     # (n, R, C)
        self._x.scatter_nd_update(sites_col, tf.where(accept[..., None], -xs, xs))
        self._cache.scatter_nd_update(tiles_col, tf.where(tf.gather(accept, seg), new, old))
        self._accepted.assign_add(tf.reduce_sum(tf.cast(accept, tf.float64), axis=0))

    def _sweeps_graph(self, n_sweeps):
        for _ in tf.range(n_sweeps):
            for group in self._groups:
                self._colour_update(group)
        energy = tf.reduce_sum(tf.cast(self._cache, tf.float64), axis=0)
        mag = tf.reduce_mean(tf.cast(self._x, tf.float64), axis=[0, 2])
        return energy, mag

    def sweep(self, n_sweeps=1):
        """Run ``n_sweeps`` full sweeps (every site proposed once per sweep) without recording;
        returns ``(energy, magnetisation)`` per replica after the last one (float64 ``(R,)``)."""
        if isinstance(n_sweeps, bool) or not isinstance(n_sweeps, (int, np.integer)) or n_sweeps < 0:
            raise ValueError(f"n_sweeps must be an integer >= 0, got {n_sweeps!r}")
        e, m = self._sweeps_fn(tf.constant(int(n_sweeps), tf.int32))
        self._attempted += int(n_sweeps) * self.index.n_sites
        return e.numpy(), m.numpy()

    def run(self, n_sweeps, every=1, progress=False, desc="MC"):
        """Run ``n_sweeps`` sweeps, recording after every ``every``-th one.

        Returns a dict of float64 arrays ``(n_records, R)``: ``energy`` (total, from the cache) and
        ``magnetisation`` (mean site value, channels averaged). ``progress=True`` shows a Keras
        progress bar.
        """
        if isinstance(n_sweeps, bool) or not isinstance(n_sweeps, (int, np.integer)) or n_sweeps < 0:
            raise ValueError(f"n_sweeps must be an integer >= 0, got {n_sweeps!r}")
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        n_rec = int(n_sweeps) // int(every)
        energy = np.empty((n_rec, self.n_replicas))
        mag = np.empty((n_rec, self.n_replicas))
        bar = None
        if progress:
            import keras
            bar = keras.utils.Progbar(n_rec, unit_name="record", stateful_metrics=["acceptance"])
        for i in range(n_rec):
            energy[i], mag[i] = self.sweep(every)
            if bar is not None:
                bar.update(i + 1, values=[("acceptance", float(np.mean(self.acceptance)))])
        rest = int(n_sweeps) - n_rec * int(every)
        if rest:
            self.sweep(rest)
        return {"energy": energy, "magnetisation": mag}

    # -- bookkeeping -----------------------------------------------------------------------------
    def colour_sizes(self):
        """Number of sites of each colour ``(n_colours,)``."""
        return np.bincount(self.colours.ravel(), minlength=self.n_colours)

    def tile_evaluations_per_sweep(self):
        """Sub-network evaluations per sweep and replica (= sum over sites of their tile count)."""
        return int(len(self.index.site_tiles))


# ------------------------------------------------------------------------------------------------
# analysis of Monte Carlo records
# ------------------------------------------------------------------------------------------------
def thermodynamics(energy, magnetisation, temperatures, n_sites, n_blocks=10):
    """Thermal averages from Monte Carlo records, replicas of equal temperature pooled.

    Args:
        energy: total energies ``(n_records, R)`` (as returned by ``Metropolis.run``).
        magnetisation: magnetisation per site ``(n_records, R)``.
        temperatures: ``(R,)`` ``k_B T`` of each replica.
        n_sites: number of sites ``N`` of one replica.
        n_blocks: the records are cut into this many consecutive blocks; error bars are the
            standard error of the per-block estimates (pooled over replicas).

    Returns a dict of float64 arrays over the sorted unique temperatures: ``T``,
    ``energy_per_site`` ``<E>/N``, ``abs_magnetisation`` ``<|m|>``, ``specific_heat``
    ``(<E^2> - <E>^2) / (N T^2)`` (per site, ``k_B = 1``), ``binder`` ``1 - <m^4> / (3 <m^2>^2)``,
    each with a ``*_err`` companion, and ``n_samples`` per temperature.
    """
    e = np.asarray(energy, np.float64)
    m = np.asarray(magnetisation, np.float64)
    T = np.asarray(temperatures, np.float64).ravel()
    if e.ndim != 2 or e.shape != m.shape or e.shape[1] != T.size:
        raise ValueError(f"energy {e.shape} and magnetisation {m.shape} must both be (n_records, {T.size})")
    if isinstance(n_sites, bool) or not isinstance(n_sites, (int, np.integer)) or n_sites < 1:
        raise ValueError(f"n_sites must be a positive integer, got {n_sites!r}")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or not 2 <= n_blocks <= e.shape[0]:
        raise ValueError(f"n_blocks must be an integer in [2, n_records={e.shape[0]}], got {n_blocks!r}")
    temps = np.unique(T)

    def estimates(es, ms, t):  # es, ms: (n, r) records of replicas at temperature t
        a = np.abs(ms)
        m2, m4 = np.mean(ms ** 2), np.mean(ms ** 4)
        return np.array([np.mean(es) / n_sites, np.mean(a), np.var(es) / (n_sites * t * t),
                         1.0 - m4 / (3.0 * m2 * m2) if m2 > 0 else np.nan])

    keys = ["energy_per_site", "abs_magnetisation", "specific_heat", "binder"]
    out = {k: np.empty(len(temps)) for k in keys}
    out.update({k + "_err": np.empty(len(temps)) for k in keys})
    out["T"], out["n_samples"] = temps, np.empty(len(temps), np.int64)
    for i, t in enumerate(temps):
        cols = T == t
        es, ms = e[:, cols], m[:, cols]
        full = estimates(es, ms, t)
        blocks = np.array([estimates(eb, mb, t) for eb, mb in zip(np.array_split(es, n_blocks),
                                                                  np.array_split(ms, n_blocks))])
        err = blocks.std(axis=0, ddof=1) / np.sqrt(n_blocks)
        for k, v, dv in zip(keys, full, err):
            out[k][i], out[k + "_err"][i] = v, dv
        out["n_samples"][i] = es.size
    return out


def binder_crossing(T, u_small, u_large, u_star=BINDER_ISING_2D):
    """Temperature where the Binder cumulants of two lattice sizes cross (estimate of ``Tc``).

    Crossings are located by linear interpolation of ``u_small - u_large`` between neighbouring
    temperatures (sorted ascending). Noise in the disordered phase (both cumulants near 0) can add
    spurious crossings, so among all sign changes the one whose cumulant value is closest to
    ``u_star`` is returned; ``None`` if the curves do not cross.
    """
    T = np.asarray(T, np.float64)
    a, b = np.asarray(u_small, np.float64), np.asarray(u_large, np.float64)
    if not (T.ndim == 1 and T.shape == a.shape == b.shape):
        raise ValueError(f"T, u_small, u_large must be 1-D of equal length, got {T.shape}, {a.shape}, {b.shape}")
    order = np.argsort(T)
    T, d, u = T[order], (a - b)[order], (0.5 * (a + b))[order]
    best = None
    for i in range(len(T) - 1):
        if not (np.isfinite(d[i]) and np.isfinite(d[i + 1])) or d[i] * d[i + 1] > 0 or d[i] == d[i + 1]:
            continue
        w = d[i] / (d[i] - d[i + 1])
        tc, uc = T[i] + w * (T[i + 1] - T[i]), u[i] + w * (u[i + 1] - u[i])
        if best is None or abs(uc - u_star) < abs(best[1] - u_star):
            best = (float(tc), float(uc))
    return None if best is None else best[0]


# ================================================================================================
# Atom moves: local energy differences and Metropolis Monte Carlo for atomic structures
# (Sec. 3.4 / Fig. 13 of Mills et al. 2019). Everything below is independent of the lattice code
# above except for ``TileIndex``, which supplies the tile windows.
# ================================================================================================
#: Boltzmann constant in eV/K (CODATA 2018, as ``ase.units.kB``).
KB_EV_PER_K = 8.617333262e-5


class AtomicLocalEnergy:
    """EDNN energy of one atomic structure, with cheap energy changes of single-atom moves.

    The image is eqn (2), ``V(r) = sum_i w_i exp(-|r - r_i|^2 / (2 gamma^2))`` (``w_i = Z_i`` or
    one channel per element), rendered exactly as :func:`ednn_tf.atoms.render.render` (each Gaussian
    truncated per axis at ``cutoff * gamma``). Moving atom ``i`` from ``r`` to ``r'`` changes only
    the pixels of its two stamps: ``V' = V - w_i G(r) + w_i G(r')``, where ``G`` is non-zero on a
    ``~2 cutoff gamma``-wide square around the atom. Only the tiles whose window (focus plus
    context) contains one of those pixels change, so

        dE = sum_{affected k} [ g(tile_k[V']) - g(tile_k[V]) ]                           (eV)

    needs the sub-network on those tiles only; the old terms ``g(tile_k[V])`` come from a cache
    of per-tile contributions. The image is kept in float64 (stamps are added and subtracted
    there, so no float32 round-off accumulates); tiles are cast to the model's input dtype.

    Parameters
    ----------
    model : ednn_tf.EDNN or path to a ``.keras`` file (2D model).
    atoms : ase.Atoms with an orthorhombic cell (copied; the original is not changed).
    shape : (nx, ny) image grid the model was trained with; multiples of the model's focus.
    gamma : float, Gaussian width in Angstrom.
    cutoff : float, truncation in units of gamma (as in training; default 6).
    channels : optional element channels (as :func:`render.render`).

    Energies are in the model's unit (eV); positions in Angstrom. A 2D model sees the projection
    on the xy plane: z coordinates are carried along but do not change the energy.

    Attributes: ``atoms`` (current structure), ``image`` (``(nx, ny, C)`` float64, the current
    rendered image), ``index`` (the ``TileIndex`` of the grid), ``n_evaluated_tiles`` (sub-network
    evaluations so far, for cost accounting). ``energy``, ``contributions`` and ``positions`` are
    read-only views of the state.

    Example::

        le = AtomicLocalEnergy(model, atoms, shape=(128, 128))
        dE = le.delta_energy(7, atoms.positions[7] + [0.05, -0.02, 0.0])
        if accept: le.accept()        # otherwise le.reject() (or just propose another move)
    """

    def __init__(self, model, atoms, shape, gamma=None, cutoff=None, channels=None):
        from ase import Atoms

        from ..atoms import render as _render
        from .calculator import _subnet_input, load_model

        self.model = load_model(model)
        if not isinstance(atoms, Atoms):
            raise ValueError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
        if len(atoms) == 0:
            raise ValueError("atoms must contain at least one atom, got 0")
        shape = _render.check_grid_shape(shape)
        if len(shape) != 2:
            raise ValueError(f"AtomicLocalEnergy supports 2D images only, got shape={shape!r}")
        self.focus, self.context = int(self.model.focus), int(self.model.context)
        if any(n % self.focus for n in shape):
            raise ValueError(f"image shape {shape} must be a multiple of the model's focus {self.focus}")
        self.gamma = check_positive("gamma", _render.DEFAULT_GAMMA if gamma is None else gamma)
        self.cutoff = check_positive("cutoff", _render.DEFAULT_CUTOFF if cutoff is None else cutoff)
        self.channels = channels
        self.shape = shape
        self.lengths = _render.cell_lengths(atoms.cell.array, 2)
        self.atoms = atoms.copy()
        self.atoms.calc = None
        numbers = _render.atomic_numbers(self.atoms.numbers, "atoms.numbers")
        self._weights, _ = _render.channel_weights(numbers, channels)          # (N, C)
        self.n_channels = self._weights.shape[1]
        nd_model, c_model, self._input_dtype = _subnet_input(self.model)
        if nd_model not in (None, 2):
            raise ValueError(f"the model works on {nd_model}D tiles; AtomicLocalEnergy needs a 2D model")
        if c_model is not None and c_model != self.n_channels:
            raise ValueError(f"the model expects {c_model} channel(s) but channels={channels!r} gives "
                             f"{self.n_channels}")
        self._render = _render
        self._R = self.cutoff * self.gamma

        # tile windows from the shared tiling code; per-axis membership tables derived from them
        self.index = TileIndex(shape, self.focus, self.context)
        nx, ny = shape
        ntx, nty = self.index.tile_grid
        t = self.index.tile_size
        win = self.index.windows.astype(np.int64)                                # (n_tiles, t, t)
        self._windows = win
        self._member_x = np.zeros((ntx, nx), bool)
        self._member_y = np.zeros((nty, ny), bool)
        for i in range(ntx):
            self._member_x[i, win[i * nty, :, 0] // ny] = True
        for j in range(nty):
            self._member_y[j, win[j, 0, :] % ny] = True
        self._tile_shape = (t, t, self.n_channels)

        import tensorflow as tf

        sub = self.model.subnet
        dt = self._input_dtype
        self._subnet_fn = tf.function(
            lambda x: tf.reshape(tf.cast(sub(x, training=False), tf.float64), (-1,)),
            input_signature=[tf.TensorSpec((None,) + self._tile_shape, dt)], autograph=False)
        self._full_fn = tf.function(
            lambda x: tf.cast(self.model.tile_contributions(x, training=False)[0], tf.float64),
            input_signature=[tf.TensorSpec((1, nx, ny, self.n_channels), dt)], autograph=False)
        self._pending = None
        self.n_evaluated_tiles = 0
        self.refresh()

    # -- rendering helpers -------------------------------------------------------------------------
    def _axis_stamp(self, coord, axis):
        """Pixel indices (unique) and 1D Gaussian values of one atom along one axis."""
        r = self._render
        n, L = self.shape[axis], float(self.lengths[axis])
        start, vals = r._axis_profiles(np.array([coord], np.float64), L, n, self.gamma, self._R)
        W = vals.shape[1]
        if W <= n:
            return (int(start[0]) + np.arange(W)) % n, vals[0]
        dense = r._dense_matrix(start, vals, n, np.float64)[0]      # window wraps: fold it
        return np.arange(n), dense

    def _stamp(self, i, position):
        """``(ix, iy, block (Wx, Wy, C))``: atom ``i``'s Gaussian at ``position`` on its pixels."""
        ix, gx = self._axis_stamp(position[0], 0)
        iy, gy = self._axis_stamp(position[1], 1)
        block = np.outer(gx, gy)[:, :, None] * self._weights[i][None, None, :]
        return ix, iy, block

    def _render_full(self):
        return self._render.render(self.atoms, shape=self.shape, gamma=self.gamma, cutoff=self.cutoff,
                                   channels=self.channels, dtype=np.float64)

    def _tiles(self, flat_tiles):
        """Tile contents ``(k, t, t, C)`` of the current image for flat tile indices."""
        return self.image.reshape(-1, self.n_channels)[self._windows[flat_tiles]]

    def _affected(self, ix_list, iy_list):
        """Flat indices of the tiles whose window contains a pixel of any of the rectangles."""
        mask = np.zeros(self.index.tile_grid, bool)
        for ix, iy in zip(ix_list, iy_list):
            mask |= np.outer(self._member_x[:, ix].any(axis=1), self._member_y[:, iy].any(axis=1))
        return np.flatnonzero(mask.ravel())

    def _check_move(self, i, new_position):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < len(self.atoms):
            raise ValueError(f"atom index must be an integer in [0, {len(self.atoms)}), got {i!r}")
        p = np.asarray(new_position, dtype=np.float64).ravel()
        if p.shape[0] not in (2, 3) or not np.all(np.isfinite(p)):
            raise ValueError(f"new_position must be 2 or 3 finite coordinates in Angstrom, got {new_position!r}")
        full = self.atoms.positions[int(i)].copy()
        full[:p.shape[0]] = p
        return int(i), full

    # -- public API --------------------------------------------------------------------------------
    @property
    def positions(self):
        """Current positions ``(N, 3)`` in Angstrom (copy)."""
        return self.atoms.positions.copy()

    @property
    def contributions(self):
        """Cached per-tile energies ``(nx/f, ny/f)`` in eV (copy, float64)."""
        return self._cache.copy()

    @property
    def energy(self):
        """Total energy (eV) from the cached tile terms, summed in float64."""
        return float(self._cache.sum())

    def full_energy(self):
        """Energy (eV) from a fresh render and a full model evaluation (the reference)."""
        img = self._render_full()
        return float(self._full_fn(img[None].astype(self._input_dtype)).numpy().sum())

    def refresh(self):
        """Re-render the image and re-evaluate every tile; returns the change of the total (eV),
        i.e. the drift accumulated by incremental updates (round-off only)."""
        old = getattr(self, "_cache", None)
        self.image = self._render_full()
        self._cache = self._full_fn(self.image[None].astype(self._input_dtype)).numpy()
        self._pending = None
        return 0.0 if old is None else float(self._cache.sum() - old.sum())

    def affected_tiles(self, i, new_position):
        """Tile-grid coordinates ``(k, 2)`` of the tiles that change when atom ``i`` moves."""
        i, new = self._check_move(i, new_position)
        ox, oy, _ = self._stamp(i, self.atoms.positions[i])
        nx_, ny_, _ = self._stamp(i, new)
        return self.index.tile_coords(self._affected((ox, nx_), (oy, ny_)))

    def delta_energy(self, i, new_position):
        """Energy change (eV, float64) of moving atom ``i`` to ``new_position`` (Angstrom; 2 or 3
        coordinates, z kept if 2). The state is not changed; :meth:`accept` applies the move.

        Re-renders only the atom's old and new Gaussian stamps and re-evaluates only the tiles
        that contain one of their pixels (one batched sub-network call)."""
        i, new = self._check_move(i, new_position)
        old_stamp = self._stamp(i, self.atoms.positions[i])
        new_stamp = self._stamp(i, new)
        aff = self._affected((old_stamp[0], new_stamp[0]), (old_stamp[1], new_stamp[1]))
        img = self.image
        so = np.ix_(old_stamp[0], old_stamp[1])
        sn = np.ix_(new_stamp[0], new_stamp[1])
        saved_old = img[so].copy()
        img[so] -= old_stamp[2]
        saved_new = img[sn].copy()
        img[sn] += new_stamp[2]
        try:
            tiles = self._tiles(aff).astype(self._input_dtype)
        finally:                       # restore exactly, in reverse order (stamps may overlap)
            img[sn] = saved_new
            img[so] = saved_old
        new_terms = self._subnet_fn(tiles).numpy()
        self.n_evaluated_tiles += len(aff)
        dE = float(np.sum(new_terms - self._cache.ravel()[aff]))
        self._pending = (i, new, old_stamp, new_stamp, aff, new_terms, dE)
        return dE

    def accept(self):
        """Apply the last proposed move (image, position, cached tile terms); returns its dE (eV)."""
        if self._pending is None:
            raise RuntimeError("accept() needs a move proposed by delta_energy() first")
        i, new, old_stamp, new_stamp, aff, new_terms, dE = self._pending
        img = self.image
        img[np.ix_(old_stamp[0], old_stamp[1])] -= old_stamp[2]
        img[np.ix_(new_stamp[0], new_stamp[1])] += new_stamp[2]
        self.atoms.positions[i] = new
        flat = self._cache.reshape(-1)
        flat[aff] = new_terms
        self._pending = None
        return dE

    def reject(self):
        """Forget the last proposed move (calling it is optional)."""
        self._pending = None

    def move(self, i, new_position):
        """Move atom ``i`` unconditionally; returns dE (eV)."""
        self.delta_energy(i, new_position)
        return self.accept()


class AtomMetropolis:
    """Metropolis Monte Carlo of single-atom displacements with an EDNN energy.

    Each move picks an atom uniformly and displaces it by a vector uniform in
    ``[-step, step]`` along each of ``axes`` (a symmetric proposal), and accepts with probability
    ``min(1, exp(-dE / (k_B T)))`` with ``dE`` from :class:`AtomicLocalEnergy` (eV). A sweep is
    ``N`` moves. The step can be tuned towards a target acceptance during equilibration
    (:meth:`tune`); keep it fixed while sampling so that detailed balance holds.

    Parameters
    ----------
    local : AtomicLocalEnergy
    temperature : float, Kelvin (> 0).
    step : float, maximum displacement per axis in Angstrom (> 0).
    axes : axes that moves change (default (0, 1): in-plane, the axes a 2D model sees; moves
        along z would cost no energy and random-walk).
    seed : int, seed of the move generator.
    """

    def __init__(self, local, temperature, step=0.05, axes=(0, 1), seed=0):
        if not isinstance(local, AtomicLocalEnergy):
            raise ValueError(f"local must be an AtomicLocalEnergy, got {type(local).__name__}")
        if not isinstance(temperature, (int, float, np.floating, np.integer)) or not temperature > 0 \
                or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a positive number of Kelvin, got {temperature!r}")
        self.local = local
        self.temperature = float(temperature)
        self.kT = KB_EV_PER_K * self.temperature
        self.step = self._check_step(step)
        axes = tuple(int(a) for a in axes)
        if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"axes must be distinct values in (0, 1, 2), got {axes!r}")
        self.axes = axes
        self.rng = np.random.default_rng(seed)
        self.attempted = 0
        self.accepted = 0

    @staticmethod
    def _check_step(step):
        if isinstance(step, bool) or not isinstance(step, (int, float, np.floating, np.integer)) \
                or not math.isfinite(step) or step <= 0:
            raise ValueError(f"step must be a positive number of Angstrom, got {step!r}")
        return float(step)

    @property
    def acceptance(self):
        """Accepted fraction of all moves attempted since construction (or the last reset)."""
        return self.accepted / max(self.attempted, 1)

    def reset_counters(self):
        self.attempted = self.accepted = 0

    def sweep(self, n_sweeps=1):
        """``n_sweeps * N`` moves; returns the accepted fraction of these moves."""
        if isinstance(n_sweeps, bool) or not isinstance(n_sweeps, (int, np.integer)) or n_sweeps < 0:
            raise ValueError(f"n_sweeps must be an integer >= 0, got {n_sweeps!r}")
        le, n = self.local, len(self.local.atoms)
        acc = 0
        moves = int(n_sweeps) * n
        for _ in range(moves):
            i = int(self.rng.integers(n))
            new = le.atoms.positions[i].copy()
            new[list(self.axes)] += self.rng.uniform(-self.step, self.step, len(self.axes))
            dE = le.delta_energy(i, new)
            if dE <= 0.0 or self.rng.random() < math.exp(-dE / self.kT):
                le.accept()
                acc += 1
            else:
                le.reject()
        self.attempted += moves
        self.accepted += acc
        return acc / max(moves, 1)

    def tune(self, n_sweeps, target=0.4, factor=1.25, max_step=0.5, progress=False, desc="MC tune"):
        """Equilibrate ``n_sweeps`` sweeps, after each one scaling the step by ``factor`` up
        (acceptance above ``target``) or down, never beyond ``max_step`` (Angstrom; a flat energy
        would otherwise grow it without bound); returns the final step (Angstrom)."""
        if not 0.0 < target < 1.0:
            raise ValueError(f"target acceptance must be in (0, 1), got {target!r}")
        max_step = self._check_step(max_step)
        it = range(int(n_sweeps))
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc=desc, unit="sweep")
        for _ in it:
            acc = self.sweep(1)
            self.step = min(max_step, self.step * (factor if acc > target else 1.0 / factor))
            if progress:
                it.set_postfix(acceptance=f"{acc:.2f}", step=f"{self.step:.3f}", refresh=False)
        return self.step

    def run(self, n_sweeps, every=1, progress=False, desc="MC"):
        """Sample ``n_sweeps`` sweeps at fixed step, recording after every ``every``-th.

        Returns a dict: ``positions`` ``(n_records, N, 3)`` (Angstrom), ``energy``
        ``(n_records,)`` (eV, from the cache), ``acceptance`` (fraction over the run), ``step``.
        """
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        n_rec = int(n_sweeps) // int(every)
        pos, energy = [], []
        a0, m0 = self.accepted, self.attempted
        it = range(n_rec)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc=desc, unit="record")
        for _ in it:
            self.sweep(int(every))
            pos.append(self.local.positions)
            energy.append(self.local.energy)
            if progress:
                it.set_postfix(acceptance=f"{(self.accepted - a0) / max(self.attempted - m0, 1):.2f}",
                               refresh=False)
        rest = int(n_sweeps) - n_rec * int(every)
        if rest:
            self.sweep(rest)
        n_at = len(self.local.atoms)
        return {"positions": np.array(pos).reshape(-1, n_at, 3), "energy": np.array(energy, np.float64),
                "acceptance": (self.accepted - a0) / max(self.attempted - m0, 1), "step": self.step}


def radial_distribution(frames, cell, r_max=6.0, n_bins=240, in_plane=True):
    """Radial distribution function g(r) of periodic frames, averaged over frames.

    Parameters
    ----------
    frames : array ``(n_frames, N, 3)`` or ``(N, 3)`` of positions (Angstrom), or a list of ase.Atoms.
    cell : orthorhombic cell (lengths or 3x3 matrix, Angstrom); periodic along x and y.
    r_max : float, largest distance (Angstrom); periodic images out to ``r_max`` are included,
        so it may exceed half the cell.
    n_bins : int, number of bins on ``[0, r_max]``.
    in_plane : bool
        True (default, for 2D sheets): distances in the xy plane and the 2D normalisation
        ``g(r) = n(r) / (N rho_A 2 pi r dr)`` with ``rho_A = N / (Lx Ly)`` atoms per A^2.
        False: 3D distances (the cell is still periodic in x, y only) with the same areal
        normalisation, i.e. g is then a pair density per unit area of the sheet.

    Returns ``(r, g)``: bin centres and g(r), float64 ``(n_bins,)``.
    """
    from ..atoms import render as _render

    if isinstance(frames, (list, tuple)) and frames and hasattr(frames[0], "positions"):
        frames = np.array([a.positions for a in frames])
    x = np.asarray(frames, np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[2] != 3 or x.shape[1] < 2:
        raise ValueError(f"frames must be (n_frames, N >= 2, 3) positions, got shape {x.shape}")
    r_max = check_positive("r_max", r_max)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    L = _render.cell_lengths(cell, 2)
    n_atoms = x.shape[1]
    edges = np.linspace(0.0, r_max, int(n_bins) + 1)
    ka, kb = int(math.ceil(r_max / L[0])), int(math.ceil(r_max / L[1]))
    shifts = np.array([(a * L[0], b * L[1], 0.0) for a in range(-ka, ka + 1) for b in range(-kb, kb + 1)])
    counts = np.zeros(int(n_bins), np.float64)
    iu = ~np.eye(n_atoms, dtype=bool)
    for pos in x:
        d = pos[None, :, :] - pos[:, None, :]                                  # (N, N, 3)
        d[..., :2] -= L * np.round(d[..., :2] / L)                            # minimum image in-plane
        if in_plane:
            d[..., 2] = 0.0
        for s in shifts:
            r = np.sqrt(((d + s) ** 2).sum(-1))
            r = r[iu] if not s.any() else r.ravel()                          # no self-distance
            counts += np.histogram(r[r < r_max], bins=edges)[0]
    rho = n_atoms / (L[0] * L[1])
    shell = np.pi * (edges[1:] ** 2 - edges[:-1] ** 2)
    g = counts / (len(x) * n_atoms * rho * shell)
    return 0.5 * (edges[1:] + edges[:-1]), g


def rdf_peaks(r, g, n_peaks=3, smooth=1.0, min_height=0.5):
    """Positions (Angstrom) of the first ``n_peaks`` maxima of g(r), in increasing r.

    ``g`` is smoothed with a Gaussian of ``smooth`` bins (0: none); local maxima higher than
    ``min_height`` with a prominence of at least 10 % of the highest value are kept (this drops
    noise wiggles), and each position is refined by a parabola through the three bins at the
    maximum. Missing peaks are NaN.
    """
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
    if r.shape != g.shape or r.ndim != 1 or r.size < 3:
        raise ValueError(f"r and g must be 1D arrays of equal length >= 3, got {r.shape} and {g.shape}")
    gs = gaussian_filter1d(g, smooth) if smooth > 0 else g
    idx, props = find_peaks(gs, height=min_height, prominence=0.1 * max(float(gs.max()), 1e-12))
    out = []
    dr = r[1] - r[0]
    for k in idx[:n_peaks]:
        if 0 < k < len(r) - 1:
            y0, y1, y2 = gs[k - 1], gs[k], gs[k + 1]
            den = y0 - 2 * y1 + y2
            off = 0.5 * (y0 - y2) / den if den != 0 else 0.0
            out.append(float(r[k] + np.clip(off, -1, 1) * dr))
        else:
            out.append(float(r[k]))
    return np.array(out + [np.nan] * (n_peaks - len(out)))


__all__ += ["KB_EV_PER_K", "AtomicLocalEnergy", "AtomMetropolis", "radial_distribution", "rdf_peaks"]
