"""Trajectory files of :func:`ednn_tf.labels.md.run_trajectories`: one ``.npz`` per finished
trajectory (``traj_<index:06d>.npz``, written atomically with :func:`ednn_tf.util.atomic_path`),
with JSON metadata that lets a rerun skip (or refuse) the files already on disk."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..util import atomic_path
from .workers import hash_atoms

__all__ = ["TRAJECTORY_FORMAT", "trajectory_path", "read_trajectory", "trajectory_atoms"]

TRAJECTORY_FORMAT = "ednn_tf.md_trajectory/1"
_SAME_RUN_KEYS = ("seed", "md", "oracle", "oracle_settings", "fingerprint", "store_forces")


def trajectory_path(directory, index) -> str:
    """File of trajectory ``index`` in ``directory``: ``traj_<index:06d>.npz``."""
    return os.path.join(os.fspath(directory), f"traj_{int(index):06d}.npz")


def _write_npz_atomic(path, **arrays):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def read_trajectory(path) -> dict:
    """``{"meta": dict, "numbers": (N,), "cell": (3, 3), "pbc": (3,), "positions": (S, N, 3) A, "energies":
    (S,) eV, "steps": (S,), "temperatures": (S,) K}`` (+ ``"forces"`` (S, N, 3) eV/A if stored) of a file."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: np.array(z[k]) for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable trajectory file: {exc}") from exc
    try:
        out["meta"] = json.loads(str(out["meta"]))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: trajectory file without valid metadata") from exc
    if out["meta"].get("format") != TRAJECTORY_FORMAT:
        raise ValueError(f"{path}: unknown format {out['meta'].get('format')!r} (expected {TRAJECTORY_FORMAT!r})")
    return out


def trajectory_atoms(traj) -> list:
    """The snapshots of a :func:`read_trajectory` dict (or path) as ``ase.Atoms`` with a
    ``SinglePointCalculator`` energy (eV) and, if stored, forces."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    if not isinstance(traj, dict):
        traj = read_trajectory(traj)
    out = []
    for k in range(len(traj["energies"])):
        a = Atoms(numbers=traj["numbers"], positions=traj["positions"][k], cell=traj["cell"], pbc=traj["pbc"])
        a.calc = SinglePointCalculator(a, energy=float(traj["energies"][k]),
                                       forces=traj["forces"][k] if "forces" in traj else None)
        a.info.update(md_step=int(traj["steps"][k]), kinetic_temperature_K=float(traj["temperatures"][k]),
                      potential_energy_eV=float(traj["energies"][k]), trajectory=traj["meta"].get("index"))
        out.append(a)
    return out


def _trajectory_meta(k, structure, seed, settings, oracle, store_forces) -> dict:
    """Metadata of trajectory ``k`` (what decides whether a file on disk can be reused)."""
    return {"format": TRAJECTORY_FORMAT, "index": k, "seed": seed, "md": settings,
            "oracle": oracle.name, "oracle_settings": oracle.settings, "store_forces": bool(store_forces),
            "fingerprint": hash_atoms(hashlib.sha256(), structure).hexdigest(), "n_atoms": len(structure),
            "start_info": json.loads(json.dumps(structure.info, default=str))}


def _missing(paths, metas) -> list:
    """Indices whose file does not exist yet; ValueError if an existing file is for another run."""
    todo = []
    for k, (path, meta) in enumerate(zip(paths, metas)):
        if not os.path.exists(path):
            todo.append(k)
            continue
        old, new = read_trajectory(path)["meta"], json.loads(json.dumps(meta))
        if any(old.get(key) != new[key] for key in _SAME_RUN_KEYS):
            raise ValueError(f"{path} was written for another structure, seed or MD/oracle setting; "
                             "delete it or use another directory")
    return todo


def _write_trajectory(path, meta, structure, result, versions):
    meta = {**meta, "seconds": float(result.pop("seconds")), "versions": versions}
    _write_npz_atomic(path, meta=np.array(json.dumps(meta, sort_keys=True)), numbers=structure.numbers,
                      cell=np.asarray(structure.cell, np.float64), pbc=np.asarray(structure.pbc), **result)
