"""Committees (issue "know where the model is wrong"): the card, the mean and spreads against numpy,
zero spread for identical members, the same numbers through the API, the calculator and the CLI,
rotation invariance of the force deviation, frame selection, and `ednn-tf train --committee`."""
import ase.io
import numpy as np
import pytest
from conftest import perturbed_member

import ednn_tf
from ednn_tf import cli
from ednn_tf.apply.calculator import EDNNCalculator
from ednn_tf.apply.space import predict_structures
from ednn_tf.apply.uncertainty import committee_spread, select_frames
from ednn_tf.committee import Committee, save_committee
from ednn_tf.atoms.structures import hexagonal_cell


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    d = tmp_path_factory.mktemp("committee")
    return [perturbed_member(str(d / f"m{k}.keras"), 0.0 if k == 0 else 0.03, k) for k in range(3)]


@pytest.fixture(scope="module")
def cells():
    return [hexagonal_cell(kind, seed, repeat=(2, 2), rattle=0.06) for seed, kind in
            enumerate(["graphene", "hbn", "bnc-random"])]


def test_identical_members_have_zero_spread(members, cells, tmp_path):
    card = save_committee(tmp_path / "same.committee.json", [members[0], members[0]])
    com = ednn_tf.load_potential(card)
    assert isinstance(com, Committee) and len(com) == 2
    got = predict_structures(com, cells)
    one = predict_structures(com.members[0], cells)
    for g, o in zip(got, one):
        assert g["energy_std"] == 0.0 and g["max_force_dev"] == 0.0
        assert np.all(g["energies_std"] == 0.0) and np.all(g["force_dev"] == 0.0)
        assert g["energy"] == pytest.approx(o["energy"], rel=1e-12)
        np.testing.assert_allclose(g["forces"], o["forces"], atol=1e-12)


def test_spreads_equal_numpy_over_the_members(members, cells, tmp_path):
    card = save_committee(tmp_path / "c.committee.json", members)
    com = ednn_tf.load_potential(str(card))
    got = predict_structures(com, cells)
    each = [predict_structures(ednn_tf.load_potential(m), cells) for m in members]
    for s, g in enumerate(got):
        E = np.array([e[s]["energy"] for e in each])
        F = np.stack([e[s]["forces"] for e in each])
        dev = np.sqrt(np.mean(np.sum((F - F.mean(0)) ** 2, axis=-1), axis=0))
        assert g["energy"] == pytest.approx(E.mean(), rel=1e-12)
        assert g["energy_std"] == pytest.approx(np.std(E), rel=1e-9) and g["energy_std"] > 1e-3
        np.testing.assert_allclose(g["force_dev"], dev, rtol=1e-9, atol=1e-12)
        assert g["max_force_dev"] == pytest.approx(dev.max()) and dev.max() > 0.01
        np.testing.assert_allclose(g["energies_std"], np.std([e[s]["energies"] for e in each], axis=0), atol=1e-9)
        np.testing.assert_allclose(g["stress"], np.mean([e[s]["stress"] for e in each], axis=0), atol=1e-12)


def test_calculator_cli_and_api_agree(members, cells, tmp_path):
    card = str(save_committee(tmp_path / "c.committee.json", members))
    api = predict_structures(ednn_tf.load_potential(card), cells)
    at = cells[1].copy()
    at.calc = EDNNCalculator(card)
    np.testing.assert_allclose(at.calc.get_property("force_dev", at), api[1]["force_dev"], atol=1e-10)
    assert at.calc.get_property("max_force_dev", at) == pytest.approx(api[1]["max_force_dev"])
    assert at.get_potential_energy() == pytest.approx(api[1]["energy"], rel=1e-12)
    data, out, png = tmp_path / "d.extxyz", tmp_path / "p.extxyz", tmp_path / "map.png"
    ase.io.write(data, cells)
    assert cli.main(["predict", card, str(data), "--out", str(out), "--uncertainty", "--map", str(png),
                     "--no-progress"]) == 0
    back = ase.io.read(out, ":")
    for b, a in zip(back, api):
        np.testing.assert_allclose(b.arrays["force_dev"], a["force_dev"], atol=2e-5)     # float32 batches
        assert b.info["max_force_dev"] == pytest.approx(a["max_force_dev"], abs=2e-5)
        assert b.info["energy_std"] == pytest.approx(a["energy_std"], abs=1e-4)
    assert png.stat().st_size > 1000


def test_one_potential_spreads_over_its_orientations_alike_everywhere(cells, tmp_path, capsys):
    """A single potential's spread over K orientations: the same numbers through the calculator, the
    CLI (default K = 4) and the API; K = 1 has nothing to spread over and is refused by name."""
    api = predict_structures(ednn_tf.load_potential("hexagonal-gfn1"), cells, orientations=4, spread=True)
    assert all(r["max_force_dev"] > 0.01 for r in api)
    at = cells[1].copy()
    at.calc = EDNNCalculator("hexagonal-gfn1", orientations=4)
    # alone, its window is not padded to the batch's largest: the float32 network sums in another order
    np.testing.assert_allclose(at.calc.get_property("force_dev", at), api[1]["force_dev"], atol=1e-6)
    assert at.get_potential_energy() == pytest.approx(api[1]["energy"], rel=1e-12)
    data, out = tmp_path / "d.extxyz", tmp_path / "p.extxyz"
    ase.io.write(data, cells)
    assert cli.main(["predict", "hexagonal-gfn1", str(data), "--out", str(out), "--uncertainty", "--no-progress"]) == 0
    for b, a in zip(ase.io.read(out, ":"), api):
        np.testing.assert_allclose(b.arrays["force_dev"], a["force_dev"], atol=2e-5)
        assert b.info["uncertainty"] == "spread over 4 orientations"
        assert b.get_potential_energy() == pytest.approx(a["energy"], abs=1e-4)
    capsys.readouterr()
    assert cli.main(["predict", "hexagonal-gfn1", str(data), "--out", str(out), "--uncertainty",
                     "--orientations", "1"]) == 2
    assert "or a potential with the 'atoms' readout and --orientations K >= 2" in capsys.readouterr().err


def test_force_deviation_is_rotation_invariant(members, cells, tmp_path):
    rng = np.random.default_rng(0)
    runs = [{"energy": 1.0, "energies": np.zeros(5), "forces": rng.normal(size=(5, 3)), "stress": None}
            for _ in range(4)]
    t = 0.7
    R = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    turned = [{**r, "forces": r["forces"] @ R.T} for r in runs]
    np.testing.assert_allclose(committee_spread(turned)["force_dev"], committee_spread(runs)["force_dev"], atol=1e-12)
    # end to end: a learnt-rotation committee turned by 37 deg keeps its deviations within the members'
    # own rotation error (docs/potentials.md: rotated forces 0.22 eV/A MAE at K = 1, per member)
    com = ednn_tf.load_potential(str(save_committee(tmp_path / "c.committee.json", members)))
    a = cells[0]
    b = a.copy()
    b.rotate(37.0, "z", rotate_cell=True)
    da, db = (predict_structures(com, [x])[0]["force_dev"] for x in (a, b))
    assert abs(da.mean() - db.mean()) < 0.5 * da.mean()


def test_select_respects_the_trust_window_and_is_deterministic():
    d = np.array([0.02, 0.30, 0.10, 0.50, 0.10, 0.07])
    assert select_frames(d, 3, 0.05, 0.35).tolist() == [1, 2, 4]
    assert select_frames(d, 10, 0.05, 0.35).tolist() == [1, 2, 4, 5]
    assert select_frames(d, 10).tolist() == [3, 1, 2, 4, 5, 0]
    with pytest.raises(ValueError, match="trust_hi must be above"):
        select_frames(d, 1, 0.3, 0.1)


def test_cli_select_writes_frames_ready_to_label(members, cells, tmp_path):
    card = str(save_committee(tmp_path / "c.committee.json", members))
    data, out = tmp_path / "d.extxyz", tmp_path / "pick.extxyz"
    ase.io.write(data, cells)
    dev = [r["max_force_dev"] for r in predict_structures(ednn_tf.load_potential(card), cells)]
    assert cli.main(["select", str(data), "--model", card, "--n", "2", "--out", str(out), "--no-progress"]) == 0
    picked = ase.io.read(out, ":")
    assert [p.info["source_index"] for p in picked] == list(np.argsort(dev)[::-1][:2])
    assert picked[0].calc is None or "energy" not in picked[0].calc.results
    assert cli.main(["select", str(data), "--model", "hexagonal-gfn1", "--n", "2", "--out", str(out)]) == 2


def test_committee_card_refuses_a_changed_member_and_mixed_members(members, tmp_path):
    import shutil

    m = tmp_path / "m.keras"
    shutil.copy(members[1], m)
    card = save_committee(tmp_path / "c.committee.json", [members[0], m])
    shutil.copy(members[2], m)
    with pytest.raises(ValueError, match="member 1 .* changed since the card was written"):
        ednn_tf.load_potential(str(card))
    with pytest.raises(ValueError, match="must end in"):
        save_committee(tmp_path / "c.json", [members[0]])
    com = ednn_tf.load_potential(str(save_committee(tmp_path / "d.committee.json", members[:2])))
    with pytest.raises(ValueError, match="member 1 must be a Potential"):
        Committee([com.members[0], com])


def _lj_cells(n):
    """``n`` small rattled graphene cells with a Lennard-Jones calculator: cheap labels."""
    from ase.calculators.lj import LennardJones

    cells = [hexagonal_cell("graphene", s, repeat=(2, 1), rattle=0.08) for s in range(n)]
    for c in cells:
        c.calc = LennardJones(sigma=1.3, epsilon=0.1, rc=3.0)
    return cells


def _write_labelled(path, cells):
    cli.write_labelled(path, cells, [c.get_potential_energy() for c in cells], [c.get_forces() for c in cells])


def test_cli_trains_a_committee(tmp_path):
    cells = _lj_cells(8)
    lab = tmp_path / "lab.extxyz"
    _write_labelled(lab, cells)
    out = tmp_path / "m.keras"
    assert cli.main(["train", str(lab), "--forces-key", "forces", "--out", str(out), "--committee", "2",
                     "--epochs", "1", "--context", "2", "--filters", "4", "--pixel-size", "0.45", "--gamma", "0.45",
                     "--val-fraction", "0.25", "--no-progress"]) == 0
    com = ednn_tf.load_potential(str(tmp_path / "m.committee.json"))
    assert len(com) == 2 and com.card["split_seed"] == 0
    w0, w1 = (m.ednn.subnet.get_weights()[0] for m in com.members)
    assert not np.allclose(w0, w1)                         # different initial weights
    r = predict_structures(com, cells[:2])
    assert r[0]["max_force_dev"] > 0.0


def test_cli_trains_with_a_given_validation_file(tmp_path):
    """``--val-file``: every structure of DATA is trained on, VAL's are the validation (in order)."""
    import json

    cells = _lj_cells(6)
    lab, val = tmp_path / "lab.extxyz", tmp_path / "val.extxyz"
    _write_labelled(lab, cells[:4])
    _write_labelled(val, cells[4:])
    common = ["train", str(lab), "--forces-key", "forces", "--epochs", "1", "--context", "2", "--filters", "4",
              "--pixel-size", "0.45", "--gamma", "0.45", "--no-progress"]
    assert cli.main(common + ["--val-file", str(val), "--out", str(tmp_path / "m.keras")]) == 0
    m = json.loads((tmp_path / "m.metrics.json").read_text())
    assert m["n_train"] == 4 and m["val_indices"] == [4, 5] and m["split"] == "given (val_indices)"
    pot = ednn_tf.load_potential(str(tmp_path / "m.keras"))
    pred = predict_structures(pot, cells[4:])
    err = np.mean([abs(p["energy"] - c.get_potential_energy()) / len(c) for p, c in zip(pred, cells[4:])])
    assert m["val"]["energy_mae_meV_per_atom"] == pytest.approx(1e3 * err, rel=1e-4)


def test_the_raster_of_a_large_map_keeps_each_bins_largest_value(tmp_path):
    from ednn_tf.apply.uncertainty import max_raster, plot_uncertainty_map

    rng = np.random.default_rng(0)
    xy = rng.uniform(0.0, 300.0, (30_000, 2))
    v = rng.uniform(0.0, 0.2, len(xy))
    v[17] = 1.5                                        # one hot atom among 30,000
    grid, side = max_raster(xy, v)
    assert side == pytest.approx(3.01, rel=1e-3) and grid.shape == (100, 100)
    i, j = np.unravel_index(np.nanargmax(grid), grid.shape)
    assert grid[i, j] == 1.5 and abs((i + 0.5) * side - (xy[17, 0] - xy[:, 0].min())) <= side
    assert np.nansum(grid > 0.2) == 1
    from ase import Atoms

    atoms = Atoms(f"C{len(xy)}", positions=np.c_[xy, np.zeros(len(xy))], cell=[300, 300, 20])
    plot_uncertainty_map(atoms, v, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 10_000
