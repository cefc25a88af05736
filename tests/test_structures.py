"""Structure generators: deterministic from the seed, right atom counts and cells, no close contacts."""
import numpy as np
import pytest

pytest.importorskip("ase")

from ednn_tf.atoms.structures import (HEXAGONAL_KINDS, hexagonal_cell, hexagonal_dataset, honeycomb_sheet,
                                min_interatomic_distance, porous_graphene, rattle, supercell)


def _same(a, b):
    return (a.get_chemical_symbols() == b.get_chemical_symbols()
            and np.array_equal(a.positions, b.positions) and np.array_equal(a.cell, b.cell)
            and np.array_equal(a.pbc, b.pbc))


def test_honeycomb_sheet_geometry():
    s = honeycomb_sheet(5, 3, lattice_constant=2.46)
    assert len(s) == 60
    np.testing.assert_allclose(s.cell.lengths(), [12.30, 3 * np.sqrt(3) * 2.46, 20.0])
    assert s.cell.orthorhombic and s.pbc.tolist() == [True, True, False]
    d = s.get_all_distances(mic=True)
    np.fill_diagonal(d, np.inf)
    # every atom has exactly three neighbours at a / sqrt(3)
    bond = 2.46 / np.sqrt(3)
    np.testing.assert_allclose(d.min(axis=1), bond, rtol=1e-12)
    assert np.all((np.abs(d - bond) < 1e-9).sum(axis=1) == 3)


@pytest.mark.parametrize("kind", HEXAGONAL_KINDS)
@pytest.mark.parametrize("vacancies", [0, 1, 3])
def test_hexagonal_cell_counts_cell_contacts(kind, vacancies):
    s = hexagonal_cell(kind, seed=11, vacancies=vacancies)
    assert len(s) == 60 - vacancies
    np.testing.assert_allclose(s.cell.lengths(), [12.5, 3 * np.sqrt(3) * 2.5, 20.0])  # 12.5 x 12.99 A
    assert s.cell.orthorhombic and s.pbc.tolist() == [True, True, False]
    assert min_interatomic_distance(s) >= 1.0
    assert np.all((s.positions[:, 2] > 5) & (s.positions[:, 2] < 15))  # sheet in the middle of the vacuum
    assert _same(s, hexagonal_cell(kind, seed=11, vacancies=vacancies))
    symbols = set(s.get_chemical_symbols())
    if kind == "graphene":
        assert symbols == {"C"}
    elif kind == "hbn":
        assert symbols == {"B", "N"}
    else:
        assert symbols <= {"B", "C", "N"} and len(symbols) >= 2


def test_hexagonal_cell_seed_changes_structure_and_rattle_is_in_plane_mostly():
    a, b = hexagonal_cell("graphene", 0), hexagonal_cell("graphene", 1)
    assert not _same(a, b)
    ideal = honeycomb_sheet(5, 3, 2.5)
    d = a.positions - ideal.positions
    d[:, :2] -= np.round(d[:, :2] / a.cell.lengths()[:2]) * a.cell.lengths()[:2]
    assert 0.04 < d[:, :2].std() < 0.10 and d[:, 2].std() < 0.05


def test_hexagonal_dataset_deterministic_mixed_and_prefix_stable():
    ds = hexagonal_dataset(24, seed=5)
    again = hexagonal_dataset(24, seed=5)
    assert all(_same(x, y) for x, y in zip(ds, again))
    assert all(_same(x, y) for x, y in zip(hexagonal_dataset(7, seed=5), ds[:7]))
    assert not all(_same(x, y) for x, y in zip(hexagonal_dataset(24, seed=6), ds))
    kinds = {s.info["kind"] for s in ds}
    assert len(kinds) >= 3
    assert any(len(s) < 60 for s in ds) and any(len(s) == 60 for s in ds)
    assert all(57 <= len(s) <= 60 and min_interatomic_distance(s) >= 1.0 for s in ds)


def test_porous_graphene_deterministic_size_and_contacts():
    p = porous_graphene(seed=3)
    assert _same(p, porous_graphene(seed=3))
    assert not _same(p, porous_graphene(seed=4))
    np.testing.assert_allclose(p.cell.lengths()[:2], [14 * 2.46, 8 * np.sqrt(3) * 2.46])  # ~35 x 35 A
    assert p.cell.orthorhombic and p.pbc.tolist() == [True, True, False]
    assert set(p.get_chemical_symbols()) == {"C"}
    assert 0 < len(p) < 448
    assert min_interatomic_distance(p) >= 1.0
    # pruning leaves no atom with fewer than two neighbours
    d = p.get_all_distances(mic=True)
    assert ((d < 1.2 * 2.46 / np.sqrt(3)).sum(axis=1) - 1 >= 2).all()
    assert len(porous_graphene(n_pores=0, seed=0)) == 448
    r = porous_graphene(seed=3, rattle=0.08, rattle_z=0.03)
    assert len(r) == len(p) and min_interatomic_distance(r) >= 1.0


def test_supercell():
    s = hexagonal_cell("hbn", 2, vacancies=1)
    big = supercell(s, 3)
    assert len(big) == 9 * len(s)
    np.testing.assert_allclose(big.cell.lengths(), s.cell.lengths() * [3, 3, 1])
    np.testing.assert_array_equal(big.positions[: len(s)], s.positions)


def test_rattle_has_the_requested_sigmas_and_keeps_atoms_apart():
    base = honeycomb_sheet(12, 10)                                # 480 atoms, ideal lattice
    moved = rattle(base, 0.08, 0.03, seed=5, min_distance=1.0)
    u = moved.positions - base.positions
    L = np.diag(base.cell)
    u[:, :2] -= np.round(u[:, :2] / L[:2]) * L[:2]               # undo the wrap
    assert 0.95 * 0.08 < u[:, :2].std() < 1.05 * 0.08
    assert 0.9 * 0.03 < u[:, 2].std() < 1.1 * 0.03
    assert min_interatomic_distance(moved) >= 1.0
    assert _same(rattle(base, 0.08, 0.03, seed=5), moved)          # deterministic from the seed
    assert not _same(rattle(base, 0.08, 0.03, seed=6), moved)
    assert _same(rattle(base, 0.0, 0.0), base) and rattle(base, 0.0) is not base
    with pytest.raises(RuntimeError, match="min_distance=1.4"):
        rattle(base, 0.2, 0.0, min_distance=1.4)                  # bonds are 1.42 A: 0.2 A noise brings some closer


@pytest.mark.parametrize("call, message", [
    (lambda: hexagonal_cell("diamond", 0), "diamond"),
    (lambda: hexagonal_cell("graphene", -1), "-1"),
    (lambda: hexagonal_cell("graphene", 0, vacancies=5), "5"),
    (lambda: hexagonal_cell("graphene", 0, rattle=-0.1), "-0.1"),
    (lambda: hexagonal_dataset(3, 0, kinds=("graphene", "silicene")), "silicene"),
    (lambda: porous_graphene(size=2.0), "2.0"),
    (lambda: porous_graphene(n_pores=1, radius_range=(80.0, 90.0)), "removed every atom"),
    (lambda: supercell(hexagonal_cell("graphene", 0), 0), "0"),
    (lambda: rattle(hexagonal_cell("graphene", 0), -0.05), "sigma_xy must be >= 0.0, got sigma_xy=-0.05"),
    (lambda: rattle(hexagonal_cell("graphene", 0), 0.05, float("nan")), "sigma_z must be a finite number, got sigma_z=nan"),
])
def test_bad_input_names_the_value(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_large_structures_use_the_neighbour_list_with_the_same_answers():
    """Above 2,000 atoms the smallest distance and the pruning of porous sheets go through ASE's
    neighbour list (O(N): a 10^5-atom sheet needed a 260 GB distance matrix): the same numbers as all
    pairs."""
    from ednn_tf.atoms import structures

    big = structures.porous_graphene(80.0, n_pores=3, seed=2, rattle=0.05)
    assert len(big) > 2000
    d = structures._distance_matrix(big)
    np.fill_diagonal(d, np.inf)
    assert structures.min_interatomic_distance(big) == pytest.approx(d.min(), abs=1e-12)
    cutoff = 1.2 * 2.46 / np.sqrt(3.0)
    np.testing.assert_array_equal(structures._coordination(big, cutoff), (d < cutoff).sum(axis=1))
    from ase import Atoms

    g = 3.5 * np.stack(np.meshgrid(np.arange(46), np.arange(46), indexing="ij"), -1).reshape(-1, 2)
    sparse = Atoms(f"C{len(g)}", positions=np.c_[g, np.full(len(g), 5.0)], cell=[161.0, 161.0, 10.0],
                   pbc=[True, True, False])                   # 2,116 atoms, none within the first 3 A
    assert structures.min_interatomic_distance(sparse) == pytest.approx(3.5)
