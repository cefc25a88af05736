"""Symmetrised inference: average a model over exact symmetries of a periodic grid.

A tiled EDNN is exactly invariant under periodic shifts by multiples of the focus ``f`` but not
under the ``f^d - 1`` shifts in between (the learned split of an atom's energy between the tiles it
straddles is never perfect). Averaging over all ``f^d`` offsets (a group modulo ``f``) gives the
stride-1 sliding-window EDNN (tiles at every pixel, each weighted ``1 / f^d``): exactly invariant
under every whole-pixel shift and still extensive; mirrors as well make it mirror invariant.
``stride`` > 1 averages over the offsets that are multiples of ``stride`` (``(f / stride)^d`` evaluations).

``symmetrised`` averages any model (e.g. a whole-image CNN, at the same inference cost). It helps only
where the operations are symmetries of the target: periodic whole-pixel translations always are;
``np.flip`` along an axis (a mirror plus a one-pixel translation) is for energies, not for a chiral
or vector quantity.
"""
from __future__ import annotations

import itertools

import numpy as np

from .util import check_int

__all__ = ["pixel_shifts", "mirror_sets", "symmetrised"]


def pixel_shifts(period, stride=1, ndim=2):
    """All shift tuples ``(s_1, ..., s_ndim)`` with ``s_i`` in ``range(0, period, stride)``. Raises
    ValueError unless the arguments are positive integers with ``period % stride == 0`` (a group)."""
    period, stride, ndim = (check_int(n, v, minimum=1) for n, v in (("period", period), ("stride", stride),
                                                                    ("ndim", ndim)))
    if period % stride:
        raise ValueError(f"stride must divide the period: stride {stride}, period {period}")
    return list(itertools.product(range(0, period, stride), repeat=ndim))


def mirror_sets(ndim=2, mirrors=True):
    """Sets of spatial axes (counted from 1, after the batch axis) to flip: all ``2^ndim``
    subsets with ``mirrors``, else only the identity ``()``."""
    if not mirrors:
        return [()]
    axes = range(1, int(ndim) + 1)
    return [tuple(c) for r in range(int(ndim) + 1) for c in itertools.combinations(axes, r)]


def symmetrised(predict, x, shifts, flips=((),), return_spread=False):
    """Float64 ``(B,)`` mean of ``predict(g(x))`` over ``g`` = (flip, then periodic shift), and with
    ``return_spread`` the ``(B,)`` standard deviation over them. ``predict`` maps a numpy batch ``(B,
    *spatial, C)`` to ``(B,)`` or ``(B, 1)``; ``shifts`` (``pixel_shifts``) has one entry per spatial
    axis, ``flips`` (``mirror_sets``) are tuples of spatial axes."""
    x = np.asarray(x)
    nd = x.ndim - 2
    if nd < 1:
        raise ValueError(f"x must be (batch, *spatial, channels), got shape {x.shape}")
    shifts = [tuple(int(v) for v in s) for s in shifts]
    if not shifts or any(len(s) != nd for s in shifts):
        raise ValueError(f"every shift needs {nd} entries (one per spatial axis), got {shifts[:3]}...")
    flips = [tuple(f) for f in flips]
    for f in flips:
        if any(a < 1 or a > nd for a in f):
            raise ValueError(f"flip axes must be spatial axes 1..{nd}, got {f}")
    # Welford's running mean and sum of squared deviations: E[p^2] - E[p]^2 would cancel
    # catastrophically for total energies (|E| ~ 1e3-1e6 eV) with a spread of meV.
    mean = np.zeros(len(x), np.float64)
    m2 = np.zeros(len(x), np.float64)
    count = 0
    spatial = tuple(range(1, nd + 1))
    for f in flips:
        xf = np.flip(x, axis=f) if f else x
        for s in shifts:
            p = np.asarray(predict(np.roll(xf, s, axis=spatial) if any(s) else xf), np.float64).reshape(len(x))
            count += 1
            delta = p - mean
            mean += delta / count
            m2 += delta * (p - mean)
    if return_spread:
        return mean, np.sqrt(np.maximum(m2 / count, 0.0))
    return mean
