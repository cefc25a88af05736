"""HDF5 schema, atomic writes, streaming reader and its errors."""
import os

import h5py
import numpy as np
import pytest

from ednn_tf import data


def _write(tmp_path, n=50, name="d.h5"):
    rng = np.random.default_rng(0)
    X = rng.choice(np.array([-1, 1], np.int8), size=(n, 4, 4, 1))
    Y = rng.normal(size=n)
    p = data.write_dataset(tmp_path / name, X, Y, attrs={"L": 4, "unit": "J", "temps": [1.0, 2.0], "meta": {"a": 1}},
                           temperatures=np.linspace(1, 2, n))
    return p, X, Y


def test_round_trip_and_attrs(tmp_path):
    p, X, Y = _write(tmp_path)
    arr = data.read_arrays(p, ["X", "Y", "temperatures"])
    np.testing.assert_array_equal(arr["X"], X)
    assert arr["X"].dtype == np.int8 and arr["Y"].shape == (50, 1)
    np.testing.assert_array_equal(arr["Y"][:, 0], Y)
    attrs = data.read_attrs(p)
    assert attrs["L"] == 4 and attrs["unit"] == "J" and attrs["meta"] == {"a": 1}
    np.testing.assert_array_equal(attrs["temps"], [1.0, 2.0])
    assert data.dataset_length(p) == 50
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]   # no temporary left behind


@pytest.mark.parametrize("shuffle", [False, True])
def test_stream_yields_every_sample_once(tmp_path, shuffle):
    p, X, Y = _write(tmp_path)
    idx = np.arange(3, 47)
    ds = data.h5_dataset(p, batch_size=8, indices=idx, shuffle=shuffle, seed=1)
    seen_x, seen_y = [], []
    for xb, yb in ds:
        assert xb.dtype.name == "float32" and xb.shape[1:] == (4, 4, 1) and len(xb) <= 8
        seen_x.append(xb.numpy())
        seen_y.append(yb.numpy()[:, 0])
    xs, ys = np.concatenate(seen_x), np.concatenate(seen_y)
    order = np.argsort(ys)
    ref = np.argsort(Y[idx].astype(np.float32))
    np.testing.assert_array_equal(xs[order], X[idx][ref].astype(np.float32))   # pairs kept together
    if shuffle:
        assert not np.array_equal(ys, Y[idx].astype(np.float32))
        again = np.concatenate([yb.numpy()[:, 0] for _, yb in ds])   # a new permutation per epoch
        assert not np.array_equal(again, ys)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        data.h5_dataset(tmp_path / "nope.h5")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.h5"
    p.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(ValueError, match="corrupt or not HDF5"):
        data.h5_dataset(p)


def test_missing_arrays_and_mismatch(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["X"] = np.zeros((5, 4, 4, 1))
    with pytest.raises(KeyError, match="'Y'"):
        data.h5_dataset(p)
    with h5py.File(p, "a") as f:
        f["Y"] = np.zeros((4, 1))
    with pytest.raises(ValueError, match="X has 5 samples but Y has 4"):
        data.h5_dataset(p)


def test_wrong_rank(tmp_path):
    p = tmp_path / "r.h5"
    with h5py.File(p, "w") as f:
        f["X"] = np.zeros((5, 4, 4))
        f["Y"] = np.zeros((5, 1))
    with pytest.raises(ValueError, match=r"got shape \(5, 4, 4\)"):
        data.h5_dataset(p)


def test_writer_validates(tmp_path):
    with pytest.raises(ValueError, match="len\\(X\\)=3, len\\(Y\\)=2"):
        data.write_dataset(tmp_path / "a.h5", np.zeros((3, 2, 2, 1)), np.zeros(2))
    with pytest.raises(ValueError, match=r"got \(3, 2\)"):
        data.write_dataset(tmp_path / "a.h5", np.zeros((3, 2, 2, 1)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        data.h5_dataset(_write(tmp_path)[0], batch_size=0)


def test_split_by_group_never_leaks():
    groups = np.repeat(np.arange(20), 7)          # 20 trajectories x 7 snapshots
    train, test = data.split_indices(len(groups), (0.75, 0.25), seed=3, groups=groups)
    assert set(groups[train]).isdisjoint(groups[test])
    assert len(train) + len(test) == len(groups) and len(set(groups[test])) == 5
    a, b = data.split_indices(100, (0.9, 0.1), seed=0)
    assert len(a) == 90 and len(b) == 10 and not set(a) & set(b)
    with pytest.raises(ValueError, match="sum to 1"):
        data.split_indices(10, (0.5, 0.2))


def test_energy_errors_in_the_three_reported_units():
    from ednn_tf.metrics import energy_errors
    true = np.array([-100.0, -200.0, -300.0])
    pred = true + np.array([0.5, -1.0, 2.0])               # eV
    areas, atoms = np.array([10.0, 20.0, 40.0]), np.array([5.0, 10.0, 20.0])
    r = energy_errors(true, pred, atoms, areas)
    assert r["eV"]["mean_abs_error"] == pytest.approx(3.5 / 3)
    assert r["meV_per_A2"]["mean_abs_error"] == pytest.approx(1e3 * (0.05 + 0.05 + 0.05) / 3)
    assert r["meV_per_atom"]["max_abs_error"] == pytest.approx(100.0)
    assert r["meV_per_A2"]["mean_error"] == pytest.approx(1e3 * (0.05 - 0.05 + 0.05) / 3)
    with pytest.raises(ValueError, match="must be > 0"):
        energy_errors(true, pred, atoms, np.array([10.0, 0.0, 1.0]))
