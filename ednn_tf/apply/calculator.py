"""ASE calculator backed by a trained EDNN: energy, per-tile energies and forces; with a Potential of
the ``"atoms"`` readout also stress and per-atom energies.

A :class:`~ednn_tf.potential.Potential` with the ``"atoms"`` readout (the shipped ``hexagonal-gfn1``)
goes through the space frame (:func:`ednn_tf.apply.space.predict_structures`): any 2D cell and
orientation, a flake with ``pbc`` False in the plane, ``energy`` (eV), ``energies`` (eV per atom),
``forces`` (eV/A, z = 0) and ``stress`` (eV/A^3, ASE's Voigt order; usable with
``ase.filters.FrechetCellFilter``), after :func:`ednn_tf.atoms.frames.check_structure`. What
follows describes the other models (an EDNN, or a Potential of the first, ``"cell"`` readout).

The structure is rendered as the image of eqn (2) of Mills et al. (Chem. Sci. 2019),
``V(x, y) = sum_i w_i exp(-[(x - x_i)^2 + (y - y_i)^2] / (2 gamma^2))`` (``w_i = Z_i``, or one
channel per element), on the periodic ``nx x ny`` grid of the orthorhombic cell (pixel ``(ix, iy)``
at ``x = ix Lx / nx``, ``y = iy Ly / ny``). The EDNN sums one sub-network value per tile,
``E = sum_k g(tile_k[V])`` (eV for the models of this package). Forces
``F_i = -dE/dr_i = -sum_p (dE/dV(p)) (dV(p)/dr_i)`` (eV/Angstrom) come from automatic
differentiation through :func:`ednn_tf.atoms.render_tf.render_tf` and the network, so they are
conservative. A 2D model sees the xy projection: E does not depend on z, the z forces are 0.

Symmetry. E is invariant only under rigid translations by multiples of the tile stride
``focus * Lx/nx`` (which map tiles onto tiles), so the net force ``sum_i F_i`` is not zero in
general; only its average over a translation through one stride vanishes.

Truncation. ``cutoff=None`` (default) renders untruncated Gaussians: E is smooth. ``cutoff=c``
truncates each Gaussian per axis at ``c * gamma`` like :func:`ednn_tf.atoms.render.render` (the
training images): values differ by at most ``exp(-c^2/2)`` relative (1.5e-8 for c = 6), but E jumps
by that much when a pixel crosses the cutoff, which finite-difference checks notice.

Units: positions, cell and gamma in Angstrom, cutoff in units of gamma. Stress and per-atom energies
need the ``"atoms"`` readout (PropertyNotImplementedError otherwise).

Example::

    calc = EDNNCalculator("results/hexagonal-cpu/ednn.keras", shape=(128, 128), gamma=0.2)
    atoms.calc = calc
    atoms.get_potential_energy()        # eV
    atoms.get_forces()                  # (N, 3) eV/A
    calc.get_tile_energies(atoms)       # (nx/f, ny/f) eV per tile, row = x
"""
from __future__ import annotations

import collections
import math
import os
from numbers import Integral

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ..atoms import cells
from ..atoms.frames import check_structure
from ..atoms.render_tf import render_tf
from ..model import load_ednn, sum_tiles
from ..committee import Committee, is_committee_file
from ..potential import Potential, load_potential
from ..util import check_int, check_positive, check_positive_axes

__all__ = ["EDNNCalculator", "subnet_input_spec", "image_settings", "resolve_model", "refuse_settings"]


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
    ``pixel_size`` (Angstrom, one number or one per axis; then ``ndim`` is the model's rank, 2 if
    unknown) must be given.
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
        ndim = 2 if nd_model is None else nd_model
        pixel_size = check_positive_axes("pixel_size", pixel_size, ndim)
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

    ``model`` is a :class:`~ednn_tf.potential.Potential` (alone: it carries every image setting), a
    :class:`~ednn_tf.committee.Committee` (or its card: the mean of the members, and the properties
    ``energy_std`` eV, ``energies_std`` (N,) eV, ``force_dev`` (N,) eV/A, ``max_force_dev`` eV/A of
    :mod:`ednn_tf.apply.uncertainty`), an
    ``ednn_tf.EDNN``, the path of either as a ``.keras`` file, or a shipped model name. For an EDNN
    give either ``shape``, a fixed grid ``(nx, ny[, nz])`` (multiples of the focus; e.g. ``(256, 256)``
    for the paper's 60-atom cells), or ``pixel_size`` (Angstrom, one number or one per axis; the grid
    is ``cells.shape_for_cell(cell, pixel_size, multiple_of=focus)`` per structure, 2D models only).
    ``gamma`` (Angstrom), ``cutoff`` (units of gamma, or None) and ``channels`` (atomic numbers or
    symbols, one channel each; default one channel weighted by Z) must be those the model was
    trained with.
    ``max_cached`` compiled graphs are kept (one per atom count, numbers, cell and grid);
    ``orientations`` K (``"atoms"`` readout): average over K turned copies instead of the
    potential's own K (``Potential.orientations``; docs/potentials.md has what each K costs and gains);
    with K >= 2 a Potential also gives the four spread properties, over its K copies
    (docs/uncertainty.md: how well they rank the errors);
    ``precision`` (``"atoms"`` readout): ``"float32"`` (default) or ``"bfloat16"`` for the density
    network (docs/performance.md has its error and speed); ``**kwargs`` go to :class:`ase.calculators.calculator.Calculator`.

    Properties: ``energy`` = ``free_energy`` (eV), ``forces`` (N, 3) eV/Angstrom, ``tile_energies``
    (nx/f, ny/f) eV (row = x; they sum to the energy); with the ``"atoms"`` readout ``stress`` (6,)
    eV/A^3 and ``energies`` (N,) eV instead of tile energies (else PropertyNotImplementedError).
    Raises ValueError for a bad model or settings, and at calculation time for a non-orthorhombic
    or non-periodic cell, non-finite positions, an element not in ``channels`` or a grid that is
    not a multiple of the focus.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies", "tile_energies", "stretch",
                              "energy_std", "energies_std", "force_dev", "max_force_dev"]
    nolabel = True

    def __init__(self, model, shape=None, pixel_size=None, gamma=None, cutoff=None, channels=None, max_cached=8,
                 orientations=None, precision="float32", **kwargs):
        model = resolve_model(model)
        self.potential = model if isinstance(model, (Potential, Committee)) else None
        if self.potential is not None:
            refuse_settings(shape=shape, pixel_size=pixel_size, gamma=gamma, cutoff=cutoff, channels=channels)
            pot = self.potential
            model, pixel_size, gamma, cutoff, channels = pot.ednn, pot.pixel_size, pot.gamma, pot.cutoff, pot.channels
        self.model = load_ednn(model)
        self._scale = 1.0 if self.potential is None else self.potential.scale
        gamma = cells.DEFAULT_GAMMA if gamma is None else gamma
        self.focus = int(self.model.focus)
        shape, pixel_size, self.ndim, channels, self._input_dtype = image_settings(self.model, shape, pixel_size,
                                                                                   channels)
        gamma = check_positive("gamma", gamma)
        if cutoff is not None:
            cutoff = check_positive("cutoff", cutoff)
        self._max_cached = check_int("max_cached", max_cached, minimum=1)
        self._orientations = None if orientations is None else check_int("orientations", orientations, minimum=1)
        if self._orientations is not None and (self.potential is None or self.potential.readout != "atoms"):
            raise ValueError(f"orientations={orientations!r} needs a Potential with the 'atoms' readout")
        from ..atoms.space_tf import PRECISIONS

        if precision not in PRECISIONS or (precision != "float32" and (self.potential is None or
                                                                     self.potential.readout != "atoms")):
            raise ValueError(f"precision must be one of {PRECISIONS} (bfloat16 with a Potential of the 'atoms' "
                             f"readout), got {precision!r}")
        self._precision = precision
        self._functions = collections.OrderedDict()
        super().__init__(shape=None if shape is None else list(shape), pixel_size=pixel_size, gamma=gamma,
                         cutoff=cutoff, channels=channels, **kwargs)

    def grid_shape(self, atoms):
        """Image grid used for ``atoms`` (validates the cell; see :meth:`cell_lengths`)."""
        return self._grid_shape(self.cell_lengths(atoms))

    def _grid_shape(self, lengths):
        p = self.parameters
        if self.potential is not None:
            return self.potential.grid(lengths)[0]
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
        model, in_dtype, scale = self.model, self._input_dtype, self._scale
        numbers, lengths = numbers.copy(), np.array(lengths, dtype=np.float64)

        def energy(pos):
            img = render_tf(pos, numbers, lengths, shape, gamma=p.gamma, cutoff=p.cutoff, channels=p.channels)
            contrib = tf.cast(model.tile_contributions(tf.cast(img[None], in_dtype), training=False)[0], tf.float64)
            contrib = contrib * scale
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
        """Compute the energy and per-tile energies (and the forces if requested) of ``atoms``; for a
        potential with the ``"atoms"`` readout, energy, per-atom energies, forces and stress."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if self.potential is not None and self.potential.readout == "atoms":
            return self._calculate_space(atoms, properties)
        if set(properties) & {"stress", "energies"}:
            raise PropertyNotImplementedError(f"{sorted(set(properties) & {'stress', 'energies'})} need a potential "
                                              "with the 'atoms' readout (this model sums pixels of a cell grid)")
        if self.potential is not None:
            check_structure(atoms, self.potential.elements or None, self.potential.max_height,
                            self.potential.min_vacuum, orthorhombic=True)
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
        e_ref = 0.0 if self.potential is None else self.potential.reference_energy(numbers)   # names unknown elements
        cells.channel_weights(numbers, self.parameters.channels)   # raises for elements not in channels
        want_forces = "forces" in properties
        total, contrib, forces = self._function(numbers, lengths, shape, want_forces)(pos)
        energy = float(total.numpy()) + e_ref
        if not math.isfinite(energy):
            raise RuntimeError(f"the EDNN returned a non-finite energy {energy!r}")
        self.results.update(energy=energy, free_energy=energy, tile_energies=contrib.numpy(),
                            stretch=self._stretch(lengths, shape))
        if want_forces:
            self.results["forces"] = forces.numpy() + 0.0   # + 0.0: no -0.0 in the z column

    def _calculate_space(self, atoms, properties):
        """The space frame (:func:`ednn_tf.apply.space.predict_structures`, one traced graph)."""
        from .space import predict_structures

        derivatives = bool({"forces", "stress", "force_dev", "max_force_dev"} & set(properties))
        K = self._orientations or self.potential.orientations
        spread = K >= 2 and not isinstance(self.potential, Committee)      # the copies' spread: no extra cost
        r = predict_structures(self.potential, [atoms], derivatives=derivatives, orientations=self._orientations,
                               precision=self._precision, spread=spread)[0]
        if not math.isfinite(r["energy"]):
            raise RuntimeError(f"the EDNN returned a non-finite energy {r['energy']!r}")
        if "stress" in properties and r["stress"] is None:
            raise PropertyNotImplementedError(f"stress needs a cell periodic in the plane with a length along z "
                                              f"(pbc = {atoms.pbc.tolist()}, cell = {atoms.cell.array.round(4).tolist()})")
        self.results.update(energy=r["energy"], free_energy=r["energy"], energies=r["energies"])
        self.results.update({k: r[k] for k in ("forces", "stress") if r[k] is not None})
        self.results.update({k: r[k] for k in ("energy_std", "energies_std", "force_dev", "max_force_dev")
                             if r.get(k) is not None})

    def _stretch(self, lengths, shape):
        """``|n p - L| / L`` per axis in pixel-size mode (None for a fixed ``shape``)."""
        if self.potential is not None:
            return self.potential.grid(lengths)[1]   # the potential's own rule, not a second copy of it
        if self.pixel_size is None:
            return None
        p = np.broadcast_to(np.asarray(self.pixel_size, dtype=np.float64), (len(shape),))
        return tuple(float(abs(n * q - L) / L) for n, q, L in zip(shape, p, lengths))

    @property
    def pixel_size(self):
        return self.parameters.pixel_size

    def get_stretch(self, atoms=None):
        """Relative stretch ``|n p - L| / L`` of each image axis for ``atoms`` (pixel-size mode)."""
        return self.get_property("stretch", atoms)

    def get_tile_energies(self, atoms=None):
        """Per-tile energies ``(nx/f, ny/f)`` in eV (row = x); they sum to the energy."""
        return self.get_property("tile_energies", atoms)


def refuse_settings(**given):
    """ValueError naming the image settings in ``given`` that are not None: a Potential carries its own."""
    given = {k: v for k, v in given.items() if v is not None}
    if given:
        raise ValueError(f"a Potential carries its own image settings; got {given} as well")


def resolve_model(model):
    """An EDNN or a Potential from an instance (returned as is), a ``.keras`` path or a shipped model
    name (ValueError naming the value when it is neither)."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    if not os.path.isfile(os.fspath(model)):
        return load_potential(model)   # a shipped name, or ValueError naming the value
    if is_committee_file(model) or _holds_potential(model):
        return load_potential(model)
    return load_ednn(model)


def _holds_potential(path):
    import json
    import zipfile

    try:
        with zipfile.ZipFile(os.fspath(path)) as z:
            return json.loads(z.read("config.json")).get("class_name") == "Potential"
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
