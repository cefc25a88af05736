"""Label many structures with an oracle: :func:`label_structures` (parallel, resumable), :func:`label_timed`
(serial, timed), :func:`prepare_dataset` (the hexagonal-sheet data file of :mod:`ednn_tf.atoms.datasets`)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from ..util import check_bool, check_float, check_int, write_json_atomic
from . import workers
from .trajectories import _write_npz_atomic

__all__ = ["CHECKPOINT_FORMAT", "label_structures", "structures_fingerprint", "read_checkpoint", "label_timed",
           "prepare_dataset"]

CHECKPOINT_FORMAT = "ednn_tf.label_checkpoint/1"
_SAME_JOB_KEYS = ("oracle", "settings", "n_structures", "fingerprint")


def structures_fingerprint(atoms_list) -> str:
    """SHA-256 over numbers, positions, cell and pbc of every structure, in order."""
    h = hashlib.sha256()
    h.update(len(atoms_list).to_bytes(8, "little"))
    for atoms in atoms_list:
        workers.hash_atoms(h, atoms)
    return h.hexdigest()


def read_checkpoint(path) -> dict:
    """Read a :func:`label_structures` checkpoint: ``{"meta": {...}, "indices": int array, "energies": eV,
    "forces": list of (N_i, 3) eV/A arrays, one per index, or None when written without forces,
    "stress": (n, 6) eV/A^3 (ASE's Voigt order), or None when written without stress}``."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            indices = np.array(z["indices"], dtype=np.int64)
            energies = np.array(z["energies"], dtype=np.float64)
            forces = None
            if "forces" in z:
                forces = np.split(np.array(z["forces"], dtype=np.float64), np.cumsum(z["n_atoms"])[:-1])
            stress = np.array(z["stress"], dtype=np.float64) if "stress" in z else None
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable label_structures checkpoint: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {CHECKPOINT_FORMAT!r})")
    if indices.shape != energies.shape:
        raise ValueError(f"{path}: corrupt checkpoint ({indices.shape[0]} indices, {energies.shape[0]} energies)")
    return {"meta": meta, "indices": indices, "energies": energies, "forces": forces, "stress": stress}


def _write_checkpoint(path, meta, done: dict, forces=None, stress=None):
    idx = np.fromiter(sorted(done), dtype=np.int64, count=len(done))
    arrays = {"energies": np.array([done[i] for i in idx], dtype=np.float64)}
    if forces is not None:
        arrays["n_atoms"] = np.array([len(forces[i]) for i in idx], dtype=np.int64)
        arrays["forces"] = np.concatenate([forces[i] for i in idx]) if len(idx) else np.zeros((0, 3))
    if stress is not None:
        arrays["stress"] = np.array([stress[i] for i in idx], dtype=np.float64).reshape(len(idx), 6)
    _write_npz_atomic(path, meta=np.array(json.dumps(meta, sort_keys=True)), indices=idx, **arrays)


def _finished(checkpoint, meta, forces=None, stress=None) -> dict:
    """``{index: energy}`` already in ``checkpoint`` (ValueError if it belongs to another job); with a
    ``forces`` dict, also fills it ``{index: (N, 3) forces}`` (ValueError if the checkpoint has none),
    likewise ``stress`` ``{index: (6,) stress}``."""
    if checkpoint is None or not os.path.exists(checkpoint):
        return {}
    ck = read_checkpoint(checkpoint)
    old, n = ck["meta"], meta["n_structures"]
    for key in _SAME_JOB_KEYS:
        if old.get(key) != meta[key]:
            raise ValueError(f"checkpoint {checkpoint} was written for a different job: {key} is "
                             f"{old.get(key)!r} there but {meta[key]!r} now; use another checkpoint path")
    if len(ck["indices"]) and (ck["indices"].min() < 0 or ck["indices"].max() >= n):
        raise ValueError(f"checkpoint {checkpoint} has indices outside 0..{n - 1}")
    if forces is not None:
        if ck["forces"] is None and len(ck["indices"]):
            raise ValueError(f"checkpoint {checkpoint} holds energies only, not forces; use another checkpoint path")
        forces.update({int(i): f for i, f in zip(ck["indices"], ck["forces"] or [])})
    if stress is not None:
        if ck["stress"] is None and len(ck["indices"]):
            raise ValueError(f"checkpoint {checkpoint} holds no stress; use another checkpoint path")
        stress.update({int(i): v for i, v in zip(ck["indices"], [] if ck["stress"] is None else ck["stress"])})
    return {int(i): float(e) for i, e in zip(ck["indices"], ck["energies"])}


class _Recorder:
    """Collects energies, updates the progress bar and writes the checkpoint every ``seconds``."""

    def __init__(self, oracle, checkpoint, meta, done, seconds, bar, forces=None, stress=None):
        self.oracle, self.checkpoint, self.meta, self.done, self.seconds, self.bar = \
            oracle, checkpoint, meta, done, seconds, bar
        self.forces, self.stress, self.last, self.pending = forces, stress, time.monotonic(), 0

    def save(self, force=False):
        if self.checkpoint is not None and self.pending and (force or time.monotonic() - self.last >= self.seconds):
            _write_checkpoint(self.checkpoint, self.meta, self.done, self.forces, self.stress)
            self.last, self.pending = time.monotonic(), 0

    def __call__(self, i, result):
        energy = result[0] if self.forces is not None else result
        if self.forces is not None:
            if not np.all(np.isfinite(result[1])):
                raise RuntimeError(f"oracle {self.oracle.name!r} returned non-finite forces for structure {i}")
            self.forces[i] = np.asarray(result[1], dtype=np.float64)
        if self.stress is not None:
            if np.shape(result[2]) != (6,) or not np.all(np.isfinite(result[2])):
                raise RuntimeError(f"oracle {self.oracle.name!r} returned a bad stress {result[2]!r} for structure {i}")
            self.stress[i] = np.asarray(result[2], dtype=np.float64)
        if not isinstance(energy, float) or not math.isfinite(energy):
            raise RuntimeError(f"oracle {self.oracle.name!r} returned a non-finite energy {energy!r} for structure {i}")
        self.done[i] = energy
        self.pending += 1
        self.bar.update(1)
        self.save()


def _get_oracle(name, **settings):
    from .oracles import get_oracle  # not at import time: oracles.py re-exports this module's names

    return get_oracle(name, **settings)


def _energy_task(name, settings, runtime, forces=False, stress=False):  # worker: packed atoms -> eV (, eV/A, eV/A^3)
    oracle = _get_oracle(name, **settings, **runtime)
    compute = oracle.energy_forces_stress if stress else oracle.energy_and_forces if forces else oracle.energy
    return lambda packed: compute(workers.unpack_atoms(packed))


def _check_structures(oracle, atoms_list):
    for i, atoms in enumerate(atoms_list):
        try:
            oracle.check(atoms)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"structure {i}: {exc}") from None


def label_structures(atoms_list, oracle, n_workers: int = 2, checkpoint=None, progress: bool = True,
                     checkpoint_seconds: float = 5.0, threads_per_worker: int | None = None, forces: bool = False,
                     stress: bool = False):
    """Total energies (eV, float64, input order) of ``atoms_list`` from ``oracle`` (an Oracle or a
    registry name) in ``n_workers`` processes (:func:`.workers.run_tasks`; ``threads_per_worker``
    default: cores // workers), resumable from ``checkpoint``: an ``.npz`` of finished energies with
    the oracle name/settings/versions and a fingerprint of the structures, written atomically every
    ``checkpoint_seconds`` with results pending (0: after each) and on completion, error, Ctrl-C or
    SIGTERM; one written for other structures or another oracle/settings raises ValueError.
    RuntimeError (after saving the checkpoint) if the oracle fails; ``progress``: tqdm bar. With ``forces``
    returns ``(energies, [forces (N_i, 3) eV/A, ...])``, both kept in the checkpoint; with ``stress``
    (implies ``forces``) ``(energies, forces, stress (n, 6) eV/A^3)``, all three kept."""
    oracle = _get_oracle(oracle)
    n_workers = check_int("n_workers", n_workers, minimum=1)
    checkpoint_seconds = check_float("checkpoint_seconds", checkpoint_seconds, minimum=0)
    atoms_list = list(atoms_list)
    _check_structures(oracle, atoms_list)
    n = len(atoms_list)
    meta = {"format": CHECKPOINT_FORMAT, "oracle": oracle.name, "settings": oracle.settings,
            "versions": oracle.versions, "n_structures": n, "fingerprint": structures_fingerprint(atoms_list)}
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)
    stress = check_bool("stress", stress)
    forces = check_bool("forces", forces) or stress
    fdone, sdone = ({} if forces else None), ({} if stress else None)
    done = _finished(checkpoint, meta, fdone, sdone)
    compute = oracle.energy_forces_stress if stress else oracle.energy_and_forces if forces else oracle.energy
    todo = [i for i in range(n) if i not in done]

    def local(i):
        try:
            return compute(atoms_list[i])
        except Exception as exc:
            raise RuntimeError(f"oracle {oracle.name!r} failed on structure {i}: {exc}") from exc

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=n - len(todo), disable=not progress, unit="structure",
               desc=f"labelling ({oracle.name})", file=sys.stderr)
    record = _Recorder(oracle, checkpoint, meta, done, checkpoint_seconds, bar, fdone, sdone)
    if threads_per_worker is None:
        threads_per_worker = max(1, workers.cpu_count() // min(n_workers, max(len(todo), 1)))
    with workers.sigterm_as_exit():
        try:
            workers.run_tasks(todo, record, local=local, payload=lambda i: (workers.pack_atoms(atoms_list[i]),),
                              factory=_energy_task, args=(oracle.name, oracle.settings, oracle.runtime, forces, stress),
                              n_workers=n_workers, threads=threads_per_worker, what=f"oracle {oracle.name!r}",
                              item="structure")
        finally:
            record.save(force=True)
            bar.close()
    energies = np.array([done[i] for i in range(n)], dtype=np.float64)
    if stress:
        return energies, [fdone[i] for i in range(n)], np.array([sdone[i] for i in range(n)], dtype=np.float64)
    return (energies, [fdone[i] for i in range(n)]) if forces else energies


def label_timed(structs, oracle, path, progress=True, desc="labelling"):
    """Serial, in-process oracle energies (eV) and wall seconds per structure, resumable from the
    JSON file ``path`` (ValueError if it was written for other structures or another oracle)."""
    from tqdm.auto import tqdm

    meta = {"oracle": oracle.name, "settings": oracle.settings, "fingerprint": structures_fingerprint(structs),
            "threads": os.environ.get("OMP_NUM_THREADS")}
    state = {"meta": meta, "energy": {}, "seconds": {}}
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
        if any(old["meta"].get(k) != meta[k] for k in ("oracle", "settings", "fingerprint")):
            raise ValueError(f"{path} was written for other structures or another oracle; delete it or use --data-dir")
        state = old
    todo = [i for i in range(len(structs)) if str(i) not in state["energy"]]
    for i in tqdm(todo, desc=desc, unit="structure", disable=not progress or not todo):
        t0 = time.perf_counter()
        e = oracle.energy(structs[i])
        state["seconds"][str(i)] = time.perf_counter() - t0
        state["energy"][str(i)] = e
        write_json_atomic(state, path)
    return tuple(np.array([state[key][str(i)] for i in range(len(structs))]) for key in ("energy", "seconds"))


def prepare_dataset(cfg, oracle, data_dir, channels, gamma, workers=2, threads=1, progress=True):
    """``(stem, path)`` of the data file of ``cfg`` (``n_structures``, ``seed``, ``rattle``, ``grid``): existing,
    re-rendered from a sibling render of the same labelled cells, or generated (``hexagonal_dataset``),
    labelled (resumable ``<stem>.labels.npz``) and rendered with ``gamma`` (A) and ``channels``.
    With ``cfg["forces"]`` true the oracle's forces (eV/A) are labelled too, kept in the checkpoint and
    stored in the file (``datasets.load_forces``); such files have their own stem (``..._forces``)."""
    from ..atoms import datasets, render, structures

    N, seed, n = cfg["n_structures"], cfg["seed"], cfg["grid"]
    rattle = tuple(float(r) for r in cfg["rattle"])
    stem, path = datasets.dataset_paths(data_dir, datasets.oracle_tag(oracle), cfg)
    siblings = [] if os.path.exists(path) else datasets.sibling_renders(stem)
    if siblings:   # the same labelled cells at another grid or channel choice: re-render, never relabel
        print(f"re-rendering the labelled cells of {siblings[0]} -> {path}")
        datasets.rerender_dataset(siblings[0], path, (n, n), gamma, channels, progress)
    if os.path.exists(path):
        return stem, path
    print(f"generating {N} hexagonal sheets (seed {seed}) -> {path}")
    t0 = time.time()
    structs = structures.hexagonal_dataset(N, seed, rattle_range=rattle)
    t1 = time.time()
    with_forces = bool(cfg.get("forces", False))
    labels = label_structures(structs, oracle, n_workers=workers, checkpoint=f"{stem}.labels.npz",
                              progress=progress, threads_per_worker=threads, forces=with_forces)
    energies, forces = labels if with_forces else (labels, None)
    t2 = time.time()
    cell = structs[0].cell.lengths()[:2]
    attrs = {**oracle.attrs(), "unit": "eV", "generator": "ednn_tf.atoms.structures.hexagonal_dataset",
             "n_structures": N, "seed": seed, "rattle_range_A": list(rattle), "grid": [n, n], "gamma_A": gamma,
             "cutoff_gamma": render.DEFAULT_CUTOFF, "pixel_size_A": [cell[0] / n, cell[1] / n],
             "cell_A": cell.tolist(), "channels": "Z-weighted" if channels is None else channels,
             "image": "eqn (2): sum_i Z_i exp(-r^2 / 2 gamma^2) (or one channel per element, weight 1), row = x",
             "labelling_seconds": t2 - t1}
    datasets.build_dataset(path, structs, energies, (n, n), gamma, attrs, progress, channels=channels, forces=forces)
    print(f"  labelled in {t2 - t1:.0f} s, total {time.time() - t0:.0f} s")
    return stem, path
