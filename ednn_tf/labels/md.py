"""Molecular-dynamics snapshots for training sets (paper Sec. 3.2.2: configurations collected from
1000 K MD trajectories of porous graphene sheets).

Two functions:

* :func:`langevin_snapshots` -- one Langevin (NVT) trajectory with any ASE calculator; returns
  snapshot :class:`ase.Atoms` carrying the potential energy (and forces) the same calculator
  computed for the step, so no extra labelling is needed.
* :func:`run_trajectories` -- many trajectories in parallel worker processes, one ``.npz`` file per
  finished trajectory (atomic write), resumable: rerunning skips the trajectories already on disk.

Dynamics
--------
ASE's Langevin integrator (Vanden-Eijnden & Ciccotti 2006) at ``temperature_K`` with friction
``friction`` in 1/fs and time step ``timestep_fs`` in fs. Initial momenta are drawn from the
Maxwell-Boltzmann distribution at ``initial_temperature_K`` (default: the target temperature).
With ``fix_com`` (default) an :class:`ase.constraints.FixCom` constraint removes the centre-of-mass
motion (ASE's recommended replacement for ``Langevin(fixcm=True)``); the sheet then cannot drift out
of the non-periodic z box, and the kinetic temperature uses ``3N - 3`` degrees of freedom.

Starting from an ideal lattice, the Maxwell-Boltzmann kinetic energy is quickly shared with the
potential energy (the temperature drops to about half), and the thermostat restores it on a time
scale ~ 1 / friction (50 fs at 0.02/fs); ``equilibration_steps`` are discarded. The configurational
(canonical) distribution does not depend on the friction, so a strong friction is a cheap way to
equilibrate when only configurations are wanted.

Determinism: everything random comes from one :class:`numpy.random.Generator` seeded with ``seed``
(Maxwell-Boltzmann draw first, then two normal arrays per Langevin step). Same structure, seed,
settings and calculator (serial LAMMPS/REBO is deterministic) give bit-identical snapshots, in
this process or in a worker process.

Units: positions and cells in Angstrom, energies in eV, forces in eV/A, temperatures in K, time in
fs, friction in 1/fs.

This module imports neither TensorFlow nor the rest of ``ednn_tf`` at import time; its worker
processes load it (and ``oracles.py``) by file path, so they start in about a second.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import numbers
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback

import numpy as np

__all__ = [
    "TRAJECTORY_FORMAT",
    "MD_DEFAULTS",
    "langevin_snapshots",
    "kinetic_temperature",
    "run_trajectories",
    "trajectory_path",
    "read_trajectory",
    "trajectory_atoms",
    "derive_seeds",
]

TRAJECTORY_FORMAT = "ednn_tf.md_trajectory/1"

#: Defaults of the MD settings shared by :func:`langevin_snapshots` and :func:`run_trajectories`.
MD_DEFAULTS = dict(temperature_K=1000.0, timestep_fs=1.0, n_steps=400, every=10, equilibration_steps=200,
                   friction=0.02, initial_temperature_K=None, fix_com=True)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _positive(name, value, strict=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (value <= 0 if strict else value < 0):
        raise ValueError(f"{name} must be a {'positive' if strict else 'non-negative'} finite number, got {value!r}")
    return float(value)


def _count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _seed(seed):
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def _md_settings(**kw) -> dict:
    """Validated MD settings (the keys of :data:`MD_DEFAULTS`), plain Python types."""
    unknown = sorted(set(kw) - set(MD_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown MD setting(s) {unknown}; allowed: {sorted(MD_DEFAULTS)}")
    s = {**MD_DEFAULTS, **kw}
    s["temperature_K"] = _positive("temperature_K", s["temperature_K"])
    s["timestep_fs"] = _positive("timestep_fs", s["timestep_fs"])
    s["friction"] = _positive("friction", s["friction"])
    s["n_steps"] = _count("n_steps", s["n_steps"], 1)
    s["every"] = _count("every", s["every"], 1)
    s["equilibration_steps"] = _count("equilibration_steps", s["equilibration_steps"], 0)
    if s["equilibration_steps"] + s["every"] > s["n_steps"]:
        raise ValueError(f"no snapshot would be taken: equilibration_steps ({s['equilibration_steps']}) + every "
                         f"({s['every']}) exceeds n_steps ({s['n_steps']})")
    if s["initial_temperature_K"] is not None:
        s["initial_temperature_K"] = _positive("initial_temperature_K", s["initial_temperature_K"], strict=False)
    s["fix_com"] = bool(s["fix_com"])
    return s


def snapshot_steps(n_steps, every, equilibration_steps=0):
    """MD steps at which :func:`langevin_snapshots` records a snapshot:
    ``equilibration_steps + every, + 2 every, ... <= n_steps``."""
    return np.arange(equilibration_steps + every, n_steps + 1, every, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# one trajectory
# --------------------------------------------------------------------------------------------
def kinetic_temperature(atoms) -> float:
    """Instantaneous kinetic temperature in K, ``2 E_kin / (n_dof k_B)``; ``n_dof`` is ``3N`` minus
    the degrees of freedom removed by the constraints (3 for ``FixCom``)."""
    from ase import units

    dof = 3 * len(atoms) - sum(c.get_removed_dof(atoms) for c in atoms.constraints)
    return 2.0 * float(atoms.get_kinetic_energy()) / (dof * units.kB)


def _thermalize(atoms, temperature_K, rng):
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):   # ASE >= 3.29
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


def langevin_snapshots(atoms, calculator, temperature_K=1000.0, timestep_fs=1.0, n_steps=400, every=10,
                       equilibration_steps=200, friction=0.02, seed=0, initial_temperature_K=None,
                       fix_com=True, progress=False, desc="MD"):
    """Run Langevin MD from ``atoms`` and return snapshots with their potential energies.

    Parameters
    ----------
    atoms : ase.Atoms
        Starting structure (not modified; a copy is propagated).
    calculator : ASE calculator
        Gives the forces for the dynamics and the snapshot energies, e.g.
        ``ednn_tf.labels.oracles.get_oracle("rebo").calculator()``. It is attached to the working copy and
        left attached there (close it yourself if it holds a process, e.g. ``calculator.clean()``).
    temperature_K : float
        Thermostat temperature (K).
    timestep_fs : float
        Time step (fs).
    n_steps : int
        Total number of MD steps, equilibration included.
    every : int
        Steps between snapshots.
    equilibration_steps : int
        Steps discarded before the first snapshot. Snapshots are taken after steps
        ``equilibration_steps + every, + 2 every, ... <= n_steps`` (see :func:`snapshot_steps`).
    friction : float
        Langevin friction in 1/fs.
    seed : int >= 0 or numpy.random.SeedSequence
        Seeds the one generator used for the initial velocities and the Langevin noise.
    initial_temperature_K : float or None
        Maxwell-Boltzmann temperature of the initial momenta (default ``temperature_K``).
    fix_com : bool
        Keep the centre of mass fixed (``ase.constraints.FixCom``).
    progress : bool
        tqdm bar over steps.

    Returns
    -------
    list of ase.Atoms
        One per snapshot: positions wrapped into the cell along periodic axes, no constraints, no
        momenta, a ``SinglePointCalculator`` holding the step's potential energy (eV) and forces
        (eV/A) as computed by ``calculator``, and ``info`` with ``md_step``, ``md_time_fs``,
        ``potential_energy_eV``, ``kinetic_temperature_K``, ``md_seed`` (plus the starting
        structure's ``info``).
    """
    from ase import Atoms, units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    if not isinstance(atoms, Atoms):
        raise TypeError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) < 2:
        raise ValueError(f"need at least 2 atoms for MD, got {len(atoms)}")
    s = _md_settings(temperature_K=temperature_K, timestep_fs=timestep_fs, n_steps=n_steps, every=every,
                     equilibration_steps=equilibration_steps, friction=friction,
                     initial_temperature_K=initial_temperature_K, fix_com=fix_com)
    ss = _seed(seed)
    rng = np.random.default_rng(ss)
    work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if s["fix_com"]:
        work.set_constraint(FixCom())
    work.calc = calculator
    t0 = s["temperature_K"] if s["initial_temperature_K"] is None else s["initial_temperature_K"]
    _thermalize(work, t0, rng)
    dyn = Langevin(work, s["timestep_fs"] * units.fs, temperature_K=s["temperature_K"],
                   friction=s["friction"] / units.fs, fixcm=False, rng=rng)
    wanted = set(snapshot_steps(s["n_steps"], s["every"], s["equilibration_steps"]).tolist())
    base_info = dict(atoms.info)
    seed_repr = int(seed) if not isinstance(seed, np.random.SeedSequence) else repr(seed.entropy)
    snaps = []

    from tqdm.auto import tqdm

    bar = tqdm(total=s["n_steps"], desc=desc, unit="step", disable=not progress, file=sys.stderr, leave=False)

    def observe():
        step = dyn.nsteps
        if step > 0:
            bar.update(1)
        if step not in wanted:
            return
        energy = float(work.get_potential_energy())
        if not math.isfinite(energy):
            raise RuntimeError(f"non-finite potential energy {energy!r} at MD step {step}")
        forces = np.array(work.get_forces(apply_constraint=False), dtype=np.float64)
        snap = Atoms(numbers=work.numbers, positions=work.get_positions(wrap=True), cell=work.cell, pbc=work.pbc)
        snap.calc = SinglePointCalculator(snap, energy=energy, forces=forces)
        snap.info.update(base_info)
        snap.info.update(md_step=int(step), md_time_fs=step * s["timestep_fs"], potential_energy_eV=energy,
                         kinetic_temperature_K=kinetic_temperature(work), md_seed=seed_repr)
        snaps.append(snap)

    dyn.attach(observe, interval=1)
    try:
        dyn.run(s["n_steps"])
    finally:
        bar.close()
    return snaps


# --------------------------------------------------------------------------------------------
# trajectory files
# --------------------------------------------------------------------------------------------
def trajectory_path(directory, index) -> str:
    """File of trajectory ``index`` in ``directory``: ``traj_<index:06d>.npz``."""
    return os.path.join(os.fspath(directory), f"traj_{int(index):06d}.npz")


def _fingerprint(atoms) -> str:
    h = hashlib.sha256()
    for arr in (np.asarray(atoms.numbers, np.int64), np.asarray(atoms.positions, np.float64),
                np.asarray(atoms.cell, np.float64), np.asarray(atoms.pbc, bool)):
        h.update(np.ascontiguousarray(arr).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _write_npz_atomic(path, **arrays):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_trajectory(path) -> dict:
    """Read a trajectory file of :func:`run_trajectories`.

    Returns ``{"meta": dict, "numbers": (N,), "cell": (3, 3), "pbc": (3,), "positions": (S, N, 3) A,
    "energies": (S,) eV, "steps": (S,), "temperatures": (S,) K}`` plus ``"forces"`` (S, N, 3) eV/A
    if they were stored.
    """
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
        forces = traj["forces"][k] if "forces" in traj else None
        a.calc = SinglePointCalculator(a, energy=float(traj["energies"][k]), forces=forces)
        a.info.update(md_step=int(traj["steps"][k]), kinetic_temperature_K=float(traj["temperatures"][k]),
                      potential_energy_eV=float(traj["energies"][k]), trajectory=traj["meta"].get("index"))
        out.append(a)
    return out


def derive_seeds(seed, n):
    """``n`` independent per-trajectory seeds (ints < 2^63) from one master ``seed``:
    trajectory ``k`` gets ``SeedSequence([seed, k])``'s first 64-bit word, so the seed of a
    trajectory does not depend on how many others there are."""
    _seed(seed)
    return [int(np.random.SeedSequence([int(seed), k]).generate_state(1, np.uint64)[0] >> np.uint64(1))
            for k in range(int(n))]


# --------------------------------------------------------------------------------------------
# oracle access without importing the ednn_tf package (no TensorFlow in workers)
# --------------------------------------------------------------------------------------------
def _oracles_module():
    if __package__:
        from . import oracles
        return oracles
    name = "_ednn_tf_md_oracles"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                         "oracles.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


def _pack(atoms):
    return (np.asarray(atoms.numbers, np.int64), np.asarray(atoms.positions, np.float64),
            np.asarray(atoms.cell, np.float64), np.asarray(atoms.pbc, bool), json.dumps(atoms.info, default=str))


def _unpack(packed):
    from ase import Atoms

    numbers_, positions, cell, pbc, info = packed
    a = Atoms(numbers=numbers_, positions=positions, cell=cell, pbc=pbc)
    a.info.update(json.loads(info))
    return a


def _run_one(oracle, packed, seed, settings, store_forces):
    """One trajectory -> dict of arrays (what the trajectory file holds, without meta)."""
    atoms = _unpack(packed)
    calc = oracle.calculator()
    t0 = time.perf_counter()
    try:
        snaps = langevin_snapshots(atoms, calc, seed=seed, **settings)
    finally:
        oracle._close(calc)
    out = dict(positions=np.array([a.positions for a in snaps], np.float64),
               energies=np.array([a.info["potential_energy_eV"] for a in snaps], np.float64),
               steps=np.array([a.info["md_step"] for a in snaps], np.int64),
               temperatures=np.array([a.info["kinetic_temperature_K"] for a in snaps], np.float64),
               seconds=np.float64(time.perf_counter() - t0))
    if store_forces:
        out["forces"] = np.array([a.get_forces() for a in snaps], np.float64)
    return out


def _worker_main():  # runs in a worker subprocess: pickled messages over stdin/stdout
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)                            # LAMMPS prints must not corrupt the result stream
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    oracle = settings = store_forces = None
    while True:
        try:
            msg = pickle.load(inp)
        except EOFError:
            return
        if msg[0] == "stop":
            return
        try:
            if msg[0] == "init":
                _, name, osettings, runtime, settings, store_forces = msg
                oracle = _oracles_module().get_oracle(name, **osettings, **runtime)
                reply = ("ready", None, None)
            else:
                _, index, packed, seed = msg
                reply = ("ok", index, _run_one(oracle, packed, seed, settings, store_forces))
        except BaseException:
            reply = ("error", msg[1] if msg[0] == "task" else None, traceback.format_exc())
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


def _Worker(threads):
    """One MD worker subprocess running this file's ``_worker_main`` (see ``oracles.PickleWorker``)."""
    return _oracles_module().PickleWorker(__file__, "_ednn_tf_md_worker", threads)


# --------------------------------------------------------------------------------------------
# many trajectories
# --------------------------------------------------------------------------------------------
def run_trajectories(structures, oracle, directory, *, seed=0, seeds=None, n_workers=2, threads_per_worker=1,
                     store_forces=False, progress=True, desc="MD trajectories", **md_settings):
    """Langevin trajectories of every structure, in parallel worker processes, resumable.

    Parameters
    ----------
    structures : sequence of ase.Atoms
        Starting structures; trajectory ``k`` starts from ``structures[k]``.
    oracle : ednn_tf.labels.oracles.Oracle or str
        Gives forces and energies (a fresh ``oracle.calculator()`` per trajectory).
    directory : path
        One file per finished trajectory, :func:`trajectory_path` ``(directory, k)``, written
        atomically (temp file + rename) by this process as soon as the trajectory ends. Existing
        files are reused if their metadata (oracle, settings, MD settings, seed, starting-structure
        fingerprint) match; a mismatch raises ValueError.
    seed : int
        Master seed; trajectory ``k`` uses ``derive_seeds(seed, n)[k]`` unless ``seeds`` is given.
    seeds : sequence of int, optional
        Explicit per-trajectory seeds.
    n_workers : int
        Worker processes (``1``: in this process). Each is a fresh interpreter that loads only this
        module and ``oracles.py`` (no TensorFlow), with ``OMP_NUM_THREADS = threads_per_worker``.
    store_forces : bool
        Also store the forces of every snapshot (S x N x 3 float64).
    progress : bool
        tqdm bar over trajectories.
    **md_settings
        Keys of :data:`MD_DEFAULTS`: ``temperature_K``, ``timestep_fs``, ``n_steps``, ``every``,
        ``equilibration_steps``, ``friction`` (1/fs), ``initial_temperature_K``, ``fix_com``.

    Returns the list of trajectory file paths, in input order. Interrupting (Ctrl-C, SIGTERM) kills
    the workers; finished trajectories stay on disk and are skipped by the next call.
    """
    orc = _oracles_module()
    oracle = orc.get_oracle(oracle)
    settings = _md_settings(**md_settings)
    structures = list(structures)
    n = len(structures)
    if seeds is None:
        seeds = derive_seeds(seed, n)
    seeds = [_count("seed", s, 0) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} structures")
    _count("n_workers", n_workers, 1)
    _count("threads_per_worker", threads_per_worker, 1)
    for k, a in enumerate(structures):
        try:
            oracle.check(a)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"structure {k}: {exc}") from None
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)

    def meta_for(k):
        return {"format": TRAJECTORY_FORMAT, "index": k, "seed": seeds[k], "md": settings,
                "oracle": oracle.name, "oracle_settings": oracle.settings, "store_forces": bool(store_forces),
                "fingerprint": _fingerprint(structures[k]), "n_atoms": len(structures[k]),
                "start_info": json.loads(json.dumps(structures[k].info, default=str))}

    def same(old, new):
        keys = ("seed", "md", "oracle", "oracle_settings", "fingerprint", "store_forces")
        return {k: old.get(k) for k in keys} == {k: new[k] for k in keys}

    paths = [trajectory_path(directory, k) for k in range(n)]
    todo = []
    for k in range(n):
        if os.path.exists(paths[k]):
            old = read_trajectory(paths[k])["meta"]
            if not same(old, json.loads(json.dumps(meta_for(k)))):
                raise ValueError(f"{paths[k]} was written for another structure, seed or MD/oracle setting; "
                                 "delete it or use another directory")
        else:
            todo.append(k)

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=n - len(todo), desc=desc, unit="traj", disable=not progress, file=sys.stderr)

    def record(k, result):
        meta = meta_for(k)
        meta["seconds"] = float(result.pop("seconds"))
        meta["versions"] = oracle.versions
        _write_npz_atomic(paths[k], meta=np.array(json.dumps(meta, sort_keys=True)), numbers=structures[k].numbers,
                          cell=np.asarray(structures[k].cell, np.float64), pbc=np.asarray(structures[k].pbc),
                          **result)
        bar.update(1)

    previous_term = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum, frame):
            raise SystemExit(128 + signum)
        previous_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        if todo and (n_workers == 1 or len(todo) == 1):
            for k in todo:
                record(k, _run_one(oracle, _pack(structures[k]), seeds[k], settings, store_forces))
        elif todo:
            _parallel(structures, todo, seeds, oracle, settings, store_forces, min(n_workers, len(todo)),
                      threads_per_worker, record)
    finally:
        bar.close()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return paths


def _parallel(structures, todo, seeds, oracle, settings, store_forces, n_workers, threads, record):
    tasks: queue.Queue = queue.Queue()
    for k in todo:
        tasks.put(k)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()

    def serve(worker):
        try:
            worker.send(("init", oracle.name, oracle.settings, oracle.runtime, settings, store_forces))
        except (BrokenPipeError, OSError):
            pass
        ready = worker.recv()
        if ready[0] != "ready":
            results.put(ready)
            return
        while not stop.is_set():
            try:
                k = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                worker.send(("task", k, _pack(structures[k]), seeds[k]))
            except (BrokenPipeError, OSError):
                results.put(worker.recv())
                return
            msg = worker.recv()
            results.put(("died", k, msg[2]) if msg[0] == "died" else msg)
            if msg[0] != "ok":
                return

    workers, threads_ = [], []
    try:
        for _ in range(n_workers):
            w = _Worker(threads)
            workers.append(w)
            t = threading.Thread(target=serve, args=(w,), daemon=True)
            t.start()
            threads_.append(t)
        received = 0
        while received < len(todo):
            try:
                kind, k, payload = results.get(timeout=0.2)
            except queue.Empty:
                if not any(t.is_alive() for t in threads_) and results.empty():
                    raise RuntimeError(f"all {n_workers} MD worker processes stopped with "
                                       f"{len(todo) - received} trajectories unfinished")
                continue
            if kind != "ok":
                where = f"trajectory {k}" if k is not None else "start-up"
                raise RuntimeError(f"MD with oracle {oracle.name!r} failed in a worker process ({where}):\n{payload}")
            record(k, payload)
            received += 1
    except BaseException:
        stop.set()
        for w in workers:
            w.close(kill=True)
        raise
    finally:
        stop.set()
        for w in workers:
            w.close()
        for t in threads_:
            t.join(timeout=5)
