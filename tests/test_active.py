"""One active-learning round end to end on the tiny preset (LJ oracle): a committee trained, a pool
explored, frames picked by deviation, labelled and merged, the committee retrained and scored; then
the same run interrupted on purpose and resumed: the steps already done are kept (not redone) and
the run ends with the same files and rounds."""
import json
import os

import ase.io
import numpy as np
import pytest
from conftest import run_script

FILES = ["initial_labelled.extxyz", "test_labelled.extxyz", "round0/committee.committee.json",
         "round1/pool.extxyz", "round1/pick.extxyz", "round1/pick_labelled.extxyz", "round1/labelled.extxyz",
         "round1/committee.committee.json", "results.json"]


def test_one_round_and_a_resume_after_an_interruption(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_script("active_learning", "--preset", "tiny", "--out", whole, "--no-progress")
    res = json.loads((whole / "results.json").read_text())
    assert [r["labels"] for r in res["rounds"]] == [8, 12]           # 8 initial cells + 4 picked
    for f in FILES:
        assert (whole / f).exists(), f
    dev = json.loads((whole / "round1" / "pool_deviation.json").read_text())
    picked = dev["picked"]
    assert len(picked) == 4 and dev["max_force_dev"][picked[0]] == max(dev["max_force_dev"])
    assert sorted(dev["max_force_dev"], reverse=True)[:4] == [dev["max_force_dev"][i] for i in picked]
    held = res["rounds"][1]["held_out"]
    assert held["n"] == 6 and np.isfinite(held["energy_mae_meV_per_atom"]) and held["max_force_dev_max"] > 0

    stop = run_script("active_learning", "--preset", "tiny", "--out", cut, "--no-progress", "--max-steps", "6")
    assert "stopped after 6 steps" in stop.stdout
    assert (cut / "round1" / "pool.extxyz").exists() and not (cut / "round1" / "pick.extxyz").exists()
    before = {f: os.path.getmtime(cut / f) for f in FILES[:4]}
    run_script("active_learning", "--preset", "tiny", "--out", cut, "--no-progress")
    assert {f: os.path.getmtime(cut / f) for f in FILES[:4]} == before     # kept, not redone
    for f in FILES:
        assert (cut / f).exists(), f
    for f in FILES[:2]:                                                      # before any training: identical
        a, b = ase.io.read(whole / f, ":"), ase.io.read(cut / f, ":")
        assert all(np.array_equal(x.positions, y.positions) and x.get_potential_energy() == y.get_potential_energy()
                   for x, y in zip(a, b))
    again = json.loads((cut / "results.json").read_text())
    assert [r["labels"] for r in again["rounds"]] == [8, 12]
    assert again["rounds"][0]["held_out"] == res["rounds"][0]["held_out"]
    assert again["rounds"][1]["held_out"]["energy_mae_meV_per_atom"] == pytest.approx(
        held["energy_mae_meV_per_atom"], rel=0.05)
    bad = run_script("active_learning", "--trust-lo", "0.3", "--trust-hi", "0.1", check=False)
    assert bad.returncode == 2 and "--trust-hi must be above --trust-lo 0.3" in bad.stderr


def test_explore_keeps_every_atom_in_its_plane_at_1500_K():
    """Langevin's random kicks are three-dimensional: without the z constraint a hot 2D run lifts
    atoms out of the plane until the potential refuses the structure."""
    import ednn_tf
    from ednn_tf.apply.active import explore
    from ednn_tf.atoms.structures import varied_hexagonal_cell

    start = varied_hexagonal_cell(5)
    start.pbc = [True, True, False]
    frames = explore(ednn_tf.load_potential("hexagonal-gfn1"), [start], seed=1, temperatures=(1500.0,),
                     md_steps=30, every=15, vacancy_p=0.0)
    assert [f.info["step"] for f in frames] == [0, 15, 30]
    for f in frames[1:]:
        np.testing.assert_array_equal(f.positions[:, 2], frames[0].positions[:, 2])
        assert np.abs(f.positions[:, :2] - frames[0].positions[:, :2]).max() > 0.02     # it moved in-plane
        assert not f.constraints
