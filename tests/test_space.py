"""The space frame ("atoms" readout): any cell, extensivity for incommensurate cells, continuity under
strain, forces = -dE/dr and stress = dE/deps / V by central differences, per-atom energies, the same
numbers through the calculator, batched prediction and the CLI, and the same refusals everywhere."""
import re

import ase.io
import keras
import numpy as np
import pytest
from ase import Atoms
from ase.build import graphene
from ase.calculators.calculator import PropertyNotImplementedError

from ednn_tf import cli, networks
from ednn_tf.apply.calculator import EDNNCalculator
from ednn_tf.apply.checks import turned
from ednn_tf.apply.space import predict_structures
from ednn_tf.atoms.frames import space_frame
from ednn_tf.atoms.structures import hexagonal_cell
from ednn_tf.model import DensityEDNN
from ednn_tf.potential import Potential, load_potential

C = 3
E0 = {5: -1.5, 6: -2.0, 7: -2.5}


@pytest.fixture(scope="module")
def potential():
    sub = networks.energy_density(C, channels=3, filters=6, seed=4, dtype="float64")
    return Potential(DensityEDNN(sub, C, dtype="float64"), pixel_size=0.3, gamma=0.35, channels=[5, 6, 7], e0=E0,
                     scale=0.7, readout="atoms", max_height=0.6, min_vacuum=10.0)


def _energy(pot, atoms):
    return predict_structures(pot, [atoms])[0]["energy"]


def _sheet(a=2.46, seed=1):
    g = graphene(a=a, vacuum=10.0)            # the 2-atom hexagonal cell, 120 degrees
    g.pbc = [True, True, False]
    g = g.repeat((2, 2, 1))
    g.numbers[[0, 3]] = [5, 7]
    g.rattle(0.05, seed=seed)
    return g


def test_frame_covers_atoms_and_images():
    xy = np.array([[0.1, 0.2], [1.3, 0.9]])
    cell = np.array([[2.46, 0.0], [-1.23, 2.13]])
    f = space_frame(xy, cell, np.array([True, True]), 0.25, 4, 0.3)
    pos = f.xy[f.idx] + f.shift @ f.cell
    assert np.array_equal(f.idx[:2], [0, 1]) and not f.shift[:2].any()
    lo, hi = f.origin * 0.25 - 7 * 0.3, (f.origin + f.shape - 1) * 0.25 + 7 * 0.3
    assert np.all((pos >= lo) & (pos <= hi))
    # every image inside the box is there: brute force over a wide range of shifts
    n = np.array([(i, j) for i in range(-12, 13) for j in range(-12, 13)])
    allp = (xy[None] + (n @ cell)[:, None]).reshape(-1, 2)
    inside = np.all((allp >= lo) & (allp <= hi), axis=1).sum()
    assert inside == len(pos) > 2
    flake = space_frame(xy, cell, np.array([False, False]), 0.25, 4, 0.3)
    assert len(flake.idx) == 2


def test_forces_and_stress_are_derivatives(potential):
    g = _sheet()
    r = predict_structures(potential, [g])[0]
    h = 1e-5
    for i, ax in ((0, 0), (3, 1), (5, 0)):
        e = []
        for s in (h, -h):
            a = g.copy()
            a.positions[i, ax] += s
            e.append(_energy(potential, a))
        assert r["forces"][i, ax] == pytest.approx(-(e[0] - e[1]) / (2 * h), rel=1e-5, abs=1e-8)
    V = g.get_volume()
    for p, q, voigt in ((0, 0, 0), (1, 1, 1), (0, 1, 5)):
        e = []
        for s in (h, -h):
            eps = np.zeros((3, 3))
            eps[p, q] += s / 2
            eps[q, p] += s / 2
            a = g.copy()
            a.set_cell(g.cell.array @ (np.eye(3) + eps).T, scale_atoms=True)
            e.append(_energy(potential, a))
        assert r["stress"][voigt] == pytest.approx((e[0] - e[1]) / (2 * h) / V, rel=1e-5, abs=1e-10)
    assert np.all(r["stress"][2:5] == 0) and np.all(r["forces"][:, 2] == 0)
    assert r["energies"].sum() == pytest.approx(r["energy"], rel=1e-12)


@pytest.mark.parametrize("k", [(2, 1), (3, 2)])
def test_supercells_of_incommensurate_cells(potential, k):
    """Each atom is counted once with its own environment: in a k1 x k2 repeat of a cell that is not
    commensurate with the pitch, copy (m0, m1) of the cell has exactly the per-atom energies of the
    cell translated by m0 a1 + m1 a2 (same environment, same offset to the space grid), so
    E(k1 x k2) = sum of those energies. Copies differ from each other only by the sub-pixel offset,
    the part of translation invariance that training teaches (measured in docs/potentials.md)."""
    g = _sheet()                                    # 4.92 A along a1: 16.4 px at 0.3 A/px
    big = g.repeat((k[0], k[1], 1))
    res = predict_structures(potential, [big])[0]
    n, total = len(g), 0.0
    for c, (m0, m1) in enumerate((m0, m1) for m0 in range(k[0]) for m1 in range(k[1])):
        moved = g.copy()
        moved.positions += m0 * g.cell[0] + m1 * g.cell[1]
        part = predict_structures(potential, [moved])[0]
        np.testing.assert_allclose(res["energies"][c * n:(c + 1) * n], part["energies"], rtol=1e-11, atol=1e-13)
        total += part["energy"]
    assert res["energy"] == pytest.approx(total, rel=1e-12)
    assert abs(res["energy"] / (k[0] * k[1]) - _energy(potential, g)) / n < 2e-4     # < 0.2 meV/atom here


def test_hexagonal_cell_equals_its_rectangular_cell(potential):
    """The 2-atom-basis hexagonal cell (a1, a2) and the orthorhombic cell (a1, a1 + 2 a2) holding its
    atoms and their copies moved by a2: the same atoms in the same places, so E(rect) = E(hex) +
    E(hex moved by a2) to rounding, and E(rect) / 2 = E(hex) up to the sub-pixel offset."""
    g = _sheet()
    a1, a2 = g.cell[0], g.cell[1]
    moved = g.copy()
    moved.positions += a2
    rect = g + moved
    rect.set_cell([a1, a1 + 2 * a2, g.cell[2]])
    assert np.allclose(rect.cell.array[:2, :2], np.diag(np.diag(rect.cell.array[:2, :2])), atol=1e-9)
    e_rect, e_hex = _energy(potential, rect), _energy(potential, g)
    assert e_rect == pytest.approx(e_hex + _energy(potential, moved), rel=1e-11)
    assert abs(e_rect / 2 - e_hex) / len(g) < 2e-4
    shifted = g.copy()
    shifted.positions[:, :2] += 0.6                                # two whole pixels: the grid maps onto itself
    assert _energy(potential, shifted) == pytest.approx(e_hex, rel=1e-11)


def test_energy_is_continuous_under_strain(potential):
    """Biaxial strain through the lengths at which round(L / p) of the first form changed: the energy
    is a smooth curve (second differences of the scan are of the size of a parabola's)."""
    base = hexagonal_cell("graphene", 0, repeat=(4, 5), lattice_constant=2.46, rattle=0.0)
    strains = np.linspace(-0.02, 0.02, 41)
    e = []
    for s in strains:
        a = base.copy()
        a.set_cell(base.cell.array * np.array([1 + s, 1 + s, 1])[:, None], scale_atoms=True)
        e.append(_energy(potential, a) / len(a))
    L = base.cell.lengths()[0] * (1 + strains)
    assert len(set(np.round(L / 0.3).astype(int))) > 1           # the old pixel count changes in this range
    d2 = np.abs(np.diff(e, 2))
    assert d2.max() < 5 * np.median(d2) + 1e-9


def test_flake_and_out_of_plane_refusals(potential, tmp_path):
    g = _sheet()
    flake = g.copy()
    flake.pbc = False
    far = flake.copy()
    far.set_cell([50, 50, 50])
    assert _energy(potential, far) == pytest.approx(_energy(potential, flake), rel=1e-12)   # cell is irrelevant
    assert abs(_energy(potential, flake) - _energy(potential, g)) > 1e-3                      # edges, no images
    far.calc = EDNNCalculator(potential)
    assert far.get_forces().shape == (len(g), 3)
    with pytest.raises(PropertyNotImplementedError, match="periodic in the plane"):
        far.get_stress()
    bilayer = g + g.copy()
    bilayer.positions[len(g):, 2] += 3.35
    above = g.copy()
    above.positions[2, 2] += 6.0
    zper = g.copy()
    zper.pbc = True
    zper.cell[2, 2] = 3.35
    nan = g.copy()
    nan.positions[1, 0] = np.nan
    si = g.copy()
    si.numbers[0] = 14
    cases = {"bilayer": (bilayer, "from the sheet's plane"), "above": (above, "atom 2 (C) lies +6.0"),
             "z-periodic": (zper, "c = 3.350 A"), "nan": (nan, "for atom 1"), "element": (si, "['Si']"),
             "empty": (Atoms(cell=[5, 5, 20], pbc=[1, 1, 0]), "empty structure")}
    path = tmp_path / "pot.keras"
    potential.save(path)
    for name, (atoms, text) in cases.items():
        with pytest.raises(ValueError, match=re.escape(text)):
            predict_structures(potential, [atoms])
        atoms = atoms.copy()
        atoms.calc = EDNNCalculator(potential)
        with pytest.raises(ValueError, match="lies|c = 3.350|atom 1|Si|empty"):
            atoms.get_potential_energy()
        ase.io.write(tmp_path / f"{name}.extxyz", atoms if len(atoms) else Atoms("C", cell=[5, 5, 20]))
    for name in ("bilayer", "above", "element"):
        code = cli.main(["predict", str(path), str(tmp_path / f"{name}.extxyz"), "--out", str(tmp_path / "o.extxyz")])
        assert code == 2


def test_calculator_batched_and_cli_agree(potential, tmp_path):
    frames = [_sheet(seed=s) for s in range(3)] + [hexagonal_cell("bnc-random", 2, repeat=(3, 2), rattle=0.05)]
    for a in frames[3:]:
        a.pbc = [True, True, False]
    batched = predict_structures(potential, frames, batch_size=3)
    path = tmp_path / "pot.keras"
    potential.save(path)
    ase.io.write(tmp_path / "in.extxyz", frames)
    assert cli.main(["predict", str(path), str(tmp_path / "in.extxyz"), "--out", str(tmp_path / "out.extxyz"),
                     "--no-progress"]) == 0
    out = ase.io.read(tmp_path / "out.extxyz", ":")
    calc = EDNNCalculator(load_potential(path))
    for a, b, o in zip(frames, batched, out):
        a = a.copy()
        a.calc = calc
        assert a.get_potential_energy() == pytest.approx(b["energy"], rel=1e-12)
        np.testing.assert_allclose(a.get_forces(), b["forces"], atol=1e-9)
        np.testing.assert_allclose(a.get_stress(), b["stress"], atol=1e-12)
        np.testing.assert_allclose(calc.get_property("energies", a), b["energies"], atol=1e-10)
        assert o.get_potential_energy() == pytest.approx(b["energy"], rel=1e-9)
        np.testing.assert_allclose(o.get_forces(), b["forces"], atol=1e-6)
        np.testing.assert_allclose(o.get_stress(), b["stress"], atol=1e-8)


def test_saved_potential_keeps_its_readout_and_limits(potential, tmp_path):
    path = tmp_path / "p.keras"
    potential.save(path)
    pot = keras.models.load_model(path, safe_mode=True)
    assert (pot.readout, pot.max_height, pot.min_vacuum, pot.pitch) == ("atoms", 0.6, 10.0, 0.3)
    g = _sheet()
    assert _energy(pot, g) == pytest.approx(_energy(potential, g), rel=1e-12)
    with pytest.raises(ValueError, match="readout must be one of"):
        Potential(potential.ednn, 0.3, readout="pixels")


def test_quarter_turns_and_mirrors_are_exact_for_a_symmetric_network(potential):
    """The grid maps onto itself under quarter turns and mirrors about a pixel; a network whose 3x3
    kernels are symmetric under them is then invariant, so the energy of the turned or mirrored
    structure (positions, cell and periodic images turned together) must equal the original's to
    rounding: a check of the whole frame (window, images, render, readout), not of the network."""
    sub = networks.energy_density(C, channels=3, filters=6, seed=7, dtype="float64")
    for layer in sub.layers:
        if getattr(layer, "kernel", None) is not None and layer.kernel.shape[0] == 3:
            k = layer.kernel.numpy()
            sym = [np.rot90(k, r, axes=(0, 1)) for r in range(4)]
            sym += [s[::-1] for s in sym]
            layer.kernel.assign(np.mean(sym, axis=0))
    pot = Potential(DensityEDNN(sub, C, dtype="float64"), 0.3, 0.35, channels=[5, 6, 7], e0=E0, scale=0.7,
                    readout="atoms")
    g = _sheet()
    e = _energy(pot, g)
    for R in (np.array([[0.0, -1.0], [1.0, 0.0]]), np.array([[-1.0, 0.0], [0.0, -1.0]]), np.diag([1.0, -1.0])):
        R3 = np.eye(3)
        R3[:2, :2] = R
        turned = g.copy()
        turned.set_cell(g.cell.array @ R3.T)
        turned.positions = g.positions @ R3.T
        assert _energy(pot, turned) == pytest.approx(e, rel=1e-11)
    assert abs(_energy(potential, turned) - _energy(potential, g)) > 1e-6     # the plain network is not invariant


@pytest.mark.parametrize("block", [2, 7, 30])
def test_blocks_equal_the_one_piece_evaluation(potential, block):
    """Blocks with halos (smaller than the context too) give the one-piece energy, per-atom
    energies, forces and stress."""
    sheet = hexagonal_cell("bnc-random", 3, repeat=(4, 3), lattice_constant=2.46, rattle=0.08)
    sheet.pbc = [True, True, False]
    sheet.positions[:, 0] += 0.37 * sheet.positions[:, 1] / sheet.cell[1, 1]     # some atoms outside the cell
    whole = predict_structures(potential, [sheet], block=10 ** 6)[0]
    parts = predict_structures(potential, [sheet], block=block, batch_size=5)[0]
    assert parts["energy"] == pytest.approx(whole["energy"], rel=1e-12)
    np.testing.assert_allclose(parts["energies"], whole["energies"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(parts["forces"], whole["forces"], atol=1e-10)
    np.testing.assert_allclose(parts["stress"], whole["stress"], atol=1e-12)


def test_orientation_spread_equals_the_copies_evaluated_one_by_one(potential):
    """spread=True: the K orientation copies as a committee; mean and spreads equal numpy over the
    copies evaluated separately (forces turned back), whole and by blocks smaller than the context."""
    from ednn_tf.apply.space import _rotation

    g = _sheet()
    copies, angles = [g], (0.0, 30.0, 60.0)
    for k, t in ((1, 30.0), (2, 60.0)):
        c = turned(g, t)
        c.positions[:, :2] += 0.3 * np.array([(k * 1.6180339887498949) % 1, (k * 2.618033988749895) % 1])
        copies.append(c)
    parts = [predict_structures(potential, [c])[0] for c in copies]
    E = np.array([q["energy"] for q in parts])
    e = np.stack([q["energies"] for q in parts])
    F = np.stack([q["forces"][:, :2] @ _rotation(t) for q, t in zip(parts, angles)])
    dev = np.sqrt(((F - F.mean(0)) ** 2).sum(-1).mean(0))
    assert dev.max() > 1e-4                                     # a generic network: the copies differ
    for block in (1000, 5):
        r = predict_structures(potential, [g], orientations=3, spread=True, block=block)[0]
        assert r["energy"] == pytest.approx(E.mean(), rel=1e-9)
        assert r["energy_std"] == pytest.approx(E.std(), rel=1e-5, abs=1e-9)
        np.testing.assert_allclose(r["energies_std"], e.std(0), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(r["forces"][:, :2], F.mean(0), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(r["force_dev"], dev, rtol=1e-5, atol=1e-8)
        assert r["max_force_dev"] == pytest.approx(dev.max(), rel=1e-5)
    with pytest.raises(ValueError, match="spread=True needs at least 2 orientations to spread over, got orient"):
        predict_structures(potential, [g], spread=True)


def test_orientation_average_is_conservative_and_turns_back(potential, tmp_path):
    """orientations=3: the mean over copies turned by 0, 30, 60 degrees and moved by golden-ratio
    sub-pixel offsets; forces are still -dE/dr,
    the stress still dE/deps / V, and the file keeps the setting."""
    pot = Potential(potential.ednn, 0.3, 0.35, channels=[5, 6, 7], e0=E0, scale=0.7, readout="atoms", orientations=3)
    g = _sheet()
    r = predict_structures(pot, [g])[0]
    copies = [g]
    for k, t in ((1, 30.0), (2, 60.0)):
        c = turned(g, t)
        c.positions[:, :2] += 0.3 * np.array([(k * 1.6180339887498949) % 1, (k * 2.618033988749895) % 1])
        copies.append(c)
    parts = [predict_structures(potential, [c])[0]["energy"] for c in copies]
    assert r["energy"] == pytest.approx(np.mean(parts), rel=1e-12)
    h = 1e-5
    for i, ax in ((1, 0), (2, 1)):
        e = []
        for s in (h, -h):
            a = g.copy()
            a.positions[i, ax] += s
            e.append(_energy(pot, a))
        assert r["forces"][i, ax] == pytest.approx(-(e[0] - e[1]) / (2 * h), rel=1e-5, abs=1e-8)
    e = []
    for s in (h, -h):
        a = g.copy()
        a.set_cell(g.cell.array @ np.diag([1 + s, 1, 1]), scale_atoms=True)
        e.append(_energy(pot, a))
    assert r["stress"][0] == pytest.approx((e[0] - e[1]) / (2 * h) / g.get_volume(), rel=1e-5)
    pot.save(tmp_path / "k.keras")
    assert load_potential(tmp_path / "k.keras").orientations == 3
    g.calc = EDNNCalculator(potential, orientations=3)             # the same average asked for at run time
    assert g.get_potential_energy() == pytest.approx(r["energy"], rel=1e-12)
    np.testing.assert_allclose(g.get_stress(), r["stress"], rtol=1e-9, atol=1e-14)
    potential.save(tmp_path / "one.keras")
    ase.io.write(tmp_path / "g.extxyz", g)
    assert cli.main(["predict", "--orientations", "3", str(tmp_path / "one.keras"), str(tmp_path / "g.extxyz"),
                     "--out", str(tmp_path / "o.extxyz"), "--no-progress"]) == 0
    assert ase.io.read(tmp_path / "o.extxyz").get_potential_energy() == pytest.approx(r["energy"], rel=1e-9)



def test_training_batches_turn_labels_with_the_structure_and_are_stateless(potential):
    """SpaceBatches: batch i of epoch e is the same for any object with the same seed (exact resume);
    each structure is moved by an isometry (distances kept) and its force labels turned with it (norms
    kept), the energy label unchanged."""
    from ednn_tf.apply.space_training import SpaceBatches

    cells = [_sheet(seed=s) for s in range(4)]
    pred = predict_structures(potential, cells)
    energies = [r["energy"] for r in pred]
    forces = [r["forces"] for r in pred]
    a = SpaceBatches(potential, cells, energies, forces, batch_size=2, seed=3)
    b = SpaceBatches(potential, cells, energies, forces, batch_size=2, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    for i in range(len(a)):
        xa, ya = a[i]
        xb, yb = b[i]
        for k in xa:
            np.testing.assert_array_equal(xa[k], xb[k])
        np.testing.assert_array_equal(ya["forces"], yb["forces"])
        rows = a.batches[i]
        for j, r in enumerate(rows):
            n = len(cells[r])
            np.testing.assert_allclose(np.linalg.norm(ya["forces"][j, :n], axis=1),
                                       np.linalg.norm(forces[r][:, :2], axis=1), rtol=1e-5, atol=1e-6)
            assert ya["energy"][j] == pytest.approx(energies[r] - potential.reference_energy(cells[r].numbers))
            d_in = np.linalg.norm(cells[r].positions[0, :2] - cells[r].positions[1, :2])
            d_out = np.linalg.norm(xa["positions"][j, 0] - xa["positions"][j, 1])
            assert d_out == pytest.approx(d_in, rel=1e-5)                      # an isometry
        assert not np.allclose(xa["positions"][0, :2], cells[rows[0]].positions[:2, :2], atol=1e-3)  # it moved
    a.set_epoch(6)
    assert not np.array_equal(a[0][0]["positions"], b[0][0]["positions"])       # a new draw each epoch


def test_a_cell_grid_potential_refuses_a_hexagonal_cell_everywhere(tmp_path):
    """The first-form potential (kept as a fixture) through every entry point: the same refusal."""
    import os

    from ednn_tf.apply.fit import predict_energies, predict_energies_forces

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hexagonal-gfn1-cellgrid.keras")
    pot = load_potential(path)
    g = graphene(a=2.46, vacuum=10.0).repeat((6, 6, 1))
    g.pbc = [True, True, False]
    for fn in (predict_energies, predict_energies_forces):
        with pytest.raises(ValueError, match="structure 0: only orthorhombic cells"):
            fn(pot, [g])
    g.calc = EDNNCalculator(pot)
    with pytest.raises(ValueError, match="only orthorhombic cells"):
        g.get_potential_energy()
    ase.io.write(tmp_path / "g.extxyz", g)
    assert cli.main(["predict", path, str(tmp_path / "g.extxyz"), "--out", str(tmp_path / "o.extxyz")]) == 2


def test_eos_fit_recovers_a_known_lattice_constant_and_bulk_modulus():
    """E(A) = E0 + B (A - A0)^2 / (2 A0) per atom: the fit gives back A0 (as a lattice constant) and
    B (converted to N/m), with no residual."""
    from ednn_tf.apply.checks import eos_fit

    a_true, area0 = 2.47, np.sqrt(3) / 4 * 2.46 ** 2          # the minimum is not at the strain grid's 0
    amin = area0 * (a_true / 2.46) ** 2
    B = 200.0 / 16.0217663                                      # eV/A^2 per atom-area: 200 N/m
    strains = np.linspace(-0.03, 0.03, 61)
    area = area0 * (1 + strains) ** 2
    e = -7.0 + B * (area - amin) ** 2 / (2 * amin)
    fit = eos_fit(strains, e, 2.46, area0)
    assert fit["a_eq_A"] == pytest.approx(a_true, rel=1e-6)
    assert fit["bulk_modulus_2d_N_per_m"] == pytest.approx(200.0, rel=1e-4)
    assert fit["max_residual_meV_per_atom"] < 1e-9


def test_monte_carlo_with_a_space_potential(potential):
    """SpaceAtomEnergy under AtomMetropolis: every dE is the difference of whole energies, the running
    energy equals the final structure's, and local_energy picks it for the 'atoms' readout."""
    from ednn_tf.apply.atom_mc import AtomMetropolis
    from ednn_tf.apply.space_mc import SpaceAtomEnergy, local_energy

    g = _sheet()
    le = local_energy(potential, g)
    assert isinstance(le, SpaceAtomEnergy)
    e0 = le.energy
    dE = le.delta_energy(2, le.positions[2] + [0.05, -0.03, 0.0])
    moved = g.copy()
    moved.positions[2] += [0.05, -0.03, 0.0]
    assert dE == pytest.approx(_energy(potential, moved) - e0, abs=1e-10)
    le.reject()
    assert le.energy == e0 and np.array_equal(le.positions, g.positions)
    mc = AtomMetropolis(le, 1000.0, step=0.05, seed=1)
    mc.sweep(2)
    assert 0 < mc.acceptance <= 1
    assert le.energy == pytest.approx(le.full_energy(), abs=1e-9)
    assert abs(le.refresh()) < 1e-9 and le.n_terms == len(g)
