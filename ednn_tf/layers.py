"""Keras layers of the EDNN data path."""
from __future__ import annotations

import keras
import numpy as np

from . import tiling

__all__ = ["TileLayer"]


@keras.saving.register_keras_serializable(package="ednn_tf")
class TileLayer(keras.layers.Layer):
    """Cut a periodic grid into EDNN tiles, ``(batch, H, W, C) -> (batch, H/f, W/f, t, t, C)`` (3D alike,
    ``t = f + 2c``; see ``ednn_tf.tiling``): ``focus`` ``f`` (int >= 1) plus a ``context`` of ``c`` (int >= 0)
    grid points. With ``check_finite`` non-finite inputs raise ``ValueError`` eagerly (in a TF graph
    ``InvalidArgumentError`` from ``tf.debugging.check_numerics``; under other backends only concrete,
    not traced, inputs are checked).
    """

    def __init__(self, focus, context, check_finite=False, **kwargs):
        super().__init__(**kwargs)
        self.focus, self.context = tiling.check_focus_context(focus, context)
        self.check_finite = bool(check_finite)
        self.tile_size = self.focus + 2 * self.context

    def build(self, input_shape):
        tiling.validate_grid(input_shape, self.focus)
        self.built = True

    def call(self, inputs):
        if self.check_finite:
            inputs = self.check_values(inputs)
        return tiling.extract_tiles(inputs, self.focus, self.context)

    def check_values(self, inputs):
        """``inputs``, after raising ValueError for NaN/inf (eagerly; in a TF graph, ``check_numerics``)."""
        tf = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
        try:
            arr = np.asarray(keras.ops.convert_to_numpy(inputs)) if tf is None or tf.executing_eagerly() else None
        except Exception:  # a JAX tracer or symbolic tensor: no values to check
            arr = None
        if arr is not None:
            if not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise ValueError(f"input contains {bad} non-finite value(s) (NaN or inf)")
        elif tf is not None:
            inputs = tf.debugging.check_numerics(inputs, "TileLayer input contains NaN or inf")
        return inputs

    def compute_output_shape(self, input_shape):
        nd = tiling.validate_grid(input_shape, self.focus)
        grid = [None if s is None else s // self.focus for s in input_shape[1:-1]]
        return (input_shape[0], *grid, *([self.tile_size] * nd), input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "focus": self.focus, "context": self.context, "check_finite": self.check_finite}
