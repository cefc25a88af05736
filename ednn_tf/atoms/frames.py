"""Structures in space: the one structure check, and the space frame of a potential (numpy, no TF).

A potential with the ``"atoms"`` readout (:class:`ednn_tf.potential.Potential`) sees a structure on a
grid **fixed in space**: pixel ``(a, b)`` samples ``(a p, b p)`` for every integer ``a, b`` (``p`` the
pitch, A), whatever the cell. A structure is rendered on the window of that grid that covers its
atoms plus a halo, the halo's atoms being periodic images ``r_i + n1 a1 + n2 a2`` of the cell's
atoms (no pixel wrap, no stretch: any cell shape and orientation, and a non-periodic flake when
``pbc`` is False in the plane). :func:`space_frame` finds that window and the images; the
TensorFlow side (:mod:`ednn_tf.atoms.space_tf`) renders, runs the density network and reads the
energy out per atom.

Window, per axis (pixel indices): the density is needed on the pixels the per-atom readout touches
(a cubic B-spline: ``floor(x/p) - 1 .. floor(x/p) + 2``; one pixel more on each side), the image on
those plus the network's context ``c``, and atoms whose Gaussian (width ``gamma``) reaches the image
within ``RENDER_RANGE`` gammas (the dropped tail is below ``exp(-24.5) = 2e-11`` of a peak).

:func:`check_structure` is the check of every entry point (calculator, ``ednn-tf predict/eval/train``,
batched prediction, training, MD): it names the atom, value or setting it refuses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RENDER_RANGE", "SPLINE_LEFT", "SPLINE_RIGHT", "check_structure", "check_structures", "Frame", "space_frame",
           "pack_frames",
           "in_plane_basis"]

#: Rendered atoms: those within this many gammas of the image window.
RENDER_RANGE = 7.0
#: Pixels the readout needs left and right of an atom's pixel ``a = floor(x / p)``: the cubic B-spline
#: ``B3(x / p - k)`` is non-zero for ``k`` in ``a - 1 .. a + 2`` (and vanishes with its first two
#: derivatives at the ends, so an atom on a pixel edge loses nothing to rounding).
SPLINE_LEFT, SPLINE_RIGHT = 1, 2
_PLANE_TOL = 1e-6


def _symbols(numbers):
    from ase.data import chemical_symbols

    return [chemical_symbols[int(z)] for z in numbers]


def check_structure(atoms, elements=None, max_height=None, min_vacuum=None, orthorhombic=False):
    """Check ``atoms`` (``ase.Atoms``) for a 2D potential; ValueError naming what is refused.

    Refused: not an ``ase.Atoms``; no atoms; a non-finite position (names the atom); an element not
    in ``elements`` (atomic numbers; None: any); a periodic in-plane axis whose cell vector is zero
    or leaves the plane; a cell periodic along z whose third vector is tilted or leaves less than
    ``min_vacuum`` (A) between the sheet and its image; an atom farther than ``max_height`` (A) from
    the sheet's plane (the median z; names the atom and its height; a bilayer or an adsorbate is
    not a sheet). ``orthorhombic``: also refuse a non-rectangular or non-periodic in-plane cell (the
    legacy ``"cell"`` readout). Returns ``(xy (N, 2) A, cell (2, 2) A: the in-plane cell rows, pbc
    (2,) bool)``; ``xy`` is a view of ``atoms.positions`` (no copy; never written to).
    """
    from ase import Atoms

    if not isinstance(atoms, Atoms):
        raise ValueError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError("cannot evaluate an empty structure (0 atoms)")
    pos = np.asarray(atoms.positions, dtype=np.float64)
    if not np.all(np.isfinite(pos)):
        i = int(np.argwhere(~np.isfinite(pos))[0, 0])
        raise ValueError(f"positions must be finite, got {pos[i].tolist()!r} for atom {i}")
    if elements is not None:
        unknown = sorted(set(int(z) for z in atoms.numbers) - set(int(z) for z in elements))
        if unknown:
            raise ValueError(f"the potential was trained on elements {_symbols(sorted(elements))}, got "
                             f"{_symbols(unknown)}")
    cell, pbc = np.asarray(atoms.cell.array, dtype=np.float64), [bool(b) for b in atoms.pbc]
    for k in (0, 1):
        if pbc[k]:
            norm = float(np.linalg.norm(cell[k]))
            if norm == 0.0:
                raise ValueError(f"atoms.pbc = {pbc} but cell vector {k} is zero (cell = {cell.round(4).tolist()})")
            if abs(cell[k, 2]) > _PLANE_TOL * norm:
                raise ValueError(f"cell vector {k} = {cell[k].round(4).tolist()} A leaves the xy plane: a 2D potential "
                                 "needs the periodic in-plane cell vectors in the xy plane")
    if pbc[0] and pbc[1] and abs(np.linalg.det(cell[:2, :2])) < 1e-6 * np.linalg.norm(cell[0]) * np.linalg.norm(cell[1]):
        raise ValueError(f"the in-plane cell vectors {cell[:2].round(4).tolist()} are parallel")
    z = pos[:, 2]
    plane = float(np.median(z))
    if pbc[2]:
        if np.linalg.norm(cell[2, :2]) > _PLANE_TOL * abs(cell[2, 2]) or cell[2, 2] == 0.0:
            raise ValueError(f"atoms.pbc = {pbc} with a third cell vector {cell[2].round(4).tolist()} A: a 2D "
                             "potential needs it along z (or pbc[2] = False)")
        vacuum = abs(cell[2, 2]) - float(z.max() - z.min())
        if min_vacuum is not None and vacuum < min_vacuum:
            raise ValueError(f"atoms.pbc = {pbc} with c = {abs(cell[2, 2]):.3f} A leaves {vacuum:.3f} A between the "
                             f"sheet and its periodic image along z; this 2D potential needs at least {min_vacuum:g} A "
                             "(set atoms.pbc[2] = False, or a longer c)")
    if max_height is not None:
        i = int(np.argmax(np.abs(z - plane)))
        if abs(z[i] - plane) > max_height:
            raise ValueError(f"atom {i} ({_symbols([atoms.numbers[i]])[0]}) lies {z[i] - plane:+.3f} A from the sheet's "
                             f"plane (median z = {plane:.3f} A); this 2D potential takes atoms within {max_height:g} A "
                             "of the plane (a bilayer, an adsorbate or a 3D structure is outside what it was trained on)")
    if orthorhombic:
        from .cells import cell_lengths

        cell_lengths(cell, 2)   # raises for a non-orthorhombic cell
        if not (pbc[0] and pbc[1]):
            raise ValueError(f"this potential's grid is periodic along x and y, but atoms.pbc = {pbc}")
    return pos[:, :2], cell[:2, :2].copy(), np.array(pbc[:2])     # xy: a view (no copy: large structures)


def check_structures(potential, structures, orthorhombic=False):
    """:func:`check_structure` of every structure with ``potential``'s elements and limits (its
    ``max_height``, ``min_vacuum``); ValueError prefixed ``structure i:``. Returns their results."""
    out = []
    for i, atoms in enumerate(structures):
        try:
            out.append(check_structure(atoms, potential.elements or None, potential.max_height, potential.min_vacuum,
                                       orthorhombic))
        except ValueError as exc:
            raise ValueError(f"structure {i}: {exc}") from None
    return out


def in_plane_basis(cell, pbc):
    """A 2x2 basis whose rows are the periodic cell vectors (a perpendicular unit vector, or the unit
    vectors, standing in for the non-periodic ones)."""
    cell, pbc = np.asarray(cell, dtype=np.float64), np.asarray(pbc, dtype=bool)
    if pbc.all():
        return cell.copy()
    if not pbc.any():
        return np.eye(2)
    k = int(np.argmax(pbc))
    a = cell[k] / np.linalg.norm(cell[k])
    out = np.empty((2, 2))
    out[k], out[1 - k] = cell[k], (-a[1], a[0])
    return out


@dataclass
class Frame:
    """A structure in a potential's space frame (see the module docstring).

    ``xy`` (N, 2) A: the atoms where they are (not wrapped into the cell: an atom's energy is read
    out at its own position, so E stays continuous when an atom crosses the cell's boundary, and a
    copy of the cell moved by a lattice vector differs only by its sub-pixel offset); ``cell`` (2, 2) A: the
    in-plane cell rows (a non-periodic axis gets a zero row: no images along it); ``idx`` (M,) and
    ``shift`` (M, 2): the rendered atoms are ``xy[idx] + shift @ cell`` (the first N are the atoms
    themselves, shift 0); ``origin`` (2,) and ``shape`` (2,): the image covers pixels ``origin ..
    origin + shape - 1`` of the space grid (context included). A block of a larger structure
    (:func:`block_frames`) reads out only its first ``read`` atoms (the rest are the sources of its
    halo) and ``atoms`` (len(xy),) are their indices in the whole structure."""

    xy: np.ndarray
    cell: np.ndarray
    idx: np.ndarray
    shift: np.ndarray
    origin: np.ndarray
    shape: np.ndarray
    read: int | None = None
    atoms: np.ndarray | None = None

    def __post_init__(self):
        self.read = len(self.xy) if self.read is None else int(self.read)
        self.atoms = (np.arange(len(self.xy), dtype=np.int32 if len(self.xy) < 2 ** 31 else np.int64)
                      if self.atoms is None else np.asarray(self.atoms))


def space_frame(xy, cell, pbc, pitch, context, gamma):
    """The :class:`Frame` of atoms ``xy`` (N, 2) A in an in-plane ``cell`` (2, 2) A periodic along
    ``pbc`` (2,) bool, for a potential of pitch ``pitch`` (A), network context ``context`` (pixels)
    and Gaussian width ``gamma`` (A)."""
    xy, pbc = np.asarray(xy, dtype=np.float64), np.asarray(pbc, dtype=bool)
    inv = np.linalg.inv(in_plane_basis(cell, pbc))
    lo = np.floor(xy.min(0) / pitch).astype(np.int64) - SPLINE_LEFT
    hi = np.floor(xy.max(0) / pitch).astype(np.int64) + SPLINE_RIGHT
    origin = lo - int(context)
    shape = hi - lo + 1 + 2 * int(context)
    reach = RENDER_RANGE * gamma
    box_lo, box_hi = origin * pitch - reach, (origin + shape - 1) * pitch + reach
    lattice = np.where(pbc[:, None], np.asarray(cell, dtype=np.float64), 0.0)
    corners = np.array([[x, y] for x in (box_lo[0], box_hi[0]) for y in (box_lo[1], box_hi[1])]) @ inv
    frac = xy @ inv
    f_lo, f_hi = corners.min(0), corners.max(0)
    n_lo = np.where(pbc, np.floor(f_lo - frac.max(0)), 0).astype(np.int64)
    n_hi = np.where(pbc, np.ceil(f_hi - frac.min(0)), 0).astype(np.int64)
    idx, shift = [np.arange(len(xy), dtype=np.int32 if len(xy) < 2 ** 31 else np.int64)], [np.zeros((len(xy), 2), np.int32)]
    for n in ((i, j) for i in range(n_lo[0], n_hi[0] + 1) for j in range(n_lo[1], n_hi[1] + 1)):
        if n == (0, 0):
            continue
        u = frac + np.asarray(n)                        # one shift at a time: memory O(N)
        rows = np.flatnonzero(np.all((u >= f_lo) & (u <= f_hi), axis=1))
        p = xy[rows] + np.asarray(n) @ lattice
        rows = rows[np.all((p >= box_lo) & (p <= box_hi), axis=1)]
        idx.append(rows)
        shift.append(np.tile(np.asarray(n, np.int32), (len(rows), 1)))
        idx[-1] = idx[-1].astype(idx[0].dtype)
    idx, shift = np.concatenate(idx), np.concatenate(shift)
    return Frame(xy, lattice, idx, shift, origin, shape)


def pack_frames(frames, weights, shape=None):
    """Pad ``frames`` (a list of :class:`Frame`) to one batch of numpy arrays: ``positions`` (B, N, 2),
    ``cell`` (B, 2, 2), ``mask`` (B, N) (1 for an atom, 0 for padding), ``idx`` (B, M), ``shift``
    (B, M, 2), ``weights`` (B, M, C) (the channel weights of every rendered atom, 0 for padding:
    nothing is rendered for it), ``origin`` (B, 2) and ``shape`` (2,): the largest window (or
    ``shape`` when given and large enough); a smaller window is padded with empty space, which the
    readout never touches. ``weights``: one (N_b, C) array per frame."""
    B = len(frames)
    n = max(len(f.xy) for f in frames)
    m = max(len(f.idx) for f in frames)
    C = weights[0].shape[1]
    grid = np.max([f.shape for f in frames], axis=0)
    if shape is not None:
        grid = np.maximum(grid, np.asarray(shape, dtype=np.int64))
    out = {"positions": np.zeros((B, n, 2)), "cell": np.zeros((B, 2, 2)), "mask": np.zeros((B, n)),
           "idx": np.zeros((B, m), np.int32), "shift": np.zeros((B, m, 2)), "weights": np.zeros((B, m, C), np.float32),
           "origin": np.zeros((B, 2), np.int32), "shape": grid.astype(np.int32)}
    for b, (f, w) in enumerate(zip(frames, weights)):
        k, j = len(f.xy), len(f.idx)
        out["positions"][b, :k], out["cell"][b], out["mask"][b, :f.read] = f.xy, f.cell, 1.0
        out["idx"][b, :j], out["shift"][b, :j], out["weights"][b, :j] = f.idx, f.shift, w[f.idx]
        out["origin"][b] = f.origin
    return out


def block_counts(frame, block, pitch):
    """``(counts, sides)``: the (2,) numbers of blocks along x and y that cover ``frame``'s readout
    pixels, and their (2,) sides in pixels. An axis spanning ``n`` pixels gets ``max(1, round(n /
    block))`` blocks of equal side ``ceil(n / count)`` (between about 2/3 and 1.5 ``block``): no
    nearly empty edge block costs a full window (see :func:`block_frames`)."""
    pix = np.floor(frame.xy / pitch).astype(np.int64)
    return _balanced(pix.max(0) - pix.min(0) + 1, block)


def _balanced(span, block):
    """``(counts, sides)`` of :func:`block_counts` for axes spanning ``span`` (2,) pixels."""
    counts = np.maximum(1, np.floor(span / block + 0.5).astype(np.int64))
    return counts, -(-span // counts)


def block_window(start, block, pitch, context, gamma):
    """``(origin, shape, lo, hi)`` of the block of ``block`` (one side, or (2,)) readout pixels whose
    first pixel is ``start`` (2,): its window's first pixel and shape (the block, the spline's reach and
    the context on each side), and the box ``lo .. hi`` (A) of the atoms it must render."""
    origin = np.asarray(start) - SPLINE_LEFT - int(context)
    shape = np.broadcast_to(np.asarray(block, np.int64) + SPLINE_LEFT + SPLINE_RIGHT + 2 * int(context), (2,)).copy()
    reach = RENDER_RANGE * gamma
    return origin, shape, origin * pitch - reach, (origin + shape - 1) * pitch + reach


def block_frames(frame, block, pitch, context, gamma):
    """``frame`` cut into blocks of about ``block`` x ``block`` readout pixels (a generator of
    :class:`Frame`; ``frame`` itself when it fits in one; the counts and sides of
    :func:`block_counts`): a block reads out the atoms whose pixel lies in it and renders its own
    halo from the frame's atoms and images, so the blocks' per-atom energies are the frame's, their
    energies sum to its energy and their forces, added up on ``atoms``, to its forces; memory scales
    with the block, not with the structure (the blocks are made one at a time). Every block has the
    same window shape."""
    pix = np.floor(frame.xy / pitch).astype(np.int64)
    first = pix.min(0)
    counts, side = _balanced(pix.max(0) - first + 1, block)
    if np.all(counts == 1):
        yield frame
        return
    reach = RENDER_RANGE * gamma
    rb = np.ceil(((SPLINE_RIGHT + 2 + int(context)) * pitch + reach) / (side * pitch)).astype(np.int64)  # bins
    width = int(counts[1] + 2 * rb[1] + 3)
    small = np.int32 if int(counts[0] + 2 * rb[0] + 3) * width < 2 ** 31 and len(frame.idx) < 2 ** 31 else np.int64
    home = (pix - first) // side                    # each temporary freed once used, 32-bit where it fits:
    del pix                                         # about 20 bytes an atom for the index below
    hkey = (home[:, 0] * width + home[:, 1]).astype(small)
    del home
    horder = np.argsort(hkey, kind="stable").astype(small)
    shkey = hkey[horder]
    del hkey
    lo_pix = first / side - rb - 1
    key = np.empty(len(frame.idx), small)          # each rendered atom's bin, a chunk at a time
    for a in range(0, len(key), _CHUNK):
        c = _rendered(frame, slice(a, a + _CHUNK))
        key[a:a + _CHUNK] = (np.floor(c[:, 0] / (side[0] * pitch) - lo_pix[0]) * width
                             + np.floor(c[:, 1] / (side[1] * pitch) - lo_pix[1]))
    order = np.argsort(key, kind="stable").astype(small)
    skey = key[order]
    del key
    homes = shkey[np.r_[True, shkey[1:] != shkey[:-1]]]
    for k in homes:
        bi, bj = divmod(int(k), width)
        targets = horder[np.searchsorted(shkey, k, "left"):np.searchsorted(shkey, k, "right")]
        origin, shape, lo, hi = block_window(first + np.array([bi, bj]) * side, side, pitch, context, gamma)
        near = [order[np.searchsorted(skey, q, "left"):np.searchsorted(skey, q, "right")]
                for q in (skey.dtype.type((bi + rb[0] + 1 + di) * width + bj + rb[1] + 1 + dj)   # the keys' dtype:
                          for di in range(-rb[0], rb[0] + 1) for dj in range(-rb[1], rb[1] + 1))]   # no cast of skey
        near = np.concatenate(near)
        c = _rendered(frame, near)
        sel = near[np.all((c >= lo - 1e-3) & (c <= hi + 1e-3), axis=1)]
        halo = np.setdiff1d(np.unique(frame.idx[sel]), targets)
        local_ids = np.concatenate([targets, halo])
        rank = np.argsort(local_ids)
        local = rank[np.searchsorted(local_ids[rank], frame.idx[sel])]
        yield Frame(frame.xy[local_ids], frame.cell, local, frame.shift[sel], origin, shape.copy(),
                    read=len(targets), atoms=frame.atoms[local_ids])


_CHUNK = 1 << 20


def _rendered(frame, rows):
    """Positions (A) of the rendered atoms ``rows`` (a slice or indices into ``frame.idx``)."""
    return frame.xy[frame.idx[rows]] + frame.shift[rows] @ frame.cell


def window_pixels(frame) -> int:
    """Pixels of a frame's image (its cost)."""
    return int(math.prod(int(s) for s in frame.shape))


__all__ += ["block_counts", "block_window", "block_frames", "window_pixels"]


def structure_frame(potential, atoms, checked=None, weights=True):
    """``(Frame, channel weights (N, C))`` of ``atoms`` for a potential with the ``"atoms"`` readout,
    after :func:`check_structure` with the potential's elements and limits (``checked``: its result,
    when the structure was checked already). ``weights=False``: None instead of the weights (a large
    structure's blocks make their own with :func:`frame_weights`)."""
    if checked is None:
        checked = check_structure(atoms, potential.elements or None, potential.max_height, potential.min_vacuum)
    frame = space_frame(*checked, potential.pitch, potential.ednn.context, potential.gamma)
    return frame, (frame_weights(potential, atoms.numbers) if weights else None)


def frame_weights(potential, numbers):
    """Channel weights (N, C) float32 of atoms with atomic ``numbers`` for ``potential``."""
    from .cells import atomic_numbers, channel_weights

    return channel_weights(atomic_numbers(numbers), potential.channels)[0].astype(np.float32)


def moved_frame(frame, T, shift, pitch, context, gamma):
    """The frame of ``frame``'s atoms and cell turned by ``T`` (2, 2) and moved by ``shift`` (2,) A
    (window and images found anew; the periodic axes are those with a cell row)."""
    pbc = np.any(frame.cell != 0, axis=1)
    return space_frame(frame.xy @ T.T + shift, frame.cell @ T.T, pbc, pitch, context, gamma)


__all__ += ["structure_frame", "frame_weights", "moved_frame"]
