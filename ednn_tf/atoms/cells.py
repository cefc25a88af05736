"""Cells, grids and elements: the conventions shared by the numpy and TensorFlow renderers of eqn (2)
of Mills et al., Chem. Sci. 2019 (Sec. 3.2), ``V(x, y) = sum_i Z_i exp(-[(x - x_i)^2 + (y - y_i)^2] /
(2 gamma^2))``, sampled on a regular periodic grid over one orthorhombic cell. All lengths (positions,
cell, ``gamma``, ``pixel_size``) are in Angstrom; ``cutoff`` is in units of ``gamma``.

* **Axis order: row = x.** ``img[ix, iy, c]`` is channel ``c`` of V at ``x = ix * Lx / nx``,
  ``y = iy * Ly / ny`` (third axis z on 3D grids, channels last), so a 2D image ``(nx, ny, C)`` feeds a
  Keras ``(H, W, C)`` model with ``H = nx``. Display with x right and y up:
  ``plt.imshow(img[..., 0].T, origin="lower", extent=(0, Lx, 0, Ly))``.
* **Seamless periodic grid.** Pixel ``k`` samples ``k * L / n``, ``k = 0 .. n-1`` (no duplicate of
  pixel 0 at ``x = L``), so a ``k x m`` supercell on a ``(k nx, m ny)`` grid equals
  ``np.tile(img, (k, m, 1))``.
* **Periodic images.** The cell is periodic along the rendered axes whatever ``atoms.pbc`` says;
  positions outside it are wrapped. With a 2D ``shape`` z is ignored (a projection).
* **Channels.** Default one channel, each atom weighted by Z (eqn 2). ``channels=[6, 5, 7]`` (or
  ``["C", "B", "N"]``) gives one channel per listed element, weight 1, so ``(img * Z_channels).sum(-1)``
  is the default image.

Truncation: each Gaussian is cut *per axis* at ``|x - x_i| <= cutoff * gamma`` (a square window, keeping
the kernel separable), all periodic images within it included. The largest dropped value relative to
the peak is ``exp(-cutoff**2 / 2)`` (1.5e-8 at the default 6, below float32 resolution); the relative
error of one Gaussian's integral, ``1 - erf(cutoff / sqrt(2))**2`` (3.9e-9 at 6), is smaller.

Pixel size: the paper's hexagonal set uses 256 x 256 px over a ~12.5 x 13 A 60-atom cell, about
0.05 A/px (4 px per gamma = 0.2 A); :func:`shape_for_cell` keeps that resolution for any cell.
"""
from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from ..util import check_choice, check_int, check_positive, check_positive_axes

__all__ = ["DEFAULT_GAMMA", "DEFAULT_CUTOFF", "PAPER_PIXEL_SIZE", "truncation_error", "check_grid_shape",
           "cell_lengths", "atomic_numbers", "parse_structure", "channel_weights", "shape_for_cell",
           "grid_coordinates", "cell_area", "mev_per_area", "mev_per_atom"]

#: Gaussian width of eqn (2) in Angstrom (paper value).
DEFAULT_GAMMA = 0.2
#: Default truncation radius in units of gamma (relative error exp(-18) = 1.5e-8).
DEFAULT_CUTOFF = 6.0
#: Pixel size of the paper's hexagonal set: 256 px over ~12.5-13 A (A / px).
PAPER_PIXEL_SIZE = 0.05
_ORTHO_RTOL = 1e-6


# --- validation helpers ---
def truncation_error(cutoff: float = DEFAULT_CUTOFF) -> float:
    """Relative truncation error ``exp(-cutoff**2 / 2)`` of a Gaussian cut at ``cutoff`` gammas.

    >>> round(truncation_error(6.0), 10)
    1.52e-08
    """
    cutoff = check_positive("cutoff", cutoff)
    return math.exp(-0.5 * cutoff * cutoff)


def check_grid_shape(shape):
    """Return the grid shape as a tuple of 2 or 3 ints >= 1."""
    if isinstance(shape, (Integral, np.integer)) and not isinstance(shape, bool):
        shape = (shape, shape)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be (nx, ny) or (nx, ny, nz) of ints >= 1, got {shape!r}") from None
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
    """The first ``ndim`` orthorhombic cell lengths (Lx, Ly[, Lz]) in Angstrom from 2 or 3 lengths, a
    diagonal (2, 2) / (3, 3) matrix (lattice vectors as rows, ASE convention) or an ``ase.cell.Cell``.
    Raises ValueError for a non-orthorhombic, non-finite or non-positive cell."""
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
            raise ValueError("only orthorhombic cells (lattice vectors along x, y, z) are supported, "
                             f"got cell matrix {arr.tolist()!r}")
        lengths = np.diag(arr)
    else:
        raise ValueError(f"cell must be lengths or a 3x3 matrix, got array of shape {arr.shape}")
    if lengths.shape[0] < ndim:
        raise ValueError(f"need {ndim} cell lengths for a {ndim}D grid, got {arr.tolist()!r}")
    lengths = lengths[:ndim].copy()
    if np.any(lengths <= 0.0):
        raise ValueError(f"cell lengths along the rendered axes must be > 0 A, got {lengths.tolist()!r} "
                         f"(from cell {arr.tolist()!r}); pass cell=(Lx, Ly) in Angstrom")
    return lengths


def atomic_numbers(values, what="numbers"):
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
            out[i] = atomic_numbers(one, what)[0]
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


def parse_structure(atoms_or_positions, numbers, cell, ndim):
    """Return positions (N, 2|3) float64, Z (N,) int64, lengths (ndim,)."""
    from ase import Atoms

    if isinstance(atoms_or_positions, Atoms):
        atoms = atoms_or_positions
        if numbers is not None:
            raise ValueError("numbers must be None when an ase.Atoms is given (got numbers too)")
        positions = atoms.get_positions()
        Z = atomic_numbers(atoms.numbers, "atoms.numbers")
        if cell is None:
            cell_arr = atoms.cell.array
            if np.any(np.abs(cell_arr[:ndim]).sum(axis=1) == 0.0):
                # No cell along a rendered axis (e.g. read from a plain .xyz file)
                raise ValueError(f"the ase.Atoms ({atoms.get_chemical_formula()}) has no cell along the rendered "
                                 f"axes (cell = {cell_arr.tolist()!r}); pass cell=(Lx, Ly) in Angstrom")
            cell = cell_arr
    else:
        if atoms_or_positions is None:
            raise ValueError("positions must be an (N, 2) or (N, 3) array or an ase.Atoms, got None")
        if numbers is None:
            raise ValueError("numbers (atomic numbers or symbols, shape (N,)) are required with raw positions")
        try:
            positions = np.asarray(atoms_or_positions, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"positions must be a numeric (N, 2) or (N, 3) array, "
                             f"got {atoms_or_positions!r}") from None
        Z = atomic_numbers(numbers)
    if positions.ndim != 2 or positions.shape[1] not in (2, 3):
        raise ValueError(f"positions must have shape (N, 2) or (N, 3), got {positions.shape}")
    if positions.shape[1] < ndim:
        raise ValueError(f"a {ndim}D grid needs (N, {ndim}) positions, got {positions.shape}")
    if positions.shape[0] != Z.shape[0]:
        raise ValueError(f"positions has {positions.shape[0]} atoms but numbers has {Z.shape[0]} entries")
    if not np.all(np.isfinite(positions)):
        bad = np.argwhere(~np.isfinite(positions))[0]
        raise ValueError(f"positions must be finite, got {positions[bad[0]].tolist()!r} for atom {int(bad[0])}")
    lengths = cell_lengths(cell, ndim)
    return positions[:, :ndim], Z, lengths


def channel_weights(Z, channels):
    """Weight matrix (N, C) float64 and the list of channel atomic numbers."""
    if channels is None:
        return Z.astype(np.float64)[:, None], None
    if isinstance(channels, (str, bytes)) or isinstance(channels, (Integral, np.integer)):
        channels = [channels]
    chan = atomic_numbers(list(channels), "channels")
    if chan.size == 0:
        raise ValueError(f"channels must list at least one element, got {channels!r}")
    if np.unique(chan).size != chan.size:
        raise ValueError(f"channels must not repeat an element, got {list(channels)!r}")
    W = (Z[:, None] == chan[None, :]).astype(np.float64)
    missing = np.unique(Z[W.sum(axis=1) == 0])
    if missing.size:
        raise ValueError(f"atoms with atomic numbers {missing.tolist()} are not in channels {chan.tolist()}")
    return W, chan


# --- grid helpers ---
def shape_for_cell(cell, pixel_size: float = PAPER_PIXEL_SIZE, multiple_of: int = 1, ndim: int = 2):
    """Grid shape (tuple of ``ndim`` ints, 2 for images, 3 for volumes) giving about ``pixel_size`` A
    per pixel (one number, or one per axis) over ``cell`` (lengths, an orthorhombic matrix in A, or an
    ``ase.Atoms``): ``n = max(multiple_of, multiple_of * round(L / (pixel_size * multiple_of)))`` per
    axis, e.g. ``(256, 246)`` for the 12.78 x 12.30 A 60-atom graphene cell at the default 0.05 A/px.
    Use ``multiple_of`` (e.g. the EDNN focus size) to make each size divisible by a tile size."""
    from ase import Atoms

    if isinstance(cell, Atoms):
        cell = cell.cell.array
    check_choice("ndim", ndim, (2, 3))
    pixel = np.broadcast_to(check_positive_axes("pixel_size", pixel_size, ndim), (ndim,))
    m = check_int("multiple_of", multiple_of, 1)
    lengths = cell_lengths(cell, ndim)
    return tuple(max(m, m * int(round(L / (p * m)))) for L, p in zip(lengths, pixel))


def grid_coordinates(cell, shape):
    """Pixel-centre coordinates (A) ``k * L / n``, ``k = 0..n-1``: 1D float64 arrays (x, y[, z])
    matching ``img[ix, iy]``."""
    shape = check_grid_shape(shape)
    lengths = cell_lengths(cell, len(shape))
    return tuple(np.arange(n, dtype=np.float64) * (L / n) for L, n in zip(lengths, shape))


# --- energies per area and per atom ---
def cell_area(atoms) -> float:
    """In-plane cell area ``|a x b|`` in Angstrom^2 (cell vectors 0 and 1 span the sheet)."""
    cell = np.asarray(atoms.cell)
    area = float(np.linalg.norm(np.cross(cell[0], cell[1])))
    if not area > 0:
        raise ValueError(f"cell has zero in-plane area (cell={cell.tolist()})")
    return area


def _per(energies, structures, measure, scale):
    from ase import Atoms

    if isinstance(structures, Atoms):
        return float(energies) * scale / measure(structures)
    e = np.asarray(energies, dtype=np.float64)
    structures = list(structures)
    if e.shape != (len(structures),):
        raise ValueError(f"energies must have shape ({len(structures)},) to match the structures, got {e.shape}")
    return e * scale / np.array([measure(s) for s in structures])


def mev_per_area(energies, structures):
    """Energy (eV) -> meV/A^2 of cell area (the paper's unit). Scalar + Atoms, or arrays + list."""
    return _per(energies, structures, cell_area, 1000.0)


def mev_per_atom(energies, structures):
    """Energy (eV) -> meV/atom. Scalar + Atoms, or arrays + list."""
    return _per(energies, structures, len, 1000.0)
