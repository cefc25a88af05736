"""experiments/uncertain_spots.py end to end: a committee's most uncertain atoms of a porous sheet,
cut into small periodic cells with their cores kept, ready for labelling; bad arguments refused."""
import json

import ase.io
import numpy as np
from conftest import perturbed_member, run_script

from ednn_tf.committee import save_committee


def test_spots_of_a_porous_sheet(tmp_path):
    card = save_committee(tmp_path / "c.committee.json",
                          [perturbed_member(tmp_path / f"m{k}.keras", 0.03 * k, k) for k in range(2)])
    out = tmp_path / "out"
    run_script("uncertain_spots", "--model", card, "--sheet-size", 40, "--n", 3, "--size", 12, "--keep-radius", 4,
               "--min-separation", 9, "--relax-steps", 5, "--out", out)
    res = json.loads((out / "results.json").read_text())
    cells = ase.io.read(out / "spots.extxyz", ":")
    assert len(cells) == len(res["spots"]) == 3 and (out / "map.png").stat().st_size > 10_000
    devs = [s["force_dev"] for s in res["spots"]]
    assert devs[0] == res["max_force_dev_eV_per_A"] and devs == sorted(devs, reverse=True)
    xy = np.array([s["xy_A"] for s in res["spots"]])
    assert min(np.linalg.norm(xy[i] - xy[j]) for i in range(3) for j in range(i)) >= 9
    for c, s in zip(cells, res["spots"]):
        assert c.arrays["spot_core"].sum() == s["core_atoms"] > 5 and len(c) == s["cell_atoms"]
        assert np.allclose(c.cell.lengths()[:2], 12.0) and c.info["source_atom"] == s["atom"]
    bad = run_script("uncertain_spots", "--model", card, "--keep-radius", 6, check=False)
    assert bad.returncode == 2 and "--keep-radius 6.0 leaves no seam in a --size 12.0 cell" in bad.stderr
    single = run_script("uncertain_spots", "--model", "hexagonal-gfn1", "--orientations", 1, "--out", tmp_path / "x",
                        check=False)
    assert single.returncode != 0 and "its spread needs --orientations K >= 2, got 1" in single.stderr


def test_spot_learning_refuses_a_folder_without_spots(tmp_path):
    bad = run_script("spot_learning", "--spots", tmp_path, "--prepare", check=False)
    assert bad.returncode == 2 and f"--spots '{tmp_path}' has no spots.extxyz" in bad.stderr
    (tmp_path / "spots.extxyz").write_text("")
    bad = run_script("spot_learning", "--spots", tmp_path, "--score", "m", "--orientations", "1", check=False)
    assert bad.returncode == 2 and "--orientations >= 2, got 4 and 1" in bad.stderr
