"""Render atomic structures as images (numpy): eqn (2) of Mills et al., Chem. Sci. 2019, on the
periodic grid of one orthorhombic cell (grid, axis, channel and truncation conventions:
:mod:`ednn_tf.atoms.cells`; differentiable TensorFlow version: :mod:`ednn_tf.atoms.render_tf`; structure
files: :mod:`ednn_tf.atoms.io`).

The kernel is separable, so the image is ``Gx^T diag(w) Gy``, row i of ``Gx`` (``N x nx``) being atom
i's 1D Gaussian profile along x (non-zero on a window of ``W ~ 2 cutoff gamma / h`` pixels).
``method="dense"`` forms that matrix product directly; ``method="tiled"`` sorts atoms into square pixel
tiles, forms each tile's small product with a batched matmul and adds the overlapping tile results into
the image: O(N (T + W)^2 + pixels) with tile size T ~ W, independent of N * pixels. ``method="auto"``
picks dense while ``N * nx * ny <= 6e7``. Timings: ``bench/render.py``; the small case is one BLAS
matmul, so set ``OPENBLAS_NUM_THREADS=1`` in data-generation workers on a loaded CPU for stable latency
(pass ``out=`` to reuse a large output array).
"""
from __future__ import annotations

import math
from numbers import Integral
from types import SimpleNamespace

import numpy as np

from ..util import check_choice, check_positive

from .cells import (DEFAULT_CUTOFF, DEFAULT_GAMMA, PAPER_PIXEL_SIZE, atomic_numbers, cell_lengths,  # noqa: F401
                    channel_weights, check_grid_shape, grid_coordinates, parse_structure, shape_for_cell,
                    truncation_error)

__all__ = ["render", "render_many", "DEFAULT_GAMMA", "DEFAULT_CUTOFF", "PAPER_PIXEL_SIZE", "shape_for_cell",
           "grid_coordinates", "cell_lengths", "truncation_error", "atomic_numbers", "channel_weights",
           "check_grid_shape"]


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _axis_profiles(coord, L, n, gamma, R):
    """Windowed 1D Gaussian profiles along one axis: ``start`` (N,) int64 in [0, n) and ``vals`` (N, W)
    float64, pixel ``(start + j) % n`` receiving ``vals[:, j]``. All periodic images with
    ``|k h - x - m L| <= R`` are covered (the window may wrap more than once if ``W > n``); values
    beyond ``R`` are exactly 0."""
    h = L / n
    x = np.mod(coord, L)
    W = int(math.floor(2.0 * R / h)) + 1
    k0 = np.ceil((x - R) / h).astype(np.int64)
    d = (k0[:, None] + np.arange(W, dtype=np.int64)[None, :]) * h - x[:, None]
    vals = np.exp(-0.5 * (d / gamma) ** 2)
    vals[np.abs(d) > R] = 0.0
    return np.mod(k0, n), vals


def _dense_matrix(start, vals, n, dtype):
    """(N, n) profile matrix from windowed profiles (wrapping folded mod n)."""
    N, W = vals.shape
    m = -(-(n + W - 1) // n)
    G = np.zeros((N, m * n), dtype=np.float64)
    cols = start[:, None] + np.arange(W)[None, :]
    G[np.arange(N)[:, None], cols] = vals
    if m > 1:
        G = G.reshape(N, m, n).sum(axis=1)
    return G.astype(dtype, copy=False)


def _accumulate_dense(px, py, w, nx, ny, dtype, out):
    """out (nx, ny) = Gx^T diag(w) Gy with dense profile matrices."""
    Gx = _dense_matrix(px[0], px[1] * w[:, None], nx, dtype)
    Gy = _dense_matrix(py[0], py[1], ny, dtype)
    if out.flags.c_contiguous:
        np.matmul(Gx.T, Gy, out=out)
    else:
        out[...] = Gx.T @ Gy
    return out


def _tile_size(Wx, Wy):
    # T >= W - 1 keeps every extended tile within 2 x 2 tiles; T >= 64 keeps the tile count small.
    W = max(Wx, Wy)
    return int(max(64, 16 * (-(-(W - 1) // 16))))


def _fold_rows(block, g0, out, nx, ny):
    """Fold canvas rows ``block`` (global rows g0.., unwrapped columns) into ``out``: rows g < nx are
    assigned (first and only visit), rows g >= nx added to row g % nx, columns >= ny to column c % ny."""
    nb, Cy = block.shape
    r = g0
    while r < g0 + nb:
        t = r % nx
        k = min(g0 + nb - r, nx - t)
        src = block[r - g0:r - g0 + k]
        if r < nx:
            out[t:t + k] = src[:, :ny]
        else:
            out[t:t + k] += src[:, :ny]
        for b in range(ny, Cy, ny):
            cw = min(ny, Cy - b)
            out[t:t + k, :cw] += src[:, b:b + cw]
        r += k


def _bin_atoms(px, py, w, T, Ntx, Nty, dtype):
    """Atoms sorted by the tile (T x T pixels) holding the start of their window: sorted tile ids,
    rank inside the tile, window offsets in the tile, weighted x / plain y profiles, the dense
    capacity ``M`` per tile (bounded so empty tiles cost little) and the first atom of each tile row."""
    (sx, vx), (sy, vy) = px, py
    N = vx.shape[0]
    tx, ty = sx // T, sy // T
    tid = tx * Nty + ty
    order = np.argsort(tid, kind="stable")
    tid_s = tid[order]
    counts = np.bincount(tid_s, minlength=Ntx * Nty)
    rank = np.arange(N) - np.concatenate(([0], np.cumsum(counts)[:-1]))[tid_s]
    M = int(min(counts.max(), max(1, 2 * N // (Ntx * Nty) + 1)))
    return SimpleNamespace(tid_s=tid_s, rank=rank, M=M, dense=rank < M, ox=sx[order] - tx[order] * T,
                           oy=sy[order] - ty[order] * T, gx=(vx[order] * w[order, None]).astype(dtype),
                           gy=vy[order].astype(dtype), row_bounds=np.searchsorted(tid_s, np.arange(Ntx + 1) * Nty))


def _dense_tile_rows(b, sel, a0, a1, g, bufs, Sb):
    """Add the dense-pass atoms ``sel`` of tile rows ``a0 <= a < a1`` into the strip view ``Sb``."""
    T, Ex, Ey, Nty, M = g.T, g.Ex, g.Ey, g.Nty, b.M
    GX, GY, ext_buf = bufs
    nt = (a1 - a0) * Nty
    gxb, gyb = GX[:nt * M], GY[:nt * M]
    gxb.fill(0)
    gyb.fill(0)
    slot = (b.tid_s[sel] - a0 * Nty) * M + b.rank[sel]
    gxb[slot[:, None], b.ox[sel, None] + np.arange(g.Wx)[None, :]] = b.gx[sel]
    gyb[slot[:, None], b.oy[sel, None] + np.arange(g.Wy)[None, :]] = b.gy[sel]
    ext = np.matmul(gxb.reshape(nt, M, Ex).transpose(0, 2, 1), gyb.reshape(nt, M, Ey),
                    out=ext_buf[:nt]).reshape(a1 - a0, Nty, Ex, Ey)
    for p in range(g.Px):
        tp = min(T, Ex - p * T)
        for q in range(g.Py):
            tq = min(T, Ey - q * T)
            blk = ext[:, :, p * T:p * T + tp, q * T:q * T + tq].transpose(0, 2, 1, 3)
            Sb[p:p + a1 - a0, :tp, q:q + Nty, :tq] += blk


def _accumulate_tiled(px, py, w, nx, ny, dtype, out, tile=None):
    """out (nx, ny) via per-tile batched matmuls. Tile (a, b) covers pixels [aT, aT + T + W - 1) x
    [bT, ...) of an unwrapped canvas; its image is GXt^T GYt for the (<= M) atoms binned in it. A few
    tile rows at a time go into a strip buffer whose finished rows are folded modulo (nx, ny) into
    ``out`` (no full-size intermediate); atoms beyond M in a tile go to a sparse pass (<= 64 per item)."""
    N, Wx = px[1].shape
    Wy = py[1].shape[1]
    if N == 0:
        out[...] = 0
        return out
    T = int(tile) if tile else _tile_size(Wx, Wy)
    g = SimpleNamespace(T=T, Wx=Wx, Wy=Wy, Ex=T + Wx - 1, Ey=T + Wy - 1, Nty=-(-ny // T))
    g.Px, g.Py = -(-g.Ex // T), -(-g.Ey // T)
    Ntx = -(-nx // T)
    b = _bin_atoms(px, py, w, T, Ntx, g.Nty, dtype)
    # Work buffers for one batch of tile rows (~8 MB of extended tiles) and a strip of the canvas.
    rpb = max(1, int(2e6 // (g.Nty * g.Ex * g.Ey)))
    nt_max = rpb * g.Nty
    bufs = (np.empty((nt_max * b.M, g.Ex), dtype=dtype), np.empty((nt_max * b.M, g.Ey), dtype=dtype),
            np.empty((nt_max, g.Ex, g.Ey), dtype=dtype))
    S = np.zeros(((rpb + g.Px - 1) * T, (g.Nty + g.Py - 1) * T), dtype=dtype)
    Sb = S.reshape(rpb + g.Px - 1, T, g.Nty + g.Py - 1, T)
    rem = (g.Px - 1) * T
    for a0 in range(0, Ntx, rpb):
        a1 = min(Ntx, a0 + rpb)
        lo, hi = b.row_bounds[a0], b.row_bounds[a1]
        idx = np.arange(lo, hi)
        sel = idx[b.dense[lo:hi]]
        if sel.size:
            _dense_tile_rows(b, sel, a0, a1, g, bufs, Sb)
        extra = idx[~b.dense[lo:hi]]
        if extra.size:
            _sparse_tiles(extra, b.tid_s, b.rank, b.M, b.ox, b.oy, b.gx, b.gy, T, g.Ex, g.Ey, g.Nty, a0, S, dtype)
        nfin = (a1 - a0) * T
        _fold_rows(S[:nfin], a0 * T, out, nx, ny)
        if rem:
            S[:rem] = S[nfin:nfin + rem]
        S[rem:] = 0
    if rem:
        _fold_rows(S[:rem], Ntx * T, out, nx, ny)
    return out


def _sparse_tiles(extra, tid_s, rank, M, ox, oy, gx, gy, T, Ex, Ey, Nty, a0, S, dtype):
    """Add atoms beyond the dense capacity of crowded tiles into strip S."""
    per_tile = np.bincount(tid_s[extra] - tid_s[extra].min())
    MO = int(min(64, max(1, math.ceil(per_tile[per_tile > 0].mean()))))
    # ``extra`` is sorted by tile then rank, so items are consecutive runs.
    key = (tid_s[extra] - tid_s[extra].min()) * (extra.size // MO + 2) + (rank[extra] - M) // MO
    uniq, inv = np.unique(key, return_inverse=True)
    sub = (rank[extra] - M) % MO
    item_tile = np.empty(uniq.size, dtype=np.int64)
    item_tile[inv] = tid_s[extra]
    jx, jy = np.arange(Ex - T + 1), np.arange(Ey - T + 1)
    CH = 256
    bounds = np.searchsorted(inv, np.arange(0, uniq.size + CH, CH))
    for c in range(0, -(-uniq.size // CH)):
        c0, c1 = c * CH, min(uniq.size, (c + 1) * CH)
        e = extra[bounds[c]:bounds[c + 1]]
        slot = (inv[bounds[c]:bounds[c + 1]] - c0) * MO + sub[bounds[c]:bounds[c + 1]]
        gxs = np.zeros(((c1 - c0) * MO, Ex), dtype=dtype)
        gys = np.zeros(((c1 - c0) * MO, Ey), dtype=dtype)
        gxs[slot[:, None], ox[e, None] + jx[None, :]] = gx[e]
        gys[slot[:, None], oy[e, None] + jy[None, :]] = gy[e]
        ext = np.matmul(gxs.reshape(c1 - c0, MO, Ex).transpose(0, 2, 1), gys.reshape(c1 - c0, MO, Ey))
        for k in range(c1 - c0):
            a, b = divmod(int(item_tile[c0 + k]), Nty)
            r0 = (a - a0) * T
            S[r0:r0 + Ex, b * T:b * T + Ey] += ext[k]


# Use the dense matmul while N * nx * ny is below this (measured crossover).
_DENSE_LIMIT = 6.0e7


def _render_plane(px, py, w, nx, ny, dtype, method, out):
    """2D accumulation of one weight vector into ``out`` (nx, ny)."""
    if w.size == 0:
        out[...] = 0
        return out
    if method == "auto":
        method = "dense" if w.size * nx * ny <= _DENSE_LIMIT else "tiled"
    if method == "dense":
        return _accumulate_dense(px, py, w, nx, ny, dtype, out)
    return _accumulate_tiled(px, py, w, nx, ny, dtype, out)


def render(atoms_or_positions, numbers=None, cell=None, shape=(256, 256), gamma: float = DEFAULT_GAMMA,
           cutoff: float = DEFAULT_CUTOFF, channels=None, dtype=np.float32, method: str = "auto",
           out=None) -> np.ndarray:
    """Render eqn (2), ``V = sum_i Z_i exp(-|r - r_i|^2 / (2 gamma^2))``, on a periodic grid.

    ``atoms_or_positions`` is an ``ase.Atoms`` (its positions, numbers and cell are used; ``numbers``
    must be None) or Cartesian positions (N, 2|3) in Angstrom with ``numbers`` (atomic numbers or
    symbols) and ``cell`` (lengths or an orthorhombic (3, 3) matrix, A; overrides ``atoms.cell``).
    Positions outside the cell are wrapped; z is ignored on 2D grids. ``shape``: (nx, ny[, nz]) or an
    int for a square grid (see :func:`shape_for_cell`). ``gamma``: Gaussian width in A (paper 0.2);
    ``cutoff``: per-axis truncation in gammas (relative error ``exp(-cutoff**2 / 2)``). ``channels``:
    one channel per listed element with weight 1 instead of Z (every atom must be listed). ``dtype``:
    float32 or float64 output (profiles are float64). ``method``: "auto", "dense" or "tiled" (module
    docstring; all agree to rounding). ``out``: a preallocated result, filled in place.

    Returns ``(nx, ny, C)`` (``(nx, ny, nz, C)`` for 3D), ``C = 1`` (Z-weighted) or ``len(channels)``;
    ``img[ix, iy, c]`` is the value at ``x = ix Lx / nx``, ``y = iy Ly / ny`` (row = x).
    Raises ValueError (naming the value) for bad positions, an unknown element, a missing,
    non-orthorhombic or non-positive cell, a grid size < 1, or a bad gamma / cutoff / dtype / method (also a
    truncation window ``2 cutoff gamma`` narrower than a pixel, which would leave atoms unrendered).
    """
    shape = check_grid_shape(shape)
    ndim = len(shape)
    gamma = check_positive("gamma", gamma)
    cutoff = check_positive("cutoff", cutoff)
    dt = _check_dtype(dtype)
    check_choice("method", method, ("auto", "dense", "tiled"))
    positions, Z, lengths = parse_structure(atoms_or_positions, numbers, cell, ndim)
    weights, _ = channel_weights(Z, channels)
    R = cutoff * gamma
    _check_window(R, lengths, shape, gamma, cutoff)
    prof = [_axis_profiles(positions[:, a], lengths[a], shape[a], gamma, R) for a in range(ndim)]
    out = _check_out(out, tuple(shape) + (weights.shape[1],), dt)
    if ndim == 2:
        _planes(weights, prof[0], prof[1], out, method)
        return out
    Gz = _dense_matrix(prof[2][0], prof[2][1], shape[2], np.float64)  # (N, nz)
    for k in range(shape[2]):
        idx = np.nonzero(Gz[:, k])[0]
        px = (prof[0][0][idx], prof[0][1][idx])
        py = (prof[1][0][idx], prof[1][1][idx])
        _planes(weights[idx] * Gz[idx, k, None], px, py, out[:, :, k, :], method)
    return out


def _check_window(R, lengths, shape, gamma, cutoff):
    """ValueError when the truncation window ``2 R`` (``R = cutoff * gamma``, A) is narrower than a pixel
    along some axis: an atom between two pixels would then render as nothing (a blank image)."""
    for axis, (length, n) in enumerate(zip(lengths, shape)):
        h = float(length) / n
        if 2 * R < h:
            raise ValueError(f"cutoff * gamma = {cutoff!r} * {gamma!r} A = {R:.4g} A is below half the pixel spacing "
                             f"{h:.4g} A along axis {axis}: atoms between pixels would render as nothing; use "
                             f"cutoff >= {h / (2 * gamma):.4g}, a wider gamma or more pixels")


def _check_out(out, out_shape, dt):
    if out is None:
        return np.empty(out_shape, dtype=dt)
    if not isinstance(out, np.ndarray) or out.shape != out_shape or out.dtype != dt:
        got = (out.shape, str(out.dtype)) if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be a numpy array of shape {out_shape} and dtype {dt}, got {got}")
    return out


def _planes(w_all, px, py, dest, method):
    """Fill ``dest`` (nx, ny, C) for weights ``w_all`` (N, C) and axis profiles ``px``, ``py``."""
    nx, ny, C = dest.shape
    for c in range(C):
        idx = np.nonzero(w_all[:, c])[0]
        if idx.size == w_all.shape[0]:
            sub_x, sub_y = px, py
        else:
            sub_x = (px[0][idx], px[1][idx])
            sub_y = (py[0][idx], py[1][idx])
        _render_plane(sub_x, sub_y, w_all[idx, c], nx, ny, dest.dtype, method, dest[:, :, c])


def render_many(structures, shape=(256, 256), progress: bool = False, **kwargs) -> np.ndarray:
    """Render a batch of structures (``ase.Atoms`` or ``(positions, numbers, cell)`` tuples) on one
    grid ``shape`` into ``(B, nx, ny, C)``; ``progress`` shows a tqdm bar, ``kwargs`` go to :func:`render`."""
    from tqdm.auto import tqdm

    items = list(structures)
    shape = check_grid_shape(shape)
    ch = kwargs.get("channels")
    C = 1 if ch is None or isinstance(ch, (str, bytes, Integral, np.integer)) else len(ch)
    dt = _check_dtype(kwargs.get("dtype", np.float32))
    result = np.empty((len(items),) + shape + (C,), dtype=dt)
    for i, item in enumerate(tqdm(items, desc="render", unit="structure", disable=not progress)):
        try:
            if isinstance(item, tuple):
                if len(item) != 3:
                    raise ValueError(f"tuples must be (positions, numbers, cell), got {len(item)} items")
                kw = dict(kwargs)
                kw.pop("cell", None)
                render(item[0], item[1], item[2], shape=shape, out=result[i], **kw)
            else:
                render(item, shape=shape, out=result[i], **kwargs)
        except ValueError as exc:
            raise ValueError(f"structure {i}: {exc}") from exc
    return result
