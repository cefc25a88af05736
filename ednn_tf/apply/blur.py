"""Gaussian-blur obfuscation of EDNN tiles at inference time (Mills et al. 2019, Sec. 3.2.1, Fig. 6).

Does a trained EDNN rely on the *focus* of each tile and ignore the (double-counted) *context*?
Replace part of every tile by a blurred copy and see how much the predicted total moves, for two
masks of **equal pixel count**, both cut from one centre-outwards ordering of the tile pixels
(:func:`pixel_order`): :func:`edge_mask`, a band along the tile's outer edge (in the context), and
:func:`centre_mask`, a square in its centre (in the focus).

The blur is applied to the *whole periodic image* (:func:`gaussian_blur`), and tiles are cut from
the original and the blurred image with :func:`ednn_tf.tiling.extract_tiles`; a masked pixel takes
the blurred value, so it sees its real neighbours rather than a tile border. A Gaussian blur
preserves the image integral (total ``Z``): it obfuscates positions, not the amount of matter. A
mask with no pixels reproduces ``EDNN.predict_total`` (same tiles, same sub-network calls).
"""
from __future__ import annotations

import numpy as np

from ..util import check_int

__all__ = ["pixel_order", "centre_mask", "edge_mask", "band_area", "gaussian_blur", "blurred_tiles",
           "predict_with_blur"]


def pixel_order(tile_size: int) -> np.ndarray:
    """Flat (row-major) indices of the ``t x t`` tile pixels, from the centre outwards.

    Sort keys: Chebyshev distance from the tile centre ``((t-1)/2, (t-1)/2)`` (whole square rings
    in order), then Euclidean distance, then the flat index; a partial last ring thus fills from
    the middle of its sides (from its corners, read backwards). Returns an int64 permutation of
    ``range(t**2)``.
    """
    t = check_int("tile_size", tile_size, minimum=1)
    r = np.arange(t) - (t - 1) / 2.0
    di, dj = np.meshgrid(r, r, indexing="ij")
    cheb = np.maximum(np.abs(di), np.abs(dj)).ravel()
    eucl = np.hypot(di, dj).ravel()
    return np.lexsort((np.arange(t * t), eucl, cheb)).astype(np.int64)


def _ordered_mask(tile_size, area, outermost):
    """Boolean ``(t, t)`` mask of the first (or, if ``outermost``, the last) ``area`` pixels of :func:`pixel_order`."""
    t = check_int("tile_size", tile_size, minimum=1)
    area = check_int("area", area, minimum=0, maximum=t * t)
    order = pixel_order(t)
    m = np.zeros(t * t, dtype=bool)
    m[order[t * t - area:] if outermost else order[:area]] = True
    return m.reshape(t, t)


def centre_mask(tile_size: int, area: int) -> np.ndarray:
    """Boolean ``(t, t)`` mask of the ``area`` pixels nearest the tile centre (the central square for
    ``area = s**2``, ``s`` of the parity of ``t``)."""
    return _ordered_mask(tile_size, area, outermost=False)


def edge_mask(tile_size: int, area: int) -> np.ndarray:
    """Boolean ``(t, t)`` mask of the ``area`` pixels farthest from the tile centre (the ``w``-wide
    border band for ``area = band_area(t, w)``)."""
    return _ordered_mask(tile_size, area, outermost=True)


def band_area(tile_size: int, width: int) -> int:
    """Pixels in the ``width``-wide band along the border of a ``t x t`` tile: ``4 w (t - w)``
    (``t**2`` once ``2 w >= t``)."""
    t = check_int("tile_size", tile_size, minimum=1)
    w = min(check_int("width", width, minimum=0), (t + 1) // 2)
    return t * t - max(t - 2 * w, 0) ** 2


def gaussian_blur(images, sigma) -> np.ndarray:
    """Periodic Gaussian blur of a batch of images ``(B, H, W, C)`` along ``H`` and ``W`` only.

    ``sigma`` is the standard deviation in pixels, a number or ``(sigma_H, sigma_W)`` (pass
    ``sigma_angstrom / pixel_size`` for a physical width). The boundary wraps
    (``scipy.ndimage.gaussian_filter(mode="wrap")``, truncated at 4 sigma); ``sigma = 0`` returns an
    unchanged copy. Returns float32 (float64 input stays float64).
    """
    from scipy.ndimage import gaussian_filter

    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (batch, H, W, channels), got shape {x.shape}")
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (2,))
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"sigma must be finite and >= 0 (pixels), got {sigma!r}")
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    x = x.astype(dtype, copy=False)
    if not np.any(s > 0):
        return x.copy()
    return gaussian_filter(x, sigma=(0.0, float(s[0]), float(s[1]), 0.0), mode="wrap", truncate=4.0).astype(dtype)


def blurred_tiles(x, x_blurred, mask, focus: int, context: int):
    """Tiles of ``x`` with the ``mask`` pixels of every tile taken from ``x_blurred``.

    ``x`` and ``x_blurred`` are ``(B, H, W, C)``; ``mask`` is a boolean ``(t, t)`` array,
    ``t = focus + 2 context``. Returns the ``(B, H/f, W/f, t, t, C)`` float32 tile tensor
    (tiles cut by :func:`ednn_tf.tiling.extract_tiles`).
    """
    import tensorflow as tf

    from .. import tiling

    t = tiling.tile_size(focus, context)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (t, t):
        raise ValueError(f"mask must have shape ({t}, {t}) for focus={focus}, context={context}, got {mask.shape}")
    tiles = tiling.extract_tiles(tf.convert_to_tensor(x, tf.float32), focus, context)
    if not mask.any():
        return tiles
    tiles_b = tiling.extract_tiles(tf.convert_to_tensor(x_blurred, tf.float32), focus, context)
    m = tf.constant(mask[:, :, None])   # broadcasts over (B, nH, nW) and channels
    return tf.where(m, tiles_b, tiles)


def predict_with_blur(model, x, mask, sigma=None, x_blurred=None, batch_size: int = 32) -> np.ndarray:
    """Totals of a trained 2-D :class:`ednn_tf.EDNN` when the ``mask`` pixels of every tile are blurred.

    ``x``: ``(B, H, W, C)`` images (H, W multiples of the focus); ``mask``: boolean ``(t, t)``;
    ``sigma``: blur width in pixels (number or ``(sigma_H, sigma_W)``), ignored if ``x_blurred`` (a
    precomputed :func:`gaussian_blur` of ``x``, to reuse across masks) is given; ``batch_size``:
    images per sub-network call. Returns float64 ``(B,)`` totals, summed over tiles in float64.
    """
    from .. import tiling
    from ..model import sum_tiles

    x = np.asarray(x)
    tiling.validate_grid(x.shape, model.focus)
    if x.ndim != 4:
        raise ValueError(f"predict_with_blur handles 2-D images (B, H, W, C), got shape {x.shape}")
    mask = np.asarray(mask, dtype=bool)
    if x_blurred is None:
        if mask.any() and sigma is None:
            raise ValueError("give sigma (pixels) or a precomputed x_blurred")
        x_blurred = gaussian_blur(x, sigma) if mask.any() else x
    elif np.shape(x_blurred) != x.shape:
        raise ValueError(f"x_blurred has shape {np.shape(x_blurred)}, x has {x.shape}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    out = np.empty(len(x), dtype=np.float64)
    for lo in range(0, len(x), batch_size):
        tiles = blurred_tiles(x[lo:lo + batch_size], x_blurred[lo:lo + batch_size], mask, model.focus, model.context)
        contrib = np.asarray(model.tile_values(tiles))                  # (b, H/f, W/f)
        out[lo:lo + batch_size] = sum_tiles(contrib.reshape(len(contrib), -1), axis=1)
    return out
