"""Atom moves: local energy differences and Metropolis Monte Carlo for atomic structures
(Sec. 3.4 / Fig. 13 of Mills et al. 2019), with an EDNN of rendered Gaussian images as the energy.

Two exact local updates, one per kind of EDNN. A tile EDNN (f > 1): the tiles whose window holds a changed
pixel are re-evaluated (``tiling.TileIndex``, ``EDNN.tile_values``). A density EDNN (``DensityEDNN``, f = 1,
context c): the pixel values within c of a changed pixel (``tiling.density_window``) come from one pass of
the network over the periodic crop c wider again (``DensityEDNN.density``) and replace the cached ones.
Every sum of terms goes through ``model.sum_tiles``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import tiling
from ..atoms import cells
from ..atoms import render as _render
from ..model import DensityEDNN, load_ednn, sum_tiles
from ..potential import Potential
from ..util import check_int, check_positive
from .calculator import image_settings, refuse_settings, resolve_model
from .space_mc import MoveProposals

__all__ = ["KB_EV_PER_K", "AtomicLocalEnergy", "AtomMetropolis"]

#: Boltzmann constant in eV/K (CODATA 2018, as ``ase.units.kB``).
KB_EV_PER_K = 8.617333262e-5


def _progress(n, progress, desc, unit):
    """``range(n)``, wrapped in a tqdm bar when ``progress``."""
    if not progress:
        return range(n)
    from tqdm.auto import tqdm
    return tqdm(range(n), desc=desc, unit=unit)


class _TileTerms:
    """Per-tile terms of a tile EDNN: a move re-evaluates every tile whose window (focus plus
    context) holds a changed pixel, in one batched sub-network call."""

    def __init__(self, model, shape, n_channels, dtype):
        import tensorflow as tf

        self.index = tiling.TileIndex(shape, model.focus, model.context)
        self.n_terms = self.index.n_tiles
        self._windows = self.index.windows.astype(np.int64)                    # (n_tiles, t, t)
        self._member_x, self._member_y = self.index.members
        self._dtype = dtype
        t = self.index.tile_size
        self._fn = tf.function(lambda x: tf.cast(model.tile_values(x), tf.float64),
                               input_signature=[tf.TensorSpec((None, t, t, n_channels), dtype)], autograph=False)

    def affected(self, stamps):
        """Flat indices of the tiles whose window holds a pixel of one of ``stamps`` ((ix, iy) pairs)."""
        mask = np.zeros(self.index.tile_grid, bool)
        for ix, iy in stamps:
            mask |= np.outer(self._member_x[:, ix].any(axis=1), self._member_y[:, iy].any(axis=1))
        return np.flatnonzero(mask.ravel())

    def evaluate(self, image, key):
        """``(values (k,) float64, windows evaluated)`` of the tiles ``key`` of ``image``."""
        tiles = image.reshape(-1, image.shape[-1])[self._windows[key]].astype(self._dtype)
        return self._fn(tiles).numpy(), len(key)

    def get(self, cache, key):
        return cache.ravel()[key]

    def put(self, cache, key, values):
        cache.reshape(-1)[key] = values

    def coords(self, key):
        return self.index.tile_coords(key)


class _DensityTerms:
    """Per-pixel terms of a density EDNN: a move changes the pixel values within ``c`` of a changed
    pixel (per axis one wrapped run, ``tiling.density_window``); they come from ONE pass of the
    density network over the crop that is ``c`` wider on each side (periodic indices)."""

    def __init__(self, model, shape, n_channels, dtype):
        import tensorflow as tf

        self.index, self.shape, self.context = None, tuple(shape), int(model.context)
        self.n_terms = int(np.prod(shape))
        self._dtype = dtype
        self._fn = tf.function(lambda x: tf.cast(model.density(x)[0], tf.float64),
                               input_signature=[tf.TensorSpec((1, None, None, n_channels), dtype)], autograph=False)

    def affected(self, stamps):
        """``(out_x, out_y, read_x, read_y)``: the pixels whose value changes and the crop they read."""
        (ox, rx), (oy, ry) = (tiling.density_window(np.concatenate([s[a] for s in stamps]), n, self.context)
                              for a, n in enumerate(self.shape))
        return ox, oy, rx, ry

    def evaluate(self, image, key):
        """``(values (mx, my) float64, windows evaluated)`` of the pixels ``key[:2]``."""
        crop = image[np.ix_(key[2], key[3])]
        return self._fn(crop[None].astype(self._dtype)).numpy(), key[0].size * key[1].size

    def get(self, cache, key):
        return cache[np.ix_(key[0], key[1])]

    def put(self, cache, key, values):
        cache[np.ix_(key[0], key[1])] = values

    def coords(self, key):
        return np.stack([g.ravel() for g in np.meshgrid(key[0], key[1], indexing="ij")], axis=1)


class AtomicLocalEnergy(MoveProposals):
    """EDNN energy of one atomic structure, with cheap and exact energy changes of single-atom moves.

    The image is eqn (2), ``V(r) = sum_i w_i exp(-|r - r_i|^2 / (2 gamma^2))`` (``w_i = Z_i`` or
    one channel per element), rendered as :func:`ednn_tf.atoms.render.render` (each Gaussian
    truncated per axis at ``cutoff * gamma``). Moving atom ``i`` from ``r`` to ``r'`` changes only
    the pixels of its two stamps, ``V' = V - w_i G(r) + w_i G(r')`` (``G`` non-zero on a
    ``~2 cutoff gamma``-wide square around the atom), so only the terms that see those pixels change:

        dE = scale * sum_{affected k} [ g_k(V') - g_k(V) ]                             (eV)

    where ``g_k`` is a tile value (tile EDNN; the tiles whose window holds a changed pixel) or a
    pixel value (density EDNN; the pixels within ``c`` of a changed pixel, from one pass of the
    density network over a crop ``c`` wider again). The old terms come from a cache. The image is
    kept in float64 (stamps are added and subtracted there, no float32 round-off accumulates) and cast
    to the model's input dtype for evaluation.

    ``model``: a :class:`~ednn_tf.potential.Potential` (or the path of one, or a shipped model name,
    see :func:`~ednn_tf.potential.load_potential`), which brings the grid (``potential.grid`` of the
    cell: ``n = round(L / pixel_size)``, stretch in ``stretch``), gamma, cutoff, channels, the
    reference energies ``e0`` and the ``scale``, so ``shape``, ``gamma``, ``cutoff`` and ``channels``
    must not be given; ``E = sum_i e0[Z_i] + scale * EDNN(image)``. A potential trained on untruncated
    Gaussians (``cutoff`` None, as :class:`~ednn_tf.apply.calculator.EDNNCalculator` renders) is
    stamped truncated at the renderer's default 6 gamma: a relative image error of at most
    ``exp(-18) = 1.5e-8`` (``cells.truncation_error``). Or a bare 2D ``ednn_tf.EDNN`` (or its
    ``.keras`` path) with ``shape``, the ``(nx, ny)`` training grid (multiples of the focus),
    ``gamma`` (Angstrom, default 0.2), ``cutoff`` (units of gamma, default 6) and ``channels`` as in
    training (``E = EDNN(image)``). ``atoms``: an ase.Atoms with an orthorhombic cell (copied).
    Energies in eV, positions in Angstrom; z is carried along but does not change the energy.

    Attributes: ``atoms``, ``image`` (``(nx, ny, C)`` float64), ``shape``, ``stretch`` (per axis, a
    Potential's; None for a given ``shape``), ``index`` (the grid's ``TileIndex``; None for a density
    EDNN), ``n_terms`` (cached terms: tiles, or pixels for a density EDNN), ``n_evaluated_tiles``
    (network windows evaluated so far: tiles, or pixels), ``reference_energy`` (eV); ``energy``,
    ``contributions`` and ``positions`` are read-only views of the state.

    Example::

        le = AtomicLocalEnergy(ednn_tf.load_potential("hexagonal-gfn1"), atoms)
        dE = le.delta_energy(7, atoms.positions[7] + [0.05, -0.02, 0.0])
        if accept: le.accept()        # otherwise le.reject() (or just propose another move)
    """

    def __init__(self, model, atoms, shape=None, gamma=None, cutoff=None, channels=None):
        from ase import Atoms

        model = resolve_model(model)
        if not isinstance(atoms, Atoms) or len(atoms) == 0:
            got = f"{len(atoms)} atoms" if isinstance(atoms, Atoms) else type(atoms).__name__
            raise ValueError(f"atoms must be an ase.Atoms with at least one atom, got {got}")
        self.atoms = atoms.copy()
        self.atoms.calc = None
        self.lengths = cells.cell_lengths(atoms.cell.array, 2)
        numbers = cells.atomic_numbers(self.atoms.numbers, "atoms.numbers")
        self._scale, self.reference_energy, self.stretch = 1.0, 0.0, None
        if isinstance(model, Potential) and model.readout != "cell":
            raise ValueError(f"AtomicLocalEnergy takes 'cell'-readout potentials only, got readout {model.readout!r}")
        if isinstance(model, Potential):
            refuse_settings(shape=shape, gamma=gamma, cutoff=cutoff, channels=channels)
            (shape, self.stretch), gamma, cutoff = model.grid(self.lengths), model.gamma, model.cutoff
            self._scale, self.reference_energy, channels = model.scale, model.reference_energy(numbers), model.channels
            model = model.ednn
        elif shape is None:
            raise ValueError("a bare EDNN needs the image shape (nx, ny) it was trained on; a Potential carries it")
        self.model = load_ednn(model)
        self.focus, self.context = int(self.model.focus), int(self.model.context)
        self.shape, _, ndim, self.channels, dt = image_settings(self.model, shape, channels=channels)
        if ndim != 2:
            raise ValueError(f"AtomicLocalEnergy supports 2D images only, got shape={shape!r}")
        self.gamma = check_positive("gamma", cells.DEFAULT_GAMMA if gamma is None else gamma)
        self.cutoff = check_positive("cutoff", cells.DEFAULT_CUTOFF if cutoff is None else cutoff)
        self._weights, _ = cells.channel_weights(numbers, self.channels)        # (N, C)
        self.n_channels = self._weights.shape[1]
        self._input_dtype = dt
        self._R = self.cutoff * self.gamma
        kind = _DensityTerms if isinstance(self.model, DensityEDNN) else _TileTerms
        self._terms = kind(self.model, self.shape, self.n_channels, dt)
        self.index, self.n_terms = self._terms.index, self._terms.n_terms
        self._full_fn = self._full_function()
        self._pending = None
        self.n_evaluated_tiles = 0
        self.refresh()

    def _full_function(self):
        import tensorflow as tf

        model = self.model
        return tf.function(lambda x: tf.cast(model.tile_contributions(x, training=False)[0], tf.float64),
                           input_signature=[tf.TensorSpec((1, *self.shape, self.n_channels), self._input_dtype)],
                           autograph=False)

    def _axis_stamp(self, coord, axis):
        """Pixel indices (unique) and 1D Gaussian values of one atom along one axis."""
        n, L = self.shape[axis], float(self.lengths[axis])
        start, vals = _render._axis_profiles(np.array([coord], np.float64), L, n, self.gamma, self._R)
        W = vals.shape[1]
        if W <= n:
            return (int(start[0]) + np.arange(W)) % n, vals[0]
        return np.arange(n), _render._dense_matrix(start, vals, n, np.float64)[0]      # window wraps: fold it

    def _stamp(self, i, position):
        """``(ix, iy, block (Wx, Wy, C))``: atom ``i``'s Gaussian at ``position`` on its pixels."""
        ix, gx = self._axis_stamp(position[0], 0)
        iy, gy = self._axis_stamp(position[1], 1)
        return ix, iy, np.outer(gx, gy)[:, :, None] * self._weights[i][None, None, :]

    def _render_full(self):
        return _render.render(self.atoms, shape=self.shape, gamma=self.gamma, cutoff=self.cutoff,
                              channels=self.channels, dtype=np.float64)

    def _full_terms(self, img):
        """All terms (eV, float64; tiles ``(nx/f, ny/f)`` or pixels ``(nx, ny)``): one full model pass."""
        return self._scale * self._full_fn(img[None].astype(self._input_dtype)).numpy()

    def _proposal(self, i, new_position):
        """Checked move: ``(i, new position (3,), old stamp, new stamp, key of the changed terms)``."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < len(self.atoms):
            raise ValueError(f"atom index must be an integer in [0, {len(self.atoms)}), got {i!r}")
        p = np.asarray(new_position, dtype=np.float64).ravel()
        if p.shape[0] not in (2, 3) or not np.all(np.isfinite(p)):
            raise ValueError(f"new_position must be 2 or 3 finite coordinates in Angstrom, got {new_position!r}")
        i = int(i)
        new = self.atoms.positions[i].copy()
        new[:p.shape[0]] = p
        stamps = self._stamp(i, self.atoms.positions[i]), self._stamp(i, new)
        return (i, new, *stamps, self._terms.affected([s[:2] for s in stamps]))

    @property
    def positions(self):
        """Current positions ``(N, 3)`` in Angstrom (copy)."""
        return self.atoms.positions.copy()

    @property
    def contributions(self):
        """Cached terms in eV (copy, float64): per tile ``(nx/f, ny/f)``, or per pixel ``(nx, ny)`` for
        a density EDNN; they sum to :attr:`energy` minus :attr:`reference_energy`."""
        return self._cache.copy()

    @property
    def energy(self):
        """Total energy (eV): the reference energy plus the cached terms, summed in float64."""
        return self.reference_energy + float(sum_tiles(self._cache))

    def full_energy(self):
        """Energy (eV) from a fresh render and a full model evaluation (the reference)."""
        return self.reference_energy + float(sum_tiles(self._full_terms(self._render_full())))

    def refresh(self):
        """Re-render the image and re-evaluate every term; returns the change of the total (eV),
        i.e. the drift accumulated by incremental updates (round-off only)."""
        old = getattr(self, "_cache", None)
        self.image = self._render_full()
        self._cache = self._full_terms(self.image)
        self._pending = None
        return 0.0 if old is None else float(sum_tiles(self._cache) - sum_tiles(old))

    def affected_tiles(self, i, new_position):
        """Coordinates ``(k, 2)`` of the terms that change when atom ``i`` moves: tile-grid
        coordinates, or pixels for a density EDNN."""
        return self._terms.coords(self._proposal(i, new_position)[4])

    def delta_energy(self, i, new_position):
        """Energy change (eV, float64) of moving atom ``i`` to ``new_position`` (Angstrom; 2 or 3
        coordinates, z kept if 2), from the affected terms only (one network call). The state is not
        changed; :meth:`accept` applies the move."""
        i, new, old_stamp, new_stamp, key = self._proposal(i, new_position)
        img = self.image
        so, sn = np.ix_(*old_stamp[:2]), np.ix_(*new_stamp[:2])
        saved_old = img[so].copy()
        img[so] -= old_stamp[2]
        saved_new = img[sn].copy()
        img[sn] += new_stamp[2]
        try:
            values, n_windows = self._terms.evaluate(img, key)
        finally:                       # restore exactly, in reverse order (stamps may overlap)
            img[sn] = saved_new
            img[so] = saved_old
        new_terms = self._scale * values
        self.n_evaluated_tiles += n_windows
        dE = float(sum_tiles(new_terms - self._terms.get(self._cache, key)))
        self._pending = (i, new, old_stamp, new_stamp, key, new_terms, dE)
        return dE

    def accept(self):
        """Apply the last proposed move (image, position, cached terms); returns its dE (eV)."""
        if self._pending is None:
            raise RuntimeError("accept() needs a move proposed by delta_energy() first")
        i, new, old_stamp, new_stamp, key, new_terms, dE = self._pending
        self.image[np.ix_(*old_stamp[:2])] -= old_stamp[2]
        self.image[np.ix_(*new_stamp[:2])] += new_stamp[2]
        self.atoms.positions[i] = new
        self._terms.put(self._cache, key, new_terms)
        self._pending = None
        return dE


class AtomMetropolis:
    """Metropolis Monte Carlo of single-atom displacements with an EDNN energy.

    Each move picks an atom uniformly and displaces it by a vector uniform in ``[-step, step]`` along
    each of ``axes`` (a symmetric proposal), and accepts with probability ``min(1, exp(-dE / (k_B T)))``
    with ``dE`` from :class:`AtomicLocalEnergy` (eV). A sweep is ``N`` moves. The step can be tuned
    towards a target acceptance while equilibrating (:meth:`tune`); keep it fixed while sampling so
    that detailed balance holds.

    ``temperature`` in Kelvin, ``step`` (maximum displacement per axis) in Angstrom, ``axes`` the
    axes moves change (default in-plane: a 2D model does not see z, which would random-walk),
    ``seed`` seeds the move generator.
    """

    def __init__(self, local, temperature, step=0.05, axes=(0, 1), seed=0):
        if not all(hasattr(local, a) for a in ("delta_energy", "accept", "reject", "atoms", "positions", "energy")):
            raise ValueError(f"local must be an AtomicLocalEnergy or SpaceAtomEnergy, got {type(local).__name__}")
        self.local = local
        self.temperature = check_positive("temperature", temperature)          # Kelvin
        self.kT = KB_EV_PER_K * self.temperature
        self.step = check_positive("step", step)                               # Angstrom
        axes = tuple(int(a) for a in axes)
        if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"axes must be distinct values in (0, 1, 2), got {axes!r}")
        self.axes = axes
        self.rng = np.random.default_rng(seed)
        self.attempted = self.accepted = 0

    @property
    def acceptance(self):
        """Accepted fraction of all moves attempted since construction (or the last reset)."""
        return self.accepted / max(self.attempted, 1)

    def reset_counters(self):
        """Zero the attempted and accepted move counts."""
        self.attempted = self.accepted = 0

    def sweep(self, n_sweeps=1):
        """``n_sweeps * N`` moves; returns the accepted fraction of these moves."""
        le, n = self.local, len(self.local.atoms)
        acc, moves = 0, check_int("n_sweeps", n_sweeps, minimum=0) * n
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
        max_step = check_positive("max_step", max_step)
        it = _progress(int(n_sweeps), progress, desc, "sweep")
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
        every = check_int("every", every, minimum=1)
        n_rec = int(n_sweeps) // every
        pos, energy = [], []
        a0, m0 = self.accepted, self.attempted
        it = _progress(n_rec, progress, desc, "record")
        for _ in it:
            self.sweep(every)
            pos.append(self.local.positions)
            energy.append(self.local.energy)
            if progress:
                it.set_postfix(acceptance=f"{(self.accepted - a0) / max(self.attempted - m0, 1):.2f}",
                               refresh=False)
        if int(n_sweeps) - n_rec * every:
            self.sweep(int(n_sweeps) - n_rec * every)
        n_at = len(self.local.atoms)
        return {"positions": np.array(pos).reshape(-1, n_at, 3), "energy": np.array(energy, np.float64),
                "acceptance": (self.accepted - a0) / max(self.attempted - m0, 1), "step": self.step}
