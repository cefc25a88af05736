"""Atom moves: local energy differences and Metropolis Monte Carlo for atomic structures
(Sec. 3.4 / Fig. 13 of Mills et al. 2019), with an EDNN of rendered Gaussian images as the energy.

Tile bookkeeping comes from ``tiling.TileIndex`` (the model's own tile windows and the per-axis
site -> tile membership); every sub-network evaluation goes through ``EDNN.tile_values`` and every
sum of tile terms through ``model.sum_tiles``.
"""
from __future__ import annotations

import math

import numpy as np

from ..atoms import cells
from ..atoms import render as _render
from ..model import load_ednn, sum_tiles
from ..tiling import TileIndex
from ..util import check_int, check_positive
from .calculator import image_settings

__all__ = ["KB_EV_PER_K", "AtomicLocalEnergy", "AtomMetropolis"]

#: Boltzmann constant in eV/K (CODATA 2018, as ``ase.units.kB``).
KB_EV_PER_K = 8.617333262e-5


def _progress(n, progress, desc, unit):
    """``range(n)``, wrapped in a tqdm bar when ``progress``."""
    if not progress:
        return range(n)
    from tqdm.auto import tqdm
    return tqdm(range(n), desc=desc, unit=unit)


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

    ``model`` is a 2D ``ednn_tf.EDNN`` (or a ``.keras`` path); ``atoms`` an ase.Atoms with an
    orthorhombic cell (copied); ``shape`` the ``(nx, ny)`` training grid (multiples of the focus);
    ``gamma`` (Angstrom), ``cutoff`` (units of gamma, default 6) and ``channels`` as in training.
    Energies in eV, positions in Angstrom; z is carried along but does not change the energy.

    Attributes: ``atoms``, ``image`` (``(nx, ny, C)`` float64), ``index`` (the grid's
    ``TileIndex``), ``n_evaluated_tiles`` (sub-network evaluations so far); ``energy``,
    ``contributions`` and ``positions`` are read-only views of the state.

    Example::

        le = AtomicLocalEnergy(model, atoms, shape=(128, 128))
        dE = le.delta_energy(7, atoms.positions[7] + [0.05, -0.02, 0.0])
        if accept: le.accept()        # otherwise le.reject() (or just propose another move)
    """

    def __init__(self, model, atoms, shape, gamma=None, cutoff=None, channels=None):
        import tensorflow as tf
        from ase import Atoms

        self.model = load_ednn(model)
        if not isinstance(atoms, Atoms) or len(atoms) == 0:
            got = f"{len(atoms)} atoms" if isinstance(atoms, Atoms) else type(atoms).__name__
            raise ValueError(f"atoms must be an ase.Atoms with at least one atom, got {got}")
        self.atoms = atoms.copy()
        self.atoms.calc = None
        self.focus, self.context = int(self.model.focus), int(self.model.context)
        self.shape, _, ndim, self.channels, dt = image_settings(self.model, shape, channels=channels)
        if ndim != 2:
            raise ValueError(f"AtomicLocalEnergy supports 2D images only, got shape={shape!r}")
        self.gamma = check_positive("gamma", cells.DEFAULT_GAMMA if gamma is None else gamma)
        self.cutoff = check_positive("cutoff", cells.DEFAULT_CUTOFF if cutoff is None else cutoff)
        self.lengths = cells.cell_lengths(atoms.cell.array, 2)
        numbers = cells.atomic_numbers(self.atoms.numbers, "atoms.numbers")
        self._weights, _ = cells.channel_weights(numbers, self.channels)        # (N, C)
        self.n_channels = self._weights.shape[1]
        self._input_dtype = dt
        self._R = self.cutoff * self.gamma
        self.index = TileIndex(self.shape, self.focus, self.context)
        self._windows = self.index.windows.astype(np.int64)                    # (n_tiles, t, t)
        self._member_x, self._member_y = self.index.members
        t = self.index.tile_size
        self._subnet_fn = tf.function(
            lambda x: tf.cast(self.model.tile_values(x), tf.float64),
            input_signature=[tf.TensorSpec((None, t, t, self.n_channels), dt)], autograph=False)
        self._full_fn = tf.function(
            lambda x: tf.cast(self.model.tile_contributions(x, training=False)[0], tf.float64),
            input_signature=[tf.TensorSpec((1, *self.shape, self.n_channels), dt)], autograph=False)
        self._pending = None
        self.n_evaluated_tiles = 0
        self.refresh()

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
        """Per-tile terms ``(nx/f, ny/f)`` (eV, float64) of a whole image: one full model evaluation."""
        return self._full_fn(img[None].astype(self._input_dtype)).numpy()

    def _tiles(self, flat_tiles):
        """Tile contents ``(k, t, t, C)`` of the current image for flat tile indices."""
        return self.image.reshape(-1, self.n_channels)[self._windows[flat_tiles]]

    def _proposal(self, i, new_position):
        """Checked move: ``(i, new position (3,), old stamp, new stamp, flat indices of the tiles whose
        window contains a pixel of either stamp)``."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < len(self.atoms):
            raise ValueError(f"atom index must be an integer in [0, {len(self.atoms)}), got {i!r}")
        p = np.asarray(new_position, dtype=np.float64).ravel()
        if p.shape[0] not in (2, 3) or not np.all(np.isfinite(p)):
            raise ValueError(f"new_position must be 2 or 3 finite coordinates in Angstrom, got {new_position!r}")
        i = int(i)
        new = self.atoms.positions[i].copy()
        new[:p.shape[0]] = p
        stamps = self._stamp(i, self.atoms.positions[i]), self._stamp(i, new)
        mask = np.zeros(self.index.tile_grid, bool)
        for ix, iy, _ in stamps:
            mask |= np.outer(self._member_x[:, ix].any(axis=1), self._member_y[:, iy].any(axis=1))
        return (i, new, *stamps, np.flatnonzero(mask.ravel()))

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
        return float(sum_tiles(self._cache))

    def full_energy(self):
        """Energy (eV) from a fresh render and a full model evaluation (the reference)."""
        return float(sum_tiles(self._full_terms(self._render_full())))

    def refresh(self):
        """Re-render the image and re-evaluate every tile; returns the change of the total (eV),
        i.e. the drift accumulated by incremental updates (round-off only)."""
        old = getattr(self, "_cache", None)
        self.image = self._render_full()
        self._cache = self._full_terms(self.image)
        self._pending = None
        return 0.0 if old is None else float(sum_tiles(self._cache) - sum_tiles(old))

    def affected_tiles(self, i, new_position):
        """Tile-grid coordinates ``(k, 2)`` of the tiles that change when atom ``i`` moves."""
        return self.index.tile_coords(self._proposal(i, new_position)[4])

    def delta_energy(self, i, new_position):
        """Energy change (eV, float64) of moving atom ``i`` to ``new_position`` (Angstrom; 2 or 3
        coordinates, z kept if 2), from the affected tiles only (one batched sub-network call). The
        state is not changed; :meth:`accept` applies the move."""
        i, new, old_stamp, new_stamp, aff = self._proposal(i, new_position)
        img = self.image
        so, sn = np.ix_(*old_stamp[:2]), np.ix_(*new_stamp[:2])
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
        dE = float(sum_tiles(new_terms - self._cache.ravel()[aff]))
        self._pending = (i, new, old_stamp, new_stamp, aff, new_terms, dE)
        return dE

    def accept(self):
        """Apply the last proposed move (image, position, cached tile terms); returns its dE (eV)."""
        if self._pending is None:
            raise RuntimeError("accept() needs a move proposed by delta_energy() first")
        i, new, old_stamp, new_stamp, aff, new_terms, dE = self._pending
        self.image[np.ix_(*old_stamp[:2])] -= old_stamp[2]
        self.image[np.ix_(*new_stamp[:2])] += new_stamp[2]
        self.atoms.positions[i] = new
        self._cache.reshape(-1)[aff] = new_terms
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
        if not isinstance(local, AtomicLocalEnergy):
            raise ValueError(f"local must be an AtomicLocalEnergy, got {type(local).__name__}")
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
