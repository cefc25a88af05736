"""Sub-networks from the paper (each a function of the tile size) and the plain-CNN baseline.

Every builder returns a functional ``keras.Model`` mapping one tile ``(t, t, C)`` to ``(1,)``
with a *linear* output (a ReLU there would clamp every tile's contribution to >= 0).
"""
from __future__ import annotations

import keras

from .util import check_choice, check_float, check_int, check_positive

__all__ = ["ising_dense", "paper_cnn", "plain_cnn", "PAPER_CNN_LAYERS", "INITIALIZERS"]

#: The paper's 13 convolutions as (filters, kernel, stride): 2 reducing 3x3/64/s2, 6 non-reducing
#: 4x4/16/s1, one reducing 3x3/64/s2, 4 non-reducing 3x3/32/s1 (Sec. 2.1).
PAPER_CNN_LAYERS = ((64, 3, 2),) * 2 + ((16, 4, 1),) * 6 + ((64, 3, 2),) + ((32, 3, 1),) * 4


def _check_tile(tile_size, channels, name="tile_size"):
    check_int(name, tile_size, minimum=1)
    check_int("channels", channels, minimum=1)


def ising_dense(tile_size: int, channels: int = 1, seed: int | None = None, name="ising_dense"):
    """The paper's Ising network: Dense ``32 t^2`` -> 64 -> 64 -> 1, ReLU between, linear output.

    ``t = f + 2c`` is the tile width (3 for f = c = 1: 288 -> 64 -> 64 -> 1, 25,601 weights).
    """
    _check_tile(tile_size, channels)
    init = lambda k: keras.initializers.GlorotUniform(seed=None if seed is None else seed + k)  # noqa: E731
    inp = keras.Input((tile_size, tile_size, channels), name="tile")
    h = keras.layers.Flatten()(inp)
    h = keras.layers.Dense(32 * tile_size ** 2, activation="relu", kernel_initializer=init(0))(h)
    h = keras.layers.Dense(64, activation="relu", kernel_initializer=init(1))(h)
    h = keras.layers.Dense(64, activation="relu", kernel_initializer=init(2))(h)
    out = keras.layers.Dense(1, kernel_initializer=init(3), name="tile_value")(h)
    return keras.Model(inp, out, name=name)


#: Kernel initialisers of the CNN builders. Through the 13 ReLU convolutions of the paper CNN
#: ``"glorot"`` (Keras' default, uniform) shrinks the signal ~2x per layer, so a fresh narrow network's
#: output barely depends on its input; ``"he"`` (normal, std sqrt(2 / fan_in)) preserves it (He et al. 2015).
INITIALIZERS = {"glorot": keras.initializers.GlorotUniform, "he": keras.initializers.HeNormal}


def _initializer(kind, seed):
    return INITIALIZERS[check_choice("initializer", kind, INITIALIZERS)](seed=seed)


def _cnn(input_shape, width=1.0, dense=1024, layers=PAPER_CNN_LAYERS, seed=None, name="paper_cnn",
         initializer="glorot"):
    check_float("width", width, minimum=0, strict=True)
    _initializer(initializer, None)  # validate before building
    init = lambda k: _initializer(initializer, None if seed is None else seed + k)  # noqa: E731
    inp = keras.Input(input_shape, name="tile")
    h = inp
    for k, (filters, kernel, stride) in enumerate(layers):
        h = keras.layers.Conv2D(max(1, int(round(filters * width))), kernel, strides=stride, padding="same",
                                activation="relu", kernel_initializer=init(k), name=f"conv{k + 1}")(h)
    h = keras.layers.Flatten()(h)
    n = len(layers)
    h = keras.layers.Dense(max(1, int(round(dense))), activation="relu", kernel_initializer=init(n), name="dense1")(h)
    out = keras.layers.Dense(1, kernel_initializer=init(n + 1), name="tile_value")(h)
    return keras.Model(inp, out, name=name)


def paper_cnn(tile_size: int, channels: int = 1, width: float = 1.0, dense: int = 1024, seed: int | None = None,
              name="paper_cnn", initializer: str = "glorot"):
    """The paper's DFT CNN on one ``t x t`` tile: 13 ReLU convolutions (``PAPER_CNN_LAYERS``), Dense
    ``dense`` (1024) with ReLU, Dense 1 linear. ``width`` scales every filter count (1.0 = paper),
    for the narrower CPU presets of the same shape. Three stride-2 layers reduce ``t`` by 8.
    ``initializer``: ``"glorot"`` or ``"he"`` (use it for narrow networks) for every kernel (see
    ``INITIALIZERS``); biases are 0.
    """
    _check_tile(tile_size, channels)
    return _cnn((tile_size, tile_size, channels), width, dense, seed=seed, name=name, initializer=initializer)


def plain_cnn(height: int, width_px: int | None = None, channels: int = 1, width: float = 1.0, dense: int = 1024,
              seed: int | None = None, name="plain_cnn", initializer: str = "glorot"):
    """The non-EDNN baseline: the same CNN applied to the whole ``height x width_px`` image at once
    (one output, no tiling, fixed input size), as in the paper's comparison (Fig. 5)."""
    width_px = height if width_px is None else width_px
    _check_tile(height, channels, "height")
    _check_tile(width_px, channels, "width_px")
    return _cnn((height, width_px, channels), width, dense, seed=seed, name=name, initializer=initializer)


def normalise_to_data(model, x, target: float = 1.0, batch_size: int = 256):
    """Data-dependent initialisation (LSUV-like, Mishkin & Matas 2016): layer by layer, in order,
    divide each kernel by the standard deviation of that layer's output on the sample ``x``, so that
    every layer's output, and the network's, has standard deviation ``target`` on real inputs.

    With zero biases and ReLU (positively homogeneous) activations this rescales each layer's output
    exactly; a fresh deep ReLU network fed sparse images (Gaussian atoms on an empty background) has
    an output that barely depends on its input, and MSE training can sit on the constant-prediction
    plateau for tens of epochs. Only kernels change, in place; ``model`` must be built and ``x`` a batch
    of its inputs (for an EDNN subnet: tiles, ``tiling.fold_tiles(tiling.extract_tiles(images, f, c),
    2)[0]``). Returns the list of ``(layer name, std before scaling)``.
    """
    import numpy as np

    x = np.asarray(x)
    if x.shape[1:] != tuple(model.input.shape[1:]):
        raise ValueError(f"x must be a batch of the model's inputs {tuple(model.input.shape[1:])}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains non-finite values")
    check_positive("target", target)
    out = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None or not layer.trainable:
            continue
        probe = keras.Model(model.input, layer.output)
        # direct (eager) calls: ``predict`` would trace a new function for every probe model
        outs = [keras.ops.convert_to_numpy(probe(x[i:i + batch_size], training=False))
                for i in range(0, len(x), batch_size)]
        std = float(np.std(np.concatenate(outs)))
        if not np.isfinite(std) or std == 0.0:
            raise ValueError(f"layer {layer.name!r} gives a constant output on x (std {std}): cannot normalise; "
                             "check the input scale or the initialiser")
        kernel.assign(kernel.numpy() * (float(target) / std))
        out.append((layer.name, std))
    return out


def he_initialise(model, seed, distribution="normal"):
    """Re-draw every kernel of ``model`` from He (std ``sqrt(2 / fan_in)``), in place; biases stay.

    Layer ``i`` of ``model.layers`` (counting every layer, kernel or not) draws from
    ``keras.initializers.HeNormal(seed=seed + i)`` (``distribution="normal"``) or ``HeUniform``
    (``"uniform"``); see ``INITIALIZERS`` for why. Returns ``model``.
    """
    inits = {"normal": keras.initializers.HeNormal, "uniform": keras.initializers.HeUniform}
    check_choice("distribution", distribution, inits)
    check_int("seed", seed)
    for i, layer in enumerate(model.layers):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            kernel.assign(inits[distribution](seed=int(seed) + i)(kernel.shape))
    return model


__all__ += ["normalise_to_data", "he_initialise"]


def density_dilations(context: int, max_dilation: int = 8):
    """Dilations of the 3x3 convolutions of :func:`energy_density`: 1, 2, 4, ... (at most
    ``max_dilation``) and a last one for the remainder, so that they sum to ``context`` (each 3x3
    layer of dilation ``d`` widens the window by ``2 d``)."""
    left, d, out = check_int("context", context, minimum=1), 1, []
    while left:
        out.append(min(d, left))
        left -= out[-1]
        d = min(2 * d, check_int("max_dilation", max_dilation, minimum=1))
    return tuple(out)


def energy_density(context: int, channels: int = 1, filters: int = 32, activation: str = "silu",
                   seed: int | None = None, name="energy_density", max_dilation: int = 8, dtype=None):
    """The f = 1 energy-density sub-network: fully convolutional, any input size.

    3x3 ``valid`` convolutions with the dilations of :func:`density_dilations` (their window is
    exactly the ``(2c+1)``-wide context of one pixel), ``filters`` channels, a smooth ``activation``
    (``silu``: forces are derivatives of the energy), then a linear 1x1 convolution to one value per
    pixel. On one ``(2c+1) x (2c+1)`` tile it returns ``(1, 1, 1)``: the tile value of an
    ``EDNN(focus=1, context=c)``; on a ``c``-padded image it returns every pixel's value in one pass
    (:class:`ednn_tf.model.DensityEDNN`). ``dtype``: the layers' dtype (default Keras' float32).
    """
    check_int("filters", filters, minimum=1)
    check_int("channels", channels, minimum=1)
    init = lambda k: keras.initializers.HeNormal(seed=None if seed is None else seed + k)  # noqa: E731
    inp = keras.Input((None, None, channels), name="image", dtype=dtype)
    h = inp
    for k, d in enumerate(density_dilations(context, max_dilation)):
        h = keras.layers.Conv2D(filters, 3, dilation_rate=d, padding="valid", activation=activation,
                                kernel_initializer=init(k), name=f"conv{k + 1}", dtype=dtype)(h)
    out = keras.layers.Conv2D(1, 1, kernel_initializer=init(99), name="density", dtype=dtype)(h)
    return keras.Model(inp, out, name=name)


__all__ += ["density_dilations", "energy_density"]
