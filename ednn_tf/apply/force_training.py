"""Energy + force training of a :class:`~ednn_tf.potential.Potential` (issue 14).

The loss of a batch is

    L = w_E * MSE(dE / N_atoms) / u_E^2 + w_F * MSE(dF) / u_F^2

with ``dE`` the energy error (eV) of each structure, ``dF`` the error of every in-plane force
component (eV/A; padding atoms masked out), and the units ``u_E`` (eV/atom: the standard deviation
of the per-atom training residual after the reference energies) and ``u_F`` (eV/A: the RMS training
force component) that make both terms dimensionless, so ``w_E = w_F = 1`` weighs a typical energy
error like a typical force error. The default of ``train_potential`` and ``ednn-tf train`` is
``w_E = 1, w_F = 10``, from a measured scan (docs/potentials.md: 400 GFN1-xTB cells, 12 epochs): with
``w_F`` = 0, 0.1 or 1 the network stayed on the plateau of the mean energy (229.5 meV/atom on
validation, as energy-only training did), ``w_F`` = 10 reached 102.5 meV/atom and 1.56 eV/A, 100
reached 110 meV/atom and 0.66 eV/A. The forces are automatic derivatives: the images are rendered
inside the training step from the positions (:func:`ednn_tf.atoms.render_tf.render_batch_tf`), the
energy ``scale * EDNN(image)`` is differentiated with respect to them, and the optimiser step
differentiates that again (a gradient of a gradient).

Batching: group by grid, pad atoms. A batch holds structures of one grid shape (the image size the
network sees; the cells may differ in length, each rendered at its own spacing ``L / n``), and the
atoms are padded to the batch's largest count with weight-0, masked atoms. Grouping by grid keeps
every image unpadded (a padded image would see false neighbours across the padding: the periodic
wrap is the physics), while padding atoms costs only ``O(N_max nx)`` extra in the renderer.

A 2D model sees the xy projection: its z forces are 0, so only the x and y components enter the
loss; :func:`predict_energies_forces` returns (N, 3) forces with z = 0.
"""
from __future__ import annotations

import keras
import numpy as np

from ..atoms import cells
from ..atoms.frames import check_structures
from ..atoms.render_tf import periodic_images, render_batch_tf
from ..distributed_train import allreduce_gradients
from ..potential import Potential

__all__ = ["ShapeBatches", "StructureBatches", "ForceTrainer", "predict_energies_forces"]


class ShapeBatches:
    """Batches of items that share a grid shape, reshuffled every epoch from ``(seed, epoch)``;
    subclasses give ``__getitem__`` and ``_signature``. :meth:`dataset` serves them to ``model.fit``.
    ``shard=(rank, size)``: this Horovod rank's share, batches ``rank, rank + size, ...`` of the
    epoch's order, the same number on every rank (the last ``len % size`` batches are left out of
    that epoch), so that every rank runs the same number of steps."""

    def __init__(self, shapes, batch_size, seed=0, shuffle=True, augment=False, shard=(0, 1)):
        from ..util import check_int

        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.seed, self.shuffle, self.augment = seed, shuffle, bool(augment)
        size = check_int("shard size", shard[1], minimum=1)
        self.shard = (check_int("shard rank", shard[0], minimum=0, maximum=size - 1), size)
        self.groups = {}
        for i, shape in enumerate(shapes):
            self.groups.setdefault(tuple(shape), []).append(i)
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
        rank, size = self.shard
        if size > len(batches):
            raise ValueError(f"{len(batches)} batches cannot be shared by {size} ranks: use a smaller batch_size")
        self.batches = [batches[k] for k in order][:len(batches) // size * size][rank::size]

    def __len__(self):
        return len(self.batches)

    def flips(self, i):
        """``(flip_x, flip_y, swap)`` of batch ``i`` of this epoch (all 0 without ``augment``)."""
        if not self.augment:
            return 0, 0, 0
        return tuple(int(v) for v in np.random.default_rng([self.seed, self.epoch, i]).integers(0, 2, 3))

    def dataset(self):
        """The batches as a ``tf.data.Dataset`` with dynamic sizes (a ``PyDataset``'s shapes would be
        inferred from its first two batches); each pass is one epoch, and the dataset's ``set_epoch``
        lets ``training.fit`` continue the order on resume."""
        import tensorflow as tf

        def epoch():
            yield from (self[i] for i in range(len(self)))
            self.set_epoch(self.epoch + 1)

        ds = tf.data.Dataset.from_generator(epoch, output_signature=self._signature())
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(self)))
        ds.set_epoch = self.set_epoch
        return ds


class StructureBatches(ShapeBatches):
    """``(x, y)`` batches of structures for :class:`ForceTrainer`, grouped by the grid ``potential``
    gives each cell, atoms padded to the batch's largest count (see the module docstring).

    ``x``: ``positions`` (B, N, 2) A, wrapped into the cell; ``weights`` (B, N, C) channel weights
    (0 for padding); ``mask`` (B, N); ``lengths`` (B, 2) A; ``n_atoms`` (B,); ``grid`` (2,).
    ``y``: ``energy`` (B,) eV, the label minus the reference energies; ``forces`` (B, N, 2) eV/A
    (zeros without labels). ``augment``: batch ``i`` of an epoch is mirrored along x and/or y and/or
    reflected x <-> y (positions, cell, grid and forces together), drawn from ``(seed, epoch, i)``.
    ``shard``: see :class:`ShapeBatches`.
    """

    def __init__(self, potential, structures, energies=None, forces=None, batch_size=8, seed=0, shuffle=True,
                 augment=False, shard=(0, 1)):
        self.items = []
        check_structures(potential, structures, orthorhombic=True)
        for i, a in enumerate(structures):
            lengths = a.cell.lengths()[:2]
            shape, _ = potential.grid(lengths)
            w, _ = cells.channel_weights(cells.atomic_numbers(a.numbers), potential.channels)
            e = 0.0 if energies is None else float(energies[i]) - potential.reference_energy(a.numbers)
            f = np.zeros((len(a), 2)) if forces is None else np.asarray(forces[i], np.float64)[:, :2]
            self.items.append(dict(positions=np.mod(a.positions[:, :2], lengths), weights=w, lengths=lengths,
                                   grid=np.array(shape), energy=e, forces=f))
        super().__init__([it["grid"] for it in self.items], batch_size, seed, shuffle, augment, shard)

    @property
    def min_length(self):
        """The shortest cell length (A) of all structures (sets the renderer's periodic images)."""
        return float(min(it["lengths"].min() for it in self.items))

    def __getitem__(self, i):
        rows = [self.items[r] for r in self.batches[i]]
        n = max(len(it["positions"]) for it in rows)
        flip_x, flip_y, swap = self.flips(i)
        pos, w = np.zeros((len(rows), n, 2)), np.zeros((len(rows), n, rows[0]["weights"].shape[1]))
        frc, mask = np.zeros((len(rows), n, 2)), np.zeros((len(rows), n))
        for b, it in enumerate(rows):
            k = len(it["positions"])
            pos[b, :k], w[b, :k], frc[b, :k], mask[b, :k] = it["positions"], it["weights"], it["forces"], 1.0
        lengths, grid = np.stack([it["lengths"] for it in rows]), rows[0]["grid"].copy()
        for axis, flip in ((0, flip_x), (1, flip_y)):
            if flip:
                pos[:, :, axis] = np.mod(-pos[:, :, axis], lengths[:, None, axis])
                frc[:, :, axis] *= -1
        if swap:
            pos, frc, lengths, grid = pos[..., ::-1], frc[..., ::-1], lengths[:, ::-1], grid[::-1]
        x = {"positions": pos.astype(np.float32), "weights": w.astype(np.float32), "mask": mask.astype(np.float32),
             "lengths": np.ascontiguousarray(lengths, np.float32),
             "n_atoms": mask.sum(1), "grid": np.ascontiguousarray(grid, np.int32)}
        y = {"energy": np.array([it["energy"] for it in rows]), "forces": np.ascontiguousarray(frc, np.float32)}
        return x, y

    def _signature(self):
        import tensorflow as tf

        C = self.items[0]["weights"].shape[1]
        x = {"positions": tf.TensorSpec((None, None, 2), tf.float32),
             "weights": tf.TensorSpec((None, None, C), tf.float32), "mask": tf.TensorSpec((None, None), tf.float32),
             "lengths": tf.TensorSpec((None, 2), tf.float32), "n_atoms": tf.TensorSpec((None,), tf.float64),
             "grid": tf.TensorSpec((2,), tf.int32)}
        y = {"energy": tf.TensorSpec((None,), tf.float64), "forces": tf.TensorSpec((None, None, 2), tf.float32)}
        return x, y


@keras.saving.register_keras_serializable(package="ednn_tf")
class ForceTrainer(keras.Model):
    """Trains ``potential`` on energies and forces with ``model.fit`` on :class:`StructureBatches`
    (see the module docstring for the loss). ``energy_weight`` ``w_E`` and ``force_weight`` ``w_F``
    are dimensionless; ``energy_unit`` ``u_E`` (eV/atom) and ``force_unit`` ``u_F`` (eV/A) are the
    normalisers; ``images``: further periodic images in the renderer (``StructureBatches.min_length``
    decides; 0 for cells longer than 20 gamma). The weights are the potential's (the trainer adds
    none), so ``training.fit``'s backup and resume work on it, and its ``train_step`` averages the
    gradients over Horovod ranks: use ``distributed.make_distributed(trainer, replace_train_step=False)``.
    Logged: ``loss``, ``energy_mae`` (meV/atom), ``force_mae`` (eV/A, in-plane components).
    """

    def __init__(self, potential, energy_weight=1.0, force_weight=1.0, energy_unit=1.0, force_unit=1.0, images=0,
                 **kwargs):
        from ..util import check_float, check_int

        super().__init__(**kwargs)
        if not isinstance(potential, Potential):
            raise TypeError(f"ForceTrainer needs an ednn_tf Potential, got {type(potential).__name__}")
        self.potential = potential
        self.energy_weight = check_float("energy_weight", energy_weight, minimum=0.0)
        self.force_weight = check_float("force_weight", force_weight, minimum=0.0)
        if self.energy_weight + self.force_weight <= 0:
            raise ValueError(f"energy_weight and force_weight are both 0 (got {energy_weight!r}, {force_weight!r})")
        self.energy_unit = check_float("energy_unit", energy_unit, minimum=0.0, strict=True)
        self.force_unit = check_float("force_unit", force_unit, minimum=0.0, strict=True)
        self.images = check_int("images", images, minimum=0)
        self._trackers = [keras.metrics.Mean(name=n) for n in ("loss", "energy_mae", "force_mae")]
        self.built = True

    @property
    def metrics(self):
        return self._trackers

    def energy_and_forces(self, x, training=False):
        """Network energy (B,) eV (without the reference energies) and in-plane forces (B, N, 2) eV/A."""
        import tensorflow as tf

        pos, pot = tf.convert_to_tensor(x["positions"]), self.potential
        with tf.GradientTape() as tape:
            tape.watch(pos)
            img = render_batch_tf(pos, x["weights"], x["lengths"], x["grid"], pot.gamma, pot.cutoff, self.images)
            energy = pot(img, training=training)[:, 0]
        return energy, -tape.gradient(energy, pos)

    def call(self, x, training=False):
        return self.energy_and_forces(x, training)[0]

    def _loss(self, x, y, training):
        return self._errors(*self.energy_and_forces(x, training), x, y)

    def _errors(self, energy, forces, x, y):
        """``(loss, (energy MAE meV/atom, force MAE eV/A), batch size)`` of predicted ``energy`` (B,) and
        ``forces`` (B, N, 2) against the labels ``y`` (the module docstring's loss)."""
        import tensorflow as tf

        de = (energy - y["energy"]) / x["n_atoms"]
        mask = x["mask"][..., None]
        df = tf.cast((forces - y["forces"]) * mask, tf.float64)
        n_components = 2.0 * tf.cast(tf.reduce_sum(x["mask"]), tf.float64)
        loss = (self.energy_weight * tf.reduce_mean(tf.square(de)) / self.energy_unit ** 2
                + self.force_weight * tf.reduce_sum(tf.square(df)) / n_components / self.force_unit ** 2)
        maes = (1e3 * tf.reduce_mean(tf.abs(de)), tf.reduce_sum(tf.abs(df)) / n_components)
        return loss, maes, tf.shape(de)[0]

    def _update(self, loss, maes, batch):
        for tracker, value in zip(self._trackers, (loss,) + maes):
            tracker.update_state(value, sample_weight=batch)
        return {t.name: t.result() for t in self._trackers}

    def train_step(self, data):
        import tensorflow as tf

        x, y = data[:2]
        with tf.GradientTape() as tape:
            loss, maes, batch = self._loss(x, y, training=True)
        weights = self.trainable_weights
        grads = allreduce_gradients(tape.gradient(loss, weights))
        self.optimizer.apply_gradients(zip(grads, weights))
        return self._update(loss, maes, batch)

    def test_step(self, data):
        x, y = data[:2]
        loss, maes, batch = self._loss(x, y, training=False)
        return self._update(loss, maes, batch)

    def get_config(self):
        return {**super().get_config(), "potential": keras.saving.serialize_keras_object(self.potential),
                "energy_weight": self.energy_weight, "force_weight": self.force_weight,
                "energy_unit": self.energy_unit, "force_unit": self.force_unit, "images": self.images}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        pot = keras.saving.deserialize_keras_object(config["potential"], custom_objects=custom_objects)
        return cls(**{**config, "potential": pot})


def predict_energies_forces(potential, structures, batch_size=8):
    """Energies (eV, with the reference energies) and forces ((N_i, 3) eV/A, z = 0) of ``structures``,
    in batches of one grid (:class:`StructureBatches`): one traced graph for all, unlike the
    calculator's graph per structure; the ``"atoms"`` readout: :func:`ednn_tf.apply.space.predict_structures`)."""
    import tensorflow as tf

    if potential.readout == "atoms":
        from .space import predict_structures

        res = predict_structures(potential, structures, batch_size)
        return np.array([r["energy"] for r in res]), [r["forces"] for r in res]

    batches = StructureBatches(potential, structures, batch_size=batch_size, shuffle=False)
    trainer = ForceTrainer(potential, images=periodic_images(batches.min_length, potential.gamma, potential.cutoff))
    spec = batches._signature()[0]
    step = tf.function(trainer.energy_and_forces, input_signature=[spec], reduce_retracing=True)
    energies, forces = np.empty(len(structures)), [None] * len(structures)
    for i in range(len(batches)):
        x, _ = batches[i]
        e, f = step(x)
        for b, r in enumerate(batches.batches[i]):
            n = len(structures[r])
            energies[r] = float(e[b]) + potential.reference_energy(structures[r].numbers)
            forces[r] = np.concatenate([f[b, :n].numpy().astype(np.float64), np.zeros((n, 1))], axis=1)
    return energies, forces
