"""A potential: an EDNN that knows how it sees atoms, in one ``.keras`` file.

``Potential(ednn, pixel_size, gamma, cutoff, channels, e0, scale, card)`` holds the trained EDNN
(usually a :class:`~ednn_tf.model.DensityEDNN`, which takes any grid size), the rendering of eqn (2)
it was trained on (pixel size, one number or one per axis, and gamma in Angstrom, cutoff in units
of gamma or None for untruncated Gaussians, channels as atomic numbers or None for one Z-weighted
channel), the
per-element reference energies ``e0`` (eV, fitted by least squares on the training set, like the
E0s of MACE and NequIP), the output ``scale`` (eV per network unit) and a model card (a JSON dict:
oracle, data, errors, versions, the training command). The energy of a structure is

    E = sum_i e0[Z_i] + scale * EDNN(image)          (eV; the per-atom readout below)

Two readouts (``readout``). ``"atoms"`` (what ``train_potential`` and ``ednn-tf train`` make):
the grid belongs to space, not to the cell. The structure is rendered at the exact pitch ``p`` on a
window of a grid fixed in space that covers its atoms plus a halo of their periodic images, the
density network runs once over it, and each atom reads its energy out of the density map with a
cubic B-spline, ``E = sum_i e0[Z_i] + scale * sum_i (B3 * D)(r_i)`` (:mod:`ednn_tf.atoms.frames`,
:mod:`ednn_tf.atoms.space_tf`): any cell shape and orientation (a flake too), per-atom energies,
and energy, forces and stress continuous in positions and cell. ``max_height`` and ``min_vacuum``
(A) record which structures a 2D potential takes (atoms within ``max_height`` of the sheet's plane;
``min_vacuum`` between periodic images along z); :func:`ednn_tf.atoms.frames.check_structure`
refuses the rest. ``orientations`` K > 1: every prediction is the mean over the structure turned
by ``90 k / K`` degrees and moved by a sub-pixel offset, k = 0 .. K-1 (forces and stress turned
back; still conservative), which averages out part of the learnt rotation and sub-pixel
translation errors, at K times the cost. ``"cell"`` (the first form, kept for older files): a cell
of length ``L`` gets ``n = round(L / p)`` pixels per axis, the image stretched by ``|n p - L| / L``
(at most ``p / 2L``, reported as ``stretch``) and summed per pixel; orthorhombic cells only; a
per-axis pixel size ``(px, py)`` describes a model trained on one fixed grid over one cell
(``experiments/hexagonal.py``).
Energy, forces, stress and per-atom energies of ``ase.Atoms`` come from
:class:`ednn_tf.apply.calculator.EDNNCalculator`, which takes a ``Potential`` (or its path or
shipped name) alone, and in batches from :func:`ednn_tf.apply.space.predict_structures`.
"""
from __future__ import annotations

import json
import os

import keras
import numpy as np

from .committee import Committee, is_committee_file, read_committee_card
from .model import load_ednn
from .util import (check_choice, check_float, check_int, check_model_file, check_positive, check_positive_axes,
                   to_jsonable)

__all__ = ["READOUTS", "Potential", "fit_reference_energies", "load_potential", "shipped_models", "model_card",
           "resolve_model_path", "MODELS_DIR"]

#: How a potential reads its energy out: ``"atoms"``, the space frame (any cell and orientation, per-atom
#: energies, stress; :mod:`ednn_tf.atoms.frames`), or ``"cell"``, the first form (the image stretched
#: onto ``round(L / p)`` pixels of an orthorhombic cell, summed per pixel; kept for older files).
READOUTS = ("atoms", "cell")

#: Folder of the models shipped inside the package (``<name>.keras``).
MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")


@keras.saving.register_keras_serializable(package="ednn_tf")
class Potential(keras.Model):
    """EDNN + rendering + reference energies + scale + model card (see the module docstring).

    ``call(images)`` is ``scale * ednn(images)``: the network part of the energy in eV, ``(batch, 1)``
    (``e0`` is added by :meth:`reference_energy` for a structure's atoms).
    """

    def __init__(self, ednn, pixel_size, gamma=0.2, cutoff=None, channels=None, e0=None, scale=1.0, card=None,
                 readout="cell", max_height=None, min_vacuum=None, orientations=1, **kwargs):
        super().__init__(**kwargs)
        self.ednn = load_ednn(ednn)
        self.pixel_size = check_positive_axes("pixel_size", pixel_size)
        self.gamma = check_positive("gamma", gamma)
        self.cutoff = None if cutoff is None else check_positive("cutoff", cutoff)
        self.channels = None if channels is None else [int(z) for z in channels]
        self.e0 = {int(z): check_float(f"e0[{z}]", float(v)) for z, v in (e0 or {}).items()}
        self.scale = check_float("scale", scale)
        self.card = card
        self.readout = check_choice("readout", readout, READOUTS)
        if self.readout == "atoms":
            if isinstance(self.pixel_size, tuple) or int(self.ednn.focus) != 1 or not hasattr(self.ednn, "density"):
                raise ValueError(f"the 'atoms' readout needs a DensityEDNN and one pixel size, got a "
                                 f"{type(self.ednn).__name__} (focus {self.ednn.focus}) at {self.pixel_size} A/px")
        self.max_height = None if max_height is None else check_float("max_height", max_height, minimum=0.0)
        self.min_vacuum = None if min_vacuum is None else check_float("min_vacuum", min_vacuum, minimum=0.0)
        self.orientations = check_int("orientations", orientations, minimum=1)
        self.built = True   # nothing of its own to build: the EDNN holds every weight

    @property
    def card(self):
        """The model card, a JSON dict (a fresh copy: assign a new dict to change it)."""
        return json.loads(self._card)

    @card.setter
    def card(self, value):
        self._card = json.dumps(to_jsonable(dict(value or {})), sort_keys=True)

    @property
    def pitch(self) -> float:
        """The pixel pitch (A) of the space grid (``"atoms"`` readout: one pixel size)."""
        return float(self.pixel_size if not isinstance(self.pixel_size, tuple) else self.pixel_size[0])

    @property
    def elements(self):
        """Atomic numbers the potential was trained on (the keys of ``e0``), ascending."""
        return sorted(self.e0)

    def call(self, images, training=False):
        return self.scale * keras.ops.cast(self.ednn(images, training=training), "float64")

    def reference_energy(self, numbers) -> float:
        """``sum_i e0[Z_i]`` (eV); ValueError naming an element the potential has never seen."""
        numbers = np.asarray(numbers, dtype=np.int64)
        unknown = sorted(set(numbers.tolist()) - set(self.e0))
        if unknown:
            from ase.data import chemical_symbols

            raise ValueError(f"the potential was trained on elements {[chemical_symbols[z] for z in self.elements]}, "
                             f"got {[chemical_symbols[z] for z in unknown]}")
        return float(sum(self.e0[int(z)] for z in numbers))

    def grid(self, lengths):
        """``(shape, stretch)`` for a cell of ``lengths`` (A): ``n = round(L / p)`` pixels per axis
        (``p`` the pixel size of that axis) and the relative stretch ``|n p - L| / L`` of each axis. A
        tile EDNN (focus f > 1) needs ``n`` to be a multiple of f: otherwise ValueError naming the
        cell, the grid and the sizes it takes."""
        lengths = np.asarray(lengths, dtype=np.float64)
        p = self.pixels(len(lengths))
        f = int(self.ednn.focus)
        shape = tuple(max(f, int(round(L / q))) for L, q in zip(lengths, p))
        if any(n % f for n in shape):
            near = [(n // f * f or f, (n // f + 1) * f) for n in shape]
            fits = [[round(float(n * q), 4) for n in pair] for pair, q in zip(near, p)]
            raise ValueError(f"cell {lengths.round(4).tolist()} A needs a grid {shape} at {self.pixel_size} A/px, "
                             f"but this tile model (focus {f}) takes multiples of {f} only (nearest: {near}, "
                             f"i.e. cell lengths {fits} A)")
        stretch = tuple(float(abs(n * q - L) / L) for n, q, L in zip(shape, p, lengths))
        return shape, stretch

    def pixels(self, ndim=2):
        """The pixel size of each of ``ndim`` axes (A), a float64 array; ValueError when a per-axis
        ``pixel_size`` has another number of axes."""
        if isinstance(self.pixel_size, tuple) and len(self.pixel_size) != ndim:
            raise ValueError(f"this potential has a pixel size per axis {self.pixel_size} A, "
                             f"for {len(self.pixel_size)} axes, not {ndim}")
        return np.broadcast_to(np.asarray(self.pixel_size, dtype=np.float64), (ndim,))

    def get_config(self):
        return {**super().get_config(), "ednn": keras.saving.serialize_keras_object(self.ednn),
                "pixel_size": list(self.pixel_size) if isinstance(self.pixel_size, tuple) else self.pixel_size,
                "gamma": self.gamma, "cutoff": self.cutoff, "channels": self.channels,
                "e0": {str(z): v for z, v in self.e0.items()}, "scale": self.scale, "card": self.card,
                "readout": self.readout, "max_height": self.max_height, "min_vacuum": self.min_vacuum,
                "orientations": self.orientations}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        ednn = keras.saving.deserialize_keras_object(config["ednn"], custom_objects=custom_objects)
        return cls(**{**config, "ednn": ednn})


def fit_reference_energies(structures, energies) -> dict:
    """Per-element reference energies ``{Z: eV}``: the least-squares fit of ``E ~ sum_Z n_Z e0[Z]`` over
    ``structures`` (``ase.Atoms``) and their ``energies`` (eV); minimum-norm where compositions are
    collinear."""
    numbers = [np.asarray(a.numbers) for a in structures]
    E = np.asarray(energies, dtype=np.float64)
    if E.shape != (len(numbers),) or not len(numbers):
        raise ValueError(f"need one energy per structure, got {E.shape} for {len(numbers)} structures")
    Z = sorted(set(np.concatenate(numbers).tolist()))
    counts = np.array([[np.count_nonzero(n == z) for z in Z] for n in numbers], dtype=np.float64)
    e0, *_ = np.linalg.lstsq(counts, E, rcond=None)
    return {int(z): float(v) for z, v in zip(Z, e0)}


def shipped_models() -> dict:
    """``{name: path}`` of the models shipped in :data:`MODELS_DIR` (``.keras`` files, and committee
    cards ``NAME.committee.json``, whose name is ``NAME``; a committee wins over a file of its name)."""
    if not os.path.isdir(MODELS_DIR):
        return {}
    files = sorted(os.listdir(MODELS_DIR))
    out = {f[:-6]: os.path.join(MODELS_DIR, f) for f in files if f.endswith(".keras")}
    out.update({f[:-len(".committee.json")]: os.path.join(MODELS_DIR, f) for f in files
                if f.endswith(".committee.json")})
    return out


def resolve_model_path(name_or_path) -> str:
    """The file of a ``.keras`` path or of a shipped model name; ValueError naming the value otherwise."""
    path = os.fspath(name_or_path)
    if os.path.isfile(path):
        return path
    shipped = shipped_models()
    if path not in shipped:
        raise ValueError(f"no model file {path!r} and no shipped model of that name (shipped: {sorted(shipped)})")
    return shipped[path]


def model_card(name_or_path) -> dict:
    """The card of a model: a Potential's own, else the JSON file beside it (``<name>.json``), else {}."""
    path = resolve_model_path(name_or_path)
    side = os.path.splitext(path)[0] + ".json"
    if os.path.isfile(side):
        with open(side) as fh:
            return json.load(fh)
    model = keras.models.load_model(path, compile=False)
    return model.card if isinstance(model, Potential) else {}


def load_potential(name_or_path):
    """A :class:`Potential` from the path of a ``.keras`` file or the name of a shipped model
    (:func:`shipped_models`), or a :class:`~ednn_tf.committee.Committee` from a committee card
    (``NAME.committee.json``); ValueError naming the value for a missing file, an unknown name or a
    file that holds something else."""
    if isinstance(name_or_path, (Potential, Committee)):
        return name_or_path
    path = resolve_model_path(name_or_path)
    if is_committee_file(path):
        files, card = read_committee_card(path)
        return Committee([load_potential(f) for f in files], card, path)
    path = check_model_file(path)   # a truncated file says so
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for bad archives
        raise ValueError(f"could not load a potential from {path!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, Potential):
        raise ValueError(f"{path!r} holds a {type(model).__name__}, not an ednn_tf Potential")
    return model
