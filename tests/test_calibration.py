"""Calibration of a spread against actual errors (``ednn_tf.apply.calibration``,
``experiments/calibration.py``)."""
import json
import os

import numpy as np
import pytest
from conftest import run_script

from ednn_tf.apply.calibration import frame_table, rank_summary, reliability


def test_frame_table_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    n = 5
    F, ref = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    dev = rng.uniform(0.1, 0.5, n)
    pred = [{"energy": -10.0, "forces": F, "force_dev": dev, "max_force_dev": dev.max(), "energy_std": 0.02}]
    t = frame_table(pred, [-10.3], [ref])
    d = np.hypot(F[:, 0] - ref[:, 0], F[:, 1] - ref[:, 1])
    assert t["force_rms"][0] == pytest.approx(np.sqrt(np.mean(d ** 2)))
    assert t["max_force_error"][0] == pytest.approx(d.max())
    assert t["force_mae"][0] == pytest.approx(np.abs(F[:, :2] - ref[:, :2]).mean())
    assert t["energy_error"][0] == pytest.approx(300.0 / n)          # meV/atom
    assert t["energy_std"][0] == pytest.approx(20.0 / n)
    assert t["force_dev_rms"][0] == pytest.approx(np.sqrt(np.mean(dev ** 2)))
    assert t["max_force_norm"][0] == pytest.approx(np.hypot(F[:, 0], F[:, 1]).max())


def test_rank_summary_and_reliability_numbers():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    s = rank_summary(p, p ** 2)                                      # monotone: rank correlation 1
    assert s["spearman"] == pytest.approx(1.0)
    assert rank_summary(p, -p)["spearman"] == pytest.approx(-1.0)
    a = np.array([0.05, 0.7, 0.3, 1.3, 0.5, 0.6])                    # 0.7 > 0.6 and 1.3 > 1.2: 2 of 6
    s = rank_summary(p, a)
    assert s["above_3x"] == pytest.approx(2 / 6)
    assert s["median_ratio"] == pytest.approx(np.median(a / p))
    assert np.isnan(rank_summary(np.ones(4), p[:4])["spearman"])    # a constant spread ranks nothing
    r = reliability(p, a, bins=3)
    assert r["count"] == [2, 2, 2]
    assert r["predicted"] == pytest.approx([0.15, 0.35, 0.55])
    assert r["actual_rms"][1] == pytest.approx(np.sqrt((0.3 ** 2 + 1.3 ** 2) / 2))
    with pytest.raises(ValueError, match=r"got \(6,\) and \(3,\)"):
        rank_summary(p, a[:3])


def test_calibration_script_end_to_end(tmp_path):
    """The script on a tiny labelled set (labels: the model's own prediction plus known noise)."""
    import ase.io

    import ednn_tf
    from ednn_tf.apply.space import predict_structures
    from ednn_tf.atoms.structures import varied_hexagonal_cell
    from ednn_tf.cli import write_labelled

    cells = [varied_hexagonal_cell(k, repeats=((2, 2),)) for k in range(4)]
    for c in cells:
        c.pbc = [True, True, False]
    res = predict_structures(ednn_tf.load_potential("hexagonal-gfn1"), cells)
    rng = np.random.default_rng(0)
    forces = [r["forces"] + rng.normal(0.0, 0.1 * (k + 1), r["forces"].shape) * [1, 1, 0] for k, r in enumerate(res)]
    write_labelled(str(tmp_path / "checks_strained_gfn1_sc2.extxyz"), cells, [r["energy"] for r in res], forces)
    out = tmp_path / "out"
    proc = run_script("calibration", "--model", "hexagonal-gfn1", "--orientations", "2", "--data", tmp_path,
                      "--out", out)
    assert "checks_strained" in proc.stdout
    r = json.load(open(out / "results.json"))["sets"]
    assert r["checks_strained"]["frames"] == r["all"]["frames"] == 4
    assert 0.1 < r["all"]["force_mae_xy_eV_per_A"] < 0.6
    assert -1.0 <= r["all"]["max_force_dev~max_force_error"]["spearman"] <= 1.0
    assert os.path.getsize(out / "calibration.png") > 10_000
    assert ase.io.read(str(tmp_path / "checks_strained_gfn1_sc2.extxyz"), ":")[0].get_forces() is not None
