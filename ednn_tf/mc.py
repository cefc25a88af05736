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
import tensorflow as tf

from . import tiling

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
