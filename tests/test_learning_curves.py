"""Learning curves (``experiments/learning_curves.py``): the interpolation that turns two curves into
"labels needed", and the tiny preset end to end (LJ oracle): one pool for both strategies, picks that
follow the spread (or the seed), labels that add up, and an interrupted run that resumes to the same
records."""
import json

import numpy as np
import pytest
from conftest import run_script

from ednn_tf.apply.active import labels_to_reach


def test_labels_to_reach_interpolates_between_rounds():
    labels, errors = [100, 140, 180], [10.0, 8.0, 6.0]
    assert labels_to_reach(labels, errors, 7.0) == pytest.approx(160.0)
    assert labels_to_reach(labels, errors, 8.0) == pytest.approx(140.0)
    assert labels_to_reach(labels, errors, 12.0) == 100.0          # reached at the start
    assert labels_to_reach(labels, errors, 5.9) is None             # never
    assert labels_to_reach([100, 140], [10.0, 12.0], 11.0) == 100.0
    with pytest.raises(ValueError, match="ascending labels"):
        labels_to_reach([140, 100], [1.0, 2.0], 1.5)


def test_tiny_preset_end_to_end_and_a_resume(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_script("learning_curves", "--preset", "tiny", "--out", whole, "--no-progress")
    res = json.loads((whole / "results.json").read_text())
    dev, rnd = res["strategies"]["deviation"], res["strategies"]["random"]
    assert [r["labels"] for r in dev] == [r["labels"] for r in rnd] == [8, 11, 14]   # 8 cells + 3 a round
    assert dev[0]["scores"] == rnd[0]["scores"]                                     # one round 0 for both
    assert res["pool_frames"] == 12                                                 # 2 starts x 2 T x 3 frames
    for recs in (dev, rnd):
        assert len(set(recs[-1]["picked"])) == 6 and recs[1]["picked"] == recs[2]["picked"][:3]
    for r in (1, 2):                         # the deviation picks are the frames of highest spread left
        p = json.loads((whole / "deviation" / f"round{r}" / "picked.json").read_text())
        d = dict(zip(p["candidates"], p["max_force_dev"]))
        assert sorted(d.values(), reverse=True)[:3] == sorted((d[i] for i in p["picked"]), reverse=True)
        assert len(p["candidates"]) == 12 - 3 * (r - 1)
    s = res["summary"]["energy_mae_meV_per_atom"]
    assert s["random_final"] == rnd[-1]["scores"]["all"]["energy_mae_meV_per_atom"]
    assert np.isfinite(s["deviation_final"]) and (whole / "learning_curves.png").stat().st_size > 10_000

    stop = run_script("learning_curves", "--preset", "tiny", "--out", cut, "--no-progress", "--max-steps", "5")
    assert "stopped after 5 steps" in stop.stdout and not (cut / "results.json").exists()
    run_script("learning_curves", "--preset", "tiny", "--out", cut, "--no-progress")
    again = json.loads((cut / "results.json").read_text())
    assert [r["picked"] for r in again["strategies"]["random"]] == [r["picked"] for r in rnd]
    assert again["strategies"]["deviation"][1]["picked"] == dev[1]["picked"]       # picked before the stop
    for s in ("deviation", "random"):        # the same scores up to thread scheduling
        for a, b in zip(again["strategies"][s], res["strategies"][s]):
            assert a["scores"]["all"]["energy_mae_meV_per_atom"] == pytest.approx(
                b["scores"]["all"]["energy_mae_meV_per_atom"], rel=0.05)
