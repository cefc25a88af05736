"""Issue 16: bad input gets a clear error, corruption is detected, an interrupted run resumes to the same
result. One test (or more) per row of docs/reliability.md."""
import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import Interrupt, run_script, stop_after
from ednn_tf import EDNN, DensityEDNN, data, networks, training, util
from ednn_tf.model import load_ednn

NONFINITE_X = r"EDNN input x holds NaN or inf in batch sample\(s\)\W+1\b"   # eager and traced forms


def _model(check_batches=True, lr=3e-3):
    keras.utils.set_random_seed(3)
    model = EDNN(networks.ising_dense(4, channels=1, seed=3), focus=2, context=1, check_batches=check_batches)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    return model


def _xy(n=6, size=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 1)).astype("float32")
    return x, np.sum(x ** 2, axis=(1, 2, 3))[:, None]


def _weights(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


# ------------------------------------------------------------------ 1. non-finite inputs and labels
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_never_gives_a_finite_prediction(bad):
    """Item 1: predict and evaluate gave finite numbers for a NaN input (oneDNN's fused kernels); now
    every path raises, naming the sample (1) of the batch."""
    model = _model()
    x, y = _xy(3, 8)
    x[1, 0, 0, 0] = bad
    for run in (lambda: model(x), lambda: model.predict(x, verbose=0), lambda: model.evaluate(x, y, verbose=0),
                lambda: model.predict(tf.data.Dataset.from_tensor_slices(x).batch(3), verbose=0)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=NONFINITE_X):
            run()
    assert np.all(np.isfinite(model.predict(x[[0, 2]], verbose=0)))   # the other samples are fine


def test_nonfinite_input_in_fit_stops_before_the_weights_change():
    """Item 1: fit on data with one NaN sample reported a finite loss while the weights became NaN."""
    model = _model()
    x, y = _xy(6)
    model(x)
    before = _weights(model)
    x[4, 1, 2, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"EDNN input x holds NaN or inf in batch sample\(s\)"):
        model.fit(x, y, batch_size=6, epochs=1, verbose=0)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_labels_in_fit_and_evaluate(bad):
    model = _model()
    x, y = _xy(6)
    model(x)
    before = _weights(model)
    y[2, 0] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels y holds NaN or inf in batch sample\(s\)\W+2\b"):
        model.fit(x, y, batch_size=6, epochs=1, verbose=0, shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels y holds NaN or inf"):
        model.evaluate(x, y, verbose=0)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_nonfinite_input_under_xla_predicts_nan_not_a_number():
    """XLA drops assertions: the checked samples then predict NaN (the others are unchanged)."""
    x, _ = _xy(3, 8)
    ref = _model().predict(x, verbose=0)
    x[1, 0, 0, 0] = np.nan
    model = _model()
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    out = model.predict(x, verbose=0)[:, 0]
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], ref[[0, 2], 0], rtol=1e-6)


def test_density_ednn_checks_batches_too():
    model = DensityEDNN(networks.energy_density(1, filters=4, seed=0), context=1)
    x = np.ones((2, 5, 5, 1), "float32")
    x[1, 2, 2, 0] = np.inf
    with pytest.raises(tf.errors.InvalidArgumentError, match=NONFINITE_X):
        model.predict(x, verbose=0)


def test_check_batches_off_is_the_unchecked_model_and_is_saved(tmp_path):
    model = _model(check_batches=False)
    x, _ = _xy(3, 8)
    ref = _model().predict(x, verbose=0)
    np.testing.assert_array_equal(model.predict(x, verbose=0), ref)   # the check changes no number
    x[0, 0, 0, 0] = np.nan
    model.predict(x, verbose=0)                                        # no error without the check
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").check_batches is False
    assert EDNN.from_config(_model().get_config()).check_batches is True


def test_an_epoch_with_an_infinite_loss_stops_training_unsaved(tmp_path):
    """Finite data whose loss overflows float32 (labels 1e30): the epoch ends with ValueError and no
    backup of it is written (a rerun would not reuse a non-finite model)."""
    x, _ = _xy(6)
    with pytest.raises(ValueError, match=r"training stopped: loss = inf at the end of epoch 0"):
        training.fit(_model(), x, np.full((6, 1), 1e30), epochs=2, batch_size=3, workdir=str(tmp_path),
                     progress=False)
    assert not os.path.exists(tmp_path / "backup" / "training_metadata.json")


# ------------------------------------------------------------------ 2. dynamic shapes
def test_size_check_in_a_function_traced_with_unknown_sizes():
    """Item 2: with ``None`` sizes the static check cannot run; the run-time one names the sizes."""
    model = EDNN(networks.ising_dense(4, seed=1), focus=2, context=1)
    fn = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 1])])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"spatial sizes\W+9 9\W+are not all positive "
                                                             r"multiples of focus=2"):
        fn(np.ones((1, 9, 9, 1), "float32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"spatial sizes\W+8 5\W"):
        fn(np.ones((1, 8, 5, 1), "float32"))
    x = np.random.default_rng(0).normal(size=(2, 8, 6, 1)).astype("float32")
    np.testing.assert_array_equal(fn(x).numpy(), model(x).numpy())


# ------------------------------------------------------------------ 3. corrupted HDF5 payload
def test_corrupted_chunk_is_named_with_its_samples(tmp_path):
    """Item 3: the error names the file, the array and the samples of the damaged chunk (16384 rows of
    64 bytes per 1 MiB chunk)."""
    x = np.random.default_rng(0).choice([-1, 1], size=(40_000, 8, 8, 1)).astype(np.int8)
    path = tmp_path / "big.h5"
    data.write_dataset(path, x, np.zeros(40_000))
    with h5py.File(path, "r") as f:
        assert f["X"].chunks[0] == 16384 and f["X"].fletcher32
        info = f["X"].id.get_chunk_info(1)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 1000:info.byte_offset + 3000] = bytes(2000)
    path.write_bytes(bytes(raw))
    expected = rf"dataset '{path}': array '/X' is corrupt in samples 16384\.\.32767 \("
    with pytest.raises(ValueError, match=expected):
        data.read_arrays(path)
    with pytest.raises(ValueError, match=expected):
        data.read_arrays(path, indices=[5, 20_000])
    np.testing.assert_array_equal(data.read_arrays(path, indices=[5, 39_999])["X"], x[[5, 39_999]])
    with pytest.raises(Exception, match=r"is corrupt in samples 16384\.\.32767"):
        for _ in data.h5_dataset(path, batch_size=10_000):
            pass


# ------------------------------------------------------------------ 4, 5. experiment script arguments
@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr must be a finite number, got --lr=nan"),
    (["--lr", "-1"], "--lr must be > 0, got --lr=-1.0"),
    (["--lr", "0"], "--lr must be > 0, got --lr=0.0"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got --epochs=0"),
    (["--batch-size", "1000"], "--batch-size must be in 1..600 (--n-train: batches are whole, a larger one gives "
                               "no training step), got --batch-size=1000"),
    (["--contexts", "1", "-2"], "--contexts must be an integer >= 0, got --contexts=-2"),
])
def test_ising_script_refuses_bad_arguments_before_any_work(tmp_path, args, message):
    """Items 4, 5: exit status 2, the one line ``ising.py: error: ...``, no traceback, nothing written."""
    proc = run_script("ising", "--preset", "tiny", "--out", tmp_path / "out", "--data-dir", tmp_path / "data",
                      *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"ising.py: error: {message}"
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "data")


def test_ising_script_refuses_fewer_epochs_than_its_backup(tmp_path):
    backup = tmp_path / "out" / "train_c1" / "backup"
    backup.mkdir(parents=True)
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 5, "batch": 0}))
    proc = run_script("ising", "--preset", "tiny", "--out", tmp_path / "out", "--data-dir", tmp_path / "data",
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ising.py: error: the training backup '{backup}' is at epoch 5, past epochs=2: rerun with epochs >= 5 to "
        f"finish the run it belongs to, or delete '{backup}' to train 2 epochs from the start")
    assert not os.path.exists(tmp_path / "data")


def test_argument_errors_is_one_line_and_status_2(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="demo.py")
    with pytest.raises(SystemExit) as exc:
        with util.argument_errors(parser):
            util.check_int("--n", 0, minimum=1)
    assert exc.value.code == 2
    assert capsys.readouterr().err == "demo.py: error: --n must be an integer >= 1, got --n=0\n"
    with pytest.raises(ValueError, match="not an ArgumentError"):   # other errors pass through
        with util.argument_errors(parser):
            raise ValueError("not an ArgumentError")


# ------------------------------------------------------------------ 5. zero-step training, backups
def _batches():
    x, y = _xy(24)
    return data.ArrayBatches.make(x, y[:, 0], batch_size=5, seed=7, augment=True)


def _interrupted(workdir, epochs=4, after=1):
    """A backup at epoch ``after + 1`` in ``workdir`` of a run of ``epochs`` epochs."""
    with pytest.raises(Interrupt):
        training.fit(_model(), _batches(), epochs=epochs, workdir=str(workdir), progress=False,
                     callbacks=[stop_after(after)])


def test_zero_training_steps_is_a_clear_error(tmp_path):
    """Item 5: a batch larger than the training set (drop_remainder) gave ``KeyError: 'loss'``."""
    x, y = _xy(10)
    path = tmp_path / "d.h5"
    data.write_dataset(path, x, y)
    ds = data.h5_dataset(path, batch_size=20, shuffle=True, drop_remainder=True)
    with pytest.raises(ValueError, match=r"the training dataset has no batches \(cardinality 0; with "
                                         r"drop_remainder=True a batch larger than the training set gives none\)"):
        training.fit(_model(), ds, epochs=2, workdir=str(tmp_path / "w"), progress=False)
    with pytest.raises(ValueError, match=r"the training data has no samples \(batch_size=4\)"):
        training.fit(_model(), x[:0], y[:0], epochs=2, batch_size=4, workdir=str(tmp_path / "w"), progress=False)


def test_fewer_epochs_than_the_backup_is_refused(tmp_path):
    """Item 5: a rerun with fewer epochs than the backup holds gave ``KeyError: 'loss'`` every time."""
    _interrupted(tmp_path)
    backup = tmp_path / "backup"
    with pytest.raises(ValueError, match=rf"the training backup '{backup}' is at epoch 2, past epochs=1: rerun "
                                         rf"with epochs >= 2 .* or delete '{backup}' to train 1 epochs"):
        training.fit(_model(), _batches(), epochs=1, workdir=str(tmp_path), progress=False)
    assert training.check_backup(str(backup), 2) == 2 and training.check_backup(str(tmp_path / "none"), 1) == 0


def test_backup_already_at_epochs_finishes_cleanly(tmp_path):
    """A backup that holds every epoch (a run killed after its last epoch): the model is restored,
    nothing is trained, and train_or_reuse takes the history from log.csv."""
    straight = _model()
    training.fit(straight, _batches(), epochs=2, workdir=str(tmp_path / "a"), progress=False)
    work = tmp_path / "b"
    with pytest.raises(Interrupt):
        training.train_or_reuse(str(tmp_path / "m.keras"), _model, lambda: (_batches(), None, {}), epochs=4,
                                workdir=str(work), lr=3e-3, progress=False, callbacks=[stop_after(1)])
    model, info = training.train_or_reuse(str(tmp_path / "m.keras"), _model, lambda: (_batches(), None, {}),
                                          epochs=2, workdir=str(work), lr=3e-3, progress=False)
    assert len(info["history"]["loss"]) == 2 and not os.path.exists(work / "backup")
    for a, b in zip(_weights(straight), _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_corrupt_backup_weights_are_named(tmp_path):
    _interrupted(tmp_path)
    weights = tmp_path / "backup" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ValueError, match=rf"corrupt training backup '{weights}' \(.*\); delete "
                                         rf"'{tmp_path / 'backup'}' to restart training from epoch 0"):
        training.fit(_model(), _batches(), epochs=4, workdir=str(tmp_path), progress=False)


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    """Item 8 (minor): a killed atomic write left ``<stem>.tmp-<pid><ext>``; the next write to that path
    removes it, and keeps a running process's temp file and unrelated files."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f"results.tmp-{dead}.json"
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # not pid 1: in a
    live = tmp_path / f"results.tmp-{running.pid}.json"   # container pytest may be pid 1, the writer itself
    other = tmp_path / f"other.tmp-{dead}.json"
    for p in (stale, live, other):
        p.write_text("{partial")
    try:
        util.write_json_atomic({"a": 1}, tmp_path / "results.json")
    finally:
        running.kill()
        running.wait()
    assert not stale.exists() and live.exists() and other.exists()
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}
    assert util.remove_stale_temps(tmp_path / "other.json") == [str(other)]


# ------------------------------------------------------------------ 7. exact resume on the tf.data path
def test_h5_dataset_training_resumes_bit_identically(tmp_path):
    """Item 7: ``h5_dataset`` continues its (seed, epoch) shuffle after a resume (``set_epoch``)."""
    x, y = _xy(40)
    path = tmp_path / "d.h5"
    data.write_dataset(path, x, y)
    stream = lambda: data.h5_dataset(path, batch_size=8, shuffle=True, seed=2, drop_remainder=True)  # noqa: E731
    ds = stream()
    first = [np.asarray(b[1]).ravel() for b in ds.take(1)][0]
    ds.set_epoch(0)
    np.testing.assert_array_equal([np.asarray(b[1]).ravel() for b in ds.take(1)][0], first)
    ds.set_epoch(2)
    assert not np.array_equal([np.asarray(b[1]).ravel() for b in ds.take(1)][0], first)
    straight = _model()
    training.fit(straight, stream(), epochs=4, workdir=str(tmp_path / "a"), progress=False)
    with pytest.raises(Interrupt):
        training.fit(_model(), stream(), epochs=4, workdir=str(tmp_path / "b"), progress=False,
                     callbacks=[stop_after(1)])
    again = _model()
    assert training.fit(again, stream(), epochs=4, workdir=str(tmp_path / "b"), progress=False).epoch == [2, 3]
    for a, b in zip(_weights(straight), _weights(again)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ 8. messages
@pytest.mark.parametrize("layer", [lambda: keras.layers.Conv2D(1, 1), lambda: keras.layers.Dense(1)])
def test_subnet_with_one_value_per_pixel(layer):
    sub = keras.Sequential([keras.Input((4, 4, 1)), layer()])
    with pytest.raises(ValueError, match=r"subnet must output one number per tile, shape \(N, 1\); got output "
                                         r"shape \(16, 4, 4, 1\) for tiles of shape \(16, 4, 4, 1\): it returns one "
                                         r"value per pixel; end it with Flatten\(\) and Dense\(1\)"):
        EDNN(sub, focus=2, context=1)(np.ones((1, 8, 8, 1), "float32"))


def test_channel_mismatch_on_a_loaded_model(tmp_path):
    model = _model()
    model(np.ones((1, 4, 4, 1), "float32"))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"subnet expects 1 channels, input has 2 \(input shape \(1, 8, 8, 2\)\)"):
        loaded.predict(np.ones((1, 8, 8, 2), "float32"), verbose=0)


@pytest.mark.parametrize("x, dtype", [(np.ones((1, 8, 8, 1), bool), "bool"), (np.full((1, 8, 8, 1), "a"), "str32"),
                                      (np.ones((1, 8, 8, 1), complex), "complex128"),
                                      (np.ones((1, 8, 8, 1), object), "object")])
def test_non_real_input_to_predict(x, dtype):
    model = _model()
    message = rf"EDNN input must be real numbers \(a float or integer dtype\), got dtype {dtype}"
    with pytest.raises(ValueError, match=message):
        model.predict(x, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.predict_total(x)
    if dtype in ("bool", "complex128"):
        with pytest.raises(ValueError, match=message):
            model(x)


def test_empty_batch_in_predict():
    model = _model()
    out = model.predict(np.zeros((0, 8, 8, 1), "float32"), verbose=0)
    assert out.shape == (0, 1) and out.dtype == np.float64
    assert model.predict_total(np.zeros((0, 8, 8, 1))).shape == (0,)
    with pytest.raises(ValueError, match=r"spatial size 5 \(axis 1 of input shape \(0, 5, 8, 1\)\)"):
        model.predict(np.zeros((0, 5, 8, 1), "float32"), verbose=0)


def test_truncated_keras_file(tmp_path):
    model = _model()
    model(np.ones((1, 4, 4, 1), "float32"))
    path = tmp_path / "m.keras"
    model.save(path)
    path.write_bytes(path.read_bytes()[:3000])
    message = rf"model file '{path}' \(3000 bytes\) is not a complete .keras archive \(truncated or corrupt zip\)"
    with pytest.raises(ValueError, match=message):
        load_ednn(path)
    with pytest.raises(ValueError, match=message):
        training.train_or_reuse(str(path), _model, None, epochs=1, workdir=str(tmp_path / "w"), lr=1e-3)
    with pytest.raises(ValueError, match=f"model file not found: '{tmp_path / 'none.keras'}'"):
        load_ednn(tmp_path / "none.keras")


def test_h5_dataset_float_indices_and_batch_size(tmp_path):
    x, y = _xy(10)
    path = tmp_path / "d.h5"
    data.write_dataset(path, x, y)
    with pytest.raises(ValueError, match=r"indices must be integers, got dtype float64 \(e.g. 1.5\)"):
        data.h5_dataset(path, indices=[1.5, 2.0])
    with pytest.raises(ValueError, match=r"indices must be integers, got dtype float64 \(e.g. 1.0\)"):
        data.read_arrays(path, indices=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"indices must be integers, got dtype bool"):
        data.read_arrays(path, indices=np.ones(10, bool))
    with pytest.raises(ValueError, match=rf"indices out of range for dataset '{path}' with 10 samples: got -1..3"):
        data.read_arrays(path, indices=[3, -1])
    for bad in (2.5, 4.0):
        with pytest.raises(ValueError, match=rf"batch_size must be an integer, got batch_size={bad}"):
            data.h5_dataset(path, batch_size=bad)
    assert len(data.read_arrays(path, indices=[])["X"]) == 0


def test_write_dataset_refuses_nonfinite_labels_and_inputs(tmp_path):
    x, y = _xy(5)
    y[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"Y \(labels\) has 1 non-finite value\(s\) \(NaN or inf\), the first in "
                                         r"sample 3"):
        data.write_dataset(tmp_path / "d.h5", x, y)
    x[1, 0, 0, 0] = x[2, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"X has 2 non-finite value\(s\) \(NaN or inf\), the first in sample 1"):
        data.write_dataset(tmp_path / "d.h5", x, np.zeros(5))
    assert not os.listdir(tmp_path)


def test_render_cutoff_below_the_pixel_size():
    from ednn_tf.atoms import render

    pos, cell = np.array([[0.05, 0.05, 0.0]]), (1.0, 1.0, 10.0)
    with pytest.raises(ValueError, match=r"cutoff \* gamma = 0.2 \* 0.2 A = 0.04 A is below half the pixel spacing "
                                         r"0.1 A along axis 0: atoms between pixels would render as nothing; use "
                                         r"cutoff >= 0.25"):
        render.render(pos, [6], cell, shape=(10, 10), gamma=0.2, cutoff=0.2)
    assert render.render(pos, [6], cell, shape=(10, 10), gamma=0.2, cutoff=0.25).max() > 0
