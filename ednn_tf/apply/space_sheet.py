"""A space potential on a procedural sheet of any size (:class:`ednn_tf.atoms.sheets.PorousSheet`),
block by block: energy, per-atom energies, forces and the virial, in memory bounded by the block and
by one value per lattice site, resumable and shared between processes.

The readout grid of the potential is fixed in space (pitch ``p``); block ``(I, J)`` reads out the atoms
of the sheet's base period (``0 <= x < Lx``, ``0 <= y < Ly``) whose pixel lies in its ``block`` x
``block`` pixels and renders its own halo from the sheet's atoms and periodic images (generated for
the block's window only, :meth:`PorousSheet.atoms_in_box`). This is :func:`ednn_tf.atoms.frames.block_frames`
for a structure that is never built whole: the same frames, the same numbers. Forces are
``-dE_block/dr`` of every rendered atom added up on its lattice site id (an atom's force gathers the
blocks whose halo holds it); the virial is the sum of the blocks' ``dE/deps`` (the strain acts on
every rendered position, images included, as it does on a periodic cell).

A *band* is a row of blocks (constant ``I``); process ``rank`` of ``ranks`` takes the bands
``rank, rank + ranks, ...``. Each process keeps one :class:`SheetState` (float32 per-site energies
and forces, float64 sums) and saves it atomically (``np.savez``: zip members carry CRC-32 checks)
every ``checkpoint_s`` seconds and at the end; a restarted process skips the bands it finished.
:func:`merge_states` adds the processes' states. Units: eV, A.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from ..atoms.frames import Frame, block_window, pack_frames
from ..util import atomic_path, check_int
from .space import _evaluator

__all__ = ["SheetState", "sheet_blocks", "block_frame", "evaluate_sheet", "merge_states", "load_state"]


def sheet_blocks(sheet, pitch, block):
    """``(bands, blocks per band)``: the block grid covering the sheet's base period."""
    return (int(math.ceil(sheet.Lx / (block * pitch))), int(math.ceil(sheet.Ly / (block * pitch))))


def block_frame(potential, sheet, I, J, block):
    """``(Frame, site ids (M,))`` of block ``(I, J)``: its target atoms first (``frame.read`` of
    them), then its halo; None when the block holds no atom of the sheet."""
    p = potential.pitch
    origin, shape, lo, hi = block_window((I * block, J * block), block, p, potential.ednn.context, potential.gamma)
    xy, ids = sheet.atoms_in_box(lo[0], hi[0] + 1e-9, lo[1], hi[1] + 1e-9, ids=True)
    pix = np.floor(xy / p).astype(np.int64)
    own = (np.all((pix >= (I * block, J * block)) & (pix < ((I + 1) * block, (J + 1) * block)), axis=1)
           & (xy[:, 0] >= 0) & (xy[:, 0] < sheet.Lx) & (xy[:, 1] >= 0) & (xy[:, 1] < sheet.Ly))
    if not own.any():
        return None
    order = np.concatenate([np.flatnonzero(own), np.flatnonzero(~own)])
    M = len(order)
    frame = Frame(xy[order], np.zeros((2, 2)), np.arange(M), np.zeros((M, 2), np.int64), origin, shape,
                  read=int(own.sum()), atoms=ids[order])
    return frame, ids[order]


class SheetState:
    """What a process has accumulated: ``energy`` (eV, e0 included), ``virial`` (2, 2) eV, per-site
    ``energies`` (eV) and ``forces`` (eV/A, float32), ``occupied`` (sites holding an atom), a
    ``map_sum`` / ``map_count`` of per-atom energies on ``map_bins`` bins, the finished ``bands``,
    ``atoms``, ``blocks`` and ``seconds`` of evaluation."""

    ARRAYS = ("energies", "forces", "occupied", "map_sum", "map_count")

    def __init__(self, n_sites, map_bins=(512, 512)):
        self.energies = np.zeros(n_sites, np.float32)
        self.forces = np.zeros((n_sites, 2), np.float32)
        self.occupied = np.zeros(n_sites, bool)
        self.map_sum = np.zeros(tuple(map_bins), np.float64)
        self.map_count = np.zeros(tuple(map_bins), np.int64)
        self.energy, self.virial = 0.0, np.zeros((2, 2))
        self.bands, self.atoms, self.blocks, self.seconds = set(), 0, 0, 0.0

    def save(self, path, meta):
        """Atomic ``.npz`` of the state and ``meta`` (a dict of scalars and strings checked on load)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: getattr(self, k) for k in self.ARRAYS}, energy=self.energy, virial=self.virial,
                         bands=np.array(sorted(self.bands), np.int64), atoms=self.atoms, blocks=self.blocks,
                         seconds=self.seconds, meta=np.array(repr(sorted(meta.items()))))


def load_state(path, meta=None):
    """The :class:`SheetState` saved at ``path``; ValueError when ``meta`` is given and differs from
    the saved one (another sheet, potential or block size)."""
    with np.load(path) as z:
        saved = str(z["meta"])
        if meta is not None and saved != repr(sorted(meta.items())):
            raise ValueError(f"{path} belongs to another run: saved {saved}, this run {sorted(meta.items())}; "
                             "remove it or choose another --out")
        st = SheetState(len(z["energies"]), z["map_sum"].shape)
        for k in SheetState.ARRAYS:
            setattr(st, k, z[k])
        st.energy, st.virial = float(z["energy"]), z["virial"]
        st.bands, st.atoms = set(int(b) for b in z["bands"]), int(z["atoms"])
        st.blocks, st.seconds = int(z["blocks"]), float(z["seconds"])
    return st


def _add_block(state, sheet, res, frame, ids, e0):
    n = frame.read
    e = res["energies"][0, :n] + e0
    state.energy += float(res["energy"][0]) + n * e0
    state.virial += res["virial"][0]
    state.energies[ids[:n]] = e
    state.occupied[ids[:n]] = True
    np.add.at(state.forces, ids, res["forces"][0, :len(ids)].astype(np.float32))
    mb = state.map_sum.shape
    bx = np.minimum((frame.xy[:n, 0] / sheet.Lx * mb[0]).astype(np.int64), mb[0] - 1)
    by = np.minimum((frame.xy[:n, 1] / sheet.Ly * mb[1]).astype(np.int64), mb[1] - 1)
    np.add.at(state.map_sum, (bx, by), e)
    np.add.at(state.map_count, (bx, by), 1)
    state.atoms += n
    state.blocks += 1


def evaluate_sheet(potential, sheet, state, *, block=128, rank=0, ranks=1, checkpoint=None, checkpoint_s=600.0,
                   progress=False):
    """Evaluate the bands of process ``rank`` of ``ranks`` not yet in ``state.bands`` and return
    ``state``; ``checkpoint(state)`` is called after a band when ``checkpoint_s`` seconds have passed
    since the last call, and at the end."""
    block = check_int("block", block, minimum=1)
    rank, ranks = check_int("rank", rank, minimum=0), check_int("ranks", ranks, minimum=1)
    if rank >= ranks:
        raise ValueError(f"rank must be below ranks={ranks}, got {rank}")
    if potential.readout != "atoms":
        raise ValueError(f"evaluate_sheet needs a potential with the 'atoms' readout, got {potential.readout!r}")
    n_bands, n_cols = sheet_blocks(sheet, potential.pitch, block)
    todo = [b for b in range(rank, n_bands, ranks) if b not in state.bands]
    evaluator = _evaluator(potential, True)
    C = len(potential.channels) if potential.channels else 1
    from ..atoms.cells import atomic_numbers, channel_weights

    w6 = channel_weights(atomic_numbers([6]), potential.channels)[0].astype(np.float32)
    e0 = float(potential.e0[6])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * n_cols, desc=f"rank {rank}", unit="block", mininterval=30.0)
    last = time.perf_counter()
    for band in todo:
        t0 = time.perf_counter()
        for J in range(n_cols):
            got = block_frame(potential, sheet, band, J, block)
            if got is not None:
                frame, ids = got
                res = evaluator(pack_frames([frame], [np.broadcast_to(w6, (len(ids), C))]))
                _add_block(state, sheet, res, frame, ids, e0)
            if bar is not None:
                bar.update(1)
        state.bands.add(band)
        state.seconds += time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix(atoms_per_s=f"{state.atoms / max(state.seconds, 1e-9):,.0f}")
        if checkpoint is not None and time.perf_counter() - last >= checkpoint_s:
            checkpoint(state)
            last = time.perf_counter()
    if bar is not None:
        bar.close()
    if checkpoint is not None:
        checkpoint(state)
    return state


def merge_states(paths, meta=None):
    """The sum of the states saved at ``paths`` (one per process; their bands must not overlap)."""
    total = None
    for path in paths:
        st = load_state(path, meta)
        if total is None:
            total = st
            continue
        if total.bands & st.bands:
            raise ValueError(f"{path} repeats bands {sorted(total.bands & st.bands)[:5]}...")
        total.energies += st.energies
        total.forces += st.forces
        total.occupied |= st.occupied
        total.map_sum += st.map_sum
        total.map_count += st.map_count
        total.energy += st.energy
        total.virial += st.virial
        total.bands |= st.bands
        total.atoms += st.atoms
        total.blocks += st.blocks
        total.seconds = max(total.seconds, st.seconds)
    return total


def state_path(out, rank, ranks):
    """The checkpoint file of process ``rank`` of ``ranks`` in folder ``out``."""
    return os.path.join(out, f"state_rank{rank}of{ranks}.npz")


__all__ += ["state_path"]
