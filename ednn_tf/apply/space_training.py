"""Training a potential with the ``"atoms"`` readout: the symmetries the grid lacks, learnt from data.

Every batch turns each structure by a random in-plane angle (positions, cell and force labels
together; the energy is invariant), mirrors it at random (y -> -y) and shifts it by a random
sub-pixel vector, all drawn from ``(seed, epoch, batch)`` (stateless, so a resumed run sees the same
stream), then renders it in the potential's space frame (:func:`ednn_tf.atoms.frames.space_frame`)
inside the training step. The loss is that of :class:`ednn_tf.apply.force_training.ForceTrainer`
(per-atom energy and in-plane force MSE in dimensionless units); :class:`SpaceTrainer` only changes
how the energy is computed. Batches group cells of similar size (rounded lengths) and pad the rest:
padding atoms are masked, and a smaller window is padded with empty space that no atom reads.

Invariance pairs (``SpaceBatches(pairs=True)``, ``SpaceTrainer(invariance_weight=w_I)``): every
structure of a batch appears twice, under two independent random isometries, and the loss adds

    w_I * [ MSE(e_i(T_1 s) - e_i(T_2 s)) / u_E^2 + w_F * MSE(F_i(T_1 s) T_1 - F_i(T_2 s) T_2) / u_F^2 ]

over the atoms ``i`` (the units and ``w_F`` of the label loss): each per-atom energy must not depend
on the orientation and sub-pixel position of the grid, and the forces must turn with the structure.
No label is needed for it; augmentation alone only asks for invariance as far as it lowers the label
error. Measured in docs/potentials.md ("Invariance pairs")."""
from __future__ import annotations

import math

import keras
import numpy as np

from ..atoms.frames import moved_frame, pack_frames, structure_frame
from .force_training import ForceTrainer, ShapeBatches

__all__ = ["random_isometry", "SpaceBatches", "SpaceTrainer"]


def random_isometry(rng, pitch):
    """``(T (2, 2), shift (2,))``: a uniform random rotation, a mirror (y -> -y) with probability 1/2
    and a shift uniform in ``[0, pitch)^2`` (A): ``r -> T r + shift``."""
    theta = rng.uniform(0.0, 2.0 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    T = np.array([[c, -s], [s, c]]) @ np.diag([1.0, -1.0 if rng.integers(2) else 1.0])
    return T, rng.uniform(0.0, pitch, 2)


class SpaceBatches(ShapeBatches):
    """``(x, y)`` batches for :class:`SpaceTrainer` (see the module docstring).

    ``x``: the arrays of :func:`ednn_tf.atoms.frames.pack_frames` (float32) and ``n_atoms`` (B,);
    ``y``: ``energy`` (B,) eV, the label minus the reference energies, and ``forces`` (B, N, 2) eV/A
    in the turned frame. ``augment``: random isometries (:func:`random_isometry`) from
    ``(seed, epoch, batch)``; without, the structures as they are. ``shard``: see ShapeBatches.
    ``pairs``: each batch holds its ``batch_size`` structures twice (rows ``b`` and ``b + B``), under
    two independent isometries; ``x["rot"]`` (2B, 2, 2) is each row's ``T`` (module docstring).
    """

    def __init__(self, potential, structures, energies=None, forces=None, batch_size=8, seed=0, shuffle=True,
                 augment=True, shard=(0, 1), pairs=False):
        if pairs and not augment:
            raise ValueError("pairs=True needs augment=True: without isometries both copies are the same")
        self.potential, self.items, self.pairs = potential, [], bool(pairs)
        for i, a in enumerate(structures):
            frame, w = structure_frame(potential, a)
            e = 0.0 if energies is None else float(energies[i]) - potential.reference_energy(a.numbers)
            f = np.zeros((len(a), 2)) if forces is None else np.asarray(forces[i], np.float64)[:, :2]
            self.items.append(dict(frame=frame, weights=w, energy=e, forces=f))
        keys = [tuple(np.round(np.linalg.norm(it["frame"].cell, axis=1)).astype(int)) + (len(it["forces"]) // 16,)
                for it in self.items]
        super().__init__(keys, batch_size, seed, shuffle, augment, shard)

    def _turned(self, item, rng):
        """The frame, forces and ``T`` of ``item`` after a random isometry (or as it is)."""
        if rng is None:
            return item["frame"], item["forces"], np.eye(2)
        T, shift = random_isometry(rng, self.potential.pitch)
        pot = self.potential
        frame = moved_frame(item["frame"], T, shift, pot.pitch, pot.ednn.context, pot.gamma)
        return frame, item["forces"] @ T.T, T

    def __getitem__(self, i):
        rows = [self.items[r] for r in self.batches[i]]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.augment else None
        rows = rows * 2 if self.pairs else rows
        turned = [self._turned(it, rng) for it in rows]
        x = pack_frames([t[0] for t in turned], [it["weights"] for it in rows])
        n = x["positions"].shape[1]
        forces = np.zeros((len(rows), n, 2), np.float32)
        for b, t in enumerate(turned):
            forces[b, :len(t[1])] = t[1]
        x = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in x.items()}
        x["n_atoms"] = x["mask"].sum(1).astype(np.float64)
        x["rot"] = np.stack([t[2] for t in turned]).astype(np.float32)
        return x, {"energy": np.array([it["energy"] for it in rows]), "forces": forces}

    def _signature(self):
        import tensorflow as tf

        C = self.items[0]["weights"].shape[1]
        f32, i32 = tf.float32, tf.int32
        x = {"positions": tf.TensorSpec((None, None, 2), f32), "cell": tf.TensorSpec((None, 2, 2), f32),
             "mask": tf.TensorSpec((None, None), f32), "idx": tf.TensorSpec((None, None), i32),
             "shift": tf.TensorSpec((None, None, 2), f32), "weights": tf.TensorSpec((None, None, C), f32),
             "origin": tf.TensorSpec((None, 2), i32), "shape": tf.TensorSpec((2,), i32),
             "n_atoms": tf.TensorSpec((None,), tf.float64), "rot": tf.TensorSpec((None, 2, 2), f32)}
        y = {"energy": tf.TensorSpec((None,), tf.float64), "forces": tf.TensorSpec((None, None, 2), f32)}
        return x, y


@keras.saving.register_keras_serializable(package="ednn_tf")
class SpaceTrainer(ForceTrainer):
    """:class:`ForceTrainer` on :class:`SpaceBatches`: the energy of each structure is the sum of its
    per-atom energies in the space frame (:func:`ednn_tf.atoms.space_tf.atom_energies`).
    ``invariance_weight`` ``w_I`` (dimensionless, default 0): the invariance term of the module
    docstring, for batches of ``SpaceBatches(pairs=True)``; logged then as ``atom_spread`` (meV, mean
    |e_i(T_1 s) - e_i(T_2 s)|) and ``turned_force`` (eV/A, mean |F_i(T_1 s) T_1 - F_i(T_2 s) T_2|)."""

    def __init__(self, potential, energy_weight=1.0, force_weight=1.0, energy_unit=1.0, force_unit=1.0, images=0,
                 invariance_weight=0.0, **kwargs):
        from ..util import check_float

        super().__init__(potential, energy_weight, force_weight, energy_unit, force_unit, images, **kwargs)
        self.invariance_weight = check_float("invariance_weight", invariance_weight, minimum=0.0)
        if self.invariance_weight > 0:
            self._trackers = self._trackers + [keras.metrics.Mean(name=n) for n in ("atom_spread", "turned_force")]

    def _energies(self, x, training=False):
        """Energies (B,) eV, in-plane forces (B, N, 2) eV/A and per-atom energies (B, N) eV."""
        import tensorflow as tf

        from ..atoms.space_tf import atom_energies
        from ..model import sum_tiles

        pos = tf.convert_to_tensor(x["positions"])
        strain = tf.zeros((tf.shape(pos)[0], 2, 2), pos.dtype)
        with tf.GradientTape() as tape:
            tape.watch(pos)
            e = atom_energies(self.potential, {**x, "positions": pos}, strain, training=training)
            energy = sum_tiles(tf.cast(e, tf.float64), axis=1)
        return energy, -tf.cast(tape.gradient(energy, pos), tf.float32), e

    def energy_and_forces(self, x, training=False):
        return self._energies(x, training)[:2]

    def _loss(self, x, y, training):
        import tensorflow as tf

        energy, forces, e = self._energies(x, training)
        loss, maes, batch = self._errors(energy, forces, x, y)
        if self.invariance_weight <= 0:
            return loss, maes, batch
        half = tf.shape(e)[0] // 2
        tf.debugging.assert_equal(x["n_atoms"][:half], x["n_atoms"][half:], message=(
            "invariance_weight > 0 needs batches of SpaceBatches(pairs=True): the two halves of this batch hold "
            "different structures"))
        mask = tf.cast(x["mask"][:half], tf.float64)
        de = tf.cast(e[:half] - e[half:], tf.float64) * mask
        back = tf.cast(tf.einsum("bni,bij->bnj", forces, x["rot"]), tf.float64)   # F T: the unturned frame
        df = (back[:half] - back[half:]) * mask[..., None]
        n = tf.reduce_sum(mask)
        loss += self.invariance_weight * (tf.reduce_sum(tf.square(de)) / n / self.energy_unit ** 2 + self.force_weight
                                          * tf.reduce_sum(tf.square(df)) / (2 * n) / self.force_unit ** 2)
        return loss, maes + (1e3 * tf.reduce_sum(tf.abs(de)) / n, tf.reduce_sum(tf.abs(df)) / (2 * n)), batch

    def get_config(self):
        return {**super().get_config(), "invariance_weight": self.invariance_weight}
