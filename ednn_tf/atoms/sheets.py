"""Procedural porous graphene sheets of any size, generated band by band (never whole in memory).

A periodic rectangular graphene sheet of ``cells = (nx, ny)`` rectangular 4-atom cells
(``a x sqrt(3) a``, the lattice of ``ednn_tf.atoms.structures``) with circular pores. The sheet is
divided into ``blocks`` of about ``block_size`` Angstrom; the pores of block ``(i, j)`` are drawn
from ``numpy.random.default_rng([seed, i, j])`` (``pores_per_block`` uniform integers, centres
uniform in the block, radii uniform in ``radius_range``), so any band of the sheet can be produced
by any process, in any order, identically. An atom is removed when it lies within a pore radius
(periodic distance) of any pore centre. Unlike ``structures.porous_graphene`` no dangling-atom
pruning is done (it would need global neighbour information).

``row_source`` turns the sheet into a block source for ``ednn_tf.apply.inference``: rows are the x axis
(the renderer's convention), so horizontal stripes of the image are bands of constant x, and a
block of a stripe is a box of the sheet.
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

    def _pores(self, bi, bj0, bj1):
        """Pores ``(cx, cy, r)`` of blocks ``(bi, bj0 .. bj1)`` (unwrapped indices: centres shifted by
        whole periods, so no minimum-image wrap is needed)."""
        bim = bi % self.nbx
        out = []
        for bj in range(bj0, bj1 + 1):
            rng = np.random.default_rng([self.seed, bim, bj % self.nby])
            n = int(rng.integers(self.pores_per_block[0], self.pores_per_block[1] + 1))
            c = rng.uniform(0.0, 1.0, (n, 2)) * (self.bx, self.by) + (bi * self.bx, bj * self.by)
            r = rng.uniform(*self.radius_range, n)
            out.append(np.column_stack([c, r]))
        return np.concatenate(out) if out else np.zeros((0, 3))

    def atoms_in_x_range(self, x0, x1):
        """Carbon positions ``(N, 2)`` with ``x0 <= x < x1`` and ``0 <= y < Ly``, pores removed
        (``atoms_in_box`` over the whole width)."""
        return self.atoms_in_box(x0, x1, 0.0, self.Ly)

    @property
    def n_sites(self):
        """Lattice sites of the pristine sheet (``4 nx ny``): the range of the site ids."""
        return 4 * self.nx * self.ny

    def atoms_in_box(self, x0, x1, y0, y1, ids=False):
        """Carbon positions ``(N, 2)`` with ``x0 <= x < x1`` and ``y0 <= y < y1`` in the *unwrapped*
        frame (coordinates may be negative or beyond ``Lx`` / ``Ly``: the periodic images there), pores
        removed. Work and memory grow with the box's area only. ``ids=True``: also the site id of each
        atom, ``((i mod nx) ny + (j mod ny)) 4 + s`` for site ``s`` of rectangular cell ``(i, j)`` (a
        periodic image has the id of its atom)."""
        a, b = self.a, self.b
        i0, i1 = math.floor(x0 / a) - 1, math.floor(x1 / a) + 1
        j0, j1 = math.floor(y0 / b) - 1, math.floor(y1 / b) + 1
        fx, fy = FRACTIONAL[:, 0], FRACTIONAL[:, 1]
        X = (np.arange(i0, i1 + 1)[:, None, None] + fx[None, None, :]) * a + np.zeros((1, j1 - j0 + 1, 1))
        Y = (np.arange(j0, j1 + 1)[None, :, None] + fy[None, None, :]) * b + np.zeros((i1 - i0 + 1, 1, 1))
        keep = (X >= x0) & (X < x1) & (Y >= y0) & (Y < y1)
        rmax = self.radius_range[1]
        bj0, bj1 = math.floor((y0 - rmax) / self.by), math.floor((y1 + rmax) / self.by)
        for bi in range(math.floor((x0 - rmax) / self.bx), math.floor((x1 + rmax) / self.bx) + 1):
            for cx, cy, r in self._pores(bi, bj0, bj1):
                ka = np.arange(math.floor((cx - r) / a) - 1, math.floor((cx + r) / a) + 2) - i0
                kb = np.arange(math.floor((cy - r) / b) - 1, math.floor((cy + r) / b) + 2) - j0
                ka, kb = ka[(ka >= 0) & (ka < X.shape[0])], kb[(kb >= 0) & (kb < X.shape[1])]
                if not (ka.size and kb.size):
                    continue
                sub = np.ix_(ka, kb)
                dx, dy = X[sub] - cx, Y[sub] - cy
                k = keep[sub]
                k[dx * dx + dy * dy < r * r] = False
                keep[sub] = k
        xy = np.column_stack([X[keep], Y[keep]])
        if not ids:
            return xy
        cell = (np.arange(i0, i1 + 1)[:, None] % self.nx) * self.ny + np.arange(j0, j1 + 1)[None, :] % self.ny
        site = cell[:, :, None] * 4 + np.arange(4)[None, None, :]
        return xy, site[keep]

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
        """A block source ``source(r0, r1, c0=0, c1=W) -> (r1 - r0, c1 - c0, 1)`` for
        ``inference.evaluate_streaming`` (rows and columns outside the image wrap periodically).

        ``shape = (H, W)`` is the image of the whole sheet (pixel ``(k, l)`` at ``(k Lx / H, l Ly / W)``).
        Each call renders only the atoms within the Gaussian cutoff of the block into an image with
        ``m`` margin pixels on each side (so the renderer's periodic wrap only touches the margin; no
        column margin when the block is the whole width), then crops: equal to that block of the
        whole-sheet image. Memory grows with the block, not with the sheet.
        """
        H, W = (int(s) for s in shape)
        px, py = self.Lx / H, self.Ly / W
        R = cutoff * gamma
        mx, my = int(math.ceil(R / px)) + 1, int(math.ceil(R / py)) + 1

        def source(r0, r1, c0=0, c1=W):
            whole = (c0, c1) == (0, W)   # the sheet's own periodic width
            m_y = 0 if whole else my
            nx, ny = (r1 - r0) + 2 * mx, (c1 - c0) + 2 * m_y
            x0, y0 = (r0 - mx) * px, (c0 - m_y) * py
            xy = self.atoms_in_box(x0, x0 + nx * px, y0, y0 + ny * py)
            xy -= (x0, y0)
            img = _render.render(xy, np.full(len(xy), 6), cell=(nx * px, ny * py), shape=(nx, ny), gamma=gamma,
                                 cutoff=cutoff) if len(xy) else np.zeros((nx, ny, 1), np.float32)
            return img[mx:mx + (r1 - r0), m_y:m_y + (c1 - c0)]

        source.atoms_per_row = self.count_atoms_estimate() / H
        source.columns = True   # evaluate_streaming may ask for blocks of columns
        return source

    def count_atoms_estimate(self):
        """Atoms of the pristine lattice times the expected non-pore fraction (no loop; for ETAs)."""
        lo, hi = self.pores_per_block
        mean_n = (lo + hi) / 2
        r0, r1 = self.radius_range
        mean_r2 = (r0 * r0 + r0 * r1 + r1 * r1) / 3
        frac = math.exp(-mean_n * math.pi * mean_r2 / (self.bx * self.by))  # overlapping discs
        return 4 * self.nx * self.ny * frac
