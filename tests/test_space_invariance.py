"""The invariance pairs of space training (``SpaceBatches(pairs=True)``, ``SpaceTrainer(invariance_weight=...)``):
the term the loss adds equals a numpy computation from separate evaluations of the two moved structures."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import graphene

from ednn_tf import networks
from ednn_tf.apply.space import predict_structures
from ednn_tf.apply.space_training import SpaceBatches, SpaceTrainer
from ednn_tf.model import DensityEDNN
from ednn_tf.potential import Potential

C = 3


@pytest.fixture(scope="module")
def potential():
    sub = networks.energy_density(C, channels=3, filters=6, seed=4, dtype="float64")
    return Potential(DensityEDNN(sub, C, dtype="float64"), pixel_size=0.3, gamma=0.35, channels=[5, 6, 7],
                     e0={5: -1.5, 6: -2.0, 7: -2.5}, scale=0.7, readout="atoms", max_height=0.6, min_vacuum=10.0)


def _cells():
    out = []
    for seed in range(4):
        g = graphene(a=2.46, vacuum=10.0).repeat((2, 2, 1))
        g.pbc = [True, True, False]
        g.numbers[[0, 3]] = [5, 7]
        g.rattle(0.05, seed=seed)
        out.append(g)
    return out


def _moved_atoms(x, row, numbers):
    """The structure of batch row ``row`` as ASE Atoms (its turned positions and cell)."""
    n = len(numbers)
    cell = np.zeros((3, 3))
    cell[:2, :2], cell[2, 2] = x["cell"][row], 20.0
    pos = np.c_[x["positions"][row, :n].astype(np.float64), np.full(n, 10.0)]
    return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=[True, True, False])


def test_invariance_term_equals_numpy_on_separate_evaluations(potential):
    cells = _cells()
    pred = predict_structures(potential, cells)
    energies, forces = [r["energy"] + 0.1 * i for i, r in enumerate(pred)], [r["forces"] for r in pred]
    batches = SpaceBatches(potential, cells, energies, forces, batch_size=2, seed=5, pairs=True)
    x, y = batches[0]
    rows, half = batches.batches[0], len(batches.batches[0])
    assert x["positions"].shape[0] == 2 * half
    e_units, f_units, w_f, w_i = 0.3, 2.0, 10.0, 0.7
    plain = SpaceTrainer(potential, 1.0, w_f, energy_unit=e_units, force_unit=f_units)
    paired = SpaceTrainer(potential, 1.0, w_f, energy_unit=e_units, force_unit=f_units, invariance_weight=w_i)
    loss0, _, _ = plain._loss(x, y, False)
    loss1, maes, _ = paired._loss(x, y, False)
    de, df, n_atoms = [], [], 0
    for b, r in enumerate(rows):
        a, c = (predict_structures(potential, [_moved_atoms(x, k, cells[r].numbers)])[0] for k in (b, b + half))
        # the same labels, turned with each copy: turned back, they agree
        np.testing.assert_allclose(y["forces"][b, :len(cells[r])] @ x["rot"][b],
                                   y["forces"][b + half, :len(cells[r])] @ x["rot"][b + half], atol=1e-5)
        assert y["energy"][b] == y["energy"][b + half]
        de.append(a["energies"] - c["energies"])
        df.append(a["forces"][:, :2] @ x["rot"][b] - c["forces"][:, :2] @ x["rot"][b + half])
        n_atoms += len(cells[r])
    de, df = np.concatenate(de), np.concatenate(df)
    assert np.abs(de).max() > 1e-4                    # a generic network is not invariant: the term is not 0
    expected = w_i * (np.sum(de ** 2) / n_atoms / e_units ** 2 + w_f * np.sum(df ** 2) / (2 * n_atoms) / f_units ** 2)
    assert float(loss1 - loss0) == pytest.approx(expected, rel=1e-4)
    assert float(maes[2]) == pytest.approx(1e3 * np.mean(np.abs(de)), rel=1e-4)     # atom_spread, meV
    assert float(maes[3]) == pytest.approx(np.mean(np.abs(df)), rel=1e-4)           # turned_force, eV/A


def test_pairs_need_augmentation_and_a_nonnegative_weight(potential):
    with pytest.raises(ValueError, match="pairs=True needs augment=True"):
        SpaceBatches(potential, _cells(), [0.0] * 4, batch_size=2, augment=False, pairs=True)
    with pytest.raises(ValueError, match="invariance_weight"):
        SpaceTrainer(potential, invariance_weight=-1.0)


def test_the_invariance_term_refuses_a_batch_that_is_not_pairs(potential):
    import tensorflow as tf

    cells = _cells()[:2]
    del cells[1][[0]]                                  # 8 and 7 atoms: the halves differ
    x, y = SpaceBatches(potential, cells, [0.0, 0.0], batch_size=2, seed=1)[0]
    paired = SpaceTrainer(potential, 1.0, 0.0, invariance_weight=1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"needs batches of SpaceBatches\(pairs=True\)"):
        paired._loss(x, y, False)


def test_cli_trains_with_pairs_and_refuses_them_without_augmentation(potential, tmp_path, capsys):
    import json

    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from ednn_tf import cli

    cells = _cells()
    for a, r in zip(cells, predict_structures(potential, cells)):
        a.calc = SinglePointCalculator(a, energy=r["energy"], forces=r["forces"])
    data = tmp_path / "cells.extxyz"
    ase.io.write(data, cells)
    common = ["train", str(data), "--forces-key", "forces", "--epochs", "1", "--context", "2", "--filters", "4",
              "--pixel-size", "0.45", "--gamma", "0.45", "--batch-size", "2", "--val-fraction", "0.25", "--no-progress"]
    assert cli.main(common + ["--invariance-weight", "1", "--no-augment", "--out", str(tmp_path / "x.keras")]) == 2
    assert "invariance_weight=1.0 needs readout='atoms' and augment=True" in capsys.readouterr().err
    assert cli.main(common + ["--invariance-weight", "-1", "--out", str(tmp_path / "x.keras")]) == 2
    assert "invariance_weight" in capsys.readouterr().err and not (tmp_path / "x.keras").exists()
    assert cli.main(common + ["--invariance-weight", "0.5", "--out", str(tmp_path / "m.keras")]) == 0
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert metrics["training"]["invariance_weight"] == 0.5
    log = (tmp_path / "m.keras.train" / "log.csv").read_text().splitlines()
    row = dict(zip(log[0].split(","), log[1].split(",")))
    assert float(row["atom_spread"]) > 0 and float(row["turned_force"]) > 0
