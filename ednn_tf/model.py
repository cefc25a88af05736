"""The Extensive Deep Neural Network model."""
from __future__ import annotations

import keras
import numpy as np

from . import tiling
from .layers import TileLayer
from .util import check_choice, check_int, check_model_file

__all__ = ["EDNN", "DensityEDNN", "sum_tiles", "is_ednn", "load_ednn"]


def _sum_dtype():
    """float64 for the sum over tiles, except under JAX without ``jax_enable_x64`` (float32 there)."""
    if keras.backend.backend() == "jax":
        import jax
        if not jax.config.jax_enable_x64:
            return "float32"
    return "float64"


def sum_tiles(values, axis=None):
    """The one sum of per-tile values, formed in float64 (float32 under JAX without x64).

    ``values``: a numpy array (the result is numpy float64) or a backend tensor (the result is a
    tensor of the sum dtype). ``axis`` as for ``numpy.sum`` (default: every axis).
    """
    if isinstance(values, (np.ndarray, np.generic, list, tuple, float, int)):
        return np.asarray(values, dtype=np.float64).sum(axis=axis)
    return keras.ops.sum(keras.ops.cast(values, _sum_dtype()), axis=axis)


def _check_real_dtype(dtype):
    """The name of ``dtype`` (numpy or backend) if it is a float or integer type; ValueError naming it for
    bool, complex (whose imaginary part would be dropped), string and object data."""
    name = getattr(dtype, "name", None) or str(dtype)
    if not name.startswith(("float", "bfloat", "int", "uint")):
        raise ValueError(f"EDNN input must be real numbers (a float or integer dtype), got dtype {name}")
    return name


def _finite_samples(x, what):
    """``(x, ok)``: ``ok`` ``(B,)`` bool, True where sample ``b`` of the batch tensor ``x`` holds only finite
    numbers (None for an integer dtype: always finite). Under TensorFlow a False raises
    InvalidArgumentError ``"<what> holds NaN or inf in batch sample(s)"`` with their positions in the
    batch, eagerly and in a traced function, before anything computed from the returned ``x`` (so a
    training step stops before its update); XLA ignores assertions, so callers also turn those
    samples' results into NaN."""
    if "float" not in (getattr(x.dtype, "name", None) or str(x.dtype)):
        return x, None
    ok = keras.ops.all(keras.ops.isfinite(x), axis=tuple(range(1, len(x.shape))))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        check = tf.debugging.Assert(tf.reduce_all(ok), [f"{what} holds NaN or inf in batch sample(s)",
                                                        tf.where(~ok)[:, 0]])
        with tf.control_dependencies([check]):
            x = tf.identity(x)
    return x, ok


def is_ednn(obj) -> bool:
    """True for an ``EDNN`` (or a subclass)."""
    return isinstance(obj, EDNN)


def load_ednn(model):
    """An ``EDNN`` from an ``EDNN`` instance or the path of a ``.keras`` file (loaded uncompiled).

    Raises ValueError for a missing file, a file that is not a Keras archive of an EDNN, or an
    object that is not an EDNN (the message names what was received).
    """
    import os

    if isinstance(model, (str, os.PathLike)):
        path = check_model_file(model)   # missing, truncated
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for bad archives
            raise ValueError(f"could not load an EDNN from {path!r}: {type(exc).__name__}: {exc}") from exc
    if not is_ednn(model):
        raise ValueError(f"model must be an ednn_tf.EDNN or a path to one saved as .keras, got {type(model).__name__}")
    return model


@keras.saving.register_keras_serializable(package="ednn_tf")
class EDNN(keras.Model):
    """Extensive deep neural network (Mills et al., Chem. Sci. 2019); usage in the README.

    The periodic grid is cut into tiles (``TileLayer``), all tiles of the batch go through ``subnet``
    (a Keras model mapping one tile ``(t, t[, t], C)``, ``t = f + 2c``, to ``(1,)``) in one call, and
    the per-tile outputs are summed in float64 (``sum_tiles``). The loss is taken after the sum, so the
    subnet learns to discount the double-counted context itself; a trained model accepts any grid
    whose sizes are multiples of ``focus``. ``focus``, ``context``: ``f``, ``c`` in grid points;
    ``output_dtype``: dtype of the summed output; ``check_finite``: reject NaN/inf in every
    ``tile_contributions`` call (``TileLayer``; the Monte Carlo and streaming paths too).
    ``check_batches`` (default on: ``bench/finite_checks.py`` measures no cost above the noise, checked /
    unchecked 0.97-1.03 per training or predict batch on 2 CPU cores): a batch
    given to ``call`` (``predict``, ``evaluate``, ``fit``, ``model(x)``) with NaN or inf in a sample,
    or labels with NaN or inf (``fit``, ``evaluate``), raise InvalidArgumentError naming the samples;
    where assertions are ignored (XLA, other backends) such samples predict NaN and the loss is NaN.
    """

    def __init__(self, subnet, focus, context, output_dtype="float64", check_finite=False, check_batches=True,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(subnet, keras.layers.Layer):   # a keras.Model is a Layer too
            raise ValueError(f"subnet must be a Keras model or layer, got {type(subnet).__name__}")
        self.focus, self.context = tiling.check_focus_context(focus, context)
        self.tile_size = self.focus + 2 * self.context
        self.output_dtype = check_choice("output_dtype", output_dtype, ("float32", "float64"))
        self.check_finite = bool(check_finite)
        self.check_batches = bool(check_batches)
        self.tiler = TileLayer(self.focus, self.context, check_finite=self.check_finite, name="tiles",
                               dtype=self.dtype_policy)
        self.subnet = subnet
        self._check_subnet_input()

    def _check_subnet_input(self, channels=None, input_shape=None):
        """ValueError unless a functional sub-network's input fits the tiles (and has ``channels``, the
        last size of the EDNN's ``input_shape``, when given)."""
        shape = getattr(self.subnet, "input_shape", None) if hasattr(self.subnet, "inputs") else None
        if shape is None:
            return
        spatial = tuple(shape[1:-1])
        if any(s is not None and s != self.tile_size for s in spatial):
            raise ValueError(f"subnet expects tiles of shape {tuple(shape[1:])} but focus={self.focus}, "
                             f"context={self.context} give tiles {self.tile_size} wide")
        if channels is not None and shape[-1] is not None and shape[-1] != channels:
            raise ValueError(f"subnet expects {shape[-1]} channels, input has {channels} "
                             f"(input shape {tuple(input_shape or ())})")

    def build(self, input_shape):
        nd = tiling.validate_grid(input_shape, self.focus)
        tile_shape = (None,) + (self.tile_size,) * nd + (input_shape[-1],)
        self._check_subnet_input(input_shape[-1], input_shape)
        if not self.subnet.built:
            self.subnet.build(tile_shape)
        self.tiler.build(input_shape)
        self.built = True

    def tile_values(self, tiles, training=False):
        """Sub-network values of a stack of tiles: the one way into the sub-network.

        ``tiles`` is ``(*lead, t, t[, t], C)`` with any leading axes (``(N,)`` for a flat stack,
        ``(B, H/f, W/f)`` as cut by ``tiling.extract_tiles``); all tiles go through the
        sub-network in one call. Returns the values, shape ``lead``, in the compute dtype.
        """
        tiles = keras.ops.convert_to_tensor(tiles)
        nd = self._tile_rank(len(tiles.shape))
        folded, lead_shape = tiling.fold_tiles(tiles, len(tiles.shape) - nd - 2)
        out = self.subnet(folded, training=training)
        if any(s is not None and s != 1 for s in out.shape[1:]):
            hint = (": it returns one value per pixel; end it with Flatten() and Dense(1), or a global pooling"
                    if len(out.shape) > 2 else "")
            raise ValueError(f"subnet must output one number per tile, shape (N, 1); got output shape "
                             f"{tuple(out.shape)} for tiles of shape {tuple(folded.shape)}{hint}")
        return keras.ops.reshape(out, lead_shape)

    def _tile_rank(self, rank):
        """Spatial rank of one tile, from the sub-network's input (or the rank of a stack of tiles)."""
        if getattr(self.subnet, "inputs", None):
            return len(self.subnet.inputs[0].shape) - 2
        if rank not in (4, 5, 6, 8):
            raise ValueError(f"tiles must be (N, t, t, C), (N, t, t, t, C), (B, H/f, W/f, t, t, C) or "
                             f"(B, D/f, H/f, W/f, t, t, t, C); got rank {rank}")
        return {4: 2, 5: 3, 6: 2, 8: 3}[rank]

    def tile_contributions(self, inputs, training=False):
        """Per-tile outputs, ``(batch, H/f, W/f)`` (or ``(batch, D/f, H/f, W/f)``), float32; one subnet call."""
        return self.tile_values(self.tiler(inputs), training=training)

    def call(self, inputs, training=False):
        inputs = keras.ops.convert_to_tensor(inputs)
        _check_real_dtype(inputs.dtype)
        self._check_subnet_input(inputs.shape[-1], inputs.shape)   # e.g. a loaded model given other channels
        inputs, ok = _finite_samples(inputs, "EDNN input x") if self.check_batches else (inputs, None)
        contrib = self.tile_contributions(inputs, training=training)
        total = sum_tiles(contrib, axis=tuple(range(1, len(contrib.shape))))[:, None]
        if ok is not None:   # a NaN where the assertion is ignored (XLA)
            total = keras.ops.where(ok[:, None], total, float("nan"))
        return keras.ops.cast(total, self._result_dtype())

    def _result_dtype(self):
        return self.output_dtype if _sum_dtype() == "float64" else "float32"

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss; with ``check_batches`` NaN or inf in the labels ``y`` raise InvalidArgumentError
        (the loss is NaN where assertions are ignored)."""
        y, ok = _finite_samples(y, "labels y") if self.check_batches and keras.ops.is_tensor(y) else (y, None)
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        return loss if ok is None else keras.ops.where(keras.ops.all(ok), loss, float("nan"))

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict``; a numpy batch (or list) is checked first: a real dtype (ValueError for
        bool, str or complex data), a valid grid; an empty one gives an empty ``(0, 1)`` result."""
        if isinstance(x, (np.ndarray, list)):
            x = np.asarray(x)
            _check_real_dtype(x.dtype)
            tiling.validate_grid(x.shape, self.focus)
            if len(x) == 0:
                return np.zeros((0, 1), self._result_dtype())
        return super().predict(x, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    #: Most tile values (tiles x tile pixels x channels) ``predict_total`` and ``predict_symmetrised``
    #: cut per sub-network call: 2^20, 4 MB of float32 tiles (128 MB of the Ising dense net's widest
    #: layer, 32 values per tile pixel). A call's memory grows with the tiles it holds, and TensorFlow's
    #: oneDNN kernels keep per-shape buffers of that size after the call; a budget in configurations
    #: alone let 4096 8x8 lattices (262,144 c=3 tiles) hold 1.6 GB per layer (issue 15).
    max_call_elements = 1 << 20

    def predict_total(self, x, batch_size=32):
        """Totals for a numpy batch ``x``, float64 ``(batch,)`` accumulated in float64, ``batch_size``
        configurations per subnet call, fewer where their tiles would exceed ``max_call_elements``
        values (at least one configuration per call). Raises ValueError for a wrong rank, a size that
        is not a multiple of ``focus`` or non-finite values."""
        x = self._validated(x)
        return self._totals(x, check_int("batch_size", batch_size, minimum=1))

    def _validated(self, x):
        """``x`` as a numpy array after the checks of ``predict_total`` (rank, size, finite numbers)."""
        x = np.asarray(x)
        _check_real_dtype(x.dtype)
        tiling.validate_grid(x.shape, self.focus)
        floating = np.issubdtype(x.dtype, np.floating)
        if not np.issubdtype(x.dtype, np.number) or (floating and not np.all(np.isfinite(x))):
            raise ValueError(f"input must be finite numbers (dtype {x.dtype}); found NaN/inf or non-numeric data")
        return x

    def _totals(self, x, batch_size):
        """``predict_total`` without the checks (``x`` already validated)."""
        out = np.empty(len(x), dtype=np.float64)
        tiles = int(np.prod([n // self.focus for n in x.shape[1:-1]]))
        per_config = tiles * self.tile_size ** (x.ndim - 2) * x.shape[-1]   # tile values of one configuration
        batch_size = max(1, min(batch_size, int(self.max_call_elements) // max(1, per_config)))
        for lo in range(0, len(x), batch_size):
            contrib = self.tile_contributions(keras.ops.convert_to_tensor(x[lo:lo + batch_size], self.compute_dtype))
            c = keras.ops.convert_to_numpy(contrib)
            out[lo:lo + batch_size] = sum_tiles(c.reshape(len(c), -1), axis=1)
        return out

    def predict_symmetrised(self, x, stride=1, mirrors=False, batch_size=32, return_spread=False):
        """Totals averaged over the tiling offsets that are multiples of ``stride`` (which must divide
        ``focus``), and with ``mirrors`` over mirrors: float64 ``(batch,)``, at the cost of ``(f / stride)^d``
        (times ``2^d``) plain evaluations. ``stride=1`` is exactly shift invariant (``ednn_tf.symmetry``)."""
        from . import symmetry

        x = self._validated(x)   # once: rolls and flips keep a valid grid valid
        nd = x.ndim - 2
        shifts = symmetry.pixel_shifts(self.focus, stride, nd)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        return symmetry.symmetrised(lambda z: self._totals(z, batch_size), x, shifts,
                                    symmetry.mirror_sets(nd, mirrors), return_spread=return_spread)

    def get_config(self):
        config = super().get_config()
        config.update(subnet=keras.saving.serialize_keras_object(self.subnet), focus=self.focus, context=self.context,
                      output_dtype=self.output_dtype, check_finite=self.check_finite,
                      check_batches=self.check_batches)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        subnet = keras.saving.deserialize_keras_object(config.pop("subnet"), custom_objects=custom_objects)
        return cls(subnet=subnet, **config)


@keras.saving.register_keras_serializable(package="ednn_tf")
class DensityEDNN(EDNN):
    """The f = 1 EDNN as an energy density: ``E = sum over pixels p of g(window_c(p))``.

    ``subnet`` is fully convolutional (``networks.energy_density``): on one ``(2c+1)``-wide tile it
    gives that tile's value, so ``tile_values`` (the TileLayer path of :class:`EDNN`) is unchanged;
    ``tile_contributions`` and ``call`` instead run the sub-network once over the periodically
    ``c``-padded image, which gives all ``H x W`` window values at once and shares the work that
    overlapping windows have in common. Any grid size works (the focus is 1). 2D grids only.
    """

    def __init__(self, subnet, context, output_dtype="float64", check_finite=False, check_batches=True, **kwargs):
        kwargs.pop("focus", None)
        super().__init__(subnet, 1, context, output_dtype=output_dtype, check_finite=check_finite,
                         check_batches=check_batches, **kwargs)

    def tile_contributions(self, inputs, training=False):
        """Per-pixel values ``(batch, H, W)`` in the compute dtype, from one sub-network pass."""
        x = keras.ops.convert_to_tensor(inputs)
        if tiling.validate_grid(x.shape, 1) != 2:
            raise ValueError(f"DensityEDNN works on 2D grids (batch, H, W, C), got shape {tuple(x.shape)}")
        if self.check_finite:
            x = self.tiler.check_values(x)
        return self.density(tiling.periodic_pad(x, self.context), training=training)

    def density(self, padded, training=False):
        """Per-pixel values ``(batch, H - 2c, W - 2c)`` of an already padded block ``(batch, H, W, C)``
        (one sub-network pass, no padding added): the values of the pixels whose whole window lies
        inside the block, e.g. a crop of a periodic image cut with ``c`` pixels to spare on each side
        (:mod:`ednn_tf.apply.atom_mc`). Compute dtype."""
        return self.subnet(padded, training=training)[..., 0]

    def get_config(self):
        config = super().get_config()
        config.pop("focus")
        return config
