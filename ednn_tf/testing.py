"""Reusable physics checks for EDNN models and sub-networks (public API, used by our own tests).

Each ``assert_*`` function raises ``AssertionError`` with the numbers involved when a property
fails, so users can run the same checks on their own sub-networks::

    from ednn_tf import testing
    testing.assert_tiles_sum_to_total(model, x)
    testing.assert_shift_invariant(model, x)          # periodic rolls by multiples of f
    testing.assert_supercell_extensive(model, x, ks=(1, 2, 4))

Tolerances are relative to the magnitude of the totals and default to float32 accuracy.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

__all__ = ["IsingTileEnergy", "exact_ising_subnet", "assert_tiles_sum_to_total", "assert_shift_invariant",
           "assert_supercell_extensive", "DEFAULT_RTOL"]

#: relative tolerance of float32 network arithmetic summed over many tiles
DEFAULT_RTOL = {"float32": 2e-5, "float64": 1e-10}


@keras.saving.register_keras_serializable(package="ednn_tf")
class IsingTileEnergy(keras.layers.Layer):
    """Exact nearest-neighbour Ising energy of the focus of a ``(f+2c)``-wide tile (c >= 1).

    For each focus site the bonds to its right and lower neighbours, ``-J s_i (s_right + s_down)``, so
    the sum over all tiles of a periodic lattice is exactly ``H = -J sum_<ij> s_i s_j`` (a local operator
    to check tiling end to end). Input ``(n, t, t, 1)``, output ``(n, 1)``.
    """

    def __init__(self, focus=1, context=1, J=1.0, **kwargs):
        super().__init__(**kwargs)
        if context < 1:
            raise ValueError(f"IsingTileEnergy needs context >= 1, got context={context}")
        self.focus, self.context, self.J = int(focus), int(context), float(J)

    def call(self, tiles):
        f, c = self.focus, self.context
        s = tiles[:, c:c + f, c:c + f, 0]
        right = tiles[:, c:c + f, c + 1:c + f + 1, 0]
        down = tiles[:, c + 1:c + f + 1, c:c + f, 0]
        e = -self.J * tf.reduce_sum(s * (right + down), axis=[1, 2])
        return e[:, None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "focus": self.focus, "context": self.context, "J": self.J}


def exact_ising_subnet(focus=1, context=1, J=1.0, dtype="float32"):
    """A parameter-free sub-network computing the exact Ising energy of each tile's focus."""
    t = focus + 2 * context
    inp = keras.Input((t, t, 1), dtype=dtype)
    return keras.Model(inp, IsingTileEnergy(focus, context, J, dtype=dtype)(inp), name="exact_ising")


def _rtol(model, rtol):
    return rtol if rtol is not None else DEFAULT_RTOL.get(getattr(model, "compute_dtype", "float32"), 2e-5)


def _close(a, b, rtol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.max(np.abs(b))))
    err = float(np.max(np.abs(a - b)))
    if not err <= rtol * scale:
        raise AssertionError(f"{what}: max |difference| = {err:.3e} > rtol*scale = {rtol * scale:.3e}\n"
                             f"  got      {a.ravel()[:6]}\n  expected {b.ravel()[:6]}")


def assert_tiles_sum_to_total(model, x, rtol=None):
    """The model's total equals the float64 sum of its per-tile contributions."""
    contrib = np.asarray(model.tile_contributions(x), np.float64)
    total = np.asarray(model(x), np.float64).reshape(-1)
    _close(total, contrib.reshape(len(contrib), -1).sum(axis=1), _rtol(model, rtol), "total vs sum of tiles")


def assert_shift_invariant(model, x, shifts=None, rtol=None, seed=0):
    """Periodic rolls of the input by multiples of ``focus`` leave the total unchanged (the same tiles,
    permuted: exact up to summation order)."""
    x = np.asarray(x)
    nd = x.ndim - 2
    f = model.focus
    rng = np.random.default_rng(seed)
    if shifts is None:
        shifts = [tuple(int(f * rng.integers(0, n // f)) for n in x.shape[1:-1]) for _ in range(3)]
    ref = np.asarray(model(x), np.float64)
    for sh in shifts:
        if any(s % f for s in sh):
            raise ValueError(f"shift {sh} is not a multiple of focus={f}")
        rolled = np.roll(x, shift=sh, axis=tuple(range(1, nd + 1)))
        _close(np.asarray(model(rolled), np.float64), ref, _rtol(model, rtol), f"roll by {sh}")


def assert_supercell_extensive(model, x, ks=(1, 2, 4), rtol=None):
    """``E(k x k [x k] periodic repetition of x) == k^nd E(x)`` for each ``k``."""
    x = np.asarray(x)
    nd = x.ndim - 2
    ref = np.asarray(model(x), np.float64)
    for k in ks:
        big = np.tile(x, (1,) + (k,) * nd + (1,))
        _close(np.asarray(model(big), np.float64), k ** nd * ref, _rtol(model, rtol), f"supercell k={k}")
