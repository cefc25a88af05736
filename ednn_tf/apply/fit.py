"""Fit a :class:`~ednn_tf.potential.Potential` to labelled structures, and evaluate one.

Training (energy only): the images of all structures are rendered at the potential's pixel size
(``n = round(L / p)`` per axis, one channel per element), grouped by grid shape (a batch holds one
shape: no padding, no mask; a handful of shapes means a handful of traced graphs), and fitted to
``(E - sum_i e0[Z_i]) / scale`` with MSE weighted by ``1 / N_atoms^2`` (the per-atom error), Adam and
a cosine schedule, resumable through :func:`ednn_tf.training.fit`. ``e0`` are least-squares
reference energies of the training split; ``scale`` is the standard deviation of the residual per
pixel (eV), so that a fresh network's per-pixel outputs are already of the right size.
The split is a seeded random fraction (``data.split_indices``); the validation structures are never
trained on.
"""
from __future__ import annotations

import json
import math

import keras
import numpy as np

from .. import data, networks, training
from ..atoms import render
from ..model import DensityEDNN
from ..potential import Potential, fit_reference_energies
from ..util import check_float, check_int
from .calculator import EDNNCalculator

__all__ = ["labelled_energies", "labelled_forces", "GridBatches", "render_for", "train_potential", "predict_energies",
           "evaluate"]


def labelled_energies(structures, key="energy"):
    """Energies (eV) of ``structures`` from ``atoms.info[key]``, or (``key`` ``"energy"``) from the
    calculator ASE attached when reading; ValueError naming the structure, the key and what exists."""
    out = np.empty(len(structures))
    for i, a in enumerate(structures):
        if key in a.info:
            value = a.info[key]
        elif key in ("energy", "free_energy") and a.calc is not None and key in a.calc.results:
            value = a.calc.results[key]
        else:
            have = sorted(a.info) + (sorted(a.calc.results) if a.calc is not None else [])
            raise ValueError(f"structure {i} has no energy key {key!r} (it has {have})")
        out[i] = float(value)
        if not math.isfinite(out[i]):
            raise ValueError(f"structure {i}: energy {key!r} is {float(value)!r}, not a finite number")
    return out


def labelled_forces(structures, key="forces"):
    """Forces (eV/A), one ``(N_i, 3)`` array per structure, from ``atoms.arrays[key]`` or the attached
    calculator; ValueError naming the structure and the key when missing or not finite."""
    out = []
    for i, a in enumerate(structures):
        if key in a.arrays:
            f = a.arrays[key]
        elif key == "forces" and a.calc is not None and "forces" in a.calc.results:
            f = a.calc.results["forces"]
        else:
            raise ValueError(f"structure {i} has no forces key {key!r} (arrays: {sorted(a.arrays)})")
        f = np.asarray(f, dtype=np.float64)
        if f.shape != (len(a), 3) or not np.all(np.isfinite(f)):
            raise ValueError(f"structure {i}: forces {key!r} must be finite with shape ({len(a)}, 3), got {f.shape}")
        out.append(f)
    return out


def render_for(potential, atoms):
    """The image ``(nx, ny, C)`` float32 of ``atoms`` as ``potential`` sees it (numpy renderer)."""
    shape, _ = potential.grid(atoms.cell.lengths()[:2])
    return render.render(atoms, shape=shape, gamma=potential.gamma, channels=potential.channels)


class GridBatches:
    """``(images, targets, 1 / N^2)`` batches, each of one grid shape, reshuffled every epoch from
    ``(seed, epoch)``; :meth:`dataset` serves them to ``model.fit``. With ``augment`` batch ``i`` of an
    epoch is mirrored along x and/or y and/or transposed (x <-> y), drawn from ``(seed, epoch, i)``:
    the images of the mirrored (and shifted by one pixel) or x <-> y reflected structures, whose
    energy is the same."""

    def __init__(self, images, targets, n_atoms, batch_size, seed=0, shuffle=True, augment=False):
        self.augment = bool(augment)
        self.images, self.targets = images, np.asarray(targets, np.float32)
        self.weights = (1.0 / np.asarray(n_atoms, np.float64) ** 2).astype(np.float32)
        self.batch_size, self.seed, self.shuffle = check_int("batch_size", batch_size, minimum=1), seed, shuffle
        self.groups = {}
        for i, img in enumerate(images):
            self.groups.setdefault(img.shape, []).append(i)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for shape in sorted(self.groups):
            idx = np.array(self.groups[shape])
            idx = rng.permutation(idx) if self.shuffle else idx
            batches += [idx[k:k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        order = rng.permutation(len(batches)) if self.shuffle else range(len(batches))
        self.batches = [batches[k] for k in order]

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        rows = self.batches[i]
        x = np.stack([self.images[r] for r in rows])
        if self.augment:
            flip_x, flip_y, swap = np.random.default_rng([self.seed, self.epoch, i]).integers(0, 2, 3)
            x = x[:, ::-1] if flip_x else x
            x = x[:, :, ::-1] if flip_y else x
            x = np.ascontiguousarray(x.transpose(0, 2, 1, 3) if swap else x)
        return x, self.targets[rows, None], self.weights[rows]

    def dataset(self):
        """The batches as a ``tf.data.Dataset`` with dynamic grid sizes (a ``PyDataset``'s shapes would
        be inferred from its first two batches); each pass is one epoch, and the dataset's
        ``set_epoch`` lets ``training.fit`` continue the order on resume."""
        import tensorflow as tf

        def epoch():
            yield from (self[i] for i in range(len(self)))
            self.set_epoch(self.epoch + 1)

        spec = (tf.TensorSpec((None, None, None, self.images[0].shape[-1]), tf.float32),
                tf.TensorSpec((None, 1), tf.float32), tf.TensorSpec((None,), tf.float32))
        ds = tf.data.Dataset.from_generator(epoch, output_signature=spec)
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(self)))
        ds.set_epoch = self.set_epoch
        return ds


def train_potential(structures, energies, out, *, pixel_size=0.25, gamma=0.3, context=16, filters=32, epochs=100,
                    batch_size=8, lr=3e-3, val_fraction=0.1, seed=0, workdir=None, progress=True, card=None,
                    augment=True):
    """Train a density :class:`Potential` on ``structures`` / ``energies`` (eV) and save it to ``out``.

    ``pixel_size``, ``gamma``: A; ``context``: pixels (the density window is ``2 context + 1`` wide);
    ``filters``: width of :func:`networks.energy_density`; ``augment``: mirrors and x <-> y swaps
    (:class:`GridBatches`); ``val_fraction`` in (0, 0.9]. Returns ``(potential, metrics)`` with the
    validation errors of :func:`evaluate` (``metrics["val"]``) and the split.
    """
    n = len(structures)
    energies = np.asarray(energies, dtype=np.float64)
    if energies.shape != (n,) or n < 2:
        raise ValueError(f"need at least 2 structures with one energy each, got {n} structures, {energies.shape}")
    val_fraction = check_float("val_fraction", val_fraction, minimum=0.0, maximum=0.9, strict=True)
    train, val = data.split_indices(n, (1 - val_fraction, val_fraction), seed=seed)
    if not len(val) or not len(train):
        raise ValueError(f"val_fraction={val_fraction} of {n} structures leaves {len(train)} training and {len(val)} "
                         "validation structures; both need at least one")
    e0 = fit_reference_energies([structures[i] for i in train], energies[train])
    elements = sorted(e0)
    keras.utils.set_random_seed(seed)
    ednn = DensityEDNN(networks.energy_density(context, channels=len(elements), filters=filters, seed=seed), context)
    residual = energies - np.array([sum(e0[int(z)] for z in a.numbers) for a in structures])
    pot = Potential(ednn, pixel_size, gamma, None, elements, e0, 1.0, card)
    images = [render_for(pot, a) for a in structures]
    pixels = np.array([img.shape[0] * img.shape[1] for img in images], dtype=np.float64)
    pot.scale = scale = float(max(np.std(residual[train] / pixels[train]), 1e-9))   # eV per pixel: O(1) outputs
    batches = GridBatches([images[i] for i in train], residual[train] / scale, [len(structures[i]) for i in train],
                          batch_size, seed=seed, augment=augment)
    ednn(images[train[0]][None])   # built before fit: the dataset's grid sizes are dynamic
    ednn.compile(optimizer=keras.optimizers.Adam(training.cosine_schedule(lr, epochs * len(batches))), loss="mse")
    training.fit(ednn, batches.dataset(), epochs=epochs, workdir=workdir or f"{out}.train", progress=progress)
    metrics = {"n_train": len(train), "n_val": len(val), "split": f"data.split_indices(n, ({1 - val_fraction:g}, "
               f"{val_fraction:g}), seed={seed})", "val_indices": [int(i) for i in val],
               "val": evaluate(pot, [structures[i] for i in val], energies[val])}
    card_metrics = {**metrics, "val": {k: v for k, v in metrics["val"].items() if k != "pred_energy"}}
    card_metrics.pop("val_indices")
    pot.card = {**pot.card, "metrics": card_metrics, **_composition(structures, train)}
    training.save_model_atomic(pot, out)
    return pot, metrics


def _composition(structures, rows):
    from ase.data import chemical_symbols

    lengths = np.array([structures[i].cell.lengths()[:2] for i in rows])
    counts = [len(structures[i]) for i in rows]
    elements = sorted({int(z) for i in rows for z in structures[i].numbers})
    return {"elements": [chemical_symbols[z] for z in elements], "n_atoms_range": [min(counts), max(counts)],
            "cell_lengths_range_A": [lengths.min(0).round(3).tolist(), lengths.max(0).round(3).tolist()]}


def predict_energies(potential, structures, batch_size=16):
    """Energies (eV) of ``structures``: numpy images grouped by grid shape, one batched EDNN call per
    group (no graph per structure, unlike the calculator; the images are truncated at 6 gamma, a
    relative difference below 2e-8)."""
    images = [render_for(potential, a) for a in structures]
    out = np.array([potential.reference_energy(a.numbers) for a in structures])
    groups = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    for rows in groups.values():
        out[rows] += potential.scale * potential.ednn.predict_total(np.stack([images[i] for i in rows]), batch_size)
    return out


def evaluate(potential, structures, energies, forces=None, kinds=None):
    """Errors of ``potential`` on labelled structures: ``n``, energy MAE / RMSE in meV/atom and
    eV/structure, force MAE / RMSE in eV/A (with ``forces``), and the same per value of ``kinds``
    (e.g. ``atoms.info["kind"]``). Also ``pred_energy`` (eV) for the parity plot."""
    pred = predict_energies(potential, structures)
    dforce = []
    if forces is not None:
        calc = EDNNCalculator(potential)
        dforce = [(calc.get_forces(a.copy()) - f).ravel() for a, f in zip(structures, forces)]
    E = np.asarray(energies, dtype=np.float64)
    n_atoms = np.array([len(a) for a in structures], dtype=np.float64)

    def errors(rows):
        d, per_atom = pred[rows] - E[rows], (pred[rows] - E[rows]) / n_atoms[rows]
        out = {"n": int(len(rows)), "energy_mae_meV_per_atom": 1e3 * float(np.mean(np.abs(per_atom))),
               "energy_rmse_meV_per_atom": 1e3 * float(np.sqrt(np.mean(per_atom ** 2))),
               "energy_mae_eV": float(np.mean(np.abs(d))), "energy_rmse_eV": float(np.sqrt(np.mean(d ** 2)))}
        if forces is not None:
            df = np.concatenate([dforce[i] for i in rows])
            out.update(force_mae_eV_per_A=float(np.mean(np.abs(df))),
                       force_rmse_eV_per_A=float(np.sqrt(np.mean(df ** 2))))
        return out

    result = errors(np.arange(len(structures)))
    if kinds is not None:
        kinds = np.asarray([str(k) for k in kinds])
        result["by_kind"] = {k: errors(np.flatnonzero(kinds == k)) for k in sorted(set(kinds))}
    result["pred_energy"] = pred.tolist()
    return json.loads(json.dumps(result))
