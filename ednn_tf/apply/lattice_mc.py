"""Lattice Monte Carlo with a lattice EDNN as the Hamiltonian: local energy differences and exact
colour-parallel Metropolis.

An EDNN's energy is a sum of tile terms, ``E = sum_k g(tile_k)``. Flipping site ``s`` changes
only the tiles whose window (focus plus context) contains ``s`` (9 for ``f = c = 1``), so

    dE(s) = sum_{k contains s} [ g(tile_k with s flipped) - g(tile_k) ]

needs the sub-network on those tiles only; the old terms ``g(tile_k)`` are kept in a cache of
per-tile contributions. ``LocalEnergy`` exposes this for arbitrary sites of one lattice.

Flipping many sites at once is exact only when no tile contains two of them: then the proposed
flips change disjoint sets of tiles and the acceptance of one never changes the ``dE`` of another.
``lattice_colouring`` partitions the sites into such classes, and ``Metropolis`` updates one colour
at a time: all sites of the colour (of all replicas) in ONE batched sub-network call, each accepted
with ``min(1, exp(-dE/T))``. Each colour update satisfies detailed balance for the EDNN's own
energy, so a sweep samples ``exp(-E_EDNN/T)`` exactly (up to float32 round-off of the tile terms).

Tile windows come from ``tiling.TileIndex`` (the model's own windows), sub-network terms from
``EDNN.tile_values``, totals from ``model.sum_tiles``.

Conventions: a move negates every channel of one site (the Ising spin flip ``s -> -s``);
energies are in the model's unit (``J`` for Ising); temperatures are ``k_B T`` in the same unit.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from .. import tiling
from ..model import load_ednn, sum_tiles
from ..tiling import TileIndex
from ..util import check_choice, check_int

__all__ = ["TileIndex", "lattice_colouring", "colouring_1d", "LocalEnergy", "Metropolis"]


def colouring_1d(n, tile_size):
    """Colour a periodic chain of ``n`` sites so that same-coloured sites are at cyclic distance
    ``>= tile_size`` (hence never inside one ``tile_size``-wide window).

    The chain is cut into ``q = n // t`` blocks of length ``t`` or a little more (the ``n mod t``
    leftover sites spread over the blocks); a site's colour is its position in its block. That
    gives ``t + ceil((n mod t) / q)`` colours (``t`` when ``t`` divides ``n``); the extra colours
    hold few sites. If ``t >= n`` every site gets its own colour. Returns ``(colours, n_colours)``.
    """
    n, t = check_int("n", n, minimum=1), check_int("tile_size", tile_size, minimum=1)
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


class _LatticeState:
    """Replicas of one lattice stored site-major, ``x: (n_sites, R, C)`` float32, and the cache of
    tile contributions ``(n_tiles, R)``; shared by ``LocalEnergy`` and ``Metropolis``."""

    def __init__(self, model, spins, ndim):
        model, ndim = load_ednn(model), check_choice("ndim", ndim, (2, 3))
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
        self.model, self.ndim = model, ndim
        self.index = TileIndex(x.shape[1:-1], model.focus, model.context)
        self.n_replicas, self.channels = x.shape[0], x.shape[-1]
        self.grid_shape = self.index.grid_shape
        self._perm = [0, ndim + 1] + list(range(1, ndim + 1)) + [ndim + 2]
        self._windows = tf.constant(self.index.windows, tf.int32)
        x32 = x.astype(np.float32)
        self._x = tf.Variable(np.moveaxis(x32.reshape(self.n_replicas, -1, self.channels), 0, 1), trainable=False,
                              name="spins")
        self._cache = tf.Variable(self._full_contributions(x32), trainable=False, name="tile_cache")

    def _full_contributions(self, x):
        """Per-tile terms ``(n_tiles, R)`` from one full model evaluation of ``x (R, *grid, C)``."""
        c = self.model.tile_contributions(tf.convert_to_tensor(x, tf.float32))
        c = tf.cast(tf.reshape(c, (self.n_replicas, self.index.n_tiles)), tf.float32)
        return tf.transpose(c).numpy()

    def _tile_terms(self, entry_tiles, entry_sites=None):
        """Sub-network on the windows of ``entry_tiles`` (int32 ``(E,)``) of the current spins;
        if ``entry_sites`` is given, the site ``entry_sites[e]`` is negated in tile ``e`` first.
        Returns float32 ``(E, R)`` — one batched sub-network call over all entries and replicas."""
        win = tf.gather(self._windows, entry_tiles)              # (E, t, .., t)
        vals = tf.gather(self._x, win)                           # (E, t, .., t, R, C)
        if entry_sites is not None:
            hit = tf.equal(win, tf.reshape(entry_sites, [-1] + [1] * self.ndim))
            hit = tf.reshape(hit, tf.concat([tf.shape(hit), [1, 1]], 0))
            vals = tf.where(hit, -vals, vals)
        vals = tf.transpose(vals, self._perm)                    # (E, R, t, .., t, C)
        return tf.cast(self.model.tile_values(vals), tf.float32)

    def _delta(self, entry_tiles, entry_seg, entry_sites, n_sites):
        """Per-site energy change of a single flip ``(n_sites, R)`` float64, plus new/old terms."""
        new = self._tile_terms(entry_tiles, entry_sites)
        old = tf.gather(self._cache, entry_tiles)
        d = tf.cast(new, tf.float64) - tf.cast(old, tf.float64)
        return tf.math.unsorted_segment_sum(d, entry_seg, n_sites), new, old

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
        return sum_tiles(self._cache, axis=0).numpy()

    def full_energy(self):
        """Energy of each replica from a full model re-evaluation, float64 ``(R,)``."""
        return self.model.predict_total(self.spins_array, batch_size=8)

    def refresh(self):
        """Recompute the whole cache with the full model; returns the largest change of a total
        (a consistency check: float32 round-off only)."""
        before = self.total_energy()
        self._cache.assign(self._full_contributions(self.spins_array))
        return float(np.max(np.abs(self.total_energy() - before)))


class LocalEnergy(_LatticeState):
    """One lattice ``spins`` ``(H, W[, C])`` (``ndim=3``: ``(D, H, W[, C])``) of a lattice EDNN and
    its per-tile contributions, with energy changes of single-site flips from the affected tiles only.

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
        self._delta_fn = tf.function(lambda tiles, seg, sites, n: self._delta(tiles, seg, sites, n)[0],
                                     input_signature=[spec, spec, spec, tf.TensorSpec([], tf.int32)])
        self._terms_fn = tf.function(self._tile_terms, input_signature=[spec])

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
        return self.index.tile_coords(self.index.tiles_of(self.index.flat_sites(site))[0])

    def delta_energy(self, sites):
        """Energy change ``E(s flipped) - E`` of flipping each of ``sites`` ``(n, ndim)`` alone, float64
        ``(n,)``, from one batched sub-network call; the state is not changed."""
        s = self.index.flat_sites(sites)
        if len(s) == 0:
            return np.zeros(0)
        tiles, seg = self.index.tiles_of(s)
        d = self._delta_fn(tf.constant(tiles), tf.constant(seg), tf.constant(s[seg]), tf.constant(len(s), tf.int32))
        return d.numpy()[:, 0]

    def flip(self, sites):
        """Flip ``sites`` ``(n, ndim)`` (a site listed twice flips back), recompute the union of
        their affected tiles, update the cache; return the total energy change (float64)."""
        s, counts = np.unique(self.index.flat_sites(sites), return_counts=True)
        s = s[counts % 2 == 1].astype(np.int32)
        if len(s) == 0:
            return 0.0
        self._x.scatter_nd_update(tf.constant(s[:, None]), -tf.gather(self._x, s))
        tiles = np.unique(self.index.tiles_of(s)[0]).astype(np.int32)
        new = self._terms_fn(tf.constant(tiles))
        old = tf.gather(self._cache, tiles)
        self._cache.scatter_nd_update(tf.constant(tiles[:, None]), new)
        return float(sum_tiles(tf.cast(new, tf.float64) - tf.cast(old, tf.float64)).numpy())


class Metropolis(_LatticeState):
    """Exact colour-parallel single-spin-flip Metropolis for a lattice EDNN, many replicas at once.

    Each sweep visits the colours of ``lattice_colouring`` in order (see the module docstring);
    a colour's affected tiles (disjoint, about one tile grid per replica) take one sub-network
    call, and accepted spins and their tiles' new terms are written back. The whole sweep is one
    ``tf.function`` with fixed shapes (index arrays precomputed per colour), so it traces once.

    ``spins``: initial configurations ``(R, H, W[, C])`` (``ndim=3``: one more axis);
    ``temperatures``: ``k_B T`` in the model's energy unit, scalar or ``(R,)``, all > 0; ``seed``
    (``None``: nondeterministic); ``jit_compile`` is passed to ``tf.function`` (XLA; off by default).

    Example::

        T = np.linspace(1.5, 3.5, 8)
        mc = Metropolis(model, np.ones((8, 32, 32)), T, seed=0)
        mc.run(200)                               # burn-in
        obs = mc.run(1000)                        # obs["energy"]: (1000, 8) float64 totals
    """

    def __init__(self, model, spins, temperatures, seed=None, ndim=2, jit_compile=False):
        super().__init__(model, spins, ndim)
        self.colours, self.n_colours = lattice_colouring(self.grid_shape, model.focus, model.context)
        self._groups = []
        for k in range(self.n_colours):
            sites = np.flatnonzero(self.colours.ravel() == k).astype(np.int32)
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

    def _colour_update(self, group):
        sites, sites_col, tiles, tiles_col, seg, entry_sites = group
        n = sites.shape[0]
        dE, new, old = self._delta(tiles, seg, entry_sites, n)                               # (n, R)
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
        return sum_tiles(self._cache, axis=0), tf.reduce_mean(tf.cast(self._x, tf.float64), axis=[0, 2])

    def sweep(self, n_sweeps=1):
        """Run ``n_sweeps`` full sweeps (every site proposed once per sweep) without recording;
        returns ``(energy, magnetisation)`` per replica after the last one (float64 ``(R,)``)."""
        n_sweeps = check_int("n_sweeps", n_sweeps, minimum=0)
        e, m = self._sweeps_fn(tf.constant(n_sweeps, tf.int32))
        self._attempted += n_sweeps * self.index.n_sites
        return e.numpy(), m.numpy()

    def run(self, n_sweeps, every=1, progress=False, desc="MC"):
        """Run ``n_sweeps`` sweeps, recording after every ``every``-th one (Keras progress bar if
        ``progress``). Returns a dict of float64 arrays ``(n_records, R)``: ``energy`` (total, from the
        cache) and ``magnetisation`` (mean site value, channels averaged)."""
        n_sweeps, every = check_int("n_sweeps", n_sweeps, minimum=0), check_int("every", every, minimum=1)
        n_rec = n_sweeps // every
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
        if n_sweeps - n_rec * every:
            self.sweep(n_sweeps - n_rec * every)
        return {"energy": energy, "magnetisation": mag}

    def colour_sizes(self):
        """Number of sites of each colour ``(n_colours,)``."""
        return np.bincount(self.colours.ravel(), minlength=self.n_colours)

    def tile_evaluations_per_sweep(self):
        """Sub-network evaluations per sweep and replica (= sum over sites of their tile count)."""
        return int(len(self.index.site_tiles))
