"""Training a potential with the ``"atoms"`` readout: the symmetries the grid lacks, learnt from data.

Every batch turns each structure by a random in-plane angle (positions, cell and force labels
together; the energy is invariant), mirrors it at random (y -> -y) and shifts it by a random
sub-pixel vector, all drawn from ``(seed, epoch, batch)`` (stateless, so a resumed run sees the same
stream), then renders it in the potential's space frame (:func:`ednn_tf.atoms.frames.space_frame`)
inside the training step. The loss is that of :class:`ednn_tf.apply.force_training.ForceTrainer`
(per-atom energy and in-plane force MSE in dimensionless units); :class:`SpaceTrainer` only changes
how the energy is computed. Batches group cells of similar size (rounded lengths) and pad the rest:
padding atoms are masked, and a smaller window is padded with empty space that no atom reads.
"""
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
    """

    def __init__(self, potential, structures, energies=None, forces=None, batch_size=8, seed=0, shuffle=True,
                 augment=True, shard=(0, 1)):
        self.potential, self.items = potential, []
        for i, a in enumerate(structures):
            frame, w = structure_frame(potential, a)
            e = 0.0 if energies is None else float(energies[i]) - potential.reference_energy(a.numbers)
            f = np.zeros((len(a), 2)) if forces is None else np.asarray(forces[i], np.float64)[:, :2]
            self.items.append(dict(frame=frame, weights=w, energy=e, forces=f))
        keys = [tuple(np.round(np.linalg.norm(it["frame"].cell, axis=1)).astype(int)) + (len(it["forces"]) // 16,)
                for it in self.items]
        super().__init__(keys, batch_size, seed, shuffle, augment, shard)

    def _turned(self, item, rng):
        """The frame and forces of ``item`` after a random isometry (or as they are)."""
        if rng is None:
            return item["frame"], item["forces"]
        T, shift = random_isometry(rng, self.potential.pitch)
        pot = self.potential
        return moved_frame(item["frame"], T, shift, pot.pitch, pot.ednn.context, pot.gamma), item["forces"] @ T.T

    def __getitem__(self, i):
        rows = [self.items[r] for r in self.batches[i]]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.augment else None
        turned = [self._turned(it, rng) for it in rows]
        x = pack_frames([t[0] for t in turned], [it["weights"] for it in rows])
        n = x["positions"].shape[1]
        forces = np.zeros((len(rows), n, 2), np.float32)
        for b, t in enumerate(turned):
            forces[b, :len(t[1])] = t[1]
        x = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in x.items()}
        x["n_atoms"] = x["mask"].sum(1).astype(np.float64)
        return x, {"energy": np.array([it["energy"] for it in rows]), "forces": forces}

    def _signature(self):
        import tensorflow as tf

        C = self.items[0]["weights"].shape[1]
        f32, i32 = tf.float32, tf.int32
        x = {"positions": tf.TensorSpec((None, None, 2), f32), "cell": tf.TensorSpec((None, 2, 2), f32),
             "mask": tf.TensorSpec((None, None), f32), "idx": tf.TensorSpec((None, None), i32),
             "shift": tf.TensorSpec((None, None, 2), f32), "weights": tf.TensorSpec((None, None, C), f32),
             "origin": tf.TensorSpec((None, 2), i32), "shape": tf.TensorSpec((2,), i32),
             "n_atoms": tf.TensorSpec((None,), tf.float64)}
        y = {"energy": tf.TensorSpec((None,), tf.float64), "forces": tf.TensorSpec((None, None, 2), f32)}
        return x, y


@keras.saving.register_keras_serializable(package="ednn_tf")
class SpaceTrainer(ForceTrainer):
    """:class:`ForceTrainer` on :class:`SpaceBatches`: the energy of each structure is the sum of its
    per-atom energies in the space frame (:func:`ednn_tf.atoms.space_tf.atom_energies`)."""

    def energy_and_forces(self, x, training=False):
        import tensorflow as tf

        from ..atoms.space_tf import atom_energies
        from ..model import sum_tiles

        pos = tf.convert_to_tensor(x["positions"])
        strain = tf.zeros((tf.shape(pos)[0], 2, 2), pos.dtype)
        with tf.GradientTape() as tape:
            tape.watch(pos)
            e = atom_energies(self.potential, {**x, "positions": pos}, strain, training=training)
            energy = sum_tiles(tf.cast(e, tf.float64), axis=1)
        return energy, -tf.cast(tape.gradient(energy, pos), tf.float32)
