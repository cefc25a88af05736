"""Issue 16, items 5-6: every experiment script checks its arguments before any work and ends a bad one
with one line ``<script>.py: error: <message>`` naming the option and the allowed range, exit status 2
and no traceback (``ednn_tf.util.argument_errors``), and writes nothing. Most cases fail before
TensorFlow is imported, so each is a fraction of a second; the ``--model`` cases load a file first."""
import os
import re

import pytest

from conftest import run_script

LOG_LINE = re.compile(r"^([IWE]\d{4} |WARNING: All log messages before absl)")   # TF / absl start-up logs

CASES = [
    # hexagonal.py (tiny preset)
    ("hexagonal", ["--focus", "0"], "--focus must be an integer >= 1, got --focus=0"),
    ("hexagonal", ["--context", "-1"], "--context must be an integer >= 0, got --context=-1"),
    ("hexagonal", ["--grid", "30"], "--grid must be a multiple of --focus 8, got --grid=30"),
    ("hexagonal", ["--n-structures", "20"], "--n-structures must be > --n-train + --n-val = 24"),
    ("hexagonal", ["--batch-size", "21"], "--batch-size must be in 1..20 (no larger than the training set: --n-train), "
                                          "got --batch-size=21"),
    ("hexagonal", ["--batch-size", "0"], "--batch-size must be in 1..20"),
    ("hexagonal", ["--lr", "nan"], "--lr must be a finite number, got --lr=nan"),
    ("hexagonal", ["--lr", "0"], "--lr must be > 0, got --lr=0.0"),
    ("hexagonal", ["--width", "-0.5"], "--width must be > 0, got --width=-0.5"),
    ("hexagonal", ["--epochs", "0"], "--epochs must be an integer >= 1, got --epochs=0"),
    ("hexagonal", ["--warmup-epochs", "3"], "--warmup-epochs must be in 0..2 (--epochs), got --warmup-epochs=3"),
    ("hexagonal", ["--rattle", "0.1", "0.05"], "--rattle HIGH must be >= 0.1, got --rattle HIGH=0.05"),
    ("hexagonal", ["--moments", "0"], "--moments must be an integer >= 1, got --moments=0"),
    ("hexagonal", ["--sym-stride", "3"], "--sym-stride must be 0 or divide --focus 8, got --sym-stride=3"),
    ("hexagonal", ["--transfer-sizes", "2"], "--transfer-counts must have one count per --transfer-sizes [2]"),
    ("hexagonal", ["--transfer-counts", "9", "1"], "--transfer-counts must be in 1..8 (the test cells)"),
    ("hexagonal", ["--blur-widths", "9"], "--blur-widths must be in 0..4 (--context), got --blur-widths=9"),
    ("hexagonal", ["--blur-sigma", "0"], "--blur-sigma must be > 0"),
    ("hexagonal", ["--seed", "-1"], "--seed must be an integer >= 0, got --seed=-1"),
    ("hexagonal", ["--workers", "0"], "--workers must be an integer >= 1, got --workers=0"),
    ("hexagonal", ["--oracle", "nope"], "--oracle nope with --oracle-setting {}: unknown oracle 'nope'"),
    ("hexagonal", ["--oracle-setting", "supercell"], "--oracle-setting: a setting must be KEY=VALUE, got 'supercell'"),
    # porous_graphene.py (tiny preset: 6 geometries, 3 / 1 / 2 split, 3 snapshots each)
    ("porous_graphene", ["--pixels-per-cell", "100"], "--pixels-per-cell must be a multiple of 12"),
    ("porous_graphene", ["--focus", "5"], "--focus must divide --pixels-per-cell 24, got --focus=5"),
    ("porous_graphene", ["--steps", "100", "--equilibration", "95"],
     "--steps must be >= --equilibration + --every = 105 (no snapshots otherwise), got --steps=100"),
    ("porous_graphene", ["--batch-size", "10"], "--batch-size must be in 1..9 (no larger than the training set: 3 "
                                                "training geometries x 3 snapshots), got --batch-size=10"),
    ("porous_graphene", ["--lr", "-1"], "--lr must be > 0, got --lr=-1.0"),
    ("porous_graphene", ["--temperature", "nan"], "--temperature must be a finite number"),
    ("porous_graphene", ["--friction", "0"], "--friction must be > 0"),
    ("porous_graphene", ["--test-fraction", "0"], "--test-fraction must be > 0"),
    ("porous_graphene", ["--val-fraction", "0.7", "--test-fraction", "0.3"],
     "--n-geometries 6 with --val-fraction 0.7 and --test-fraction 0.3 leaves 0 training"),
    ("porous_graphene", ["--epochs", "0"], "--epochs must be an integer >= 1"),
    ("porous_graphene", ["--oracle", "nope"], "--oracle: unknown oracle 'nope'"),
    ("porous_graphene", ["--workers", "0"], "--workers must be an integer >= 1"),
    # graphene_mc.py (tiny preset)
    ("graphene_mc", ["--temperature", "-1"], "--temperature must be > 0, got --temperature=-1.0"),
    ("graphene_mc", ["--repeat", "0", "3"], "--repeat must be an integer >= 1, got --repeat=0"),
    ("graphene_mc", ["--md-steps", "10"], "--md-steps must be > --md-equil = 20, got --md-steps=10"),
    ("graphene_mc", ["--mc-sweeps", "0"], "--mc-sweeps must be an integer >= 1"),
    ("graphene_mc", ["--n-train", "4"], "--n-train must be >= 8 (the preset's batch size"),
    ("graphene_mc", ["--epochs", "0"], "--epochs must be an integer >= 1"),
    ("graphene_mc", ["--oracle", "nope"], "--oracle nope with --oracle-setting {}: unknown oracle 'nope'"),
    ("graphene_mc", ["--oracle-setting", "x"], "--oracle-setting: a setting must be KEY=VALUE, got 'x'"),
    ("graphene_mc", ["--model", "nope.keras"], "--model: no model file 'nope.keras' and no shipped model"),
    # ising_mc.py (tiny preset)
    ("ising_mc", ["--sizes", "8", "-1"], "--sizes must be an integer >= 1, got --sizes=-1"),
    ("ising_mc", ["--replicas", "0"], "--replicas must be an integer >= 1"),
    ("ising_mc", ["--burn", "-1"], "--burn must be an integer >= 0"),
    ("ising_mc", ["--sweeps", "2"], "--sweeps must be an integer >= 4, got --sweeps=2"),
    ("ising_mc", ["--model", "nope.keras"], "--model: model file 'nope.keras' not found"),
    ("ising_mc", ["--model", "README.md"], "--model: model file 'README.md' ("),   # not a .keras archive
    ("ising_mc", ["--model", "{focus2}", "--sizes", "8", "9"],
     "--sizes must be multiples of the model's focus 2, got --sizes=9"),
    # md_nve.py
    ("md_nve", ["--cells", "0", "6"], "--cells must be an integer >= 1, got --cells=0"),
    ("md_nve", ["--temperatures", "300", "-5"], "--temperatures must be > 0, got --temperatures=-5.0"),
    ("md_nve", ["--steps", "0"], "--steps must be an integer >= 1"),
    ("md_nve", ["--timestep", "nan"], "--timestep must be a finite number"),
    ("md_nve", ["--reference", "nope"], "--reference: unknown oracle 'nope'"),
    ("md_nve", ["--model", "nope.keras"], "--model: no model file 'nope.keras'"),
    # hexagonal_seeds.py (no --out: it writes only --json)
    ("hexagonal_seeds", ["/nonexistent-run"], "runs: no results.json for run '/nonexistent-run'"),
    ("hexagonal_seeds", ["--n-boot", "0", "/nonexistent-run"], "--n-boot must be an integer >= 1, got --n-boot=0"),
    # large_sheet.py
    ("large_sheet", ["--repeats", "0"], "--repeats must be an integer >= 1, got --repeats=0"),
    ("large_sheet", ["--width", "-1"], "--width must be > 0.0, got --width=-1.0"),
    ("large_sheet", ["--batch-tiles", "0"], "--batch-tiles must be an integer >= 1, got --batch-tiles=0"),
    ("large_sheet", ["--pixels-per-cell", "100", "--repeats", "1"],
     "--pixels-per-cell x --repeats = 100 px is not a multiple of --focus 64"),
    ("large_sheet", ["--record", "/nonexistent-dir/x.json"], "--record: the folder of '/nonexistent-dir/x.json' does not exist"),
    ("large_sheet", ["--model", "/nonexistent.keras"], "--model: no such file '/nonexistent.keras'"),
]
PRESET = {"hexagonal": ["--preset", "tiny"], "porous_graphene": ["--preset", "tiny"],
          "graphene_mc": ["--preset", "tiny"], "ising_mc": ["--preset", "tiny"]}


@pytest.fixture(scope="module")
def focus2_model(tmp_path_factory):
    """A saved EDNN with focus 2 (for ising_mc's lattice-size check)."""
    import keras

    from ednn_tf import EDNN, networks

    path = tmp_path_factory.mktemp("model") / "focus2.keras"
    model = EDNN(networks.ising_dense(4, channels=1, seed=0), focus=2, context=1)
    model(keras.ops.zeros((1, 4, 4, 1)))
    model.save(path)
    return str(path)


@pytest.mark.parametrize("script, argv, message", CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_argument_is_one_line_with_status_2_before_any_work(script, argv, message, tmp_path, request):
    if "{focus2}" in argv:
        argv = [a.replace("{focus2}", request.getfixturevalue("focus2_model")) for a in argv]
    out = tmp_path / "out"
    extra = [] if script == "hexagonal_seeds" else ["--out", out]
    data = ["--data-dir", tmp_path / "data"] if script in ("hexagonal", "porous_graphene") else []
    proc = run_script(script, *PRESET.get(script, []), *extra, *data, *argv, check=False)
    lines = [line for line in proc.stderr.splitlines() if not LOG_LINE.match(line)]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"{script}.py: error: ") and message in lines[0], lines[0]
    assert proc.stdout == ""
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "data")   # nothing written


@pytest.mark.parametrize("script, workdir", [("hexagonal", "train_ednn"), ("hexagonal", "train_cnn"),
                                             ("porous_graphene", "train")])
def test_rerun_with_fewer_epochs_than_its_backup_is_refused(script, workdir, tmp_path):
    """A killed run's backup at epoch 5, rerun with --epochs 2 (the tiny preset): refused before any
    work, naming the backup and what to do (was a ``KeyError: 'loss'`` in ising.py, on every rerun)."""
    backup = tmp_path / "out" / workdir / "backup"
    backup.mkdir(parents=True)
    (backup / "training_metadata.json").write_text('{"epoch": 5, "batch": 0}')
    proc = run_script(script, "--preset", "tiny", "--out", tmp_path / "out", "--data-dir", tmp_path / "data",
                      check=False)
    lines = [line for line in proc.stderr.splitlines() if not LOG_LINE.match(line)]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == (f"{script}.py: error: the training backup '{backup}' is at epoch 5, past epochs=2: rerun with "
                        f"epochs >= 5 to finish the run it belongs to, or delete '{backup}' to train 2 epochs from "
                        "the start")
    assert not (tmp_path / "data").exists() and sorted(os.listdir(tmp_path / "out")) == [workdir]


def test_run_tests_runs_each_file_in_its_own_process_and_sums_the_counts(tmp_path):
    """``scripts/run_tests.py`` (the README's test command): one pytest process per file, summed
    counts, exit status 1 naming the failing file; a node id selects within its file."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    good, bad = tmp_path / "test_good.py", tmp_path / "test_bad.py"
    good.write_text("import os\n"
                    "def test_a(): print('pid', os.getpid())\n"
                    "def test_b(): pass\n"
                    "import pytest\n@pytest.mark.skip(reason='by design')\ndef test_c(): pass\n")
    bad.write_text("import os\ndef test_d(): print('pid', os.getpid())\ndef test_e(): assert 1 == 2\n")
    runner = [sys.executable, os.path.join(repo, "scripts", "run_tests.py")]
    out = subprocess.run(runner + ["-s", str(good), str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1, out.stdout
    assert "=== suite: 3 passed, 1 failed, 1 skipped in 2 files" in out.stdout
    assert re.search(r"=== FAILED: \S*test_bad\.py \(pytest exit status 1\)", out.stdout)
    pids = set(re.findall(r"^pid (\d+)", out.stdout, re.M))
    assert len(pids) == 2, out.stdout                     # test_a and test_d: two processes
    one = subprocess.run(runner + [f"{good}::test_b"], capture_output=True, text=True, cwd=tmp_path)
    assert one.returncode == 0 and "=== suite: 1 passed in 1 file," in one.stdout, one.stdout
    folder = subprocess.run(runner + [str(tmp_path), "-k", "test_a or test_d"], capture_output=True, text=True)
    assert folder.returncode == 0, folder.stdout   # a folder: each of its test files once, filter applied
    assert "=== suite: 2 passed, 3 deselected in 2 files" in folder.stdout, folder.stdout
