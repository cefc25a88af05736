"""``training.fit``: an interrupted run resumes where it stopped and ends where an uninterrupted run ends."""
import json
import os

import keras
import numpy as np
import pytest

from conftest import Interrupt, stop_after
from ednn_tf import EDNN, data, networks, training


def _model():
    keras.utils.set_random_seed(3)
    model = EDNN(networks.ising_dense(4, channels=1, seed=3), focus=2, context=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    return model


def _batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4, 4, 1)).astype("float32")
    y = np.sum(x ** 2, axis=(1, 2, 3))   # a local target: sum of squares
    return data.ArrayBatches.make(x, y, batch_size=5, seed=7, augment=True)


def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path):
    """Weights, optimiser state and the (seed, epoch) batch order and augmentation all resume: the
    result is bit-identical to one run. Before ``set_epoch`` the resumed epochs replayed the
    orders of epochs 0, 1, ... and the weights differed."""
    straight = _model()
    training.fit(straight, _batches(), epochs=4, workdir=str(tmp_path / "a"), progress=False)

    resumed = _model()
    with pytest.raises(Interrupt):
        training.fit(resumed, _batches(), epochs=4, workdir=str(tmp_path / "b"), progress=False,
                     callbacks=[stop_after(1)])
    with open(tmp_path / "b" / "backup" / "training_metadata.json") as fh:
        assert json.load(fh)["epoch"] == 2
    again = _model()   # a fresh process: new model, new data object
    hist = training.fit(again, _batches(), epochs=4, workdir=str(tmp_path / "b"), progress=False)
    assert hist.epoch == [2, 3]
    for a, b in zip(straight.weights, again.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    log = np.genfromtxt(tmp_path / "b" / "log.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(log["epoch"], [0, 1, 2, 3])
    ref = np.genfromtxt(tmp_path / "a" / "log.csv", delimiter=",", names=True)
    np.testing.assert_allclose(log["loss"], ref["loss"], rtol=1e-6)
    assert not os.path.exists(tmp_path / "b" / "backup")   # removed once training completed


def test_corrupt_backup_metadata_is_named(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt training backup .*training_metadata.json"):
        training.fit(_model(), _batches(), epochs=2, workdir=str(tmp_path), progress=False)
