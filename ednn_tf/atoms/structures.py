"""Deterministic (seeded) 2-D structure generators for the paper's Sec. 3.2 data sets.

Everything here returns :class:`ase.Atoms` with an **orthorhombic** cell, periodic in x and y
(``pbc = (True, True, False)``), the sheet in the plane ``z = vacuum / 2`` and ``vacuum`` Angstrom of
cell height (default 20 A, enough that periodic images in z never interact for the oracles in
:mod:`ednn_tf.labels.oracles`). Lengths are in Angstrom. The same ``seed`` always gives the same structure
(bit-for-bit: numpy's PCG64 via :class:`numpy.random.SeedSequence`).

Lattice: the 4-atom rectangular cell of the honeycomb lattice, ``a x sqrt(3) a`` with atoms at
fractional ``(0, 0), (1/2, 1/6), (1/2, 1/2), (0, 2/3)``; sites 0 and 2 form sublattice A, 1 and 3
sublattice B (in h-BN, A = boron, B = nitrogen). Bond length ``a / sqrt(3)``.

* :func:`hexagonal_cell` -- Sec. 3.2.1: 60-atom (5 x 3 rectangular cells) sheets of graphene, h-BN
  and B-C-N mixtures, optionally with 1-3 vacancies, thermally rattled. Default ``a = 2.50`` A gives
  a 12.50 x 12.99 A cell: the paper's "12.5 A x 13 A unit cell containing 60 atoms". One cell for
  every kind, so an image grid over the cell has the same pixel size for every structure (graphene
  is then under 1.6 % biaxial strain relative to its 2.46 A lattice constant; pass
  ``lattice_constant=2.46`` for unstrained graphene in a 12.30 x 12.78 A cell).
* :func:`porous_graphene` -- Sec. 3.2.2: a ~35 x 35 A graphene sheet (14 x 8 rectangular cells of
  a = 2.46 A: 34.44 x 34.09 A, 448 atoms before pores) with random circular pores.
* :func:`varied_hexagonal_cell` -- the same kinds in 8 cell sizes and shapes (24-72 atoms), each
  material at its own lattice constant, strained up to +-2 %: training data for a potential.
* :func:`supercell` -- ``k x k`` in-plane repetition (the extensivity checks use it).
"""
from __future__ import annotations

import math

import numpy as np
from ase import Atoms

from ..util import check_choice, check_float, check_int

__all__ = ["HEXAGONAL_KINDS", "honeycomb_sheet", "hexagonal_cell", "hexagonal_dataset", "porous_graphene", "supercell",
           "rattle", "min_interatomic_distance", "varied_hexagonal_cell", "LATTICE_CONSTANTS", "VARIED_REPEATS"]

#: Kinds accepted by :func:`hexagonal_cell`.
HEXAGONAL_KINDS = ("graphene", "hbn", "bnc-domains", "bnc-random")

FRACTIONAL = np.array([(0.0, 0.0), (0.5, 1.0 / 6.0), (0.5, 0.5), (0.0, 2.0 / 3.0)])
_SUBLATTICE = np.array([0, 1, 0, 1])  # 0 = A (boron in h-BN), 1 = B (nitrogen in h-BN)
_MAX_REDRAWS = 100


def _rng(seed, *extra):
    """A PCG64 generator from a non-negative integer seed (plus optional stream keys)."""
    return np.random.default_rng(np.random.SeedSequence([check_int("seed", seed, 0), *extra]))


# --- lattice ---
def honeycomb_sheet(nx: int, ny: int, lattice_constant: float = 2.46, symbols=("C", "C"),
                    vacuum: float = 20.0) -> Atoms:
    """Ideal honeycomb sheet of ``nx x ny`` rectangular 4-atom cells (``4 nx ny`` atoms; x length ``a``
    = ``lattice_constant``, y length ``sqrt(3) a``), ``symbols`` on sublattices A and B (``("B", "N")``
    for h-BN), ``vacuum`` A of cell height. Atom order: cell by cell (x fastest), four sites per cell;
    ``atoms.arrays["sublattice"]`` holds 0 (A) or 1 (B)."""
    nx = check_int("nx", nx, 1)
    ny = check_int("ny", ny, 1)
    a = check_float("lattice_constant", lattice_constant, 0.0, strict=True)
    vacuum = check_float("vacuum", vacuum, 0.0, strict=True)
    if len(symbols) != 2:
        raise ValueError(f"symbols must be two element symbols (sublattice A, B), got {symbols!r}")
    b = math.sqrt(3.0) * a
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    origins = np.stack([ix.ravel() * a, iy.ravel() * b], axis=1)  # (nx*ny, 2), x fastest
    frac = FRACTIONAL * np.array([a, b])
    xy = (origins[:, None, :] + frac[None, :, :]).reshape(-1, 2)
    sub = np.tile(_SUBLATTICE, nx * ny)
    pos = np.column_stack([xy, np.full(len(xy), vacuum / 2.0)])
    atoms = Atoms([symbols[s] for s in sub], positions=pos, cell=[nx * a, ny * b, vacuum],
                  pbc=(True, True, False))
    atoms.set_array("sublattice", sub.astype(np.int8))
    return atoms


def min_interatomic_distance(atoms: Atoms) -> float:
    """Smallest distance between two distinct atoms (Angstrom), minimum-image over periodic axes;
    ``inf`` for fewer than two atoms. Up to 2,000 atoms from all pairs; above, from ASE's neighbour
    list (O(N)) within a cutoff doubled from 3 A until a pair is found."""
    if len(atoms) < 2:
        return math.inf
    if len(atoms) <= 2000:
        d = _distance_matrix(atoms)
        np.fill_diagonal(d, np.inf)
        return float(d.min())
    from ase.neighborlist import neighbor_list

    cutoff = 3.0
    while True:
        d = neighbor_list("d", atoms, cutoff)
        if len(d) or cutoff > 2 * max(atoms.cell.lengths().max(), np.ptp(atoms.positions, axis=0).max()):
            return float(d.min()) if len(d) else math.inf
        cutoff *= 2.0


def _coordination(atoms: Atoms, cutoff: float) -> np.ndarray:
    """(N,) number of other atoms within ``cutoff`` A of each (ASE's neighbour list: O(N))."""
    from ase.neighborlist import neighbor_list

    return np.bincount(neighbor_list("i", atoms, cutoff), minlength=len(atoms))


def _distance_matrix(atoms: Atoms) -> np.ndarray:
    """All pair distances (Angstrom), minimum image along periodic axes. Orthorhombic cells (all
    built here) use per-axis rounding, which is the exact minimum image for such cells; other
    cells fall back to ASE's general ``get_all_distances(mic=True)``."""
    cell = np.asarray(atoms.cell)
    if not np.allclose(cell, np.diag(np.diag(cell))):
        return atoms.get_all_distances(mic=True)
    lengths = np.diag(cell)
    d = atoms.positions[:, None, :] - atoms.positions[None, :, :]
    for ax in range(3):
        if atoms.pbc[ax] and lengths[ax] > 0:
            d[..., ax] -= np.round(d[..., ax] / lengths[ax]) * lengths[ax]
    return np.sqrt((d * d).sum(axis=-1))


def _rattle(atoms: Atoms, rng, sigma_xy: float, sigma_z: float, min_distance: float) -> Atoms:
    """Gaussian displacements (std ``sigma_xy`` per in-plane component, ``sigma_z`` out of plane),
    redrawn until no two atoms are closer than ``min_distance`` Angstrom."""
    if sigma_xy == 0.0 and sigma_z == 0.0:
        return atoms
    base = atoms.get_positions()
    sigma = np.array([sigma_xy, sigma_xy, sigma_z])
    for _ in range(_MAX_REDRAWS):
        trial = atoms.copy()
        trial.set_positions(base + rng.normal(size=base.shape) * sigma)
        if min_interatomic_distance(trial) >= min_distance:
            trial.wrap()
            return trial
    raise RuntimeError(f"could not rattle with sigma_xy={sigma_xy} A, sigma_z={sigma_z} A without two atoms "
                       f"closer than min_distance={min_distance} A in {_MAX_REDRAWS} draws; lower the rattle")


def rattle(atoms: Atoms, sigma_xy: float, sigma_z: float = 0.0, seed=0, min_distance: float = 1.0) -> Atoms:
    """A copy of ``atoms`` with independent Gaussian displacements of every atom: std ``sigma_xy``
    (A) per in-plane component and ``sigma_z`` out of plane, redrawn until no two atoms are closer
    than ``min_distance`` A, then wrapped into the cell. ``seed`` is an int or a numpy
    ``Generator``. Raises ValueError for a negative or non-finite sigma and RuntimeError when no
    draw keeps the atoms apart."""
    if not isinstance(atoms, Atoms):
        raise TypeError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
    sigma_xy = check_float("sigma_xy", sigma_xy, 0.0)
    sigma_z = check_float("sigma_z", sigma_z, 0.0)
    min_distance = check_float("min_distance", min_distance, 0.0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _rattle(atoms.copy(), rng, sigma_xy, sigma_z, min_distance)


def _periodic_xy_distance(xy, centre, cell_xy):
    d = xy - centre
    d -= np.round(d / cell_xy) * cell_xy
    return np.hypot(d[:, 0], d[:, 1])


# --- Sec. 3.2.1: hexagonal sheets ---
def _hexagonal_symbols(atoms, kind, rng, bn_fraction, info):
    """Element symbols of ``kind`` on the honeycomb sites of ``atoms`` (draws from ``rng``; records
    the draws in ``info``)."""
    bn_symbols = np.where(atoms.arrays["sublattice"] == 0, "B", "N")
    if kind == "hbn":
        return bn_symbols
    if kind == "graphene":
        return np.full(len(atoms), "C")
    if kind == "bnc-random":
        if bn_fraction is None:
            bn_fraction = float(rng.uniform(0.05, 0.5))
        bn_fraction = check_float("bn_fraction", bn_fraction, 0.0, 1.0)
        info["bn_fraction"] = bn_fraction
        return np.where(rng.random(len(atoms)) < bn_fraction, bn_symbols, "C")
    cell_xy = atoms.cell.lengths()[:2]  # bnc-domains
    xy = atoms.positions[:, :2]
    inside = np.zeros(len(atoms), dtype=bool)
    n_domains = int(rng.integers(1, 4))
    for _ in range(n_domains):
        centre = rng.uniform(0.0, 1.0, 2) * cell_xy
        radius = rng.uniform(0.2, 0.45) * min(cell_xy)
        inside |= _periodic_xy_distance(xy, centre, cell_xy) < radius
    bn_host = bool(rng.random() < 0.5)
    info.update(n_domains=n_domains, host="hbn" if bn_host else "graphene")
    return np.where(~inside if bn_host else inside, bn_symbols, "C")


def hexagonal_cell(kind: str = "graphene", seed: int = 0, *, vacancies: int = 0, rattle: float = 0.07,
                   rattle_z: float = 0.03, lattice_constant: float = 2.50, repeat=(5, 3),
                   vacuum: float = 20.0, bn_fraction: float | None = None,
                   min_distance: float = 1.0) -> Atoms:
    """One 60-atom hexagonal sheet (paper Sec. 3.2.1), deterministic from ``seed`` (int >= 0).

    ``kind``: ``"graphene"`` (all carbon); ``"hbn"`` (B on sublattice A, N on B); ``"bnc-domains"``
    (graphene with 1-3 random periodic circular h-BN domains, or for half the seeds h-BN with carbon
    domains, keeping B on A / N on B); ``"bnc-random"`` (each site of graphene substituted, B on A and
    N on B, with probability ``bn_fraction``, drawn from U(0.05, 0.5) if None). ``vacancies`` (0..3)
    atoms are removed at random; ``rattle`` / ``rattle_z`` are the Gaussian displacement stds (A) per
    in-plane component / out of plane, redrawn until no two atoms are closer than ``min_distance`` A.
    ``repeat`` rectangular cells (default (5, 3): 60 atoms) of ``lattice_constant`` A (2.50: the
    paper's 12.5 x 13 A cell for every kind), ``vacuum`` A high.

    Returns :class:`ase.Atoms` (``4 * nx * ny - vacancies`` atoms) with ``atoms.info`` recording
    the generator arguments (``kind``, ``seed``, ``vacancies``, ``rattle``, ...).
    """
    check_choice("kind", kind, HEXAGONAL_KINDS)
    vacancies = check_int("vacancies", vacancies, 0, 3)
    rattle = check_float("rattle", rattle, 0.0)
    rattle_z = check_float("rattle_z", rattle_z, 0.0)
    min_distance = check_float("min_distance", min_distance, 0.0)
    if len(tuple(repeat)) != 2:
        raise ValueError(f"repeat must be two integers (nx, ny), got {repeat!r}")
    nx, ny = (check_int("repeat", r, 1) for r in repeat)
    rng = _rng(seed, 1)  # stream 1: hexagonal cells

    atoms = honeycomb_sheet(nx, ny, lattice_constant, ("C", "C"), vacuum)
    info = {"generator": "hexagonal_cell", "kind": kind, "seed": int(seed), "vacancies": vacancies,
            "rattle": rattle, "rattle_z": rattle_z, "lattice_constant": float(lattice_constant)}
    symbols = _hexagonal_symbols(atoms, kind, rng, bn_fraction, info)
    atoms.set_chemical_symbols(list(symbols))

    if vacancies:
        removed = np.sort(rng.choice(len(atoms), size=vacancies, replace=False))
        del atoms[list(removed)]
        info["removed"] = removed.tolist()
    atoms = _rattle(atoms, rng, rattle, rattle_z, min_distance)
    atoms.info.update(info)
    return atoms


def hexagonal_dataset(n: int, seed: int = 0, *, kinds=HEXAGONAL_KINDS, vacancy_probability: float = 0.5,
                      rattle_range=(0.05, 0.10), **kwargs) -> list[Atoms]:
    """``n`` hexagonal sheets of mixed kinds, deterministic from ``seed``.

    Structure ``i`` is drawn from its own stream (``SeedSequence([seed, 2, i])``), so the first ``m``
    structures of ``hexagonal_dataset(n, s)`` equal ``hexagonal_dataset(m, s)``. For each structure:
    kind uniform over ``kinds``; with probability ``vacancy_probability`` 1-3 vacancies (uniform),
    else none; in-plane rattle sigma uniform in ``rattle_range`` (Angstrom), ``rattle_z`` =
    ``0.4 * rattle``. Other keyword arguments go to :func:`hexagonal_cell`.
    """
    n = check_int("n", n, 0)
    kinds = tuple(kinds)
    if not kinds or any(k not in HEXAGONAL_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {HEXAGONAL_KINDS}, got {kinds!r}")
    p = check_float("vacancy_probability", vacancy_probability, 0.0, 1.0)
    lo, hi = (check_float("rattle_range", r, 0.0) for r in rattle_range)
    if hi < lo:
        raise ValueError(f"rattle_range must be (low, high) with low <= high, got {rattle_range!r}")
    _rng(seed)  # validate
    out = []
    for i in range(n):
        r = _rng(seed, 2, i)
        kind = kinds[int(r.integers(len(kinds)))]
        vac = int(r.integers(1, 4)) if r.random() < p else 0
        sigma = float(r.uniform(lo, hi))
        sub_seed = int(r.integers(2**31))
        atoms = hexagonal_cell(kind, sub_seed, vacancies=vac, rattle=sigma, rattle_z=0.4 * sigma, **kwargs)
        atoms.info.update(dataset_seed=int(seed), dataset_index=i)
        out.append(atoms)
    return out


# --- Sec. 3.2.2: porous graphene ---
#: In-plane lattice constants (A) of the pure materials; a B/N fraction x interpolates linearly.
LATTICE_CONSTANTS = {"graphene": 2.46, "hbn": 2.50}
#: Rectangular-cell repeats (nx, ny) of :func:`varied_hexagonal_cell`: 24 to 72 atoms, cells from
#: 7.4 x 8.5 A to 14.8 x 12.8 A, aspect ratios 0.6 to 1.7.
VARIED_REPEATS = ((3, 2), (4, 2), (5, 2), (6, 2), (3, 3), (4, 3), (5, 3), (6, 3))


def varied_hexagonal_cell(seed: int, *, kinds=HEXAGONAL_KINDS, repeats=VARIED_REPEATS, max_strain: float = 0.02,
                          rattle_range=(0.03, 0.10)) -> Atoms:
    """A hexagonal sheet of a random kind, size and strain (training data for a potential of users' cells).

    From stream ``SeedSequence([seed, 3])``: the kind (uniform over ``kinds``), the repeat (uniform
    over ``repeats``), up to ``len // 30`` vacancies, the composition (as :func:`hexagonal_cell`),
    then each material at its own lattice constant, ``a = 2.46 + 0.04 x_BN`` A (``x_BN`` the B/N
    fraction of the sites), times an independent biaxial strain ``U(-max_strain, max_strain)`` along
    x and y, then a thermal rattle with in-plane sigma ``U(rattle_range)`` A and 0.4 of it out of
    plane. ``info`` records ``kind``, ``repeat``, ``lattice_constant``, ``strain`` and ``rattle``.
    """
    rng = _rng(seed, 3)
    kind = kinds[int(rng.integers(len(kinds)))]
    repeat = tuple(repeats[int(rng.integers(len(repeats)))])
    n_sites = 4 * repeat[0] * repeat[1]
    atoms = hexagonal_cell(kind, int(rng.integers(2 ** 31)), vacancies=int(rng.integers(0, n_sites // 30 + 1)),
                           rattle=0.0, rattle_z=0.0, lattice_constant=LATTICE_CONSTANTS["graphene"], repeat=repeat)
    x_bn = float(np.isin(atoms.numbers, (5, 7)).sum()) / len(atoms)
    a = LATTICE_CONSTANTS["graphene"] + (LATTICE_CONSTANTS["hbn"] - LATTICE_CONSTANTS["graphene"]) * x_bn
    strain = rng.uniform(-max_strain, max_strain, 2)
    scale = np.array([*(a / LATTICE_CONSTANTS["graphene"] * (1.0 + strain)), 1.0])
    atoms.set_cell(atoms.cell.array * scale[:, None], scale_atoms=True)
    sigma = float(rng.uniform(*rattle_range))
    out = _rattle(atoms, rng, sigma, 0.4 * sigma, 1.0)
    out.info.update(generator="varied_hexagonal_cell", varied_seed=int(seed), repeat=list(repeat), lattice_constant=a,
                    strain=strain.tolist(), rattle=sigma, rattle_z=0.4 * sigma)
    return out


def porous_graphene(size: float = 35.0, n_pores: int | None = None, seed: int = 0, *,
                    radius_range=(2.0, 6.0), lattice_constant: float = 2.46, vacuum: float = 20.0,
                    rattle: float = 0.0, rattle_z: float = 0.0, prune_dangling: bool = True,
                    min_distance: float = 1.0) -> Atoms:
    """Porous graphene sheet (paper Sec. 3.2.2), deterministic from ``seed``.

    A rectangular graphene sheet of about ``size x size`` Angstrom (``round(size / a)`` x
    ``round(size / (sqrt(3) a))`` rectangular cells; the default is 34.44 x 34.09 A, 448 atoms)
    from which every atom within (periodic) distance ``r`` of a pore centre is removed, for
    ``n_pores`` pores with centres uniform in the cell and radii uniform in ``radius_range``.
    ``n_pores=None`` draws 1-6 pores. With ``prune_dangling`` atoms left with fewer than two
    neighbours within 1.2 bond lengths are removed too (repeated until none is left), so no
    isolated atom or one-coordinated chain end remains. ``size`` (A) must be >= 3 lattice constants;
    ``rattle``, ``rattle_z`` and ``min_distance`` (A) are as in :func:`hexagonal_cell` (default no
    rattle: ideal lattice positions); ``vacuum``: cell height, A.

    Raises ``ValueError`` if the pores remove every atom.
    """
    a = check_float("lattice_constant", lattice_constant, 0.0, strict=True)
    size = check_float("size", size, 0.0, strict=True)
    if size < 3 * a:
        raise ValueError(f"size must be at least 3 lattice constants ({3 * a:.2f} A), got {size}")
    rlo, rhi = (check_float("radius_range", r, 0.0) for r in radius_range)
    if rhi < rlo:
        raise ValueError(f"radius_range must be (low, high) with low <= high, got {radius_range!r}")
    rng = _rng(seed, 3)  # stream 3: porous graphene
    if n_pores is None:
        n_pores = int(rng.integers(1, 7))
    n_pores = check_int("n_pores", n_pores, 0)
    nx = max(1, round(size / a))
    ny = max(1, round(size / (math.sqrt(3.0) * a)))
    atoms = honeycomb_sheet(nx, ny, a, ("C", "C"), vacuum)
    cell_xy = atoms.cell.lengths()[:2]
    xy = atoms.positions[:, :2]
    keep = np.ones(len(atoms), dtype=bool)
    pores = []
    for _ in range(n_pores):
        centre = rng.uniform(0.0, 1.0, 2) * cell_xy
        radius = float(rng.uniform(rlo, rhi))
        keep &= _periodic_xy_distance(xy, centre, cell_xy) >= radius
        pores.append((float(centre[0]), float(centre[1]), radius))
    atoms = atoms[keep]
    if prune_dangling and len(atoms):
        cutoff = 1.2 * a / math.sqrt(3.0)
        while len(atoms):
            low = _coordination(atoms, cutoff) < 2
            if not low.any():
                break
            atoms = atoms[~low]
    if len(atoms) == 0:
        raise ValueError(f"the {n_pores} pores (radii {[p[2] for p in pores]}) removed every atom; "
                         f"use fewer or smaller pores")
    atoms = _rattle(atoms, rng, check_float("rattle", rattle, 0.0), check_float("rattle_z", rattle_z, 0.0),
                    check_float("min_distance", min_distance, 0.0))
    del atoms.arrays["sublattice"]
    atoms.info.update(generator="porous_graphene", seed=int(seed), size=size, n_pores=n_pores,
                      pores=pores, lattice_constant=a)
    return atoms


def supercell(atoms: Atoms, k: int) -> Atoms:
    """``k x k`` in-plane supercell, ``atoms.repeat((k, k, 1))`` (k^2 times the atoms and area)."""
    if not isinstance(atoms, Atoms):
        raise TypeError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
    k = check_int("k", k, 1)
    return atoms.repeat((k, k, 1))
