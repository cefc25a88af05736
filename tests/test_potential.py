"""Density EDNN and self-describing Potential: the convolution path equals the tile path, any cell,
E(2x2) = 4E, save/load identity, forces = -dE/dr, the CLI's numbers equal the API's, bad input."""
import json

import ase.io
import keras
import numpy as np
import pytest

import ednn_tf
from ednn_tf import EDNN, cli, networks
from ednn_tf.apply.calculator import EDNNCalculator
from ednn_tf.apply.fit import evaluate, labelled_energies
from ednn_tf.atoms.structures import hexagonal_cell, supercell, varied_hexagonal_cell
from ednn_tf.model import DensityEDNN
from ednn_tf.potential import Potential, fit_reference_energies, load_potential

C = 3


@pytest.fixture(scope="module")
def potential():
    sub = networks.energy_density(C, channels=3, filters=6, seed=4, dtype="float64")
    return Potential(DensityEDNN(sub, C, dtype="float64"), pixel_size=0.3, gamma=0.35, channels=[5, 6, 7],
                     e0={5: -1.5, 6: -2.0, 7: -2.5}, scale=0.7, card={"name": "test"})


def _bnc(seed=1):
    return hexagonal_cell("bnc-random", seed, repeat=(5, 3), lattice_constant=2.46, rattle=0.05)   # 12.30 x 12.78 A


def test_density_pass_equals_the_tile_path_at_focus_1():
    model = DensityEDNN(networks.energy_density(5, channels=2, filters=8, seed=1), 5)
    x = np.random.default_rng(0).normal(size=(2, 13, 17, 2)).astype("float32")     # any size, not square
    dens = keras.ops.convert_to_numpy(model.tile_contributions(x))
    tiles = keras.ops.convert_to_numpy(EDNN.tile_values(model, model.tiler(x)))     # TileLayer + one subnet call
    assert dens.shape == tiles.shape == (2, 13, 17)
    np.testing.assert_allclose(dens, tiles, rtol=1e-5, atol=1e-6 * np.abs(tiles).max())
    np.testing.assert_allclose(np.asarray(model(x))[:, 0], tiles.reshape(2, -1).astype(np.float64).sum(1), rtol=1e-5)
    assert networks.density_dilations(16) == (1, 2, 4, 8, 1) and sum(networks.density_dilations(20)) == 20


def test_any_cell_supercell_and_stretch(potential):
    a = _bnc()
    calc = EDNNCalculator(potential)
    a.calc = calc
    e = a.get_potential_energy()
    L = a.cell.lengths()[:2]
    shape = calc.grid_shape(a)
    assert shape == (41, 43)          # round(12.30 / 0.3), round(12.78 / 0.3): any size, no multiple of a focus
    np.testing.assert_allclose(calc.get_stretch(a), np.abs(np.array(shape) * 0.3 - L) / L, rtol=1e-12)
    # E(2x2) = 4E exactly when the supercell's grid is twice the cell's: 5 x 1 cells of a = 2.46 A
    # (12.30 x 4.26 A) get 41 x 14 pixels at 0.3 A (stretch 0 and 1.4 %), the 2 x 2 supercell 82 x 28.
    small = hexagonal_cell("bnc-random", 1, repeat=(5, 1), lattice_constant=2.46, rattle=0.05)
    small.calc = EDNNCalculator(potential)
    b = supercell(small, 2)
    b.calc = EDNNCalculator(potential)
    assert small.calc.grid_shape(small) == (41, 14) and b.calc.grid_shape(b) == (82, 28)
    assert b.get_potential_energy() == pytest.approx(4 * small.get_potential_energy(), rel=1e-10)
    e0 = {5: -1.5, 6: -2.0, 7: -2.5}
    assert potential.reference_energy(a.numbers) == pytest.approx(sum(e0[z] for z in a.numbers))
    np.testing.assert_allclose(calc.get_tile_energies(a).sum(), e - potential.reference_energy(a.numbers), rtol=1e-10)


def test_forces_are_minus_the_energy_gradient(potential):
    a = _bnc(2)
    a.calc = EDNNCalculator(potential)
    f = a.get_forces()
    h = 1e-4
    for i, k in ((3, 0), (17, 1), (40, 0)):
        e = []
        for s in (h, -h):
            b = a.copy()
            b.positions[i, k] += s
            b.calc = EDNNCalculator(potential)
            e.append(b.get_potential_energy())
        assert f[i, k] == pytest.approx(-(e[0] - e[1]) / (2 * h), rel=1e-5, abs=1e-7)


def test_save_load_identity_without_custom_objects(potential, tmp_path):
    path = tmp_path / "p.keras"
    potential.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    assert isinstance(back, Potential) and back.card == {"name": "test"} and back.e0 == potential.e0
    a = _bnc(3)
    e1, f1 = [], []
    for pot in (potential, load_potential(path), str(path)):
        a.calc = EDNNCalculator(pot)
        e1.append(a.get_potential_energy())
        f1.append(a.get_forces())
    assert e1[0] == e1[1] == e1[2] and np.array_equal(f1[0], f1[1]) and np.array_equal(f1[0], f1[2])


def test_per_axis_pixel_size_of_a_tile_model_on_a_fixed_grid(tmp_path):
    """A tile Potential trained on one fixed grid over one cell (64 x 64 px over 12.50 x 12.99 A, as
    experiments/hexagonal.py): pixel_size per axis, so the cell and its repeats get 64k x 64k pixels
    without stretch; the pair survives a .keras round trip (a list in get_config)."""
    cell = hexagonal_cell("graphene", 0, rattle=0.05)
    L = cell.cell.lengths()[:2]
    ednn = EDNN(networks.paper_cnn(32, 1, width=0.125, dense=8, seed=2), 16, 8)
    pot = Potential(ednn, (L[0] / 64, L[1] / 64), gamma=0.2, cutoff=6.0, e0={6: 0.0})
    assert isinstance(pot.pixel_size, tuple) and pot.get_config()["pixel_size"] == [L[0] / 64, L[1] / 64]
    assert pot.grid(L) == ((64, 64), (0.0, 0.0)) and pot.grid(2 * L)[0] == (128, 128)
    path = tmp_path / "tile.keras"
    pot.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    assert back.pixel_size == pot.pixel_size and back.cutoff == 6.0
    big = supercell(cell, 2)
    e = [EDNNCalculator(p).get_potential_energy(a) for p in (pot, back) for a in (cell, big)]
    assert e[0] == e[2] and e[1] == e[3] and EDNNCalculator(back).get_stretch(big) == (0.0, 0.0)
    np.testing.assert_allclose(e[1], 4 * e[0], rtol=1e-5)                  # E(2x2) = 4E on exact repeats
    for bad, match in (((0.2, -0.1), r"pixel_size\[1\] must be a positive"), ("0.2", "pixel_size must be")):
        with pytest.raises(ValueError, match=match):
            Potential(ednn, bad)
    with pytest.raises(ValueError, match="for 2 axes, not 3"):
        pot.grid([12.5, 13.0, 20.0])


def test_reference_energies_are_least_squares():
    cells = [hexagonal_cell(k, s, repeat=(3, 2)) for k in ("graphene", "hbn", "bnc-random") for s in range(2)]
    e0 = {5: -3.0, 6: -7.0, 7: -4.5}
    E = [sum(e0[z] for z in a.numbers) for a in cells]
    fit = fit_reference_energies(cells, E)
    assert fit.keys() == e0.keys() and all(fit[z] == pytest.approx(e0[z], abs=1e-9) for z in e0)


def test_bad_input_names_the_value(potential, tmp_path):
    calc = EDNNCalculator(potential)
    si = hexagonal_cell("graphene", 0, repeat=(3, 2))
    si.numbers[0] = 14
    with pytest.raises(ValueError, match=r"trained on elements \['B', 'C', 'N'\], got \['Si'\]"):
        calc.get_potential_energy(si)
    tilted = _bnc()
    tilted.cell[1, 0] = 1.0
    with pytest.raises(ValueError, match="orthorhombic"):
        calc.get_potential_energy(tilted)
    with pytest.raises(ValueError, match="carries its own image settings"):
        EDNNCalculator(potential, pixel_size=0.2)
    with pytest.raises(ValueError, match="no shipped model of that name"):
        load_potential("hexagonal-nonexistent")
    other = tmp_path / "ednn.keras"
    EDNN(networks.ising_dense(3), 1, 1).save(other)
    with pytest.raises(ValueError, match="holds a EDNN, not an ednn_tf Potential"):
        load_potential(other)
    truncated = tmp_path / "cut.keras"
    truncated.write_bytes(other.read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"cut.keras' \(3000 bytes\) is not a complete .keras archive"):
        load_potential(truncated)
    tile = Potential(EDNN(networks.paper_cnn(16, 3, width=0.125, dense=8), 8, 4), 0.3, channels=[5, 6, 7],
                     e0={5: 0.0, 6: 0.0, 7: 0.0})
    with pytest.raises(ValueError, match=r"needs a grid \(41, 43\).*multiples of 8"):
        tile.grid(_bnc().cell.lengths()[:2])


def test_cli_train_eval_predict_end_to_end(tmp_path, capsys):
    cells = [varied_hexagonal_cell(s, kinds=("graphene", "hbn"), repeats=((3, 2), (4, 2))) for s in range(10)]
    src, lab = tmp_path / "cells.extxyz", tmp_path / "lab.extxyz"
    ase.io.write(src, cells)
    assert cli.main(["label", str(src), "--oracle", "lj", "--out", str(lab), "--workers", "1", "--no-progress"]) == 0
    model = tmp_path / "m.keras"
    assert cli.main(["train", str(lab), "--out", str(model), "--epochs", "2", "--context", "2", "--filters", "4",
                     "--pixel-size", "0.45", "--gamma", "0.45", "--val-fraction", "0.3", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert metrics["n_train"] == 7 and metrics["n_val"] == 3 and (tmp_path / "m.parity.png").stat().st_size > 0
    capsys.readouterr()
    assert cli.main(["eval", str(model), str(lab), "--forces-key", "forces", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    structures = ase.io.read(lab, ":")
    api = evaluate(load_potential(model), structures, labelled_energies(structures),
                   [a.get_forces() for a in structures], [a.info["kind"] for a in structures])
    for key in ("n", "energy_mae_meV_per_atom", "energy_rmse_meV_per_atom", "force_mae_eV_per_A",
                "force_rmse_eV_per_A"):
        assert got[key] == pytest.approx(api[key], rel=1e-12)
    assert set(got["by_kind"]) == {"graphene", "hbn"}
    card = load_potential(model).card
    assert card["oracle"] == "lj" and card["metrics"]["n_val"] == 3 and card["elements"] == ["B", "C", "N"]
    out = tmp_path / "pred.extxyz"
    assert cli.main(["predict", str(model), str(lab), "--out", str(out)]) == 0
    pred = ase.io.read(out, ":")
    assert [p.get_potential_energy() for p in pred] == pytest.approx(api["pred_energy"], rel=1e-6)   # 6-gamma cut
    assert cli.main(["eval", str(model), str(lab), "--energy-key", "E_dft"]) == 2
    assert "structure 0 has no energy key 'E_dft'" in capsys.readouterr().err
    bad = tmp_path / "nan.extxyz"
    structures[0].info["E_nan"] = float("nan")
    ase.io.write(bad, structures[:1])
    assert cli.main(["train", str(bad), "--energy-key", "E_nan", "--out", str(tmp_path / "x.keras")]) == 2
    assert "structure 0: energy 'E_nan' is nan, not a finite number" in capsys.readouterr().err


def test_shipped_ising_model_is_listed_and_predicts(capsys):
    from ednn_tf import ising
    from ednn_tf.potential import model_card, resolve_model_path, shipped_models

    assert "ising-c1" in shipped_models()
    assert cli.main(["models"]) == 0 and "ising-c1" in capsys.readouterr().out
    model = keras.models.load_model(resolve_model_path("ising-c1"))
    spins = ising.sample_configurations(16, [2.3], n_per_temperature=4, seed=5)[0][..., None].astype("float32")
    exact = ising.ising_energy(spins)
    pred = model.predict_total(spins)
    card = model_card("ising-c1")
    assert np.all(np.abs(pred - exact) < 20 * card["test"]["median_abs_error_J"] * (16 / 8) ** 2)
    assert cli.main(["info", "ising-c1"]) == 0 and json.loads(capsys.readouterr().out)["class"] == "EDNN"


def test_augmented_batches_are_images_of_symmetric_structures(potential):
    from ednn_tf.apply.fit import GridBatches, render_for

    a = _bnc(4)
    img = render_for(potential, a)
    n, L = img.shape[0], a.cell.lengths()[0]
    m = a.copy()
    m.positions[:, 0] = L - L / n - m.positions[:, 0]           # mirror x, shifted by one pixel
    np.testing.assert_allclose(img[::-1], render_for(potential, m), atol=1e-5)
    s = a.copy()                                                # x <-> y reflection: a cell (Ly, Lx)
    s.set_cell(np.diag([a.cell[1, 1], a.cell[0, 0], a.cell[2, 2]]))
    s.positions = a.positions[:, [1, 0, 2]]
    np.testing.assert_allclose(img.transpose(1, 0, 2), render_for(potential, s), atol=1e-5)
    b = GridBatches([img] * 4, np.arange(4.0), [60] * 4, batch_size=2, seed=3, augment=True)
    first = [b[i][0] for i in range(len(b))]
    b.set_epoch(0)
    assert all(np.array_equal(x, b[i][0]) for i, x in enumerate(first))   # stateless in (seed, epoch, batch)
    seen = {x.tobytes() for e in range(6) for x in (b.set_epoch(e) or [b[i][0][0] for i in range(len(b))])}
    assert len(seen) > 2


def test_shipped_hexagonal_model_reproduces_its_card_on_other_cell_sizes():
    """The shipped potential on cells of sizes it was not trained on (12.30 x 12.78 A graphene at
    a = 2.46 A; 7 x 4 cells of ~110 atoms): the errors of its card, from the committed labels."""
    import os

    from ednn_tf.labels.labelling import read_checkpoint

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "potentials")
    cells = ase.io.read(os.path.join(here, "hexagonal_othersizes.extxyz"), ":")
    ck = read_checkpoint(os.path.join(here, "hexagonal_othersizes_gfn1_sc2.extxyz.labels.npz"))
    assert ck["indices"].tolist() == list(range(len(cells))) and ck["meta"]["settings"]["supercell"] == 2
    pot = ednn_tf.load_potential("hexagonal-gfn1")   # by shipped name, from the package
    card = pot.card["other_sizes_test"]
    r = evaluate(pot, cells, ck["energies"], ck["forces"])
    for key in ("energy_mae_meV_per_atom", "energy_rmse_meV_per_atom", "force_mae_eV_per_A"):
        assert r[key] == pytest.approx(card[key], rel=1e-3)
    # space potential: 6.5 meV/atom here (the cell-grid model: 3.4); the card holds the figure
    assert r["energy_mae_meV_per_atom"] < 8 and r["force_mae_eV_per_A"] < 0.15 * card["label_force_mean_abs_eV_per_A"]
