"""Render atomic structures as images: the EDNN input representation.

Implements eqn (2) of Mills et al., Chem. Sci. 2019 (Sec. 3.2)::

    V(x, y) = sum_i Z_i exp(-[(x - x_i)^2 + (y - y_i)^2] / (2 gamma^2))

sampled on a regular periodic grid that covers one orthorhombic cell.

Units
-----
All lengths (positions, cell, ``gamma``, ``pixel_size``) are in Angstrom.
``cutoff`` is in units of ``gamma``.

Conventions (used everywhere in this module)
--------------------------------------------
* **Axis order: row = x.**  An image ``img`` has ``img[ix, iy, c]`` equal to
  channel ``c`` of V at ``x = ix * Lx / nx``, ``y = iy * Ly / ny``.  The first
  array axis is x, the second is y (and the third is z for 3D grids), the
  last axis is the channel axis, so a 2D image is ``(nx, ny, C)`` and feeds a
  Keras ``(H, W, C)`` model directly with ``H = nx``, ``W = ny``.  To display
  it with x to the right and y up use
  ``plt.imshow(img[..., 0].T, origin="lower", extent=(0, Lx, 0, Ly))``.
* **Seamless periodic grid.**  Pixel ``k`` samples ``k * L / n`` for
  ``k = 0 .. n-1``; no pixel duplicates pixel 0 at ``x = L``.  Hence a
  ``k x m`` supercell rendered on a ``(k nx, m ny)`` grid equals
  ``np.tile(img, (k, m, 1))`` of the cell's ``(nx, ny)`` image.
* **Periodic images.**  The cell is always treated as periodic along the
  rendered axes (whatever ``atoms.pbc`` says): an atom near a boundary wraps
  around, and positions outside the cell are wrapped back into it.
* **2D is a projection.**  With a 2D ``shape`` the z coordinate is ignored.
* **Channels.**  Default: one channel, each atom weighted by its atomic number
  Z (eqn 2), output ``(nx, ny, 1)``.  With ``channels=[6, 5, 7]`` (or symbols
  ``["C", "B", "N"]``) there is one channel per listed element and each atom
  has weight 1 in its own channel, output ``(nx, ny, 3)``; hence
  ``(img * Z_channels).sum(-1)`` equals the default Z-weighted image.

Truncation
----------
Each Gaussian is truncated *per axis* at ``|x - x_i| <= cutoff * gamma`` and
``|y - y_i| <= cutoff * gamma`` (a square window, which keeps the kernel
separable).  All periodic images within the window are included.  The largest
value dropped is ``Z_i * exp(-cutoff**2 / 2)`` per atom, i.e. a relative
(to the peak) truncation error of ``exp(-cutoff**2 / 2)``: 1.5e-8 for the
default ``cutoff = 6``, below float32 resolution.  The relative error of the
integral of one Gaussian is ``1 - erf(cutoff / sqrt(2))**2 ~= 2 erfc(cutoff /
sqrt(2))`` (3.9e-9 at 6), which is smaller than ``exp(-cutoff**2 / 2)``.

Pixel size
----------
The paper's hexagonal-sheet data set uses 256 x 256 pixels over a roughly
12.5 A x 13 A cell (60 atoms), i.e. about 0.05 A per pixel (4 pixels per
gamma = 0.2 A).  :func:`shape_for_cell` picks a grid for any cell at a given
pixel size so that larger cells keep the same resolution.

Algorithms (numpy)
------------------
Because the kernel is separable, the image is ``Gx^T diag(w) Gy`` where row i
of ``Gx`` (``N x nx``) is atom i's 1D Gaussian profile along x (non-zero only
on a window of ``W ~ 2 cutoff gamma / h`` pixels).  Small problems use this
dense matrix product directly (``method="dense"``).  Large problems
(``method="tiled"``) sort atoms into square pixel tiles and, for every tile,
form the small product of the local profile blocks with a batched matmul;
the overlapping tile results are added into the image.  The cost is
O(N (T + W)^2 + pixels) with tile size T ~ W, independent of N * pixels.
``method="auto"`` picks dense while ``N * nx * ny <= 6e7``.

Performance (2-core shared CPU, numpy 2.4 + OpenBLAS; see ``bench/render.py``):
60 atoms on 256 x 256 takes ~0.15-0.2 ms; 10^5 atoms on a ~10^4 x 10^4 grid
(0.05 A/px) ~0.3 s (~3e5 atoms/s), plus the first-touch cost of a fresh
~420 MB output (pass ``out=`` to reuse one).  The small case is dominated by
one BLAS matmul: when other processes load the CPUs, multi-threaded OpenBLAS
can slow it to milliseconds; set ``OPENBLAS_NUM_THREADS=1`` in data-generation
workers for stable per-image latency.
"""
from __future__ import annotations

import math
import os
from numbers import Integral, Real

import numpy as np

__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_CUTOFF",
    "PAPER_PIXEL_SIZE",
    "StructureFileNotFoundError",
    "render",
    "render_many",
    "render_file",
    "render_tf",
    "shape_for_cell",
    "grid_coordinates",
    "cell_lengths",
    "truncation_error",
]

#: Gaussian width of eqn (2) in Angstrom (paper value).
DEFAULT_GAMMA = 0.2
#: Default truncation radius in units of gamma (relative error exp(-18) = 1.5e-8).
DEFAULT_CUTOFF = 6.0
#: Pixel size of the paper's hexagonal set: 256 px over ~12.5-13 A (A / px).
PAPER_PIXEL_SIZE = 0.05

#: ``render_tf(cutoff=None)`` sums periodic images out to this many gammas
#: (contribution beyond it < exp(-50), i.e. none in float64).
_SMOOTH_RANGE = 10.0

_ORTHO_RTOL = 1e-6


class StructureFileNotFoundError(FileNotFoundError, ValueError):
    """Raised by :func:`render_file` for a missing path.

    It is both a :class:`FileNotFoundError` and a :class:`ValueError`.
    """


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def truncation_error(cutoff: float = DEFAULT_CUTOFF) -> float:
    """Relative truncation error ``exp(-cutoff**2 / 2)`` of a Gaussian cut at
    ``cutoff`` gammas (largest dropped value relative to the peak).

    >>> round(truncation_error(6.0), 10)
    1.52e-08
    """
    cutoff = _check_positive(cutoff, "cutoff")
    return math.exp(-0.5 * cutoff * cutoff)


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    value = float(value)  # plain float in messages below
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _check_shape(shape):
    """Return the grid shape as a tuple of 2 or 3 ints >= 1."""
    if isinstance(shape, (Integral, np.integer)) and not isinstance(shape, bool):
        shape = (shape, shape)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(
            f"shape must be (nx, ny) or (nx, ny, nz) of ints >= 1, got {shape!r}"
        ) from None
    if len(dims) not in (2, 3):
        raise ValueError(f"shape must have 2 or 3 entries (nx, ny[, nz]), got {shape!r}")
    out = []
    for n in dims:
        if isinstance(n, bool) or not isinstance(n, (Integral, np.integer)):
            raise ValueError(f"grid sizes must be integers >= 1, got shape={shape!r}")
        if int(n) < 1:
            raise ValueError(f"grid sizes must be >= 1, got shape={shape!r}")
        out.append(int(n))
    return tuple(out)


def cell_lengths(cell, ndim: int = 2) -> np.ndarray:
    """Orthorhombic cell lengths (Lx, Ly[, Lz]) in Angstrom.

    Parameters
    ----------
    cell : sequence of 2 or 3 lengths, (2, 2) or (3, 3) matrix, or ``ase.cell.Cell``
        Lattice vectors as rows (ASE convention).  Matrices must be diagonal
        (orthorhombic, axes along x, y, z).
    ndim : int
        Number of lengths needed (2 for images, 3 for volumes); they must be
        positive and finite.

    Raises
    ------
    ValueError
        Non-orthorhombic, non-finite, or non-positive cell.
    """
    if cell is None:
        raise ValueError("a periodic cell is required: pass cell=(Lx, Ly) in Angstrom, got None")
    try:
        arr = np.asarray(cell, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"cell must be lengths or a 3x3 matrix in Angstrom, got {cell!r}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"cell must be finite, got {arr.tolist()!r}")
    if arr.ndim == 1:
        if arr.shape[0] not in (2, 3):
            raise ValueError(f"cell lengths must have 2 or 3 entries, got {arr.tolist()!r}")
        lengths = arr
    elif arr.ndim == 2 and arr.shape in ((2, 2), (3, 3)):
        off = arr - np.diag(np.diag(arr))
        scale = max(float(np.abs(arr).max()), 1.0)
        if np.abs(off).max() > _ORTHO_RTOL * scale:
            raise ValueError(
                "only orthorhombic cells (lattice vectors along x, y, z) are supported, "
                f"got cell matrix {arr.tolist()!r}"
            )
        lengths = np.diag(arr)
    else:
        raise ValueError(f"cell must be lengths or a 3x3 matrix, got array of shape {arr.shape}")
    if lengths.shape[0] < ndim:
        raise ValueError(f"need {ndim} cell lengths for a {ndim}D grid, got {arr.tolist()!r}")
    lengths = lengths[:ndim].copy()
    if np.any(lengths <= 0.0):
        raise ValueError(
            f"cell lengths along the rendered axes must be > 0 A, got {lengths.tolist()!r} "
            f"(from cell {arr.tolist()!r}); pass cell=(Lx, Ly) in Angstrom"
        )
    return lengths


def _to_atomic_numbers(values, what="numbers"):
    """Atomic numbers (int64 array) from ints or element symbols."""
    from ase.data import atomic_numbers as _symbol_to_z

    if isinstance(values, (list, tuple)) and any(isinstance(v, (str, np.str_)) for v in values):
        values = np.array(values, dtype=object)  # mixed symbols and numbers
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1D sequence, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind in "US":
        out = np.empty(arr.shape[0], dtype=np.int64)
        for i, sym in enumerate(arr.tolist()):
            z = _symbol_to_z.get(sym)
            if z is None or z < 1:
                raise ValueError(f"unknown element symbol {sym!r} in {what}")
            out[i] = z
        return out
    if arr.dtype == object:
        out = np.empty(arr.shape[0], dtype=np.int64)
        for i, v in enumerate(arr.tolist()):
            one = np.array([v], dtype=str if isinstance(v, (str, np.str_)) else None)
            out[i] = _to_atomic_numbers(one, what)[0]
        return out
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise ValueError(f"{what} must be atomic numbers or element symbols, got {values!r}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = arr[~np.isfinite(arr) | (arr != np.round(arr))][0]
            raise ValueError(f"{what} must be integers, got {bad.item()!r}")
    out = arr.astype(np.int64)
    bad = (out < 1) | (out > 118)
    if np.any(bad):
        raise ValueError(f"atomic numbers must be in 1..118, got {int(out[bad][0])} in {what}")
    return out


def _parse_structure(atoms_or_positions, numbers, cell, ndim):
    """Return positions (N, 2|3) float64, Z (N,) int64, lengths (ndim,)."""
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a dependency
        Atoms = ()
    if Atoms and isinstance(atoms_or_positions, Atoms):
        atoms = atoms_or_positions
        if numbers is not None:
            raise ValueError("numbers must be None when an ase.Atoms is given (got numbers too)")
        positions = atoms.get_positions()
        Z = _to_atomic_numbers(atoms.numbers, "atoms.numbers")
        if cell is None:
            cell_arr = atoms.cell.array
            if np.any(np.abs(cell_arr[:ndim]).sum(axis=1) == 0.0):
                # No cell along a rendered axis (e.g. read from a plain .xyz file)
                raise ValueError(
                    f"the ase.Atoms ({atoms.get_chemical_formula()}) has no cell along "
                    f"the rendered axes (cell = {cell_arr.tolist()!r}); pass cell=(Lx, Ly) "
                    "in Angstrom"
                )
            cell = cell_arr
    else:
        if atoms_or_positions is None:
            raise ValueError("positions must be an (N, 2) or (N, 3) array or an ase.Atoms, got None")
        if numbers is None:
            raise ValueError("numbers (atomic numbers or symbols, shape (N,)) are required with raw positions")
        try:
            positions = np.asarray(atoms_or_positions, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"positions must be a numeric (N, 2) or (N, 3) array, got {atoms_or_positions!r}"
            ) from None
        Z = _to_atomic_numbers(numbers)
    if positions.ndim != 2 or positions.shape[1] not in (2, 3):
        raise ValueError(f"positions must have shape (N, 2) or (N, 3), got {positions.shape}")
    if positions.shape[1] < ndim:
        raise ValueError(f"a {ndim}D grid needs (N, {ndim}) positions, got {positions.shape}")
    if positions.shape[0] != Z.shape[0]:
        raise ValueError(
            f"positions has {positions.shape[0]} atoms but numbers has {Z.shape[0]} entries"
        )
    if not np.all(np.isfinite(positions)):
        bad = np.argwhere(~np.isfinite(positions))[0]
        raise ValueError(
            f"positions must be finite, got {positions[bad[0]].tolist()!r} for atom {int(bad[0])}"
        )
    lengths = cell_lengths(cell, ndim)
    return positions[:, :ndim], Z, lengths


def _channel_weights(Z, channels):
    """Weight matrix (N, C) float64 and the list of channel atomic numbers."""
    if channels is None:
        return Z.astype(np.float64)[:, None], None
    if isinstance(channels, (str, bytes)) or isinstance(channels, (Integral, np.integer)):
        channels = [channels]
    chan = _to_atomic_numbers(list(channels), "channels")
    if chan.size == 0:
        raise ValueError(f"channels must list at least one element, got {channels!r}")
    if np.unique(chan).size != chan.size:
        raise ValueError(f"channels must not repeat an element, got {list(channels)!r}")
    W = (Z[:, None] == chan[None, :]).astype(np.float64)
    missing = np.unique(Z[W.sum(axis=1) == 0])
    if missing.size:
        raise ValueError(
            f"atoms with atomic numbers {missing.tolist()} are not in channels {chan.tolist()}"
        )
    return W, chan


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


# --------------------------------------------------------------------------
# grid helpers
# --------------------------------------------------------------------------
def shape_for_cell(cell, pixel_size: float = PAPER_PIXEL_SIZE, multiple_of: int = 1, ndim: int = 2):
    """Grid shape giving about ``pixel_size`` Angstrom per pixel over ``cell``.

    ``n = max(multiple_of, multiple_of * round(L / (pixel_size * multiple_of)))``
    along each axis.  The paper's hexagonal set uses 256 px over ~12.5-13 A,
    about 0.05 A/px (the default ``pixel_size``); e.g. the 12.78 x 12.30 A
    60-atom graphene cell gives ``(256, 246)``.  Use ``multiple_of`` (e.g. the
    EDNN focus size) to make each size divisible by a tile size.

    Parameters
    ----------
    cell : lengths or orthorhombic 3x3 matrix (A), or an ``ase.Atoms``
    pixel_size : float
        Target pixel size in Angstrom (> 0).
    multiple_of : int
        Each grid size is rounded to a positive multiple of this.
    ndim : int
        2 for images, 3 for volumes.

    Returns
    -------
    tuple of int
    """
    try:
        from ase import Atoms

        if isinstance(cell, Atoms):
            cell = cell.cell.array
    except ImportError:  # pragma: no cover
        pass
    pixel_size = _check_positive(pixel_size, "pixel_size")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, (Integral, np.integer)) or multiple_of < 1:
        raise ValueError(f"multiple_of must be an integer >= 1, got {multiple_of!r}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    lengths = cell_lengths(cell, ndim)
    m = int(multiple_of)
    return tuple(max(m, m * int(round(L / (pixel_size * m)))) for L in lengths)


def grid_coordinates(cell, shape):
    """Pixel-centre coordinates (A) along each axis: ``k * L / n``, ``k = 0..n-1``.

    Returns a tuple of 1D float64 arrays (x, y[, z]) matching ``img[ix, iy]``.
    """
    shape = _check_shape(shape)
    lengths = cell_lengths(cell, len(shape))
    return tuple(np.arange(n, dtype=np.float64) * (L / n) for L, n in zip(lengths, shape))


# --------------------------------------------------------------------------
# numpy core
# --------------------------------------------------------------------------
def _axis_profiles(coord, L, n, gamma, R):
    """Windowed 1D Gaussian profiles of all atoms along one axis.

    Returns ``start`` (N,) int64 in [0, n) and ``vals`` (N, W) float64 such
    that pixel ``(start + j) % n`` receives ``vals[:, j]``.  All periodic
    images with ``|k h - x - m L| <= R`` are covered (the window may wrap
    more than once if ``W > n``); values beyond ``R`` are exactly 0.
    """
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
    # T >= W - 1 keeps every extended tile within 2 x 2 tiles; T >= 64 keeps
    # the number of tiles (Python-level work) small.
    W = max(Wx, Wy)
    return int(max(64, 16 * (-(-(W - 1) // 16))))


def _fold_rows(block, g0, out, nx, ny):
    """Fold canvas rows ``block`` (global rows g0.., unwrapped columns) into ``out``.

    Rows g < nx are assigned (first and only visit), rows g >= nx are added to
    row g % nx; columns >= ny are added to column c % ny.
    """
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


def _accumulate_tiled(px, py, w, nx, ny, dtype, out, tile=None):
    """out (nx, ny) via per-tile batched matmuls.  Cost O(N (T+W)^2 + pixels).

    Atoms are binned by the tile (T x T pixels) holding the start of their
    window.  Tile (a, b) covers pixels [aT, aT + T + W - 1) x [bT, ...) of an
    unwrapped canvas; its image is GXt^T GYt for the (<= M) atoms in it
    (a batched matmul over tiles).  Tiles are processed a few tile rows at a
    time into a strip buffer; finished rows are folded modulo (nx, ny) into
    ``out``, so no full-size intermediate is allocated.  Tiles holding more
    than M atoms send the excess to a sparse pass (items of <= 64 atoms).
    """
    sx, vx = px
    sy, vy = py
    N, Wx = vx.shape
    Wy = vy.shape[1]
    if N == 0:
        out[...] = 0
        return out
    T = int(tile) if tile else _tile_size(Wx, Wy)
    Ex, Ey = T + Wx - 1, T + Wy - 1
    Ntx, Nty = -(-nx // T), -(-ny // T)
    Px, Py = -(-Ex // T), -(-Ey // T)
    Cy = (Nty + Py - 1) * T

    tx, ty = sx // T, sy // T
    tid = tx * Nty + ty
    order = np.argsort(tid, kind="stable")
    tid_s = tid[order]
    counts = np.bincount(tid_s, minlength=Ntx * Nty)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(N) - first[tid_s]
    # Capacity of the dense pass (bounded so empty tiles cost little).
    M = int(min(counts.max(), max(1, 2 * N // (Ntx * Nty) + 1)))
    dense = rank < M

    ox = sx[order] - tx[order] * T  # window offset inside its tile
    oy = sy[order] - ty[order] * T
    gx = (vx[order] * w[order, None]).astype(dtype)
    gy = vy[order].astype(dtype)
    jx = np.arange(Wx)
    jy = np.arange(Wy)
    row_bounds = np.searchsorted(tid_s, np.arange(Ntx + 1) * Nty)

    # Work buffers for one batch of tile rows (~8 MB of extended tiles).
    rpb = max(1, int(2e6 // (Nty * Ex * Ey)))
    nt_max = rpb * Nty
    GX = np.empty((nt_max * M, Ex), dtype=dtype)
    GY = np.empty((nt_max * M, Ey), dtype=dtype)
    ext_buf = np.empty((nt_max, Ex, Ey), dtype=dtype)
    S = np.zeros(((rpb + Px - 1) * T, Cy), dtype=dtype)  # strip of the canvas
    Sb = S.reshape(rpb + Px - 1, T, Nty + Py - 1, T)
    rem = (Px - 1) * T

    for a0 in range(0, Ntx, rpb):
        a1 = min(Ntx, a0 + rpb)
        lo, hi = row_bounds[a0], row_bounds[a1]
        idx = np.arange(lo, hi)
        sel = idx[dense[lo:hi]]
        if sel.size:
            nt = (a1 - a0) * Nty
            gxb, gyb = GX[:nt * M], GY[:nt * M]
            gxb.fill(0)
            gyb.fill(0)
            slot = (tid_s[sel] - a0 * Nty) * M + rank[sel]
            gxb[slot[:, None], ox[sel, None] + jx[None, :]] = gx[sel]
            gyb[slot[:, None], oy[sel, None] + jy[None, :]] = gy[sel]
            ext = np.matmul(
                gxb.reshape(nt, M, Ex).transpose(0, 2, 1), gyb.reshape(nt, M, Ey),
                out=ext_buf[:nt],
            ).reshape(a1 - a0, Nty, Ex, Ey)
            for p in range(Px):
                tp = min(T, Ex - p * T)
                for q in range(Py):
                    tq = min(T, Ey - q * T)
                    blk = ext[:, :, p * T:p * T + tp, q * T:q * T + tq].transpose(0, 2, 1, 3)
                    Sb[p:p + a1 - a0, :tp, q:q + Nty, :tq] += blk
        extra = idx[~dense[lo:hi]]
        if extra.size:
            _sparse_tiles(extra, tid_s, rank, M, ox, oy, gx, gy, T, Ex, Ey, Nty, a0, S, dtype)
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


def render(
    atoms_or_positions,
    numbers=None,
    cell=None,
    shape=(256, 256),
    gamma: float = DEFAULT_GAMMA,
    cutoff: float = DEFAULT_CUTOFF,
    channels=None,
    dtype=np.float32,
    method: str = "auto",
    out=None,
) -> np.ndarray:
    """Render eqn (2), ``V = sum_i Z_i exp(-|r - r_i|^2 / (2 gamma^2))``, on a periodic grid.

    Parameters
    ----------
    atoms_or_positions : ase.Atoms or array_like (N, 2) or (N, 3)
        Structure.  For ``ase.Atoms`` its x, y (z) positions, atomic numbers
        and cell are used.  Otherwise Cartesian positions in Angstrom (z is
        ignored for 2D grids); positions outside the cell are wrapped.
    numbers : array_like (N,), optional
        Atomic numbers or element symbols; required with raw positions, must
        be None with ``ase.Atoms``.
    cell : lengths (Lx, Ly[, Lz]) or orthorhombic (3, 3) matrix, optional
        Periodic cell in Angstrom (rows are lattice vectors).  Overrides
        ``atoms.cell`` if given; required with raw positions.
    shape : (nx, ny) or (nx, ny, nz) or int
        Grid size; an int means a square grid.  Pixel k along x samples
        ``x = k * Lx / nx`` (no duplicated endpoint).  See
        :func:`shape_for_cell` for a grid at a physical pixel size.
    gamma : float
        Gaussian width in Angstrom (paper: 0.2 A).
    cutoff : float
        Truncation half-width per axis in units of gamma; relative error
        ``exp(-cutoff**2 / 2)`` (1.5e-8 for the default 6).
    channels : sequence of atomic numbers or symbols, optional
        One channel per listed element, weight 1 (instead of Z).  Every atom
        must belong to a listed element.
    dtype : float32 or float64
        Output dtype (profiles are computed in float64).
    method : {"auto", "dense", "tiled"}
        Accumulation algorithm (see the module docstring); all agree to
        rounding error.
    out : numpy.ndarray, optional
        Preallocated result array (shape and dtype as returned), filled in
        place and returned.

    Returns
    -------
    numpy.ndarray
        ``(nx, ny, C)`` for 2D grids, ``(nx, ny, nz, C)`` for 3D, with
        ``C = 1`` (Z-weighted) or ``len(channels)``; ``img[ix, iy, c]`` is the
        value at ``x = ix Lx / nx``, ``y = iy Ly / ny`` (row = x).

    Raises
    ------
    ValueError
        Bad positions (non-finite, wrong shape), unknown element, cell that
        is missing, non-orthorhombic or non-positive, grid size < 1, or
        invalid gamma / cutoff / dtype / method.
    """
    shape = _check_shape(shape)
    ndim = len(shape)
    gamma = _check_positive(gamma, "gamma")
    cutoff = _check_positive(cutoff, "cutoff")
    dt = _check_dtype(dtype)
    if method not in ("auto", "dense", "tiled"):
        raise ValueError(f"method must be 'auto', 'dense' or 'tiled', got {method!r}")
    positions, Z, lengths = _parse_structure(atoms_or_positions, numbers, cell, ndim)
    weights, _ = _channel_weights(Z, channels)
    R = cutoff * gamma
    prof = [_axis_profiles(positions[:, a], lengths[a], shape[a], gamma, R) for a in range(ndim)]
    nx, ny = shape[0], shape[1]
    C = weights.shape[1]

    out_shape = tuple(shape) + (C,)
    if out is None:
        out = np.empty(out_shape, dtype=dt)
    elif not isinstance(out, np.ndarray) or out.shape != out_shape or out.dtype != dt:
        got = (out.shape, str(out.dtype)) if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be a numpy array of shape {out_shape} and dtype {dt}, got {got}")

    def planes(w_all, px, py, dest):
        """Fill dest (nx, ny, C) for weights w_all (N, C) and profiles px, py."""
        for c in range(C):
            idx = np.nonzero(w_all[:, c])[0]
            if idx.size == w_all.shape[0]:
                sub_x, sub_y = px, py
            else:
                sub_x = (px[0][idx], px[1][idx])
                sub_y = (py[0][idx], py[1][idx])
            _render_plane(sub_x, sub_y, w_all[idx, c], nx, ny, dt, method, dest[:, :, c])

    if ndim == 2:
        planes(weights, prof[0], prof[1], out)
        return out

    nz = shape[2]
    Gz = _dense_matrix(prof[2][0], prof[2][1], nz, np.float64)  # (N, nz)
    for k in range(nz):
        idx = np.nonzero(Gz[:, k])[0]
        px = (prof[0][0][idx], prof[0][1][idx])
        py = (prof[1][0][idx], prof[1][1][idx])
        planes(weights[idx] * Gz[idx, k, None], px, py, out[:, :, k, :])
    return out


def render_many(structures, shape=(256, 256), progress: bool = False, **kwargs) -> np.ndarray:
    """Render a batch of structures into one array ``(B, nx, ny, C)``.

    Parameters
    ----------
    structures : iterable of ase.Atoms or (positions, numbers, cell) tuples
    shape : grid shape shared by all structures (see :func:`render`)
    progress : bool
        Show a tqdm progress bar.
    **kwargs
        Passed to :func:`render` (gamma, cutoff, channels, dtype, method, cell).
    """
    items = list(structures)
    shape = _check_shape(shape)
    iterator = items
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:  # pragma: no cover
            raise ImportError("render_many(progress=True) needs tqdm (pip install tqdm)") from exc
        iterator = tqdm(items, desc="render", unit="structure")
    C = 1
    if kwargs.get("channels") is not None:
        ch = kwargs["channels"]
        C = 1 if isinstance(ch, (str, bytes, Integral, np.integer)) else len(ch)
    dt = _check_dtype(kwargs.get("dtype", np.float32))
    result = np.empty((len(items),) + shape + (C,), dtype=dt)
    for i, item in enumerate(iterator):
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


def render_file(path, shape=(256, 256), cell=None, index=None, format=None, progress=False, **kwargs):
    """Read a structure file with ``ase.io.read`` and render it.

    Any format ASE reads works (xyz, extxyz, POSCAR, cif, ...).  A plain
    ``.xyz`` file carries no cell: pass ``cell=(Lx, Ly)`` (Angstrom).

    Parameters
    ----------
    path : str or os.PathLike
    shape, **kwargs : see :func:`render`
    cell : optional cell overriding the file's
    index : passed to ``ase.io.read``; default the last frame.  A slice or
        ``":"`` renders all frames with :func:`render_many`.
    format : ASE format name, if the extension is ambiguous.

    Returns
    -------
    numpy.ndarray ``(nx, ny, C)``, or ``(B, nx, ny, C)`` for several frames.

    Raises
    ------
    StructureFileNotFoundError
        The path does not exist (also a ValueError / FileNotFoundError).
    ValueError
        The file cannot be parsed, or it has no cell and none was given.
    """
    import ase.io

    fspath = os.fspath(path)
    if not os.path.isfile(fspath):
        raise StructureFileNotFoundError(2, "structure file not found", fspath)
    try:
        result = ase.io.read(fspath, index=index, format=format)
    except Exception as exc:  # ASE raises many types for corrupt files
        raise ValueError(
            f"could not read structure file {fspath!r}: {type(exc).__name__}: {exc}"
        ) from exc
    frames = result if isinstance(result, list) else [result]
    if not frames:
        raise ValueError(f"structure file {fspath!r} contains no frames for index={index!r}")
    ndim = len(_check_shape(shape))
    if cell is None:
        for atoms in frames:
            vecs = atoms.cell.array[:ndim]
            if np.any(np.abs(vecs).sum(axis=1) == 0.0):
                raise ValueError(
                    f"structure file {fspath!r} has no cell along x/y (cell = "
                    f"{atoms.cell.array.tolist()!r}); plain .xyz files carry none: pass "
                    "cell=(Lx, Ly) in Angstrom or use extended xyz with a Lattice= entry"
                )
    if cell is not None:
        kwargs["cell"] = cell
    try:
        if isinstance(result, list):
            return render_many(frames, shape=shape, progress=progress, **kwargs)
        return render(result, shape=shape, **kwargs)
    except ValueError as exc:
        raise ValueError(f"cannot render structure file {fspath!r}: {exc}") from exc


# --------------------------------------------------------------------------
# TensorFlow (differentiable) renderer
# --------------------------------------------------------------------------
def render_tf(positions, numbers, cell, shape=(256, 256), gamma=DEFAULT_GAMMA, cutoff=None, channels=None):
    """Differentiable TensorFlow version of :func:`render` (same conventions).

    Builds dense per-axis profile matrices ``Gx`` (N, nx), ``Gy`` (N, ny)
    from periodic minimum-image distances (plus further images when the
    range exceeds half the cell) and returns ``Gx^T diag(Z) Gy``.  Memory is
    O(N (nx + ny)) and time O(N nx ny), fine for hundreds to a few thousand
    atoms.  Gradients with respect to ``positions`` work with
    ``tf.GradientTape`` (the cell, numbers and grid are constants).

    Parameters
    ----------
    positions : tf.Tensor or array_like (N, 2) or (N, 3)
        Cartesian positions in Angstrom; its float dtype (float32 default,
        float64 allowed) is the output dtype.
    numbers : array_like (N,)
        Atomic numbers or symbols (constants).
    cell : lengths or orthorhombic matrix (A), as in :func:`render`.
    shape : (nx, ny) or (nx, ny, nz)
    gamma : float, Gaussian width in Angstrom.
    cutoff : float or None
        None: no truncation (smooth everywhere; images summed out to 10
        gamma).  A number: same per-axis truncation as :func:`render`, so the
        results agree to rounding error.  Either way the two renderers agree
        to float32 tolerance for the default numpy cutoff.
    channels : optional, as in :func:`render`.

    Returns
    -------
    tf.Tensor ``(nx, ny, C)`` (or ``(nx, ny, nz, C)``), ``[ix, iy, c]`` = row x.
    """
    import tensorflow as tf

    shape = _check_shape(shape)
    ndim = len(shape)
    gamma = _check_positive(gamma, "gamma")
    if cutoff is not None:
        cutoff = _check_positive(cutoff, "cutoff")
    lengths = cell_lengths(cell, ndim)
    pos = tf.convert_to_tensor(positions)
    if not pos.dtype.is_floating:
        pos = tf.cast(pos, tf.float32)
    dtype = pos.dtype
    if pos.shape.rank != 2 or pos.shape[1] not in (2, 3):
        raise ValueError(f"positions must have shape (N, 2) or (N, 3), got {pos.shape}")
    if pos.shape[1] < ndim:
        raise ValueError(f"a {ndim}D grid needs (N, {ndim}) positions, got {pos.shape}")
    Z = _to_atomic_numbers(np.asarray(numbers.numpy() if hasattr(numbers, "numpy") else numbers))
    if pos.shape[0] is not None and pos.shape[0] != Z.shape[0]:
        raise ValueError(f"positions has {pos.shape[0]} atoms but numbers has {Z.shape[0]} entries")
    if tf.executing_eagerly():
        p = pos.numpy()
        if not np.all(np.isfinite(p)):
            bad = np.argwhere(~np.isfinite(p))[0]
            raise ValueError(f"positions must be finite, got {p[bad[0]].tolist()!r} for atom {int(bad[0])}")
    weights, _ = _channel_weights(Z, channels)
    Wt = tf.constant(weights, dtype=dtype)  # (N, C)
    C = weights.shape[1]
    R = (cutoff if cutoff is not None else _SMOOTH_RANGE) * gamma

    def profile(coord, L, n):
        grid = tf.constant(np.arange(n) * (L / n), dtype=dtype)
        d = grid[None, :] - coord[:, None]
        d = d - L * tf.stop_gradient(tf.round(d / L))  # minimum image, in [-L/2, L/2]
        K = int(math.floor(R / L + 0.5))  # further images that can lie within R
        total = None
        for m in range(-K, K + 1):
            dm = d + m * L if m else d
            g = tf.exp(-0.5 * tf.square(dm / gamma))
            if cutoff is not None:
                g = tf.where(tf.abs(dm) <= R, g, tf.zeros_like(g))
            total = g if total is None else total + g
        return total

    G = [profile(pos[:, a], float(lengths[a]), shape[a]) for a in range(ndim)]
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
