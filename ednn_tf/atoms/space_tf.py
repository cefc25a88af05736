"""The space representation in TensorFlow: render a frame, run the density network, read the energy
out per atom; forces and stress by automatic differentiation (see :mod:`ednn_tf.atoms.frames`).

For a batch of packed frames (:func:`ednn_tf.atoms.frames.pack_frames`) and a homogeneous in-plane
strain ``eps`` (B, 2, 2) (zero for an evaluation; the derivative there gives the stress):

* every coordinate is deformed, ``r -> (1 + eps) r``, the atoms and the cell alike, and the rendered
  atoms are the periodic images ``r_idx + shift @ cell`` of the deformed atoms;
* the image is ``V(x_ab) = sum_j w_j exp(-|x_ab - r_j|^2 / 2 gamma^2)`` on the window's pixels
  ``x_ab = (a p, b p)`` (exact pitch p), as two batched matmuls of per-axis Gaussian profiles;
* the density network gives ``D`` on the window less its context (:meth:`DensityEDNN.density`);
* atom i gets ``e_i = scale * sum_ab B3(x_i / p - a) B3(y_i / p - b) D_ab``, the cubic B-spline
  (twice continuously differentiable, support 4 x 4 pixels, and a partition of unity on the grid:
  ``sum_a B3(t - a) = 1`` for every t), so E = sum_i e_i is exactly extensive and a smooth function
  of the positions and the cell.

Units: A, eV. Forces ``-dE/dr`` (eV/A), ``dE/deps`` (eV) whose symmetric part over the volume is the
stress.
"""
from __future__ import annotations

import tensorflow as tf

from ..model import sum_tiles

__all__ = ["bspline3", "deform", "rendered_positions", "render_window", "readout", "atom_energies",
           "SpaceEvaluator", "bf16_subnet", "PRECISIONS"]

#: Precisions of the density network's evaluation (``SpaceEvaluator``); the rendering, the readout
#: and the sums stay float32 / float64.
PRECISIONS = ("float32", "bfloat16")


def bspline3(t):
    """The cubic B-spline ``B3(t)``: ``2/3 - t^2 + |t|^3 / 2`` for ``|t| < 1``, ``(2 - |t|)^3 / 6`` for
    ``1 <= |t| < 2``, else 0 (C2, partition of unity over integer shifts)."""
    a = tf.abs(t)
    inner = 2.0 / 3.0 - a * a + 0.5 * a * a * a
    outer = tf.pow(tf.maximum(2.0 - a, 0.0), 3) / 6.0
    return tf.where(a < 1.0, inner, outer)


def deform(positions, cell, strain):
    """``positions`` (B, N, 2) and ``cell`` (B, 2, 2) (rows) under ``r -> (1 + strain) r``."""
    F = tf.eye(2, dtype=strain.dtype)[None] + strain
    return tf.linalg.matmul(positions, F, transpose_b=True), tf.linalg.matmul(cell, F, transpose_b=True)


def rendered_positions(positions, cell, idx, shift):
    """(B, M, 2) positions of the rendered atoms: ``positions[idx] + shift @ cell``."""
    return tf.gather(positions, idx, batch_dims=1) + tf.linalg.matmul(tf.cast(shift, positions.dtype), cell)


def _axis_grid(origin, n, pitch, dtype):
    """(B, n) coordinates of the pixels ``origin .. origin + n - 1`` along one axis (A)."""
    k = tf.range(n, dtype=tf.int32)[None, :] + origin[:, None]
    return tf.cast(k, dtype) * pitch


def render_window(positions, weights, origin, shape, pitch, gamma, dtype=tf.float32):
    """(B, nx, ny, C) images of rendered atoms ``positions`` (B, M, 2) with channel ``weights``
    (B, M, C) on pixels ``origin`` (B, 2) .. ``origin + shape - 1`` at ``pitch`` (A); ``dtype`` of the
    image (the profiles are formed in the positions' dtype)."""
    g = []
    for axis in (0, 1):
        d = _axis_grid(origin[:, axis], shape[axis], pitch, positions.dtype)[:, None, :] - positions[..., axis, None]
        g.append(tf.cast(tf.exp(-0.5 * tf.square(d / gamma)), dtype))
    W = tf.cast(weights, dtype)
    B, M, C = tf.shape(W)[0], tf.shape(W)[1], tf.shape(W)[2]
    A = tf.reshape(g[0][:, :, :, None] * W[:, :, None, :], (B, M, shape[0] * C))
    img = tf.linalg.matmul(A, g[1], transpose_a=True)                          # (B, nx*C, ny)
    return tf.transpose(tf.reshape(img, (B, shape[0], C, shape[1])), (0, 1, 3, 2))


def readout(density, positions, origin, pitch):
    """(B, N) per-atom values ``sum_ab B3(x/p - a) B3(y/p - b) density_ab`` of ``density`` (B, nx, ny)
    on pixels ``origin`` (B, 2) .. for atoms ``positions`` (B, N, 2); in the positions' dtype."""
    s = []
    for axis in (0, 1):
        k = _axis_grid(origin[:, axis], tf.shape(density)[axis + 1], 1.0, positions.dtype)
        s.append(bspline3(positions[..., axis, None] / pitch - k[:, None, :]))
    D = tf.cast(density, positions.dtype)
    return tf.reduce_sum(tf.linalg.matmul(s[0], D) * s[1], axis=-1)


def atom_energies(potential, batch, strain, training=False, subnet=None):
    """(B, N) network energies per atom (eV, without ``e0``; 0 for padding) of a packed ``batch``
    (:func:`ednn_tf.atoms.frames.pack_frames`, tensors) under ``strain`` (B, 2, 2); ``subnet``: another
    copy of the density network to run (e.g. :func:`bf16_subnet`), default the potential's own."""
    pos, cell = deform(batch["positions"], batch["cell"], strain)
    ednn, p, c = potential.ednn, float(potential.pitch), int(potential.ednn.context)
    img = render_window(rendered_positions(pos, cell, batch["idx"], batch["shift"]), batch["weights"],
                        batch["origin"], batch["shape"], p, potential.gamma, dtype=_input_dtype(ednn))
    density = ednn.density(img, training=training) if subnet is None else subnet(img, training=training)[..., 0]
    e = readout(density, pos, batch["origin"] + c, p)
    return tf.cast(potential.scale, e.dtype) * e * tf.cast(batch["mask"], e.dtype)


def bf16_subnet(subnet):
    """A copy of the density network under Keras' ``mixed_bfloat16`` policy (bfloat16 activations and
    products, float32 weights), the same weights; its output is cast back by the float64 readout."""
    import keras

    def clone(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return layer.__class__.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})

    copy = keras.models.clone_model(subnet, clone_function=clone)
    copy.set_weights(subnet.get_weights())
    return copy


def _input_dtype(ednn):
    dtype = getattr(ednn.subnet.inputs[0], "dtype", None) if getattr(ednn.subnet, "inputs", None) else None
    name = str(dtype).replace("tf.", "").replace("<dtype: '", "").replace("'>", "")
    return name if name in ("float16", "bfloat16", "float32", "float64") else "float32"


class SpaceEvaluator:
    """Energy, per-atom energies, forces and the strain derivative of packed frames, in one traced
    graph for any batch, atom count and window (dynamic shapes): the path of the calculator, batched
    prediction and evaluation alike.

    ``__call__(batch)`` returns numpy ``energy`` (B,) eV, ``energies`` (B, N) eV per atom, ``forces``
    (B, N, 2) eV/A and ``virial`` (B, 2, 2) = ``dE/deps`` eV (symmetrised), all without ``e0``.
    Positions and cells are float64 (large sheets keep their sub-pixel coordinates). ``derivatives=False``:
    energies only (forces and virial 0, no gradient pass). ``precision="bfloat16"``: the density
    network in bfloat16 (:func:`bf16_subnet`; its measured error and speed are in
    ``docs/performance.md``).
    """

    def __init__(self, potential, derivatives=True, precision="float32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.potential, self.derivatives = potential, bool(derivatives)
        self.subnet = bf16_subnet(potential.ednn.subnet) if precision == "bfloat16" else None
        C = len(potential.channels) if potential.channels else 1
        f64, i32 = tf.float64, tf.int32
        spec = {"positions": tf.TensorSpec((None, None, 2), f64), "cell": tf.TensorSpec((None, 2, 2), f64),
                "mask": tf.TensorSpec((None, None), f64), "idx": tf.TensorSpec((None, None), i32),
                "shift": tf.TensorSpec((None, None, 2), f64), "weights": tf.TensorSpec((None, None, C), tf.float32),
                "origin": tf.TensorSpec((None, 2), i32), "shape": tf.TensorSpec((2,), i32)}
        self._fn = tf.function(self._run, input_signature=[spec], autograph=False)

    def _run(self, batch):
        pos = batch["positions"]
        strain = tf.zeros((tf.shape(pos)[0], 2, 2), tf.float64)
        if not self.derivatives:
            e = atom_energies(self.potential, batch, strain, subnet=self.subnet)
            return sum_tiles(e, axis=1), e, tf.zeros_like(pos), strain
        with tf.GradientTape(persistent=False) as tape:
            tape.watch([pos, strain])
            e = atom_energies(self.potential, {**batch, "positions": pos}, strain, subnet=self.subnet)
            total = sum_tiles(e, axis=1)
        d_pos, d_strain = tape.gradient(total, [pos, strain])
        return total, e, -d_pos, 0.5 * (d_strain + tf.linalg.matrix_transpose(d_strain))

    def __call__(self, batch):
        names = ("energy", "energies", "forces", "virial")
        return {k: v.numpy() for k, v in zip(names, self._fn(batch))}
