"""ASE calculator backed by a trained EDNN: energy, per-tile energies and forces.

Physics
-------
The structure is turned into the image of eqn (2) of Mills et al. (Chem. Sci. 2019)::

    V(x, y) = sum_i w_i exp(-[(x - x_i)^2 + (y - y_i)^2] / (2 gamma^2))

(``w_i = Z_i``, or one channel per element), sampled on the periodic ``nx x ny`` grid that
covers the orthorhombic cell (pixel ``(ix, iy)`` at ``x = ix Lx / nx``, ``y = iy Ly / ny``).
The EDNN cuts the image into focus/context tiles and sums one sub-network value per tile::

    E(r_1 .. r_N) = sum_k g(tile_k[V])                                          (eV)

The energy is in the model's output unit, which for the models of this package is eV (they are
trained on oracle energies in eV). Forces are the exact negative gradient of that function::

    F_i = -dE/dr_i = -sum_pixels (dE/dV(p)) (dV(p)/dr_i)                        (eV/Angstrom)

obtained by automatic differentiation through the differentiable renderer
(:func:`ednn_tf.atoms.render_tf.render_tf`) and the network, so they are conservative (energy is
conserved in NVE MD up to the integrator error). With a 2D model the image is a projection on
the xy plane: the energy does not depend on z and the z forces are exactly 0.

Symmetry. The grid breaks continuous translation symmetry: E is invariant only under rigid
translations by multiples of the *tile stride* ``focus * pixel`` (``focus * Lx/nx`` along x),
which map tiles onto tiles. Hence the net force ``sum_i F_i`` is in general not zero; only its
average over a rigid translation through one tile stride vanishes. It tends to 0 as the model
becomes translation invariant (well trained, pixels much smaller than gamma).

Truncation. ``cutoff=None`` (default) renders untruncated Gaussians: E is smooth and the forces
are continuous. ``cutoff=c`` truncates each Gaussian per axis at ``c * gamma`` exactly like
:func:`ednn_tf.atoms.render.render` (the training images); the values differ from the untruncated ones
by at most ``exp(-c^2/2)`` relative (1.5e-8 for c = 6, below float32 resolution), but E then
jumps by that much when a pixel crosses the cutoff, which finite-difference checks notice.

Units: positions and cell in Angstrom, gamma in Angstrom, cutoff in units of gamma, energies
in eV, forces in eV/Angstrom. Stress is not implemented (the grid is tied to the cell).

Example::

    from ednn_tf.apply.calculator import EDNNCalculator
    calc = EDNNCalculator("results/hexagonal-cpu/ednn.keras", shape=(128, 128), gamma=0.2)
    atoms.calc = calc
    atoms.get_potential_energy()        # eV
    atoms.get_forces()                  # (N, 3) eV/A, z column 0 for a 2D model
    calc.get_tile_energies(atoms)       # (nx/f, ny/f) eV per tile, row = x
"""
from __future__ import annotations

import collections
import math
from numbers import Integral

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..atoms import cells
from ..atoms.render_tf import render_tf
from ..model import load_ednn, sum_tiles
from ..util import check_int, check_positive

__all__ = ["EDNNCalculator", "subnet_input_spec", "image_settings", "load_model"]

#: Deprecated alias of :func:`ednn_tf.model.load_ednn` (still used by experiments/graphene_mc.py).
load_model = load_ednn


def subnet_input_spec(model):
    """(spatial rank or None, channels or None, input dtype name) of the model's sub-network; the dtype
    falls back to the model's compute dtype (else float32) when the input does not name one."""
    inputs = getattr(model.subnet, "inputs", None)
    dtype = str(getattr(inputs[0], "dtype", "")) if inputs else ""
    dtype = dtype.replace("tf.", "").replace("<dtype: '", "").replace("'>", "")
    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        dtype = getattr(model, "compute_dtype", None) or "float32"
    return (len(inputs[0].shape) - 2, inputs[0].shape[-1], dtype) if inputs else (None, None, dtype)


def image_settings(model, shape=None, pixel_size=None, channels=None):
    """Checked image settings for ``model``: ``(shape or None, pixel_size or None, ndim, channels, dtype)``.

    Exactly one of ``shape`` (pixels per cell axis, multiples of the model's focus) and
    ``pixel_size`` (Angstrom; then ``ndim`` is the model's rank, 2 if unknown) must be given.
    ``channels`` becomes a list of distinct atomic numbers (or None: one channel weighted by Z);
    ``dtype`` is the sub-network's input dtype. Raises ValueError when the grid's rank or the
    channel count does not match the model's sub-network.
    """
    focus = int(model.focus)
    nd_model, c_model, dtype = subnet_input_spec(model)
    if (shape is None) == (pixel_size is None):
        raise ValueError(f"give exactly one of shape and pixel_size, got shape={shape!r}, pixel_size={pixel_size!r}")
    if shape is not None:
        shape = cells.check_grid_shape(shape)
        if any(n % focus for n in shape):
            raise ValueError(f"image shape {shape} must be a multiple of the model's focus {focus} along every axis")
        ndim = len(shape)
    else:
        pixel_size = check_positive("pixel_size", pixel_size)
        ndim = 2 if nd_model is None else nd_model
    if nd_model is not None and nd_model != ndim:
        raise ValueError(f"the model works on {nd_model}D tiles but shape={shape!r} is {ndim}D")
    if channels is not None:
        chan = cells.atomic_numbers([channels] if isinstance(channels, (str, bytes, Integral)) else list(channels),
                                    "channels")
        if chan.size == 0 or np.unique(chan).size != chan.size:
            raise ValueError(f"channels must list distinct elements, got {channels!r}")
        channels = [int(z) for z in chan]
    n_channels = 1 if channels is None else len(channels)
    if c_model is not None and c_model != n_channels:
        raise ValueError(f"the model expects {c_model} image channel(s) but channels={channels!r} gives {n_channels}")
    return shape, pixel_size, ndim, channels, dtype


class EDNNCalculator(Calculator):
    """ASE calculator: energy (eV), per-tile energies (eV) and forces (eV/A) of a trained EDNN.

    See the module docstring for the physics. The rendering settings must be those the model
    was trained with.

    Parameters
    ----------
    model : ednn_tf.EDNN or str or os.PathLike
        The trained model, or the path of a ``.keras`` file written by ``model.save``.
    shape : (nx, ny) or (nx, ny, nz), optional
        Fixed image grid (pixels per cell axis), e.g. ``(256, 256)`` for the paper's 60-atom
        hexagonal cells. Every entry must be a multiple of the model's focus. Give either
        ``shape`` or ``pixel_size``.
    pixel_size : float, optional
        Target pixel size in Angstrom; the grid is ``cells.shape_for_cell(cell, pixel_size,
        multiple_of=focus)`` for each structure, so cells of any size get the training
        resolution (2D models only).
    gamma : float
        Gaussian width of eqn (2) in Angstrom (paper: 0.2).
    cutoff : float or None
        Gaussian truncation in units of gamma (as :func:`render.render`), or None for smooth
        untruncated Gaussians (default; see the module docstring).
    channels : sequence of atomic numbers or symbols, optional
        One image channel per listed element (as :func:`render.render`); default one channel
        weighted by Z.
    max_cached : int
        Number of compiled graphs kept (one per atom count, numbers, cell and grid).
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator` (``label``, ``atoms``, ...).

    Properties
    ----------
    ``energy`` and ``free_energy`` (eV, equal), ``forces`` (N, 3) eV/Angstrom,
    ``tile_energies`` (nx/f, ny/f) eV (row = x; they sum to the energy). ``stress`` raises
    ``PropertyNotImplementedError``.

    Raises
    ------
    ValueError
        Bad model or settings (at construction); at calculation time a non-orthorhombic cell,
        a cell that is not periodic along the image axes, non-finite positions, an element not
        in ``channels``, or an image size that is not a multiple of the focus.
    """

    implemented_properties = ["energy", "free_energy", "forces", "tile_energies"]
    nolabel = True

    def __init__(self, model, shape=None, pixel_size=None, gamma=cells.DEFAULT_GAMMA, cutoff=None,
                 channels=None, max_cached=8, **kwargs):
        self.model = load_ednn(model)
        self.focus = int(self.model.focus)
        shape, pixel_size, self.ndim, channels, self._input_dtype = image_settings(self.model, shape, pixel_size,
                                                                                   channels)
        gamma = check_positive("gamma", gamma)
        if cutoff is not None:
            cutoff = check_positive("cutoff", cutoff)
        self._max_cached = check_int("max_cached", max_cached, minimum=1)
        self._functions = collections.OrderedDict()
        super().__init__(shape=None if shape is None else list(shape), pixel_size=pixel_size, gamma=gamma,
                         cutoff=cutoff, channels=channels, **kwargs)

    def grid_shape(self, atoms):
        """Image grid used for ``atoms`` (validates the cell; see :meth:`cell_lengths`)."""
        return self._grid_shape(self.cell_lengths(atoms))

    def _grid_shape(self, lengths):
        p = self.parameters
        if p.shape is not None:
            return tuple(int(n) for n in p.shape)
        return cells.shape_for_cell(lengths, p.pixel_size, multiple_of=self.focus, ndim=self.ndim)

    def cell_lengths(self, atoms):
        """Orthorhombic cell lengths along the image axes (Angstrom); raises ValueError for a missing,
        non-orthorhombic or non-periodic cell (the EDNN image is always periodic along its axes)."""
        lengths = cells.cell_lengths(atoms.cell.array, self.ndim)   # raises for non-orthorhombic / empty
        pbc = [bool(b) for b in atoms.pbc]
        if not all(pbc[:self.ndim]):
            raise ValueError(f"the EDNN image is periodic along its {self.ndim} axes, but atoms.pbc = {pbc}; "
                             f"set atoms.pbc = {[True] * self.ndim + pbc[self.ndim:]}")
        return lengths

    def _function(self, numbers, lengths, shape, forces):
        import tensorflow as tf

        key = (numbers.tobytes(), tuple(np.round(lengths, 12)), shape, bool(forces))
        fn = self._functions.get(key)
        if fn is not None:
            self._functions.move_to_end(key)
            return fn
        p = self.parameters
        model, in_dtype = self.model, self._input_dtype
        numbers, lengths = numbers.copy(), np.array(lengths, dtype=np.float64)

        def energy(pos):
            img = render_tf(pos, numbers, lengths, shape, gamma=p.gamma, cutoff=p.cutoff, channels=p.channels)
            contrib = tf.cast(model.tile_contributions(tf.cast(img[None], in_dtype), training=False)[0], tf.float64)
            return sum_tiles(contrib), contrib

        def run(pos):
            with tf.GradientTape() as tape:
                tape.watch(pos)
                total, contrib = energy(pos)
            return total, contrib, -tape.gradient(total, pos) if forces else tf.zeros_like(pos)

        fn = tf.function(run, input_signature=[tf.TensorSpec((len(numbers), 3), tf.float64)], autograph=False)
        self._functions[key] = fn
        while len(self._functions) > self._max_cached:
            self._functions.popitem(last=False)
        return fn

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute the energy and per-tile energies (and the forces if requested) of ``atoms``."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if len(atoms) == 0:
            raise ValueError("cannot evaluate an empty structure (0 atoms)")
        lengths = self.cell_lengths(atoms)
        shape = self._grid_shape(lengths)
        if any(n % self.focus for n in shape):
            raise ValueError(f"image shape {shape} is not a multiple of the model's focus {self.focus}")
        pos = np.asarray(atoms.positions, dtype=np.float64)
        if not np.all(np.isfinite(pos)):
            i = int(np.argwhere(~np.isfinite(pos))[0, 0])
            raise ValueError(f"positions must be finite, got {pos[i].tolist()!r} for atom {i}")
        numbers = cells.atomic_numbers(atoms.numbers, "atoms.numbers")
        cells.channel_weights(numbers, self.parameters.channels)   # raises for elements not in channels
        want_forces = "forces" in properties
        total, contrib, forces = self._function(numbers, lengths, shape, want_forces)(pos)
        energy = float(total.numpy())
        if not math.isfinite(energy):
            raise RuntimeError(f"the EDNN returned a non-finite energy {energy!r}")
        self.results.update(energy=energy, free_energy=energy, tile_energies=contrib.numpy())
        if want_forces:
            self.results["forces"] = forces.numpy() + 0.0   # + 0.0: no -0.0 in the z column

    def get_tile_energies(self, atoms=None):
        """Per-tile energies ``(nx/f, ny/f)`` in eV (row = x); they sum to the energy."""
        return self.get_property("tile_energies", atoms)
