"""Energies, per-atom energies, forces and stress of structures through a potential's space frame,
in batches: the one evaluation path of the ``"atoms"`` readout for the calculator, ``ednn-tf
predict/eval``, validation and the studies (:mod:`ednn_tf.atoms.frames`, :mod:`ednn_tf.atoms.space_tf`).

Stress (eV/A^3, ASE's sign and Voigt order xx, yy, zz, yz, xz, xy): ``sigma = (1 / V) dE/deps``
for a homogeneous strain ``eps`` of the in-plane cell and every position, ``V = |a1 x a2| c`` the
volume of the cell (its vacuum included, as for any 2D material in ASE); the out-of-plane
components are 0 (a 2D potential). A structure without a length along z has no volume: its stress
is None.
"""
from __future__ import annotations

import itertools
import weakref

import numpy as np

from ..atoms.frames import (block_counts, block_frames, check_structures, frame_weights, moved_frame, pack_frames,
                            structure_frame, window_pixels)
from ..util import check_int

__all__ = ["DEFAULT_BLOCK", "predict_structures", "stress_voigt"]

#: Readout pixels per block side of a large structure (128 px = 32 A at 0.25 A/px: about 390 atoms of
#: graphene a block). Measured on one core (AVX2): energy + forces 4,260 atoms/s at 128 px against
#: 3,090 at 256 px on a 50,000-atom sheet; smaller blocks keep their activations in cache, larger ones
#: spend less on the halo (``docs/performance.md``).
DEFAULT_BLOCK = 128


def stress_voigt(atoms, virial):
    """ASE stress (6,) eV/A^3 from ``virial`` = dE/deps (2, 2) eV, or None when the structure is not
    periodic in the plane or its cell has no volume (no third vector)."""
    if not (atoms.pbc[0] and atoms.pbc[1]):
        return None
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    volume = abs(np.linalg.det(cell[:2, :2]) * cell[2, 2])
    if volume <= 0.0:
        return None
    s = np.asarray(virial, dtype=np.float64) / volume
    return np.array([s[0, 0], s[1, 1], 0.0, 0.0, 0.0, s[0, 1]])


_EVALUATORS = weakref.WeakKeyDictionary()


def _rotation(degrees):
    t = np.radians(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _offset(k):
    """The sub-pixel offset (in pixels) of copy ``k`` of an orientation average: ``(frac(k g),
    frac(k g^2))``, g the golden ratio (well spread for any number of copies)."""
    g = (1.0 + 5.0 ** 0.5) / 2.0
    return np.array([(k * g) % 1.0, (k * g * g) % 1.0])


def _evaluator(potential, derivatives, precision="float32"):
    """The potential's :class:`~ednn_tf.atoms.space_tf.SpaceEvaluator` (one per potential,
    ``derivatives`` and ``precision``, kept while the potential lives: one traced graph for every call)."""
    from ..atoms.space_tf import SpaceEvaluator

    cache = _EVALUATORS.setdefault(potential, {})
    if (derivatives, precision) not in cache:
        cache[derivatives, precision] = SpaceEvaluator(potential, derivatives, precision)
    return cache[derivatives, precision]


def _shard():
    """``(rank, size)`` of this process among Horovod ranks, ``(0, 1)`` without Horovod."""
    from .. import distributed

    return (distributed.rank(), distributed.size()) if distributed.is_distributed() else (0, 1)


def _add_up(acc):
    """Sum every structure's accumulators over the Horovod ranks (one allreduce per structure)."""
    from .. import distributed

    for a in acc:
        n = len(a["energies"])
        flat = distributed.allreduce_sum(np.concatenate([[a["energy"]], a["energies"], a["forces"].ravel(),
                                                         a["virial"].ravel()]))
        a["energy"], a["energies"] = float(flat[0]), flat[1:1 + n].copy()
        a["forces"] = flat[1 + n:1 + 3 * n].reshape(n, 2).copy()
        a["virial"] = flat[1 + 3 * n:].reshape(2, 2).copy()


def _e0_per_atom(potential, numbers):
    """(N,) reference energy of each atom (eV), by element."""
    kinds = np.unique(numbers)
    table = np.array([potential.e0[int(z)] for z in kinds])
    return table[np.searchsorted(kinds, numbers)]


def _accumulate(a, res, b, f, move, w):
    """Add row ``b`` of an evaluation of frame ``f`` (turned and moved by ``move = (T, shift)``) with
    weight ``w`` to the structure's sums ``a``."""
    T, shift = move
    forces = res["forces"][b, :len(f.xy)]
    a["energy"] += w * float(res["energy"][b])
    a["energies"][f.atoms[:f.read]] += w * res["energies"][b, :f.read]
    np.add.at(a["forces"], f.atoms, w * forces @ T)
    moved = np.outer(forces.sum(0), shift)          # the strain acted about the shifted origin
    a["virial"] += w * T.T @ (res["virial"][b] + 0.5 * (moved + moved.T)) @ T


def predict_structures(potential, structures, batch_size=8, progress=False, block=DEFAULT_BLOCK, derivatives=True,
                       orientations=None, precision="float32", spread=False):
    """One dict per structure: ``energy`` (eV), ``energies`` (N,) eV per atom (they sum to the
    energy), ``forces`` (N, 3) eV/A (z = 0), ``stress`` (6,) eV/A^3 or None. Every structure is checked
    first (:func:`ednn_tf.atoms.frames.check_structure`: ValueError naming the structure and what is
    wrong, before any evaluation). A structure wider than ``block`` readout pixels is evaluated by
    blocks with halos (:func:`ednn_tf.atoms.frames.block_frames`; the same numbers, memory bounded by
    the block); under Horovod the ranks share the evaluations and every rank returns the sums (the same
    numbers for any number of ranks); batches hold frames of similar window size, all through one
    traced graph per potential (:class:`~ednn_tf.atoms.space_tf.SpaceEvaluator`). ``orientations`` K
    (default the potential's own) > 1 averages over K copies turned by ``90 k / K`` degrees and moved
    by a sub-pixel offset (forces, stress turned back); ``spread=True`` treats them as a committee's
    members and adds their spreads ``energy_std``, ``energies_std``, ``force_dev``, ``max_force_dev``
    (:func:`ednn_tf.apply.uncertainty.committee_spread`; calibration in ``docs/uncertainty.md``).
    ``derivatives=False``: energies only, ``forces`` and ``stress`` None. A
    :class:`~ednn_tf.committee.Committee` gives the members' mean and spreads
    (:func:`ednn_tf.apply.uncertainty.predict_committee`). ``precision``: ``"float32"`` or
    ``"bfloat16"`` (the density network only; error and speed in ``docs/performance.md``)."""
    from ..committee import Committee

    if isinstance(potential, Committee):          # the members' mean, with the spreads
        from .uncertainty import predict_committee

        if spread:
            raise ValueError("spread=True is for one potential's orientations; a committee has its members' spread")
        return predict_committee(potential, structures, batch_size=batch_size, progress=progress, block=block,
                                 derivatives=derivatives, orientations=orientations, precision=precision)
    K, block = _check_settings(potential, orientations, precision, spread, block)
    checked = check_structures(potential, structures)      # every structure, before any work
    p, c, gamma = potential.pitch, int(potential.ednn.context), potential.gamma
    turns = [_rotation(90.0 * k / K) for k in range(K)]
    evaluator = _evaluator(potential, bool(derivatives), precision)
    copies, weight = (K, 1.0) if spread else (1, 1.0 / K)    # a spread: one accumulator per copy
    jobs, big, n_blocks = [], [], 0     # (structure, (turn, shift), frame, weights): one-block frames, the others
    for s, atoms in enumerate(structures):
        frame0, _ = structure_frame(potential, atoms, checked[s], weights=False)
        w = None                                   # channel weights: whole for one-block frames, else by block
        for k, T in enumerate(turns):
            shift = _offset(k) * p
            frame = moved_frame(frame0, T, shift, p, c, gamma) if k else frame0
            counts = block_counts(frame, block, p)[0]
            if np.any(counts > 1):
                big.append((s * copies + (k if spread else 0), (T, shift), frame, atoms.numbers))
                n_blocks += int(np.prod(counts))
            else:
                w = frame_weights(potential, atoms.numbers) if w is None else w
                jobs.append((s * copies + (k if spread else 0), (T, shift), frame, w))
    acc = [{"energy": 0.0, "energies": np.zeros(len(a)), "forces": np.zeros((len(a), 2)), "virial": np.zeros((2, 2))}
           for a in structures for _ in range(copies)]
    order = sorted(range(len(jobs)), key=lambda r: window_pixels(jobs[r][2]))
    chunks = [[jobs[r] for r in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    n_calls = len(chunks) + n_blocks
    blocks = ([(s, move, f, frame_weights(potential, z[f.atoms]))] for s, move, frame, z in big   # made and
              for f in block_frames(frame, block, p, c, gamma))                                   # run one by one
    chunks = itertools.chain(chunks, blocks)
    rank, size = _shard()
    if size > 1:                                   # Horovod ranks share the calls, then add up
        chunks = (c for k, c in enumerate(chunks) if k % size == rank)
        n_calls = (n_calls + size - 1 - rank) // size
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="predict", unit="call", total=n_calls)
    for rows in chunks:
        res = evaluator(pack_frames([r[2] for r in rows], [r[3] for r in rows]))
        for b, (s, move, f, _) in enumerate(rows):
            _accumulate(acc[s], res, b, f, move, weight)
    jobs.clear()                                   # the frames and channel weights (about 40 bytes
    big.clear()                                    # an atom): freed before the (N, 3) forces are made
    del chunks, blocks
    frame0 = frame = w = None
    if size > 1:
        _add_up(acc)
    out = [_result(potential, structures[j // copies], a, derivatives) for j, a in enumerate(acc)]
    if spread:
        from .uncertainty import committee_spread

        return [committee_spread(out[s * K:(s + 1) * K]) for s in range(len(structures))]
    return out


def _check_settings(potential, orientations, precision, spread, block):
    """``(K, block)`` of :func:`predict_structures`, checked (ValueError naming the value)."""
    from ..atoms.space_tf import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if potential.readout != "atoms":
        raise ValueError(f"predict_structures needs a potential with the 'atoms' readout, got {potential.readout!r}")
    K = potential.orientations if orientations is None else check_int("orientations", orientations, minimum=1)
    if spread and K < 2:
        raise ValueError(f"spread=True needs at least 2 orientations to spread over, got orientations={K}")
    return K, check_int("block", block, minimum=1)


def _result(potential, atoms, a, derivatives):
    """A structure's result dict from its accumulator ``a`` (module units; the reference energies added)."""
    e0 = _e0_per_atom(potential, atoms.numbers)
    a["energies"] += e0                                     # in place: large structures
    forces = None
    if derivatives:                                          # (N, 3), z = 0 (+ 0.0: never -0.0)
        forces, f2 = np.zeros((len(atoms), 3)), a.pop("forces")
        f2 += 0.0
        forces[:, :2] = f2
    return {"energy": a["energy"] + float(e0.sum()), "energies": a["energies"], "forces": forces,
            "stress": stress_voigt(atoms, a["virial"]) if derivatives else None}
