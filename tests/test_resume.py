"""Issue 16, item 7: a training run killed at any point and rerun with the same workdir ends with the
weights of an uninterrupted run, bit for bit. On the augmented ``tf.data`` path the augmentation draws
of ``data.h5_dataset(augment=...)`` (``data.periodic_augment``, ``data.augment_symmetries``) are
stateless, keyed on (seed, epoch, batch); ``training.fit``'s backups are swapped in whole, so a kill
while one is written leaves the previous one (``training.recover_backup``)."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import Interrupt, stop_after
from ednn_tf import EDNN, data, networks, training

AUGMENTS = {"periodic_augment": data.periodic_augment, "augment_symmetries": data.augment_symmetries}


def _model():
    keras.utils.set_random_seed(3)
    model = EDNN(networks.ising_dense(4, channels=1, seed=3), focus=2, context=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    return model


def _file(tmp_path, n=40, size=6):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, size, size, 1)).astype("float32")
    y = np.sum(x[:, :2, :3] ** 2, axis=(1, 2, 3))      # not symmetric: augmentation changes the gradients
    path = tmp_path / "d.h5"
    data.write_dataset(path, x, y)
    return path


def _weights(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def _batches(ds):
    return [tuple(np.asarray(t) for t in b) for b in ds]


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_augmentation_draw_depends_only_on_seed_epoch_and_batch(name):
    augment = AUGMENTS[name]
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(16, 6, 6, 1)).astype("float32"))
    y = tf.constant(rng.normal(size=(16, 1)).astype("float32"))
    key = data.batch_key(5, 2, 3)
    first = augment(x, y, key)[0].numpy()
    tf.random.set_seed(123)                                  # global and op random state: no effect
    tf.random.uniform((7,))
    keras.utils.set_random_seed(9)
    np.testing.assert_array_equal(augment(x, y, data.batch_key(5, 2, 3))[0].numpy(), first)
    np.testing.assert_array_equal(tf.function(augment)(x, y, key)[0].numpy(), first)
    np.testing.assert_array_equal(augment(x, y, key)[1].numpy(), y.numpy())   # labels unchanged
    assert not np.array_equal(first, x.numpy())
    others = [data.batch_key(6, 2, 3), data.batch_key(5, 3, 3), data.batch_key(5, 2, 4), data.batch_key(5, 3, 2)]
    for k in others:                                         # each of seed, epoch, batch changes the draw
        assert not np.array_equal(augment(x, y, k)[0].numpy(), first), k.numpy()
    assert len({tuple(data.batch_key(s, e, b).numpy()) for s in range(3) for e in range(3) for b in range(3)}) == 27


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_h5_dataset_augments_batch_b_of_epoch_e_with_its_key(tmp_path, name):
    """Each batch the stream gives is ``augment(raw batch, y, batch_key(seed, epoch, b))``, whether the
    epoch is reached by iterating or set by ``set_epoch`` (as ``training.fit`` does on resume)."""
    augment, path = AUGMENTS[name], _file(tmp_path)
    kw = dict(batch_size=8, shuffle=True, seed=4, drop_remainder=True)
    raw, aug = data.h5_dataset(path, **kw), data.h5_dataset(path, augment=augment, **kw)
    passes = [_batches(aug) for _ in range(3)]               # epochs 0, 1, 2
    raw.set_epoch(2)
    for b, (xb, yb) in enumerate(_batches(raw)):
        want = augment(tf.constant(xb), tf.constant(yb), data.batch_key(4, 2, b))
        np.testing.assert_array_equal(passes[2][b][0], want[0].numpy())
        np.testing.assert_array_equal(passes[2][b][1], yb)
        assert not np.array_equal(passes[2][b][0], xb)
    again = data.h5_dataset(path, augment=augment, **kw)
    again.set_epoch(1)
    for a, b in zip(_batches(again), passes[1]):
        np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(passes[0][0][0], passes[1][0][0])
    with pytest.raises(ValueError, match=r"augment must be None or a function \(x, y, key\) -> \(x, y\), "
                                         r"got augment='periodic'"):
        data.h5_dataset(path, augment="periodic")


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_interrupted_augmented_training_resumes_bit_identically(tmp_path, name):
    """Killed after epoch 1 of 4 (a callback raises after that epoch's backup), then rerun with the same
    workdir: the weights equal an uninterrupted run's. Without ``set_epoch`` (the old behaviour: the
    stream restarts at epoch 0) they do not, so the equality is not trivial."""
    augment, path = AUGMENTS[name], _file(tmp_path)

    def stream():
        return data.h5_dataset(path, batch_size=8, shuffle=True, seed=2, drop_remainder=True, augment=augment)

    straight = _model()
    training.fit(straight, stream(), epochs=4, workdir=str(tmp_path / "a"), progress=False)
    plain = _model()
    training.fit(plain, data.h5_dataset(path, batch_size=8, shuffle=True, seed=2, drop_remainder=True), epochs=4,
                 workdir=str(tmp_path / "p"), progress=False)
    assert any(not np.array_equal(a, b) for a, b in zip(_weights(straight), _weights(plain)))   # augmentation acts
    for workdir, resume_epoch in (("b", True), ("c", False)):
        with pytest.raises(Interrupt):
            training.fit(_model(), stream(), epochs=4, workdir=str(tmp_path / workdir), progress=False,
                         callbacks=[stop_after(1)])
        ds = stream()
        if not resume_epoch:
            ds.set_epoch = lambda e: None
        again = _model()
        assert training.fit(again, ds, epochs=4, workdir=str(tmp_path / workdir), progress=False).epoch == [2, 3]
        same = all(np.array_equal(a, b) for a, b in zip(_weights(straight), _weights(again)))
        assert same == resume_epoch, workdir


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("cut", ["between the renames", "after the renames", "while writing the new one"])
def test_a_kill_while_a_backup_is_written_leaves_a_whole_one(tmp_path, cut):
    """The three states a kill inside ``_Backup._save_model`` can leave (after epoch 1's backup, while
    writing epoch 2's): ``recover_backup`` (run by ``check_backup`` and ``fit``) restores a whole backup,
    and the rerun ends with an uninterrupted run's weights."""
    path = _file(tmp_path)

    def stream():
        return data.h5_dataset(path, batch_size=8, shuffle=True, seed=2, drop_remainder=True,
                               augment=data.periodic_augment)

    straight = _model()
    training.fit(straight, stream(), epochs=4, workdir=str(tmp_path / "a"), progress=False)
    workdir = tmp_path / "b"
    with pytest.raises(Interrupt):
        training.fit(_model(), stream(), epochs=4, workdir=str(workdir), progress=False, callbacks=[stop_after(0)])
    backup = str(workdir / "backup")
    tmp = f"{backup}.tmp-{_dead_pid()}"
    if cut == "between the renames":        # the backup moved to .old, the new one not yet in place
        os.rename(backup, backup + ".old")
        os.makedirs(tmp)
        with open(os.path.join(tmp, "latest.weights.h5"), "wb") as fh:
            fh.write(b"\x89HDF\r\n")            # a truncated file of the next epoch
    elif cut == "after the renames":        # the new one in place, the old not yet removed
        os.makedirs(backup + ".old")
    else:                                   # killed while the new folder was written
        os.makedirs(tmp)
        with open(os.path.join(tmp, "training_metadata.json"), "w") as fh:
            fh.write('{"epo')
    assert training.check_backup(backup, 4) == 1
    assert sorted(os.listdir(workdir)) == ["backup", "log.csv"] and sorted(os.listdir(backup)) == [
        "latest.weights.h5", "training_metadata.json"]
    again = _model()
    assert training.fit(again, stream(), epochs=4, workdir=str(workdir), progress=False).epoch == [1, 2, 3]
    for a, b in zip(_weights(straight), _weights(again)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(workdir)) == ["log.csv"]      # removed when training completes


def test_log_has_every_epoch_once_after_a_kill_between_the_log_line_and_the_backup(tmp_path):
    """The epoch's log line is written before its backup; a run killed between the two redoes that
    epoch on the rerun, and ``fit`` drops the log rows the backup does not hold (and a torn last line),
    so ``log.csv`` ends with epochs 0..3 once each, the first two rows those of the killed run."""
    path = _file(tmp_path)
    stream = lambda: data.h5_dataset(path, batch_size=8, shuffle=True, seed=2, drop_remainder=True)  # noqa: E731
    workdir = tmp_path / "w"
    with pytest.raises(Interrupt):
        training.fit(_model(), stream(), epochs=4, workdir=str(workdir), progress=False, callbacks=[stop_after(1)])
    log = workdir / "log.csv"
    kept = log.read_text().splitlines()
    assert [r.split(",")[0] for r in kept[1:]] == ["0", "1"]
    with open(log, "a") as fh:        # epoch 2's line written, its backup not (killed), then a torn line
        fh.write("2,0.5\n3,0.")
    training.fit(_model(), stream(), epochs=4, workdir=str(workdir), progress=False)
    rows = log.read_text().splitlines()
    assert rows[:3] == kept
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert training.read_log(str(workdir))["loss"][2] != 0.5
