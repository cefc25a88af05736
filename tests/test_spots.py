"""Cells cut around uncertain spots of a large structure (``ednn_tf.apply.spots``)."""
import numpy as np
import pytest
from ase.build import graphene
from ase.calculators.lj import LennardJones
from ase.geometry import find_mic
from ase.neighborlist import neighbor_list

from ednn_tf.apply.spots import cut_spot, relax_shell, uncertain_spots


def _sheet_with_vacancy():
    g = graphene(a=2.46, vacuum=10.0).repeat((12, 12, 1))     # hexagonal cell, 288 atoms
    g.pbc = [True, True, False]
    del g[[50]]
    return g


def test_uncertain_spots_are_highest_first_and_apart():
    pos = np.array([[0, 0, 0], [1, 0, 0], [10, 0, 0], [20, 0, 0], [5, 5, 0]], float)
    vals = np.array([5.0, 4.0, 3.0, 1.0, 2.0])
    assert uncertain_spots(vals, pos, 3, min_separation=8.0) == [0, 2, 3]
    assert uncertain_spots(vals, pos, 2, min_separation=0.0) == [0, 1]
    assert uncertain_spots(vals, pos, 9, min_separation=8.0) == [0, 2, 3]     # fewer exist
    cell = np.diag([22.0, 30.0, 20.0])                                   # x periodic: 0 and 20 are 2 A apart
    assert uncertain_spots(vals, pos, 3, min_separation=8.0, cell=cell, pbc=(True, False, False)) == [0, 2]
    assert uncertain_spots(vals, pos, 3, min_separation=8.0, cell=cell, pbc=(False, True, False)) == [0, 2, 3]
    with pytest.raises(ValueError, match=r"one finite number per atom: got shape \(3,\) for 5 atoms"):
        uncertain_spots(vals[:3], pos, 1)


def test_cut_spot_keeps_the_core_exactly_and_leaves_no_overlap():
    g = _sheet_with_vacancy()
    center = g.positions[60, :2] + [0.3, 0.2]
    size, keep, dmin = 13.0, 4.5, 1.2
    cell = cut_spot(g, center, size, keep, min_distance=dmin)
    core = cell.arrays["spot_core"]
    d, _ = find_mic(np.c_[g.positions[:, :2] - center, np.zeros(len(g))], g.cell, [True, True, False])
    want = d[np.linalg.norm(d[:, :2], axis=1) <= keep, :2] + size / 2
    got = cell.positions[core, :2]
    assert len(got) == len(want) > 10
    np.testing.assert_allclose(got[np.lexsort(got.T)], want[np.lexsort(want.T)], atol=1e-9)
    assert len(neighbor_list("i", cell, dmin)) == 0                 # no overlap across the new boundary
    density = len(g) / (np.linalg.det(g.cell[:2, :2]))
    assert 0.85 * density * size ** 2 < len(cell) <= 1.01 * density * size ** 2
    assert np.allclose(cell.cell.lengths()[:2], size) and list(cell.pbc) == [True, True, False]


def test_cut_spot_refuses_a_core_that_leaves_no_seam_and_a_cell_wider_than_the_sheet():
    with pytest.raises(ValueError, match="keep_radius 6.0 A and min_distance 1.0 A leave no seam in a 13.0 A cell"):
        cut_spot(_sheet_with_vacancy(), (5.0, 5.0), 13.0, 6.0)
    with pytest.raises(ValueError, match="a 30.0 A cell does not fit in the structure's periodic length 29.52 A"):
        cut_spot(_sheet_with_vacancy(), (5.0, 5.0), 30.0, 4.0)


def test_relax_shell_moves_only_the_shell_and_lowers_the_energy():
    cell = cut_spot(_sheet_with_vacancy(), (10.0, 8.0), 12.0, 4.0, min_distance=1.2)
    lj = dict(sigma=1.42 / 2 ** (1 / 6), epsilon=1.0, rc=3.0)
    before = cell.copy()
    before.calc = LennardJones(**lj)
    out = relax_shell(cell, LennardJones(**lj), fmax=0.05, steps=60)
    core = cell.arrays["spot_core"]
    np.testing.assert_array_equal(out.positions[core], cell.positions[core])
    assert np.abs(out.positions[~core] - cell.positions[~core]).max() > 1e-3
    out.calc = LennardJones(**lj)
    assert out.get_potential_energy() < before.get_potential_energy() - 1e-3
    assert 0 < out.info["relax_steps"] <= 60 and out.calc is not None and cell.calc is None
