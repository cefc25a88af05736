"""Differentiable TensorFlow renderer (same conventions as :func:`ednn_tf.atoms.render.render`):
the forces of an EDNN potential are automatic derivatives through this function."""
from __future__ import annotations

import math

import numpy as np

from ..util import check_positive
from .cells import DEFAULT_GAMMA, atomic_numbers, cell_lengths, channel_weights, check_grid_shape

__all__ = ["render_tf", "render_batch_tf", "periodic_images"]

#: ``render_tf(cutoff=None)`` sums periodic images out to this many gammas
#: (contribution beyond it < exp(-50), i.e. none in float64).
_SMOOTH_RANGE = 10.0


def render_tf(positions, numbers, cell, shape=(256, 256), gamma=DEFAULT_GAMMA, cutoff=None, channels=None):
    """Differentiable TensorFlow version of :func:`ednn_tf.atoms.render.render` (same conventions and
    arguments ``numbers``, ``cell``, ``shape``, ``gamma`` [A], ``channels``); returns a tf.Tensor
    ``(nx, ny, C)`` (or ``(nx, ny, nz, C)``), ``[ix, iy, c]`` = row x.

    ``positions`` (N, 2|3) in A, a tensor or array; its float dtype (float32 default, float64
    allowed) is the output dtype, and gradients with respect to it work with ``tf.GradientTape``
    (cell, numbers and grid are constants). ``cutoff=None``: no truncation (smooth everywhere, images
    summed out to 10 gamma); a number: the same per-axis truncation as ``render``, agreeing to
    rounding error (either way to float32 tolerance at the default numpy cutoff). Dense per-axis
    profiles ``Gx`` (N, nx), ``Gy`` (N, ny) from minimum-image distances (plus further images when
    the range exceeds half the cell) give ``Gx^T diag(Z) Gy``: memory O(N (nx + ny)), time
    O(N nx ny), fine for up to a few thousand atoms.
    """
    import tensorflow as tf

    shape = check_grid_shape(shape)
    ndim = len(shape)
    gamma = check_positive("gamma", gamma)
    if cutoff is not None:
        cutoff = check_positive("cutoff", cutoff)
    lengths = cell_lengths(cell, ndim)
    pos, Z = _check_positions(positions, numbers, ndim)
    dtype = pos.dtype
    weights, _ = channel_weights(Z, channels)
    Wt = tf.constant(weights, dtype=dtype)  # (N, C)
    C = weights.shape[1]
    R = (cutoff if cutoff is not None else _SMOOTH_RANGE) * gamma
    G = [_profile(pos[:, a], float(lengths[a]), shape[a], gamma, R, cutoff) for a in range(ndim)]
    nx = shape[0]
    A = tf.reshape(G[0][:, :, None] * Wt[:, None, :], (-1, nx * C))  # (N, nx*C)
    if ndim == 2:
        B = G[1]
    else:
        B = tf.reshape(G[1][:, :, None] * G[2][:, None, :], (-1, shape[1] * shape[2]))
    img = tf.matmul(A, B, transpose_a=True)  # (nx*C, rest)
    img = tf.reshape(img, (nx, C) + shape[1:])
    perm = (0,) + tuple(range(2, ndim + 1)) + (1,)
    return tf.transpose(img, perm)


def _check_positions(positions, numbers, ndim):
    """(positions as a float tensor, atomic numbers), checked against each other and the grid."""
    import tensorflow as tf

    pos = tf.convert_to_tensor(positions)
    if not pos.dtype.is_floating:
        pos = tf.cast(pos, tf.float32)
    if pos.shape.rank != 2 or pos.shape[1] not in (2, 3):
        raise ValueError(f"positions must have shape (N, 2) or (N, 3), got {pos.shape}")
    if pos.shape[1] < ndim:
        raise ValueError(f"a {ndim}D grid needs (N, {ndim}) positions, got {pos.shape}")
    Z = atomic_numbers(np.asarray(numbers.numpy() if hasattr(numbers, "numpy") else numbers))
    if pos.shape[0] is not None and pos.shape[0] != Z.shape[0]:
        raise ValueError(f"positions has {pos.shape[0]} atoms but numbers has {Z.shape[0]} entries")
    if tf.executing_eagerly():
        p = pos.numpy()
        if not np.all(np.isfinite(p)):
            bad = np.argwhere(~np.isfinite(p))[0]
            raise ValueError(f"positions must be finite, got {p[bad[0]].tolist()!r} for atom {int(bad[0])}")
    return pos, Z


def render_batch_tf(positions, weights, lengths, shape, gamma=DEFAULT_GAMMA, cutoff=None, images=None):
    """A batch of 2D images ``(B, nx, ny, C)`` of structures of one grid ``shape``, differentiable
    with respect to ``positions`` (the renderer of force training; same conventions as
    :func:`render_tf`, to which each image is equal to float32 rounding).

    ``positions`` (B, N, 2) A; ``weights`` (B, N, C) per-atom channel weights (rows of
    ``cells.channel_weights``; an all-zero row is a padding atom: it adds nothing to the image and
    gets zero gradient); ``lengths`` (B, 2) cell lengths in A; ``shape`` ``(nx, ny)`` ints or an int
    tensor (one grid for the batch: cells of different lengths may share it, each with its own
    spacing ``L / n``); ``gamma`` A; ``cutoff`` as for :func:`render_tf`. ``images``: how many
    further periodic images to add on each side (a Python int; default the number needed for the
    shortest cell, 0 when every cell is longer than twice 10 gamma, here computed eagerly from
    ``lengths``). The work is two batched matmuls, O(B N nx ny C).
    """
    import tensorflow as tf

    gamma = check_positive("gamma", gamma)
    R = (check_positive("cutoff", cutoff) if cutoff is not None else _SMOOTH_RANGE) * gamma
    pos = tf.convert_to_tensor(positions)
    pos = pos if pos.dtype.is_floating else tf.cast(pos, tf.float32)
    W = tf.cast(weights, pos.dtype)
    L = tf.cast(lengths, pos.dtype)
    if images is None:
        images = periodic_images(float(np.min(np.asarray(lengths))), gamma, cutoff)
    G = [_profile(pos[..., a], L[:, a], shape[a], gamma, R, cutoff, images) for a in range(2)]
    B, N, C = tf.shape(W)[0], tf.shape(W)[1], tf.shape(W)[2]
    nx, ny = tf.shape(G[0])[2], tf.shape(G[1])[2]
    A = tf.reshape(G[0][:, :, :, None] * W[:, :, None, :], (B, N, nx * C))
    img = tf.matmul(A, G[1], transpose_a=True)  # (B, nx*C, ny)
    return tf.transpose(tf.reshape(img, (B, nx, C, ny)), (0, 1, 3, 2))


def periodic_images(length, gamma=DEFAULT_GAMMA, cutoff=None) -> int:
    """How many further periodic images on each side a cell axis of ``length`` (A) needs so that every
    Gaussian of width ``gamma`` (A) is summed out to ``cutoff`` gammas (None: the untruncated 10)."""
    R = (cutoff if cutoff is not None else _SMOOTH_RANGE) * gamma
    return int(math.floor(R / length + 0.5))


def _profile(coord, L, n, gamma, R, cutoff, images=None):
    """(..., N, n) periodic Gaussian profiles along one axis of length ``L`` (A; a float, or a tensor of
    the batch shape of ``coord`` (..., N) less its last axis): minimum image plus ``images`` further
    images on each side (default: those that can lie within ``R``); truncated at ``R`` when ``cutoff``
    is set."""
    import tensorflow as tf

    if isinstance(L, (int, float)):
        grid = tf.constant(np.arange(n) * (L / n), dtype=coord.dtype)
        K = int(math.floor(R / L + 0.5)) if images is None else images  # further images that can lie within R
    else:
        grid = tf.range(tf.cast(n, coord.dtype), dtype=coord.dtype) * (L / tf.cast(n, coord.dtype))[..., None]
        L, K = L[..., None, None], images
    d = grid[..., None, :] - coord[..., :, None]
    d = d - L * tf.stop_gradient(tf.round(d / L))  # minimum image, in [-L/2, L/2]
    total = None
    for m in range(-K, K + 1):
        dm = d + m * L if m else d
        g = tf.exp(-0.5 * tf.square(dm / gamma))
        if cutoff is not None:
            g = tf.where(tf.abs(dm) <= R, g, tf.zeros_like(g))
        total = g if total is None else total + g
    return total
