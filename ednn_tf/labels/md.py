"""Molecular-dynamics snapshots for training sets (paper Sec. 3.2.2: configurations collected from
1000 K MD trajectories of porous graphene sheets).

Two functions:

* :func:`langevin_snapshots` -- one Langevin (NVT) trajectory with any ASE calculator; returns
  snapshot :class:`ase.Atoms` carrying the potential energy (and forces) the same calculator
  computed for the step, so no extra labelling is needed.
* :func:`run_trajectories` -- many trajectories in the worker processes of :mod:`.workers`, one
  ``.npz`` file per finished trajectory (:mod:`.trajectories`, atomic write), resumable: rerunning
  skips the trajectories already on disk.

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

This module never imports TensorFlow; its worker processes import only ``ednn_tf.labels``, so they
start in about a second.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from ..util import check_bool, check_float, check_int, check_positive
from . import workers
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


def _thermalize(atoms, temperature_K, rng):
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):   # ASE >= 3.29
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


def _dynamics(atoms, calculator, s, rng, stationary_start=False):
    """The working copy (calculator attached, momenta drawn) and its Langevin integrator."""
    from ase import Atoms, units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary

    work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if s["fix_com"] and not stationary_start:
        work.set_constraint(FixCom())
    work.calc = calculator
    t0 = s["temperature_K"] if s["initial_temperature_K"] is None else s["initial_temperature_K"]
    _thermalize(work, t0, rng)
    if stationary_start:   # COM momentum removed, then rescaled back to the drawn temperature
        Stationary(work)
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
    snap.info.update(info)
    snap.info.update(md_step=int(step), md_time_fs=step * timestep_fs, potential_energy_eV=energy,
                     kinetic_temperature_K=kinetic_temperature(work))
    return snap


def langevin_snapshots(atoms, calculator, temperature_K=1000.0, timestep_fs=1.0, n_steps=400, every=10,
                       equilibration_steps=200, friction=0.02, seed=0, initial_temperature_K=None,
                       fix_com=True, progress=False, desc="MD", stationary_start=False):
    """Run Langevin MD from ``atoms`` and return snapshots with their potential energies.

    Parameters
    ----------
    atoms : ase.Atoms
        Starting structure (not modified; a copy is propagated).
    calculator : ASE calculator
        Gives the forces for the dynamics and the snapshot energies, e.g.
        ``get_oracle("rebo").calculator()``. It is attached to the working copy and left attached
        there (close it yourself if it holds a process, e.g. ``calculator.clean()``).
    temperature_K, timestep_fs, friction : float
        Thermostat temperature (K), time step (fs), Langevin friction (1/fs).
    n_steps, every, equilibration_steps : int
        Total MD steps (equilibration included), steps between snapshots, steps discarded before
        the first. Snapshots follow steps ``equilibration_steps + every, + 2 every, ... <= n_steps``
        (:func:`snapshot_steps`).
    seed : int >= 0 or numpy.random.SeedSequence
        Seeds the one generator used for the initial velocities and the Langevin noise.
    initial_temperature_K : float or None
        Maxwell-Boltzmann temperature of the initial momenta (default ``temperature_K``).
    fix_com : bool
        Keep the centre of mass fixed (``ase.constraints.FixCom``).
    progress : bool
        tqdm bar over steps.
    stationary_start : bool
        Draw the momenta without the ``FixCom`` constraint and remove the centre-of-mass momentum
        with ``ase``'s ``Stationary`` (which rescales back to the drawn temperature) before fixing
        the centre of mass: the start of ``experiments/graphene_mc.py``'s reference MD (its figures).

    Returns
    -------
    list of ase.Atoms
        One per snapshot: positions wrapped into the cell along periodic axes, no constraints, no
        momenta, a ``SinglePointCalculator`` holding the step's potential energy (eV) and forces
        (eV/A) as computed by ``calculator``, and ``info`` with ``md_step``, ``md_time_fs``,
        ``potential_energy_eV``, ``kinetic_temperature_K``, ``md_seed`` (plus the starting
        structure's ``info``).
    """
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
    seed_repr = int(seed) if not isinstance(seed, np.random.SeedSequence) else repr(seed.entropy)
    info = {**atoms.info, "md_seed": seed_repr}
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
    """``n`` independent per-trajectory seeds (ints < 2^63) from one master ``seed``:
    trajectory ``k`` gets ``SeedSequence([seed, k])``'s first 64-bit word, so the seed of a
    trajectory does not depend on how many others there are."""
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
    """Langevin trajectories of every structure, in parallel worker processes, resumable.

    Parameters
    ----------
    structures : sequence of ase.Atoms
        Starting structures; trajectory ``k`` starts from ``structures[k]``.
    oracle : ednn_tf.labels.oracles.Oracle or str
        Gives forces and energies (a fresh ``oracle.calculator()`` per trajectory).
    directory : path
        One file per finished trajectory, :func:`trajectory_path` ``(directory, k)``, written
        atomically by this process as soon as the trajectory ends. Existing files are reused if
        their metadata (oracle, settings, MD settings, seed, starting-structure fingerprint)
        match; a mismatch raises ValueError.
    seed : int
        Master seed; trajectory ``k`` uses ``derive_seeds(seed, n)[k]`` unless ``seeds`` is given.
    seeds : sequence of int, optional
        Explicit per-trajectory seeds.
    n_workers : int
        Worker processes (:mod:`.workers`; ``1``: in this process), each without TensorFlow and
        with ``OMP_NUM_THREADS = threads_per_worker``.
    store_forces : bool
        Also store the forces of every snapshot (S x N x 3 float64, eV/A).
    progress : bool
        tqdm bar over trajectories.
    **md_settings
        Keys of :data:`MD_DEFAULTS`.

    Returns the list of trajectory file paths, in input order. Interrupting (Ctrl-C, SIGTERM) kills
    the workers; finished trajectories stay on disk and are skipped by the next call.
    """
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
    for k, a in enumerate(structures):
        try:
            oracle.check(a)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"structure {k}: {exc}") from None
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

    with workers.sigterm_as_exit():
        try:
            workers.run_tasks(
                todo, record, local=lambda k: _run_one(oracle, workers.pack_atoms(structures[k], info=True), seeds[k], settings,
                                                       store_forces),
                payload=lambda k: (workers.pack_atoms(structures[k], info=True), seeds[k]), factory=_md_task,
                args=(oracle.name, oracle.settings, oracle.runtime, settings, store_forces), n_workers=n_workers,
                threads=threads_per_worker, what=f"MD with oracle {oracle.name!r}", item="trajectory")
        finally:
            bar.close()
    return paths
