"""``ednn-tf`` command line and labelling with forces: numbers equal the oracle's, resume, bad input."""
import os

import ase.io
import numpy as np
import pytest

from ednn_tf import cli
from ednn_tf.atoms.structures import hexagonal_cell, varied_hexagonal_cell
from ednn_tf.labels.labelling import label_structures, read_checkpoint
from ednn_tf.labels.oracles import get_oracle


def _cells(n=4):
    return [hexagonal_cell("graphene", seed=s, repeat=(3, 2), rattle=0.05) for s in range(n)]


def test_label_structures_with_forces_resumes_and_matches_the_oracle(tmp_path):
    cells, lj, ck = _cells(), get_oracle("lj"), tmp_path / "ck.npz"
    e, f = label_structures(cells[:2], lj, n_workers=1, checkpoint=ck, progress=False, forces=True)
    assert read_checkpoint(ck)["forces"][1].shape == (24, 3)
    e2, f2 = label_structures(cells[:2], lj, n_workers=2, checkpoint=ck, progress=False, forces=True)  # all reused
    for a, ea, fa, eb, fb in zip(cells, e, f, e2, f2):
        ref_e, ref_f = lj.energy_and_forces(a)
        assert ea == eb == ref_e and np.array_equal(fa, ref_f) and np.array_equal(fb, ref_f)
    np.testing.assert_array_equal(label_structures(cells[:2], lj, n_workers=1, checkpoint=ck, progress=False), e)
    par = label_structures(cells, lj, n_workers=2, progress=False, forces=True)   # worker processes
    assert all(np.array_equal(p, lj.forces(a)) for p, a in zip(par[1], cells))
    only_e = tmp_path / "e.npz"
    label_structures(cells[:1], lj, n_workers=1, checkpoint=only_e, progress=False)
    with pytest.raises(ValueError, match="energies only"):
        label_structures(cells[:1], lj, n_workers=1, checkpoint=only_e, progress=False, forces=True)


def test_label_stress_is_the_oracles_and_resumes_through_the_cli(tmp_path):
    """--stress: the LJ oracle's stress (eV/A^3) in the checkpoint and the extxyz ASE reads back; a
    rerun labels nothing; a checkpoint written without stress is refused, naming the reason."""
    cells, lj = _cells(3), get_oracle("lj")
    ck = tmp_path / "s.npz"
    e, f, s = label_structures(cells, lj, n_workers=2, checkpoint=ck, progress=False, stress=True)
    for a, ea, fa, sa in zip(cells, e, f, s):
        ref = lj.energy_forces_stress(a)
        assert ea == ref[0] and np.array_equal(fa, ref[1]) and np.array_equal(sa, ref[2]) and np.any(sa != 0)
    np.testing.assert_array_equal(read_checkpoint(ck)["stress"], s)
    label_structures(cells, lj, n_workers=1, checkpoint=tmp_path / "none.npz", progress=False, forces=True)
    with pytest.raises(ValueError, match="no stress"):
        label_structures(cells, lj, n_workers=1, checkpoint=tmp_path / "none.npz", progress=False, stress=True)
    ase.io.write(tmp_path / "in.extxyz", cells)
    out = tmp_path / "out.extxyz"
    assert cli.main(["label", str(tmp_path / "in.extxyz"), "--oracle", "lj", "--out", str(out), "--stress",
                     "--workers", "1", "--no-progress"]) == 0
    back = ase.io.read(out, ":")
    np.testing.assert_allclose([b.get_stress() for b in back], s, rtol=1e-6, atol=1e-12)


def test_prepare_dataset_with_forces_stores_the_oracles_forces_in_hdf5_and_rerenders_them(tmp_path):
    """HDF5 path: forces labelled with the energies, zero-padded in the file, equal to the oracle's,
    read back per structure and by ``load_structures``; a re-render keeps them; resume relabels nothing."""
    import h5py

    from ednn_tf.atoms import datasets, structures
    from ednn_tf.labels.labelling import prepare_dataset

    lj = get_oracle("lj", sigma=1.3)
    cfg = {"n_structures": 3, "seed": 5, "rattle": (0.05, 0.10), "grid": 16, "channels": None, "forces": True}
    stem, path = prepare_dataset(cfg, lj, tmp_path, None, 0.2, workers=1, progress=False)
    assert stem.endswith("_forces") and path.endswith("_forces_grid16.h5")
    cells = structures.hexagonal_dataset(3, 5, rattle_range=(0.05, 0.10))
    stored = datasets.load_forces(path)
    with h5py.File(path) as fh:
        assert fh["forces"].shape == (3, max(len(a) for a in cells), 3) and fh.attrs["forces_unit"] == "eV/A"
        assert fh.attrs["oracle"] == "lj" and '"sigma": 1.3' in fh.attrs["oracle_settings"]
        assert np.all(fh["forces"][1, len(cells[1]):] == 0)           # padding rows
    for a, f, b in zip(cells, stored, datasets.load_structures(path)):
        np.testing.assert_array_equal(f, lj.forces(a))
        np.testing.assert_array_equal(b.get_forces(), f)
        assert b.get_potential_energy() == lj.energy(a)
    ck = read_checkpoint(f"{stem}.labels.npz")
    assert all(np.array_equal(c, f) for c, f in zip(ck["forces"], stored))
    cfg8 = dict(cfg, grid=8)                           # another grid: re-rendered, forces copied
    _, path8 = prepare_dataset(cfg8, lj, tmp_path, None, 0.2, workers=1, progress=False)
    assert h5py.File(path8, "r").attrs["rendered_from"] == os.path.basename(path)
    assert all(np.array_equal(a, b) for a, b in zip(datasets.load_forces(path8), stored))
    plain = dict(cfg, forces=False)                    # energy-only files keep their old names, no forces
    _, path_e = prepare_dataset(plain, lj, tmp_path, None, 0.2, workers=1, progress=False)
    assert "_forces" not in path_e and "forces" not in h5py.File(path_e, "r")
    with pytest.raises(ValueError, match="no force labels"):
        datasets.load_forces(path_e)
    with pytest.raises(ValueError, match=r"structure 1: forces of shape \(2, 3\)"):
        datasets.pack_structures(cells[:2], [lj.forces(cells[0]), np.zeros((2, 3))])


def test_cli_label_writes_energies_and_forces_ase_reads_back(tmp_path):
    cells = _cells(3)
    src, out = tmp_path / "cells.extxyz", tmp_path / "labelled.extxyz"
    ase.io.write(src, cells)
    cells = ase.io.read(src, ":")          # what the command reads (extxyz rounds the positions)
    assert cli.main(["label", str(src), "--oracle", "lj", "--oracle-setting", "sigma=1.3", "--out", str(out),
                     "--workers", "1", "--no-progress"]) == 0
    lj = get_oracle("lj", sigma=1.3)
    back = ase.io.read(out, ":")
    assert len(back) == 3 and back[0].info["oracle"] == "lj"
    for a, b in zip(cells, back):
        assert b.get_potential_energy() == pytest.approx(lj.energy(a), rel=1e-12)
        np.testing.assert_allclose(b.get_forces(), lj.forces(a), rtol=0, atol=1e-8)   # extxyz: 8 decimals
    assert (tmp_path / "labelled.extxyz.labels.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["label", "missing.extxyz", "--oracle", "lj", "--out", "o.extxyz"], "structure file not found: 'missing.extxyz'"),
    (["label", "{src}", "--oracle", "dft", "--out", "o.extxyz"], "unknown oracle 'dft'"),
    (["label", "{src}", "--oracle", "lj", "--oracle-setting", "sigma", "--out", "o.extxyz"], "KEY=VALUE, got 'sigma'"),
    (["label", "{src}", "--oracle", "lj", "--oracle-setting", "width=2", "--out", "o.extxyz"], "width"),
    (["label", "{src}", "--oracle", "rebo", "--out", "o.extxyz"], "structure 0: .*supports elements"),
])
def test_cli_bad_input_names_the_value(tmp_path, capsys, args, message):
    src = tmp_path / "bn.extxyz"
    ase.io.write(src, [hexagonal_cell("hbn", seed=0, repeat=(3, 2))])
    assert cli.main([a.format(src=src) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ednn-tf label: error:")
    import re
    assert re.search(message, err), err


def test_varied_hexagonal_cells_are_deterministic_and_physical():
    cells = [varied_hexagonal_cell(s) for s in range(40)]
    again = varied_hexagonal_cell(7)
    assert np.array_equal(again.positions, cells[7].positions) and again.info == cells[7].info
    for a in cells:
        nx, ny = a.info["repeat"]
        x_bn = np.isin(a.numbers, (5, 7)).mean()
        a0 = 2.46 + 0.04 * x_bn                          # each material at its own lattice constant
        assert a.info["lattice_constant"] == pytest.approx(a0)
        L = a.cell.lengths()
        strain = np.array(a.info["strain"])
        assert np.all(np.abs(strain) <= 0.02)
        np.testing.assert_allclose(L[:2], [nx * a0 * (1 + strain[0]), ny * np.sqrt(3) * a0 * (1 + strain[1])])
        assert len(a) == 4 * nx * ny - a.info["vacancies"]
    assert len({tuple(a.info["repeat"]) for a in cells}) >= 6 and len({a.info["kind"] for a in cells}) == 4
