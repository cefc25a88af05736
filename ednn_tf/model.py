"""The Extensive Deep Neural Network model."""
from __future__ import annotations

import keras
import numpy as np

from . import tiling
from .layers import TileLayer

__all__ = ["EDNN"]


def _sum_dtype():
    """float64 for the sum over tiles, except under JAX without ``jax_enable_x64`` (float32 there)."""
    if keras.backend.backend() == "jax":
        import jax
        if not jax.config.jax_enable_x64:
            return "float32"
    return "float64"


def _batch_size(batch_size):
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


@keras.saving.register_keras_serializable(package="ednn_tf")
class EDNN(keras.Model):
    """Extensive deep neural network (Mills et al., Chem. Sci. 2019).

    The periodic input grid is cut into tiles (``TileLayer``), all tiles of the batch are folded
    into the batch axis and passed through ``subnet`` in one call, and the per-tile outputs are
    summed in float64. Train with ``model.fit`` on ``(grid, total)`` pairs: the loss is taken
    after the sum, so the subnet learns to discount the double-counted context by itself.
    A trained model accepts any input whose spatial sizes are multiples of ``focus``.

    Args:
        subnet: a Keras model mapping one tile ``(t, t[, t], C)`` to ``(1,)``, ``t = f + 2c``.
        focus: focus width ``f`` in grid points.
        context: context width ``c`` in grid points.
        output_dtype: dtype of the summed output (the sum itself is always formed in float64).
        check_finite: reject NaN/inf inputs (see ``TileLayer``).

    Example::

        subnet = ednn_tf.networks.ising_dense(ednn_tf.tile_size(1, 1))
        model = ednn_tf.EDNN(subnet, focus=1, context=1)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
        model.fit(spins, energies, batch_size=2000, epochs=500)
        model.predict(big_spins)              # (batch, 1) totals for any L multiple of f
        model.tile_contributions(big_spins)   # (batch, L/f, L/f) per-tile terms
    """

    def __init__(self, subnet, focus, context, output_dtype="float64", check_finite=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(subnet, keras.Model) and not isinstance(subnet, keras.layers.Layer):
            raise ValueError(f"subnet must be a Keras model or layer, got {type(subnet).__name__}")
        self.focus, self.context = tiling.check_focus_context(focus, context)
        self.tile_size = self.focus + 2 * self.context
        if output_dtype not in ("float32", "float64"):
            raise ValueError(f"output_dtype must be 'float32' or 'float64', got {output_dtype!r}")
        self.output_dtype = output_dtype
        self.check_finite = bool(check_finite)
        self.tiler = TileLayer(self.focus, self.context, check_finite=self.check_finite, name="tiles",
                               dtype=self.dtype_policy)
        self.subnet = subnet
        self._check_subnet_input(getattr(subnet, "input_shape", None) if hasattr(subnet, "inputs") else None)

    # ----------------------------------------------------------------------------------------
    def _check_subnet_input(self, shape, channels=None):
        if shape is None:
            return
        spatial = tuple(shape[1:-1])
        if any(s is not None and s != self.tile_size for s in spatial):
            raise ValueError(
                f"subnet expects tiles of shape {tuple(shape[1:])} but focus={self.focus}, "
                f"context={self.context} give tiles {self.tile_size} wide")
        if channels is not None and shape[-1] is not None and shape[-1] != channels:
            raise ValueError(f"subnet expects {shape[-1]} channels, input has {channels}")

    def build(self, input_shape):
        nd = tiling.validate_grid(input_shape, self.focus)
        tile_shape = (None,) + (self.tile_size,) * nd + (input_shape[-1],)
        if hasattr(self.subnet, "inputs"):
            self._check_subnet_input(self.subnet.input_shape, input_shape[-1])
        if not self.subnet.built:
            self.subnet.build(tile_shape)
        self.tiler.build(input_shape)
        self.built = True

    def tile_contributions(self, inputs, training=False):
        """Per-tile outputs, ``(batch, H/f, W/f)`` (or ``(batch, D/f, H/f, W/f)``), float32.

        The subnet runs once on all tiles of the batch (tiles folded into the batch axis).
        """
        tiles = self.tiler(inputs)
        nd = (len(tiles.shape) - 2) // 2  # tiles are (B, *grid, *tile, C): rank 2 + 2*nd
        folded, grid_shape = tiling.fold_tiles(tiles, nd)
        out = self.subnet(folded, training=training)
        if len(out.shape) > 1 and out.shape[-1] not in (None, 1):
            raise ValueError(f"subnet must output one number per tile, got output shape {tuple(out.shape)}")
        return keras.ops.reshape(out, grid_shape)

    def call(self, inputs, training=False):
        contrib = self.tile_contributions(inputs, training=training)
        axes = tuple(range(1, len(contrib.shape)))
        dtype = _sum_dtype()
        total = keras.ops.sum(keras.ops.cast(contrib, dtype), axis=axes)[:, None]
        return keras.ops.cast(total, self.output_dtype if dtype == "float64" else dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    # ----------------------------------------------------------------------------------------
    def predict_total(self, x, batch_size=32):
        """Totals for a numpy batch ``x``, as float64 ``(batch,)``, validated and accumulated in float64.

        Raises ValueError for a wrong rank, a size that is not a multiple of ``focus`` or
        non-finite values (each message names the value received). Evaluates ``batch_size``
        configurations per subnet call.
        """
        x = self._validated(x)
        return self._totals(x, _batch_size(batch_size))

    def _validated(self, x):
        """``x`` as a numpy array after the checks of ``predict_total`` (rank, size, finite numbers)."""
        x = np.asarray(x)
        tiling.validate_grid(x.shape, self.focus)
        if not np.issubdtype(x.dtype, np.number) or (np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x))):
            raise ValueError(f"input must be finite numbers (dtype {x.dtype}); found NaN/inf or non-numeric data")
        return x

    def _totals(self, x, batch_size):
        """``predict_total`` without the checks (``x`` already validated)."""
        out = np.empty(len(x), dtype=np.float64)
        for lo in range(0, len(x), batch_size):
            contrib = self.tile_contributions(keras.ops.convert_to_tensor(x[lo:lo + batch_size], self.compute_dtype))
            c = np.asarray(keras.ops.convert_to_numpy(contrib), dtype=np.float64)
            out[lo:lo + batch_size] = c.reshape(len(c), -1).sum(axis=1)
        return out

    def predict_symmetrised(self, x, stride=1, mirrors=False, batch_size=32, return_spread=False):
        """Totals averaged over the tiling offsets (and optionally mirrors): float64 ``(batch,)``.

        With ``stride=1`` the average runs over all ``f^d`` offsets of the tiling, which makes the
        prediction exactly invariant under every whole-pixel periodic shift (the plain EDNN is
        invariant only under multiples of ``f``) and keeps it extensive. ``stride`` must divide
        ``focus``; the cost is ``(f / stride)^d`` (times ``2^d`` with ``mirrors``) plain
        evaluations. Mirrors are a symmetry of energies, not of every target: see
        ``ednn_tf.symmetry``.
        """
        from . import symmetry

        x = self._validated(x)   # once: rolls and flips keep a valid grid valid
        nd = x.ndim - 2
        shifts = symmetry.pixel_shifts(self.focus, stride, nd)
        batch_size = _batch_size(batch_size)
        return symmetry.symmetrised(lambda z: self._totals(z, batch_size), x, shifts,
                                    symmetry.mirror_sets(nd, mirrors), return_spread=return_spread)

    def get_config(self):
        config = super().get_config()
        config.update(
            subnet=keras.saving.serialize_keras_object(self.subnet),
            focus=self.focus,
            context=self.context,
            output_dtype=self.output_dtype,
            check_finite=self.check_finite,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        subnet = keras.saving.deserialize_keras_object(config.pop("subnet"), custom_objects=custom_objects)
        return cls(subnet=subnet, **config)
