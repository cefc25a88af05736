"""Fit a :class:`~ednn_tf.potential.Potential` to labelled structures, and evaluate one.

Training on energies alone: the images of all structures are rendered at the potential's pixel
size (``n = round(L / p)`` per axis, one channel per element), grouped by grid shape (a batch holds
one shape: no padding, no mask; a handful of shapes means a handful of traced graphs), and fitted
to ``(E - sum_i e0[Z_i]) / scale`` with MSE weighted by ``1 / N_atoms^2`` (the per-atom error), Adam
and a cosine schedule, resumable through :func:`ednn_tf.training.fit`. Training on energies and
forces (``train_potential(forces=...)``): :mod:`ednn_tf.apply.force_training`, which renders inside
the training step so that the forces are autodiff derivatives. ``e0`` are least-squares reference
energies of the training split; ``scale`` is the standard deviation of the residual per pixel (eV),
so that a fresh network's per-pixel outputs are already of the right size. The split is a seeded
random fraction (``data.split_indices``); the validation structures are never trained on.
"""
from __future__ import annotations

import json
import math
import os

import keras
import numpy as np

from .. import data, networks, training
from ..atoms import render
from ..atoms.frames import check_structures
from ..atoms.render_tf import periodic_images
from ..model import DensityEDNN
from ..potential import Potential, fit_reference_energies
from ..util import check_float, check_int
from .force_training import ForceTrainer, ShapeBatches, StructureBatches, predict_energies_forces

__all__ = ["labelled_energies", "labelled_forces", "GridBatches", "render_for", "train_potential", "predict_energies",
           "predict_energies_forces", "evaluate", "structure_kinds"]


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


class GridBatches(ShapeBatches):
    """``(images, targets, 1 / N^2)`` batches, each of one grid shape, reshuffled every epoch from
    ``(seed, epoch)``; :meth:`dataset` serves them to ``model.fit``. With ``augment`` batch ``i`` of an
    epoch is mirrored along x and/or y and/or transposed (x <-> y), drawn from ``(seed, epoch, i)``:
    the images of the mirrored (and shifted by one pixel) or x <-> y reflected structures, whose
    energy is the same."""

    def __init__(self, images, targets, n_atoms, batch_size, seed=0, shuffle=True, augment=False):
        self.images, self.targets = images, np.asarray(targets, np.float32)
        self.weights = (1.0 / np.asarray(n_atoms, np.float64) ** 2).astype(np.float32)
        super().__init__([img.shape for img in images], batch_size, seed, shuffle, augment)

    def __getitem__(self, i):
        rows = self.batches[i]
        x = np.stack([self.images[r] for r in rows])
        flip_x, flip_y, swap = self.flips(i)
        x = x[:, ::-1] if flip_x else x
        x = x[:, :, ::-1] if flip_y else x
        x = np.ascontiguousarray(x.transpose(0, 2, 1, 3) if swap else x)
        return x, self.targets[rows, None], self.weights[rows]

    def _signature(self):
        import tensorflow as tf

        return (tf.TensorSpec((None, None, None, self.images[0].shape[-1]), tf.float32),
                tf.TensorSpec((None, 1), tf.float32), tf.TensorSpec((None,), tf.float32))


def train_potential(structures, energies, out, *, forces=None, pixel_size=0.25, gamma=0.3, context=16, filters=32,
                    epochs=100, batch_size=8, lr=3e-3, val_fraction=0.1, seed=0, workdir=None, progress=True,
                    card=None, augment=True, energy_weight=1.0, force_weight=10.0, readout="atoms", init_from=None,
                    max_height=None, min_vacuum=None, split_seed=None, invariance_weight=0.0, val_indices=None,
                    refit_reference=False):
    """Train a density :class:`Potential` on ``structures`` / ``energies`` (eV) and save it to ``out``.

    ``pixel_size``, ``gamma``: A; ``context``: pixels (the density window is ``2 context + 1`` wide);
    ``filters``: width of :func:`networks.energy_density`; ``augment``: mirrors and x <-> y swaps;
    ``val_fraction`` in (0, 0.9]. With ``forces`` (one (N_i, 3) array per structure, eV/A) the
    potential is trained on energies and forces by :class:`~ednn_tf.apply.force_training.ForceTrainer`
    with the dimensionless ``energy_weight`` and ``force_weight`` (default 1 and 10, see that module); without, on energies alone from
    pre-rendered images (:class:`GridBatches`, MSE of the per-atom energy). Returns ``(potential,
    metrics)`` with the validation errors of :func:`evaluate` (``metrics["val"]``; forces too when
    given) and the split.

    ``readout="atoms"`` (default): the space frame (any cell, per-atom energies, stress;
    :mod:`ednn_tf.apply.space_training`: random rotations, mirrors and sub-pixel shifts when
    ``augment``; energies alone are ``force_weight=0`` of the same trainer); ``"cell"``: the first
    form (``n = round(L / p)`` pixels per axis, orthorhombic cells). ``init_from``: a Potential (or
    path) whose network weights start the training (same architecture). ``max_height`` and
    ``min_vacuum`` (A): the structures the potential accepts (default: the training set's largest
    distance from its plane plus 0.5 A, and 10 A), recorded in the file. ``seed`` draws the initial
    weights, the data order and the augmentation; ``split_seed`` (default ``seed``) the validation
    split, so the members of a committee (``seed`` k) share one split. ``invariance_weight`` (``"atoms"``
    readout, needs ``augment``): every batch holds each structure under two random isometries and the
    loss asks its per-atom energies and turned-back forces to agree (:mod:`ednn_tf.apply.space_training`).
    ``val_indices``: the validation structures given explicitly (the rest are trained on), instead of
    the seeded random ``val_fraction``. A fine-tune (``init_from`` an ``"atoms"`` potential with the same
    elements) keeps that potential's ``e0`` and ``scale``, so it starts from the same energies;
    ``refit_reference=True`` fits them to the new training split instead (what ``init_from`` did before
    2026-12-08).
    """
    n = len(structures)
    energies = np.asarray(energies, dtype=np.float64)
    if energies.shape != (n,) or n < 2:
        raise ValueError(f"need at least 2 structures with one energy each, got {n} structures, {energies.shape}")
    if forces is not None and len(forces) != n:
        raise ValueError(f"need one force array per structure, got {len(forces)} for {n} structures")
    val_fraction = check_float("val_fraction", val_fraction, minimum=0.0, maximum=0.9, strict=True)
    epochs = check_int("epochs", epochs, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    energy_weight = check_float("energy_weight", energy_weight, minimum=0.0)
    force_weight = check_float("force_weight", force_weight, minimum=0.0)
    split_seed = seed if split_seed is None else check_int("split_seed", split_seed, minimum=0)
    invariance_weight = check_float("invariance_weight", invariance_weight, minimum=0.0)
    if invariance_weight > 0 and (readout != "atoms" or not augment):
        raise ValueError(f"invariance_weight={invariance_weight} needs readout='atoms' and augment=True "
                         f"(got readout={readout!r}, augment={augment!r})")
    train, val = _split(n, val_fraction, split_seed, val_indices)
    if not len(val) or not len(train):
        raise ValueError(f"val_fraction={val_fraction} of {n} structures leaves {len(train)} training and {len(val)} "
                         "validation structures; both need at least one")
    e0 = fit_reference_energies([structures[i] for i in train], energies[train])
    elements = sorted(e0)
    keras.utils.set_random_seed(seed)
    ednn = DensityEDNN(networks.energy_density(context, channels=len(elements), filters=filters, seed=seed), context)
    residual = energies - np.array([sum(e0[int(z)] for z in a.numbers) for a in structures])
    if readout == "atoms":
        return _train_space(structures, energies, forces, out, train, val, e0, ednn, residual, locals())
    pot = Potential(ednn, pixel_size, gamma, None, elements, e0, 1.0, card)
    pixels = np.array([np.prod(pot.grid(a.cell.lengths()[:2])[0]) for a in structures], dtype=np.float64)
    pot.scale = float(max(np.std(residual[train] / pixels[train]), 1e-9))   # eV per pixel: O(1) outputs
    shape, _ = pot.grid(structures[train[0]].cell.lengths()[:2])
    ednn(np.zeros((1,) + shape + (len(elements),), np.float32))   # built before fit: the grid sizes are dynamic
    rows = [structures[i] for i in train]
    if forces is None:
        model, batches = _energy_only(pot, rows, residual[train], batch_size, seed, augment)
    else:
        n_atoms = np.array([len(a) for a in rows], dtype=np.float64)
        f_train = np.concatenate([np.asarray(forces[i])[:, :2].ravel() for i in train])
        batches = StructureBatches(pot, rows, energies[train], [forces[i] for i in train], batch_size, seed=seed,
                                   augment=augment)
        model = ForceTrainer(pot, energy_weight, force_weight, energy_unit=float(np.std(residual[train] / n_atoms)),
                             force_unit=float(np.sqrt(np.mean(f_train ** 2))),
                             images=periodic_images(batches.min_length, gamma))
    return _fit_and_record(pot, model, batches, structures, energies, forces, out, train, val, locals())


def _split(n, val_fraction, split_seed, val_indices):
    """``(train, val)`` index arrays: the seeded random split, or ``val_indices`` and the rest."""
    if val_indices is None:
        return data.split_indices(n, (1 - val_fraction, val_fraction), seed=split_seed)
    val = np.unique(np.asarray(val_indices, dtype=np.int64))
    if val.ndim != 1 or (len(val) and (val[0] < 0 or val[-1] >= n)):
        raise ValueError(f"val_indices must be indices of the {n} structures, got {list(val_indices)[:5]}...")
    return np.setdiff1d(np.arange(n), val), val


def _fit_and_record(pot, model, batches, structures, energies, forces, out, train, val, kw):
    """Fit ``model`` (the trainer of ``pot``) on ``batches``, save ``pot`` to ``out`` with its card
    completed by the validation errors; ``(pot, metrics)``."""
    epochs, lr, val_fraction = kw["epochs"], kw["lr"], kw["val_fraction"]
    check_structures(pot, structures, orthorhombic=pot.readout == "cell")   # all of them, before any training
    model.compile(optimizer=keras.optimizers.Adam(training.cosine_schedule(lr, epochs * len(batches))),
                  loss="mse" if isinstance(model, DensityEDNN) else None)
    training.fit(model, batches.dataset(), epochs=epochs, workdir=kw["workdir"] or f"{out}.train",
                 progress=kw["progress"])
    training.save_model_atomic(pot, out)   # first: the backup is gone once fit completes, whatever fails next
    val_rows = [structures[i] for i in val]
    split = (f"data.split_indices(n, ({1 - val_fraction:g}, {val_fraction:g}), seed={kw['split_seed']})"
             if kw["val_indices"] is None else "given (val_indices)")
    metrics = {"n_train": len(train), "n_val": len(val), "split": split, "val_indices": [int(i) for i in val],
               "training": {"forces": forces is not None, "epochs": epochs, "lr": lr, "batch_size": kw["batch_size"],
                            "augment": bool(kw["augment"]), "readout": pot.readout,
                            "init_from": None if kw["init_from"] is None else str(kw["init_from"])},
               "val": evaluate(pot, val_rows, energies[val], None if forces is None else [forces[i] for i in val],
                               structure_kinds(val_rows))}
    if isinstance(model, ForceTrainer):
        metrics["training"].update(energy_weight=model.energy_weight, force_weight=model.force_weight,
                                   energy_unit_eV_per_atom=model.energy_unit, force_unit_eV_per_A=model.force_unit,
                                   invariance_weight=getattr(model, "invariance_weight", 0.0))
    card_metrics = {**metrics, "val": {k: v for k, v in metrics["val"].items() if k != "pred_energy"}}
    card_metrics.pop("val_indices")
    pot.card = {**pot.card, "metrics": card_metrics, **_composition(structures, train)}
    training.save_model_atomic(pot, out)
    return pot, metrics


def _train_space(structures, energies, forces, out, train, val, e0, ednn, residual, kw):
    """:func:`train_potential` with the ``"atoms"`` readout (:mod:`ednn_tf.apply.space_training`)."""
    from ..potential import load_potential
    from .space_training import SpaceBatches, SpaceTrainer

    rows = [structures[i] for i in train]
    n_atoms = np.array([len(a) for a in rows], dtype=np.float64)
    heights = [np.max(np.abs(a.positions[:, 2] - np.median(a.positions[:, 2]))) for a in rows]
    max_height = kw["max_height"] if kw["max_height"] is not None else round(float(max(heights)) + 0.5, 3)
    min_vacuum = kw["min_vacuum"] if kw["min_vacuum"] is not None else 10.0
    pot = Potential(ednn, kw["pixel_size"], kw["gamma"], None, sorted(e0), e0,
                    float(max(np.std(residual[train] / n_atoms), 1e-9)), kw["card"], readout="atoms",
                    max_height=max_height, min_vacuum=min_vacuum)
    ednn(np.zeros((1, 2 * ednn.context + 8, 2 * ednn.context + 8, len(e0)), np.float32))   # built: dynamic sizes
    if kw["init_from"] is not None:
        init = load_potential(kw["init_from"])
        ednn.set_weights(init.ednn.get_weights())
        if init.readout == "atoms" and init.elements == pot.elements and not kw["refit_reference"]:
            pot.e0, pot.scale = dict(init.e0), float(init.scale)   # the fine-tune starts at init's energies
    f_train = None if forces is None else [forces[i] for i in train]
    w_inv = kw["invariance_weight"]
    batches = SpaceBatches(pot, rows, energies[train], f_train, kw["batch_size"], seed=kw["seed"], augment=kw["augment"],
                           pairs=w_inv > 0)
    f_unit = 1.0 if forces is None else float(np.sqrt(np.mean(np.concatenate([f[:, :2].ravel() for f in f_train]) ** 2)))
    model = SpaceTrainer(pot, kw["energy_weight"], kw["force_weight"] if forces is not None else 0.0,
                         energy_unit=pot.scale, force_unit=f_unit, invariance_weight=w_inv)
    return _fit_and_record(pot, model, batches, structures, energies, forces, out, train, val, kw)


def _energy_only(pot, structures, residual, batch_size, seed, augment):
    """The EDNN of ``pot`` and its :class:`GridBatches` of pre-rendered images (targets in units of
    ``pot.scale``, weights ``1 / N^2``: the MSE of the per-atom energy)."""
    images = [render_for(pot, a) for a in structures]
    batches = GridBatches(images, residual / pot.scale, [len(a) for a in structures], batch_size, seed=seed,
                          augment=augment)
    return pot.ednn, batches


def structure_kinds(structures):
    """``atoms.info["kind"]`` of every structure, or None when one lacks it."""
    return [a.info["kind"] for a in structures] if all("kind" in a.info for a in structures) else None


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
    relative difference below 2e-8). A potential with the ``"atoms"`` readout goes through
    :func:`ednn_tf.apply.space.predict_structures`."""
    if potential.readout == "atoms":
        from .space import predict_structures

        return np.array([r["energy"] for r in predict_structures(potential, structures, batch_size, derivatives=False)])
    check_structures(potential, structures, orthorhombic=True)
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
    eV/structure, and with ``forces`` (eV/A) the force MAE / RMSE over all components
    (``force_mae_eV_per_A``, ``force_rmse_eV_per_A``; a 2D model predicts z = 0) and over the
    in-plane ones (``force_mae_xy_eV_per_A``, ``force_rmse_xy_eV_per_A``); the same per value of
    ``kinds`` (e.g. ``atoms.info["kind"]``). Also ``pred_energy`` (eV) for the parity plot."""
    if forces is None:
        pred, dforce = predict_energies(potential, structures), []
    else:
        pred, pred_f = predict_energies_forces(potential, structures)
        dforce = [p - np.asarray(f, np.float64) for p, f in zip(pred_f, forces)]
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
                       force_rmse_eV_per_A=float(np.sqrt(np.mean(df ** 2))),
                       force_mae_xy_eV_per_A=float(np.mean(np.abs(df[:, :2]))),
                       force_rmse_xy_eV_per_A=float(np.sqrt(np.mean(df[:, :2] ** 2))))
        return out

    result = errors(np.arange(len(structures)))
    if kinds is not None:
        kinds = np.asarray([str(k) for k in kinds])
        result["by_kind"] = {k: errors(np.flatnonzero(kinds == k)) for k in sorted(set(kinds))}
    result["pred_energy"] = pred.tolist()
    return json.loads(json.dumps(result))


def train_committee(structures, energies, out, k, *, forces=None, seed=0, init_from=None, workdir=None, **kwargs):
    """Train ``k`` members of a committee (seeds ``seed .. seed + k - 1``: initial weights, data order
    and augmentation; one validation split, from ``seed``) with :func:`train_potential` (``kwargs``),
    each resumable in ``<workdir or out.train>.member<j>``, saved as ``<stem>.member<j>.keras`` with
    its ``.metrics.json``, then the committee card ``<stem>.committee.json`` (returned with the
    members' metrics). ``init_from``: a committee (or its card) whose member j starts member j, or one
    potential that starts them all."""
    from ..committee import Committee, save_committee
    from ..potential import load_potential
    from ..util import write_json_atomic

    k = check_int("k", k, minimum=1)
    start = None if init_from is None else load_potential(init_from)
    if isinstance(start, Committee) and len(start) != k:
        raise ValueError(f"init_from has {len(start)} members, the committee {k}")
    stem = os.path.splitext(os.fspath(out))[0]
    paths, metrics = [], []
    for j in range(k):
        path = f"{stem}.member{j}.keras"
        init = start.members[j] if isinstance(start, Committee) else start
        _, m = train_potential(structures, energies, path, forces=forces, seed=seed + j, split_seed=seed,
                               init_from=init, workdir=f"{workdir or os.fspath(out) + '.train'}.member{j}", **kwargs)
        write_json_atomic(m, f"{stem}.member{j}.metrics.json")
        paths.append(path)
        metrics.append(m)
    maes = [m["val"]["energy_mae_meV_per_atom"] for m in metrics]
    card = save_committee(stem + ".committee.json", paths, {
        "members": k, "seeds": [seed + j for j in range(k)], "split_seed": seed,
        "member_val_energy_mae_meV_per_atom": maes, **(kwargs.get("card") or {})})
    return card, metrics

