"""The shipped hexagonal-gfn1 tried the way a new user would (issue 26): turned, in a chiral or
hexagonal cell, strained, repeated, relaxed, through the CLI. Bounds are the measured figures of
docs/potentials.md with a margin (float32 round-off and BLAS differences), not the issue's aims."""
import ase.io
import numpy as np
import pytest
from ase.build import graphene

import ednn_tf
from ednn_tf import cli
from ednn_tf.apply.calculator import EDNNCalculator
from ednn_tf.apply.checks import chiral_cell, eos_fit, relax_lattice, turned
from ednn_tf.apply.space import predict_structures
from ednn_tf.atoms.structures import honeycomb_sheet

GFN1_GRAPHENE = -57.847        # eV/atom, GFN1-xTB 2x2 k-mesh, aligned cell (issue 26)
GFN1_A = 2.4577                # A, GFN1-xTB equilibrium (experiments/potential_checks.py EOS fit)


@pytest.fixture(scope="module")
def pot():
    p = ednn_tf.load_potential("hexagonal-gfn1")
    if p.readout != "atoms":
        pytest.skip("the shipped model is not a space potential")
    return p


def _e(pot, atoms):
    return predict_structures(pot, [atoms], derivatives=False)[0]["energy"] / len(atoms)


def test_turned_and_chiral_graphene_give_one_energy(pot):
    rect = honeycomb_sheet(5, 3, 2.46)
    rect.pbc = [True, True, False]
    e = [_e(pot, turned(rect, t)) for t in (0.0, 13.9, 19.1, 30.0, 45.0, 71.0)]
    e += [_e(pot, chiral_cell(n, m)) for n, m in ((2, 1), (3, 1))]
    assert max(e) - min(e) < ROTATION_BOUND
    assert abs(np.mean(e) - GFN1_GRAPHENE) < 0.03                   # measured 0.023; was 0.36 eV off along (2, 1)


def test_forces_turn_with_the_structure(pot):
    a = honeycomb_sheet(4, 2, 2.46, ("B", "N"))
    a.pbc = [True, True, False]
    a.rattle(0.08, seed=3)
    f = predict_structures(pot, [a])[0]["forces"]
    for t in (25.0, 60.0):
        b, fr = turned(a, t, f)
        assert np.mean(np.abs(predict_structures(pot, [b])[0]["forces"][:, :2] - fr)) < FORCE_TURN_BOUND


def test_hexagonal_cell_through_the_cli_is_right(pot, tmp_path):
    """The 2-atom hexagonal cell x 6 x 6 through ednn-tf predict: was -52.02 eV/atom (truth -57.84)
    with ~20 eV/A on a perfect crystal, exit status 0; now the graphene energy and small forces."""
    g = graphene(a=2.46, vacuum=10.0).repeat((6, 6, 1))
    g.pbc = [True, True, False]
    ase.io.write(tmp_path / "g.extxyz", g)
    assert cli.main(["predict", "hexagonal-gfn1", str(tmp_path / "g.extxyz"), "--out", str(tmp_path / "p.extxyz"),
                     "--no-progress"]) == 0
    p = ase.io.read(tmp_path / "p.extxyz")
    assert abs(p.get_potential_energy() / len(p) - GFN1_GRAPHENE) < 0.03
    assert np.abs(p.get_forces()).max() < PERFECT_FORCE_BOUND
    assert np.all(np.isfinite(p.get_stress()))


def test_strain_is_smooth_and_the_minimum_is_gfn1s(pot):
    strains = np.round(np.arange(-0.02, 0.02001, 0.001), 4)
    cells = []
    for s in strains:
        c = honeycomb_sheet(3, 2, 2.46 * (1 + s))
        c.pbc = [True, True, False]
        cells.append(c)
    e = np.array([r["energy"] for r in predict_structures(pot, cells, derivatives=False)]) / 24
    fit = eos_fit(strains, e, 2.46, np.sqrt(3) / 4 * 2.46 ** 2)
    assert fit["max_residual_meV_per_atom"] < EOS_RESIDUAL_BOUND
    assert abs(fit["a_eq_A"] / GFN1_A - 1) < 0.01


def test_repeats_of_cells_incommensurate_with_the_pitch(pot):
    """E(k1 x k2) / (k1 k2) against E for a rattled 12.30 x 12.78 A cell (49.2 x 51.1 px): the copies
    differ only by their sub-pixel offsets (was 4.3-4.9 meV/atom with the cell grid)."""
    a = honeycomb_sheet(5, 3, 2.46, ("B", "N"))
    a.pbc = [True, True, False]
    a.rattle(0.05, seed=2)
    e = _e(pot, a)
    for k in ((2, 1), (1, 2), (2, 2)):
        assert abs(_e(pot, a.repeat((k[0], k[1], 1))) - e) < SUPERCELL_BOUND


def test_cell_relaxation_with_the_stress(pot):
    g = honeycomb_sheet(3, 2, 2.52)
    g.pbc = [True, True, False]
    g.calc = EDNNCalculator(pot)
    assert g.get_stress()[0] > 0.0                                   # stretched: tension wants to shrink it
    scale, steps = relax_lattice(pot, g)
    assert abs(2.52 * scale / GFN1_A - 1) < 0.01 and steps < 400


ROTATION_BOUND = 0.012         # eV/atom; the 0-90 deg scan measured 7.55 meV/atom (graphene), these angles 3.4
FORCE_TURN_BOUND = 0.35        # eV/A MAE; measured 0.24-0.26 here, 0.22 on the turned validation cells
PERFECT_FORCE_BOUND = 0.3      # eV/A; measured 0.117 (was ~20 eV/A through ednn-tf predict)
EOS_RESIDUAL_BOUND = 0.5       # meV/atom from a quartic over -2 .. 2 %; measured 0.135
SUPERCELL_BOUND = 0.001        # eV/atom; measured 0.07-0.20 meV/atom here, up to 1.2 on 12 validation cells
