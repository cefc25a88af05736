"""NVE molecular dynamics with any ASE calculator, and how well it conserves energy (issue 14).

:func:`nve_run` integrates ASE's ``VelocityVerlet`` from in-plane Maxwell-Boltzmann velocities
(z velocities 0: a 2D model has no z forces, so a planar sheet stays planar under both it and a
classical reference) with zero centre-of-mass momentum, and records every step: potential,
kinetic and total energy (eV), the net force ``|sum_i F_i|`` (eV/A) and the centre-of-mass
velocity (A/fs). :func:`drift_summary` turns that into the figures users ask for: the total-energy
drift (the slope of a straight-line fit, meV/atom/ps), its fluctuation, and the net force.

Why the net force matters: an EDNN sees the atoms on a pixel grid, so its energy is invariant only
under translations by whole pixels; ``sum_i F_i`` is then not exactly zero, and the centre of mass
accelerates. That does not by itself break energy conservation (the forces are still the exact
gradient of one energy), but it moves kinetic energy into the centre-of-mass motion: the figures
report the centre-of-mass kinetic energy at the end for that reason.
Units: A, eV, fs, K; drift in meV/atom/ps.
"""
from __future__ import annotations

import math

import numpy as np

from ..util import check_float, check_int

__all__ = ["nve_run", "drift_summary", "thermal_velocities", "run_record"]


def thermal_velocities(atoms, temperature_K, seed=0):
    """(N, 3) in-plane Maxwell-Boltzmann velocities (ASE units) at ``temperature_K`` drawn from
    ``seed``, centre of mass at rest, scaled so that the kinetic temperature over the 2N - 2 in-plane
    degrees of freedom is exactly ``temperature_K``; z velocities 0."""
    from ase import units

    masses = atoms.get_masses()[:, None]
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(atoms), 3)) * np.sqrt(units.kB * temperature_K / masses)
    v[:, 2] = 0.0
    v[:, :2] -= (masses * v[:, :2]).sum(0) / masses.sum()
    ekin = 0.5 * float((masses * v ** 2).sum())
    return v * math.sqrt((len(atoms) - 1) * units.kB * temperature_K / ekin)   # 2N - 2 dof: (2N-2)/2 kT


def nve_run(atoms, calculator, temperature_K, n_steps=2000, timestep_fs=0.5, seed=0, progress=False):
    """Velocity-Verlet NVE of ``atoms`` (copied) with ``calculator``; returns a dict of per-step arrays
    (``time_fs``, ``epot``, ``ekin``, ``etot`` in eV, ``net_force`` eV/A, ``com_velocity`` A/fs (3,)
    per step) and ``n_atoms``, ``total_mass`` (amu), ``temperature_K``, ``timestep_fs``, ``seconds_per_step``.
    Velocities: in-plane Maxwell-Boltzmann at ``temperature_K`` drawn from ``seed``, centre of mass at
    rest; the initial kinetic temperature is exactly ``temperature_K`` over the 2N - 2 in-plane degrees
    of freedom."""
    import time

    from ase import units
    from ase.md.verlet import VelocityVerlet

    temperature_K = check_float("temperature_K", temperature_K, minimum=0.0, strict=True)
    n_steps = check_int("n_steps", n_steps, minimum=1)
    timestep_fs = check_float("timestep_fs", timestep_fs, minimum=0.0, strict=True)
    atoms = atoms.copy()
    atoms.calc = calculator
    masses = atoms.get_masses()[:, None]
    atoms.set_velocities(thermal_velocities(atoms, temperature_K, seed))
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    rec = {k: [] for k in ("epot", "ekin", "net_force", "com_velocity")}

    def record():
        f = atoms.get_forces()
        rec["epot"].append(atoms.get_potential_energy())
        rec["ekin"].append(atoms.get_kinetic_energy())
        rec["net_force"].append(float(np.linalg.norm(f.sum(0))))
        rec["com_velocity"].append((masses * atoms.get_velocities()).sum(0) / masses.sum() * units.fs)

    from tqdm.auto import tqdm

    record()
    bar = tqdm(total=n_steps, desc=f"NVE {temperature_K:g} K", unit="step", disable=not progress)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        dyn.run(1)
        record()
        bar.update(1)
    bar.close()
    return run_record(rec, len(atoms), float(masses.sum()), temperature_K, timestep_fs,
                      (time.perf_counter() - t0) / n_steps)


def run_record(rec, n_atoms, total_mass, temperature_K, timestep_fs, seconds_per_step):
    """The record of an NVE run (:func:`nve_run`, ``apply.lammps_md.lammps_nve_run``) from its
    per-step lists ``rec`` (``epot``, ``ekin``, ``net_force``, ``com_velocity``)."""
    out = {k: np.asarray(v) for k, v in rec.items()}
    out.update(time_fs=np.arange(len(out["epot"])) * timestep_fs, etot=out["epot"] + out["ekin"], n_atoms=n_atoms,
               temperature_K=temperature_K, timestep_fs=timestep_fs, total_mass=total_mass,
               seconds_per_step=seconds_per_step)
    return out


def drift_summary(run) -> dict:
    """Energy-conservation figures of an :func:`nve_run` record: ``drift_meV_per_atom_per_ps`` (slope
    of a least-squares line through E_tot(t)), ``etot_rms_meV_per_atom`` (RMS about that line),
    ``etot_max_dev_meV_per_atom`` (largest |E_tot - E_tot(0)|), the mean and largest net force
    (eV/A), the final centre-of-mass kinetic energy (meV/atom), the mean kinetic temperature (K, 2N - 2
    in-plane degrees of freedom) and the seconds per step."""
    from ase import units

    t_ps = np.asarray(run["time_fs"]) / 1000.0
    n = run["n_atoms"]
    e = np.asarray(run["etot"]) / n * 1e3   # meV/atom
    slope, icpt = np.polyfit(t_ps, e, 1)
    com = np.asarray(run["com_velocity"])[-1] / units.fs      # A per ASE time unit
    mass = run.get("total_mass")
    com_ke = None if mass is None else 0.5 * mass * float(com @ com) / n * 1e3
    return {"n_atoms": int(n), "temperature_K": run["temperature_K"], "timestep_fs": run["timestep_fs"],
            "duration_ps": float(t_ps[-1]), "drift_meV_per_atom_per_ps": float(slope),
            "etot_rms_meV_per_atom": float(np.sqrt(np.mean((e - (slope * t_ps + icpt)) ** 2))),
            "etot_max_dev_meV_per_atom": float(np.max(np.abs(e - e[0]))),
            "net_force_mean_eV_per_A": float(np.mean(run["net_force"])),
            "net_force_max_eV_per_A": float(np.max(run["net_force"])),
            "com_kinetic_final_meV_per_atom": com_ke,
            "mean_temperature_K": float(np.mean(run["ekin"]) * 2 / ((2 * n - 2) * units.kB)),
            "seconds_per_step": float(run["seconds_per_step"])}
