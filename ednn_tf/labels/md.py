"""Molecular-dynamics snapshots for training sets (paper Sec. 3.2.2: configurations from 1000 K MD
of porous graphene). :func:`langevin_snapshots`: one Langevin (NVT) trajectory with any ASE
calculator, snapshots carrying the energy (and forces) it computed for the step;
:func:`run_trajectories`: many, in :mod:`.workers` processes, one ``.npz`` each (:mod:`.trajectories`).

ASE's Langevin integrator (Vanden-Eijnden & Ciccotti 2006); ``fix_com`` adds ASE's ``FixCom`` (the
replacement for ``Langevin(fixcm=True)``: the sheet cannot drift out of the non-periodic z box; the
kinetic temperature then has ``3N - 3`` degrees of freedom). The thermostat equilibrates on a time
scale ~ 1 / friction (docs/porous_graphene.md); the canonical configurational distribution does not
depend on the friction, so a strong one equilibrates cheaply. One :class:`numpy.random.Generator`
seeded with ``seed`` draws everything (Maxwell-Boltzmann momenta, then two normal arrays per step):
same structure, seed, settings and deterministic calculator give bit-identical snapshots, in this
process or a worker. Units: Angstrom, eV, eV/A, K, fs, friction in 1/fs.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from ..util import check_bool, check_float, check_int, check_positive
from . import workers
from .labelling import _check_structures
from .oracles import get_oracle
from .trajectories import (TRAJECTORY_FORMAT, _missing, _trajectory_meta, _write_trajectory,
                           read_trajectory, trajectory_atoms, trajectory_path)

__all__ = ["TRAJECTORY_FORMAT", "MD_DEFAULTS", "langevin_snapshots", "kinetic_temperature", "run_trajectories",
           "trajectory_path", "read_trajectory", "trajectory_atoms", "derive_seeds"]

#: Defaults of the MD settings shared by :func:`langevin_snapshots` and :func:`run_trajectories`.
MD_DEFAULTS = dict(temperature_K=1000.0, timestep_fs=1.0, n_steps=400, every=10, equilibration_steps=200,
                   friction=0.02, initial_temperature_K=None, fix_com=True)


# --- validation ---
def _seed(seed):
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(check_int("seed", seed, minimum=0))


def _md_settings(**kw) -> dict:
    """Validated MD settings (the keys of :data:`MD_DEFAULTS`), plain Python types."""
    unknown = sorted(set(kw) - set(MD_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown MD setting(s) {unknown}; allowed: {sorted(MD_DEFAULTS)}")
    s = {**MD_DEFAULTS, **kw}
    for key in ("temperature_K", "timestep_fs", "friction"):
        s[key] = check_positive(key, s[key])
    for key, minimum in (("n_steps", 1), ("every", 1), ("equilibration_steps", 0)):
        s[key] = check_int(key, s[key], minimum=minimum)
    if s["equilibration_steps"] + s["every"] > s["n_steps"]:
        raise ValueError(f"no snapshot would be taken: equilibration_steps ({s['equilibration_steps']}) + every "
                         f"({s['every']}) exceeds n_steps ({s['n_steps']})")
    if s["initial_temperature_K"] is not None:
        s["initial_temperature_K"] = check_float("initial_temperature_K", s["initial_temperature_K"], minimum=0)
    s["fix_com"] = bool(s["fix_com"])
    return s


def snapshot_steps(n_steps, every, equilibration_steps=0):
    """MD steps at which :func:`langevin_snapshots` records a snapshot:
    ``equilibration_steps + every, + 2 every, ... <= n_steps``."""
    return np.arange(equilibration_steps + every, n_steps + 1, every, dtype=np.int64)


# --- one trajectory ---
def kinetic_temperature(atoms) -> float:
    """Instantaneous kinetic temperature in K, ``2 E_kin / (n_dof k_B)``; ``n_dof`` is ``3N`` minus
    the degrees of freedom removed by the constraints (3 for ``FixCom``)."""
    from ase import units

    dof = 3 * len(atoms) - sum(c.get_removed_dof(atoms) for c in atoms.constraints)
    return 2.0 * float(atoms.get_kinetic_energy()) / (dof * units.kB)


def _dynamics(atoms, calculator, s, rng, stationary_start=False):
    """The working copy (calculator attached, momenta drawn) and its Langevin integrator."""
    from ase import Atoms, units
    from ase.constraints import FixCom
    from ase.md import velocitydistribution as vd
    from ase.md.langevin import Langevin

    work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if s["fix_com"] and not stationary_start:
        work.set_constraint(FixCom())
    work.calc = calculator
    t0 = s["temperature_K"] if s["initial_temperature_K"] is None else s["initial_temperature_K"]
    if hasattr(vd, "thermalize_momenta"):   # ASE >= 3.29
        vd.thermalize_momenta(work, t0, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(work, temperature_K=t0, rng=rng)
    if stationary_start:   # COM momentum removed, then rescaled back to the drawn temperature
        vd.Stationary(work)
        if s["fix_com"]:
            work.set_constraint(FixCom())
    dyn = Langevin(work, s["timestep_fs"] * units.fs, temperature_K=s["temperature_K"],
                   friction=s["friction"] / units.fs, fixcm=False, rng=rng)
    return work, dyn


def _snapshot(work, step, timestep_fs, info):
    """A copy of ``work`` at MD ``step`` with its energy and raw forces (SinglePointCalculator)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    energy = float(work.get_potential_energy())
    if not math.isfinite(energy):
        raise RuntimeError(f"non-finite potential energy {energy!r} at MD step {step}")
    forces = np.array(work.get_forces(apply_constraint=False), dtype=np.float64)
    snap = Atoms(numbers=work.numbers, positions=work.get_positions(wrap=True), cell=work.cell, pbc=work.pbc)
    snap.calc = SinglePointCalculator(snap, energy=energy, forces=forces)
    snap.info.update(info, md_step=int(step), md_time_fs=step * timestep_fs, potential_energy_eV=energy,
                     kinetic_temperature_K=kinetic_temperature(work))
    return snap


def langevin_snapshots(atoms, calculator, temperature_K=1000.0, timestep_fs=1.0, n_steps=400, every=10,
                       equilibration_steps=200, friction=0.02, seed=0, initial_temperature_K=None,
                       fix_com=True, progress=False, desc="MD", stationary_start=False):
    """Langevin MD from ``atoms`` (not modified) -> snapshots with their potential energies.

    ``calculator`` (e.g. ``get_oracle("rebo").calculator()``) gives forces and energies and stays
    attached to the working copy (close it yourself if it holds a process). ``n_steps`` includes the
    ``equilibration_steps``; snapshots follow :func:`snapshot_steps`. Initial momenta are
    Maxwell-Boltzmann at ``initial_temperature_K`` (default ``temperature_K``); ``seed`` (int >= 0
    or a SeedSequence) seeds the one generator. ``stationary_start``: draw the momenta without
    ``FixCom``, remove the centre-of-mass momentum with ASE's ``Stationary`` (rescaled back to the
    drawn temperature), then fix the centre of mass (``experiments/graphene_mc.py``'s reference MD).
    Returns one ase.Atoms per snapshot: positions wrapped along periodic axes, no constraints or
    momenta, a ``SinglePointCalculator`` with the step's energy (eV) and forces (eV/A), and ``info`` =
    the start's plus ``md_step``, ``md_time_fs``, ``potential_energy_eV``, ``kinetic_temperature_K``,
    ``md_seed``."""
    from ase import Atoms

    if not isinstance(atoms, Atoms):
        raise TypeError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) < 2:
        raise ValueError(f"need at least 2 atoms for MD, got {len(atoms)}")
    s = _md_settings(temperature_K=temperature_K, timestep_fs=timestep_fs, n_steps=n_steps, every=every,
                     equilibration_steps=equilibration_steps, friction=friction,
                     initial_temperature_K=initial_temperature_K, fix_com=fix_com)
    work, dyn = _dynamics(atoms, calculator, s, np.random.default_rng(_seed(seed)),
                          check_bool("stationary_start", stationary_start))
    wanted = set(snapshot_steps(s["n_steps"], s["every"], s["equilibration_steps"]).tolist())
    info = {**atoms.info, "md_seed": repr(seed.entropy) if isinstance(seed, np.random.SeedSequence) else int(seed)}
    snaps = []

    from tqdm.auto import tqdm

    bar = tqdm(total=s["n_steps"], desc=desc, unit="step", disable=not progress, file=sys.stderr, leave=False)

    def observe():
        if dyn.nsteps > 0:
            bar.update(1)
        if dyn.nsteps in wanted:
            snaps.append(_snapshot(work, dyn.nsteps, s["timestep_fs"], info))

    dyn.attach(observe, interval=1)
    try:
        dyn.run(s["n_steps"])
    finally:
        bar.close()
    return snaps


# --- many trajectories ---
def derive_seeds(seed, n):
    """``n`` per-trajectory seeds (ints < 2^63): trajectory ``k`` gets ``SeedSequence([seed, k])``'s
    first 64-bit word >> 1, independent of how many others there are."""
    _seed(seed)
    return [int(np.random.SeedSequence([int(seed), k]).generate_state(1, np.uint64)[0] >> np.uint64(1))
            for k in range(int(n))]


def _run_one(oracle, packed, seed, settings, store_forces):
    """One trajectory -> dict of arrays (what the trajectory file holds, without meta)."""
    atoms = workers.unpack_atoms(packed)
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


def _md_task(name, osettings, runtime, settings, store_forces):  # worker factory: (packed, seed) -> arrays
    oracle = get_oracle(name, **osettings, **runtime)
    return lambda packed, seed: _run_one(oracle, packed, seed, settings, store_forces)


def run_trajectories(structures, oracle, directory, *, seed=0, seeds=None, n_workers=2, threads_per_worker=1,
                     store_forces=False, progress=True, desc="MD trajectories", **md_settings):
    """Langevin trajectories (``md_settings``: keys of :data:`MD_DEFAULTS`) from every structure, each
    with a fresh ``oracle.calculator()``, in ``n_workers`` processes (:func:`.workers.run_tasks`).
    Trajectory ``k`` uses ``seeds[k]`` or ``derive_seeds(seed, n)[k]`` and is written atomically to
    :func:`trajectory_path` ``(directory, k)`` as it ends; an existing file is reused if its metadata
    (oracle, settings, MD settings, seed, start fingerprint) match, else ValueError. ``store_forces``
    also stores (S, N, 3) forces in eV/A. Returns the file paths in input order; after Ctrl-C or
    SIGTERM the finished trajectories stay on disk."""
    oracle = get_oracle(oracle)
    settings = _md_settings(**md_settings)
    structures = list(structures)
    n = len(structures)
    seeds = derive_seeds(seed, n) if seeds is None else [check_int("seed", s, minimum=0) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} structures")
    check_int("n_workers", n_workers, minimum=1)
    check_int("threads_per_worker", threads_per_worker, minimum=1)
    store_forces = check_bool("store_forces", store_forces)
    _check_structures(oracle, structures)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    metas = [_trajectory_meta(k, structures[k], seeds[k], settings, oracle, store_forces) for k in range(n)]
    paths = [trajectory_path(directory, k) for k in range(n)]
    todo = _missing(paths, metas)

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=n - len(todo), desc=desc, unit="traj", disable=not progress, file=sys.stderr)

    def record(k, result):
        _write_trajectory(paths[k], metas[k], structures[k], result, oracle.versions)
        bar.update(1)

    def payload(k):
        return workers.pack_atoms(structures[k], info=True), seeds[k]

    with workers.sigterm_as_exit():
        try:
            workers.run_tasks(todo, record, local=lambda k: _run_one(oracle, *payload(k), settings, store_forces),
                              payload=payload, factory=_md_task, n_workers=n_workers, threads=threads_per_worker,
                              args=(oracle.name, oracle.settings, oracle.runtime, settings, store_forces),
                              what=f"MD with oracle {oracle.name!r}", item="trajectory")
        finally:
            bar.close()
    return paths
