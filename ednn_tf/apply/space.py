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

import numpy as np

from ..atoms.frames import check_structures, pack_frames, structure_frame, window_pixels

__all__ = ["predict_structures", "stress_voigt"]


def stress_voigt(atoms, virial):
    """ASE stress (6,) eV/A^3 from ``virial`` = dE/deps (2, 2) eV, or None when the cell has no
    volume (no third vector)."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    volume = abs(np.linalg.det(cell[:2, :2])) * abs(cell[2, 2]) if np.all(np.any(cell[:2, :2] != 0, axis=1)) else 0.0
    if volume <= 0.0:
        return None
    s = np.asarray(virial, dtype=np.float64) / volume
    return np.array([s[0, 0], s[1, 1], 0.0, 0.0, 0.0, s[0, 1]])


def predict_structures(potential, structures, batch_size=8, evaluator=None, progress=False):
    """One dict per structure: ``energy`` (eV), ``energies`` (N,) eV per atom (they sum to the
    energy), ``forces`` (N, 3) eV/A (z = 0), ``stress`` (6,) eV/A^3 or None. Every structure is
    checked first (:func:`ednn_tf.atoms.frames.check_structure`: ValueError naming the structure and
    what is wrong, before any evaluation); batches hold structures of similar window size.
    ``evaluator``: a :class:`~ednn_tf.atoms.space_tf.SpaceEvaluator` to reuse (one traced graph)."""
    from ..atoms.space_tf import SpaceEvaluator

    if potential.readout != "atoms":
        raise ValueError(f"predict_structures needs a potential with the 'atoms' readout, got {potential.readout!r}")
    check_structures(potential, structures)
    prepared = [structure_frame(potential, atoms) for atoms in structures]
    e0 = [np.array([potential.e0[int(z)] for z in atoms.numbers]) for atoms in structures]
    evaluator = evaluator or SpaceEvaluator(potential)
    order = sorted(range(len(structures)), key=lambda r: window_pixels(prepared[r][0]))
    out = [None] * len(structures)
    chunks = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="predict", unit="batch")
    for rows in chunks:
        res = evaluator(pack_frames([prepared[r][0] for r in rows], [prepared[r][1] for r in rows]))
        for b, r in enumerate(rows):
            n = len(structures[r])
            energies = res["energies"][b, :n] + e0[r]
            forces = np.concatenate([res["forces"][b, :n], np.zeros((n, 1))], axis=1) + 0.0
            out[r] = {"energy": float(res["energy"][b] + e0[r].sum()), "energies": energies, "forces": forces,
                      "stress": stress_voigt(structures[r], res["virial"][b])}
    return out
