"""Procedural porous graphene sheets of any size, generated band by band (never whole in memory).

A periodic rectangular graphene sheet of ``cells = (nx, ny)`` rectangular 4-atom cells
(``a x sqrt(3) a``, the lattice of ``ednn_tf.atoms.structures``) with circular pores. The sheet is
divided into ``blocks`` of about ``block_size`` Angstrom; the pores of block ``(i, j)`` are drawn
from ``numpy.random.default_rng([seed, i, j])`` (``pores_per_block`` uniform integers, centres
uniform in the block, radii uniform in ``radius_range``), so any band of the sheet can be produced
by any process, in any order, identically. An atom is removed when it lies within a pore radius
(periodic distance) of any pore centre. Unlike ``structures.porous_graphene`` no dangling-atom
pruning is done (it would need global neighbour information).

``row_source`` turns the sheet into a row source for ``ednn_tf.apply.inference``: rows are the x axis
(the renderer's convention), so horizontal stripes of the image are bands of constant x.
"""
from __future__ import annotations

import math

import numpy as np

from ..util import check_positive
from . import render as _render
from .structures import FRACTIONAL

__all__ = ["PorousSheet"]


class PorousSheet:
    """A periodic porous graphene sheet of ``cells = (nx, ny)`` rectangular cells (``nx a`` by
    ``ny sqrt(3) a`` A, ``a = lattice_constant``), deterministic from ``seed``: pore blocks of about
    ``block_size`` A (35: one training cell), ``pores_per_block = (low, high)`` inclusive (default 1-6,
    as ``structures.porous_graphene``), pore radii in ``radius_range`` (A)."""

    def __init__(self, cells, lattice_constant=2.46, seed=0, block_size=35.0, pores_per_block=(1, 6),
                 radius_range=(2.0, 6.0)):
        nx, ny = (int(c) for c in cells)
        if nx < 1 or ny < 1:
            raise ValueError(f"cells must be positive, got {cells}")
        check_positive("lattice_constant", lattice_constant)
        lo, hi = radius_range
        if not 0 <= lo <= hi:
            raise ValueError(f"radius_range must be 0 <= low <= high, got {radius_range}")
        self.nx, self.ny, self.a, self.seed = nx, ny, float(lattice_constant), int(seed)
        self.b = self.a * math.sqrt(3.0)
        self.Lx, self.Ly = nx * self.a, ny * self.b
        self.nbx = max(1, round(self.Lx / block_size))
        self.nby = max(1, round(self.Ly / block_size))
        self.bx, self.by = self.Lx / self.nbx, self.Ly / self.nby
        if hi > min(self.bx, self.by) / 2:
            raise ValueError(f"pore radius {hi} A is too large for {self.bx:.1f} x {self.by:.1f} A blocks")
        self.pores_per_block = (int(pores_per_block[0]), int(pores_per_block[1]))
        self.radius_range = (float(lo), float(hi))

    @property
    def area(self):
        """Sheet area in A^2."""
        return self.Lx * self.Ly

    def _pores_of_block_row(self, bi):
        """Pores (cx, cy, r) of block row ``bi`` (unwrapped index: centres shifted by whole periods)."""
        bim = bi % self.nbx
        out = []
        for bj in range(self.nby):
            rng = np.random.default_rng([self.seed, bim, bj])
            n = int(rng.integers(self.pores_per_block[0], self.pores_per_block[1] + 1))
            c = rng.uniform(0.0, 1.0, (n, 2)) * (self.bx, self.by) + (bi * self.bx, bj * self.by)
            r = rng.uniform(*self.radius_range, n)
            out.append(np.column_stack([c, r]))
        return np.concatenate(out) if out else np.zeros((0, 3))

    def atoms_in_x_range(self, x0, x1):
        """Carbon positions ``(N, 2)`` with ``x0 <= x < x1`` in the *unwrapped* frame (x may be
        negative or beyond ``Lx``: positions are the periodic images there), pores removed."""
        a, b = self.a, self.b
        i0, i1 = math.floor(x0 / a) - 1, math.floor(x1 / a) + 1
        ix = np.arange(i0, i1 + 1)
        fx, fy = FRACTIONAL[:, 0], FRACTIONAL[:, 1]
        X = (ix[:, None, None] + fx[None, None, :]) * a + np.zeros((1, self.ny, 1))
        Y = (np.arange(self.ny)[None, :, None] + fy[None, None, :]) * b + np.zeros((len(ix), 1, 1))
        keep = (X >= x0) & (X < x1)
        rmax = self.radius_range[1]
        for bi in range(math.floor((x0 - rmax) / self.bx), math.floor((x1 + rmax) / self.bx) + 1):
            for cx, cy, r in self._pores_of_block_row(bi):
                ka = np.arange(math.floor((cx - r) / a) - 1, math.floor((cx + r) / a) + 2) - i0
                ka = ka[(ka >= 0) & (ka < len(ix))]
                if not ka.size:
                    continue
                kb = np.arange(math.floor((cy - r) / b) - 1, math.floor((cy + r) / b) + 2) % self.ny
                sub = np.ix_(ka, kb)
                dx = X[sub] - cx
                dy = Y[sub] - cy
                dy -= self.Ly * np.round(dy / self.Ly)
                hole = dx * dx + dy * dy < r * r
                k = keep[sub]
                k[hole] = False
                keep[sub] = k
        return np.column_stack([X[keep], Y[keep]])

    def count_atoms(self, band=200.0, progress=False):
        """Exact number of atoms, counted band by band (bounded memory)."""
        from tqdm.auto import tqdm

        edges = np.arange(0.0, self.Lx, band).tolist() + [self.Lx]
        bands = tqdm(range(len(edges) - 1), desc="counting atoms", unit="band", disable=not progress)
        return sum(len(self.atoms_in_x_range(edges[k], edges[k + 1])) for k in bands)

    def to_atoms(self):
        """The whole sheet as ``ase.Atoms`` (small sheets only: for tests and labelling)."""
        from ase import Atoms
        xy = self.atoms_in_x_range(0.0, self.Lx)
        pos = np.column_stack([xy, np.full(len(xy), 10.0)])
        return Atoms("C" * len(xy), positions=pos, cell=[self.Lx, self.Ly, 20.0], pbc=(True, True, False))

    def row_source(self, shape, gamma=_render.DEFAULT_GAMMA, cutoff=_render.DEFAULT_CUTOFF):
        """A row source ``source(r0, r1) -> (r1 - r0, W, 1)`` for ``inference.evaluate_streaming``.

        ``shape = (H, W)`` is the image of the whole sheet (pixel ``k`` along x at ``k Lx / H``).
        Each call renders only the atoms within the Gaussian cutoff of rows ``r0 .. r1-1`` into a
        band with ``m`` margin rows on each side (so the renderer's periodic wrap only touches the
        margin), then crops: identical to the corresponding rows of the whole-sheet image.
        """
        H, W = (int(s) for s in shape)
        px = self.Lx / H
        m = int(math.ceil(cutoff * gamma / px)) + 1

        def source(r0, r1):
            n_ext = (r1 - r0) + 2 * m
            x0 = (r0 - m) * px
            xy = self.atoms_in_x_range(x0, x0 + n_ext * px)
            xy[:, 0] -= x0
            img = _render.render(xy, np.full(len(xy), 6), cell=(n_ext * px, self.Ly), shape=(n_ext, W),
                                 gamma=gamma, cutoff=cutoff) if len(xy) else np.zeros((n_ext, W, 1), np.float32)
            return img[m:m + (r1 - r0)]

        source.atoms_per_row = self.count_atoms_estimate() / H
        return source

    def count_atoms_estimate(self):
        """Atoms of the pristine lattice times the expected non-pore fraction (no loop; for ETAs)."""
        lo, hi = self.pores_per_block
        mean_n = (lo + hi) / 2
        r0, r1 = self.radius_range
        mean_r2 = (r0 * r0 + r0 * r1 + r1 * r1) / 3
        frac = math.exp(-mean_n * math.pi * mean_r2 / (self.bx * self.by))  # overlapping discs
        return 4 * self.nx * self.ny * frac
