"""Small periodic cells cut from a large structure around the places where a committee is unsure
(issue 28, "large systems"): the oracle cannot label a 10^5-atom sheet, but it can label a 60-100 atom
cell that holds the same environment.

1. :func:`uncertain_spots`: the most uncertain atoms (e.g. by force deviation), at least
   ``min_separation`` apart, so that one defect gives one cell and not ten.
2. :func:`cut_spot`: the atoms of an ``L x L`` square around a spot become a periodic ``L x L`` cell;
   those within ``keep_radius`` of the spot stay exactly as they were (the environment to learn),
   atoms of the outer shell that the new periodic boundary brings closer than ``min_distance`` to
   another atom are removed (the one farther from the spot first; never a kept one).
3. :func:`relax_shell`: the outer shell relaxed with the current model (a calculator, e.g. the
   committee's mean), the kept atoms fixed, so that the seam of the new boundary is not what the
   oracle's label is about (as in MLIP-3's active learning of large systems).
"""
from __future__ import annotations

import numpy as np

__all__ = ["uncertain_spots", "cut_spot", "relax_shell", "porous_sheet"]


def uncertain_spots(values, positions, n, min_separation=8.0, cell=None, pbc=(False, False, False)):
    """Indices of up to ``n`` atoms with the largest ``values`` (N,), each at least ``min_separation``
    (A, in-plane) from the ones picked before it (greedy, highest first; ties by index). With ``cell``
    (3, 3) the distance is the minimum image along the axes that ``pbc`` marks periodic."""
    from ase.geometry import find_mic

    from ..util import check_float, check_int

    values, positions = np.asarray(values, np.float64), np.asarray(positions, np.float64)
    if values.ndim != 1 or len(values) != len(positions) or not np.all(np.isfinite(values)):
        raise ValueError(f"values must be one finite number per atom: got shape {values.shape} for "
                         f"{len(positions)} atoms")
    n = check_int("n", n, minimum=1)
    min_separation = check_float("min_separation", min_separation, minimum=0.0)
    periodic = cell is not None and any(pbc[:2])
    mask = [bool(pbc[0]), bool(pbc[1]), False]
    picked = []
    for i in np.argsort(-values, kind="stable"):
        d = np.zeros((len(picked), 3))
        d[:, :2] = positions[picked, :2] - positions[i, :2]
        if periodic and len(picked):
            d = find_mic(d, cell, mask)[0]
        if not len(picked) or np.linalg.norm(d[:, :2], axis=1).min() >= min_separation:
            picked.append(int(i))
            if len(picked) == n:
                break
    return picked


def _centred(atoms, center):
    """In-plane displacements (N, 2) of the atoms from ``center``, minimum image along periodic axes."""
    from ase.geometry import find_mic

    d = np.c_[atoms.positions[:, :2] - np.asarray(center, np.float64)[:2], np.zeros(len(atoms))]
    if np.any(atoms.pbc[:2]):
        pbc = [bool(atoms.pbc[0]), bool(atoms.pbc[1]), False]
        d, _ = find_mic(d, atoms.cell, pbc)
    return d[:, :2]


def cut_spot(atoms, center, size, keep_radius, min_distance=1.0, vacuum=20.0):
    """The ``size x size`` (A) periodic cell around ``center`` (xy, A) of ``atoms`` (see the module
    docstring). The spot sits at the cell's centre; ``arrays["spot_core"]`` marks the atoms within
    ``keep_radius`` (A), kept exactly; ``info["spot_center"]`` is ``center``; z is kept, in a cell
    ``vacuum`` (A) high. ValueError for ``keep_radius`` that does not fit the cell with room for a
    seam (``2 keep_radius + 2 min_distance > size``) or a spot with no atom within ``keep_radius``."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    from ..util import check_float

    size = check_float("size", size, minimum=0.0, strict=True)
    keep_radius = check_float("keep_radius", keep_radius, minimum=0.0, strict=True)
    min_distance = check_float("min_distance", min_distance, minimum=0.0, strict=True)
    if 2 * keep_radius + 2 * min_distance > size:
        raise ValueError(f"keep_radius {keep_radius} A and min_distance {min_distance} A leave no seam in a "
                         f"{size} A cell: need 2 keep_radius + 2 min_distance <= size")
    for axis in range(2):
        length = float(np.linalg.norm(atoms.cell[axis, :2]))
        if atoms.pbc[axis] and size > length:
            raise ValueError(f"a {size} A cell does not fit in the structure's periodic length {length:.2f} A "
                             f"along axis {axis}: cut a smaller cell or repeat the structure")
    d = _centred(atoms, center)
    inside = np.all((d >= -size / 2) & (d < size / 2), axis=1)
    idx = np.flatnonzero(inside)
    r = np.linalg.norm(d[idx], axis=1)
    core = r <= keep_radius
    if not core.any():
        raise ValueError(f"no atom within keep_radius {keep_radius} A of the spot {tuple(center)[:2]}")
    z = atoms.positions[idx, 2] - np.median(atoms.positions[:, 2]) + vacuum / 2
    cell = Atoms(numbers=atoms.numbers[idx], positions=np.c_[d[idx] + size / 2, z],
                 cell=[size, size, vacuum], pbc=[True, True, False])
    keep = np.ones(len(cell), bool)
    while True:                              # drop the seam's overlaps, farthest from the spot first
        i, j = neighbor_list("ij", cell[keep], min_distance)
        if not len(i):
            break
        live = np.flatnonzero(keep)
        pairs = np.c_[live[i], live[j]]
        candidates = np.unique(pairs[~core[pairs].all(axis=1)].ravel())
        candidates = candidates[~core[candidates]]
        if not len(candidates):
            raise ValueError(f"atoms within keep_radius {keep_radius} A are closer than min_distance "
                             f"{min_distance} A to each other")
        keep[candidates[np.argmax(r[candidates])]] = False
    out = cell[keep]
    out.arrays["spot_core"] = core[keep]
    out.info["spot_center"] = [float(v) for v in np.asarray(center, np.float64)[:2]]
    return out


def relax_shell(cell, calculator, fmax=0.1, steps=100):
    """``cell`` (from :func:`cut_spot`) with its outer shell relaxed by ``calculator`` (FIRE, at most
    ``steps``, to ``fmax`` eV/A), the ``spot_core`` atoms fixed; a copy without the calculator."""
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE

    from ..util import check_float, check_int

    fmax = check_float("fmax", fmax, minimum=0.0, strict=True)
    steps = check_int("steps", steps, minimum=0)
    work = cell.copy()
    work.set_constraint(FixAtoms(mask=cell.arrays["spot_core"]))
    work.calc = calculator
    opt = FIRE(work, logfile=None)
    converged = opt.run(fmax=fmax, steps=steps)
    out = cell.copy()
    out.positions = work.positions
    out.info.update(relax_steps=int(opt.nsteps), relax_converged=bool(converged))
    return out


def porous_sheet(size, seed=0):
    """The default large structure of ``experiments/uncertain_spots.py``: porous graphene ``size`` A
    wide, one pore per 1,500 A^2, rattled by 0.05 A, periodic in the plane."""
    from ..atoms.structures import porous_graphene

    sheet = porous_graphene(size, n_pores=max(1, int(size ** 2 / 1500)), seed=seed, rattle=0.05)
    sheet.pbc = [True, True, False]
    return sheet
