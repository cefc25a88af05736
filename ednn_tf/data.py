"""HDF5 datasets: the on-disk schema, atomic writers and streaming ``tf.data`` readers.

Schema (one file per dataset)::

    X      (N, H, W, C) or (N, D, H, W, C)   inputs (int8 spins, float32 images, ...)
    Y      (N, 1)                            extensive target (float64), unit in attrs["unit"]
    <any>  (N, ...)                          optional per-sample extras (temperatures, cells, ...)
    attrs                                    provenance: generator, seed, units, oracle, ...

Writes are atomic (:func:`ednn_tf.util.atomic_path`: an interrupted run never leaves a truncated
dataset) and numeric arrays carry HDF5's Fletcher-32 checksum per chunk (a corrupted payload raises
ValueError naming the file when read); ``h5_dataset`` streams batches and never loads the whole file.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Mapping

import h5py
import numpy as np

from .util import ArgumentError, atomic_path, attr_value, check_finite_array, check_int

__all__ = ["write_dataset", "read_attrs", "read_arrays", "dataset_length", "h5_dataset", "split_indices",
           "batch_key", "periodic_augment", "augment_symmetries"]


def write_dataset(path, X, Y, attrs: Mapping | None = None, **extra_arrays) -> str:
    """Write ``X`` ``(N, ...)`` (stored with its dtype: int8 for spins), ``Y`` ``(N,)`` or ``(N, 1)``
    (stored float64 ``(N, 1)``) and ``extra_arrays`` (stored as given; object/str arrays as JSON
    text) to the ``.h5`` file ``path`` atomically, with ``attrs`` as HDF5 attributes (non-scalar
    values as JSON text). Parent folders are created; returns the path. ValueError for mismatched
    shapes and for NaN or inf in ``Y`` or a float ``X`` (naming the first sample that holds one)."""
    path = os.fspath(path)
    X = np.asarray(X)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim < 2:
        raise ValueError(f"X must have a sample axis and at least one grid axis, got shape {X.shape}")
    if Y.ndim != 2 or Y.shape[1] != 1:
        raise ValueError(f"Y must have shape (N,) or (N, 1), got {Y.shape}")
    if len(X) != len(Y):
        raise ValueError(f"X and Y lengths differ: len(X)={len(X)}, len(Y)={len(Y)}")
    check_finite_array("X", X)
    check_finite_array("Y (labels)", Y)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        chunk_rows = max(1, min(len(X), (1 << 20) // max(1, X[0].nbytes)))
        check = {"fletcher32": True} if len(X) else {}   # per-chunk checksums: corruption raises on read
        f.create_dataset("X", data=X, chunks=(chunk_rows,) + X.shape[1:] if len(X) else None, **check)
        f.create_dataset("Y", data=Y, **check)
        for name, arr in extra_arrays.items():
            if arr is None:
                continue
            arr = np.asarray(arr)
            if arr.dtype == object or arr.dtype.kind == "U":
                arr = np.asarray([json.dumps(a, default=str) if not isinstance(a, str) else a for a in arr],
                                 dtype=h5py.string_dtype())
            numeric = arr.ndim and arr.size and arr.dtype.kind in "biuf"
            f.create_dataset(name, data=arr, **(check if numeric else {}))
        for k, v in (attrs or {}).items():
            f.attrs[k] = attr_value(v)
    return path


def _open(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset file not found: {path!r}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"cannot read HDF5 dataset {path!r} (corrupt or not HDF5): {exc}") from exc


def _need(f, path, key):
    if key not in f:
        raise KeyError(f"dataset {path!r} has no {key!r} array (found: {sorted(f.keys())})")


def _check(f, path):
    for key in ("X", "Y"):
        _need(f, path, key)
    nx, ny = f["X"].shape[0], f["Y"].shape[0]
    if nx != ny:
        raise ValueError(f"dataset {path!r}: X has {nx} samples but Y has {ny}")
    if f["X"].ndim not in (4, 5):
        raise ValueError(f"dataset {path!r}: X must be (N, H, W, C) or (N, D, H, W, C), got shape {f['X'].shape}")
    return nx


def read_attrs(path) -> dict:
    """Return the file's attributes as a plain dict (JSON text decoded where possible)."""
    with _open(path) as f:
        out = {}
        for k, v in f.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except ValueError:
                    pass
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        return out


def dataset_length(path) -> int:
    """Number of samples, after validating the schema."""
    with _open(path) as f:
        return _check(f, path)


def read_arrays(path, names: Iterable[str] = ("X", "Y"), indices=None) -> dict:
    """Read whole arrays (or the rows ``indices``, sorted) into memory. For small files/evaluation."""
    path = os.fspath(path)
    with _open(path) as f:
        _check(f, path)
        out = {}
        for n in names:
            _need(f, path, n)
            out[n] = _read(f[n], () if indices is None else _check_indices(indices, len(f[n]), path), path)
        return out


def _check_indices(indices, n, path):
    """``indices`` as a sorted int64 array of sample rows in ``0..n-1``; ArgumentError for float or bool
    indices (never truncated) and for rows out of range, naming the file."""
    idx = np.asarray(indices)
    if idx.size and idx.dtype.kind not in "iu":
        raise ArgumentError(f"indices must be integers, got dtype {idx.dtype} (e.g. {idx.ravel()[0].item()!r})")
    idx = np.sort(idx.astype(np.int64).ravel())
    if idx.size and (idx[0] < 0 or idx[-1] >= n):
        raise ArgumentError(f"indices out of range for dataset {path!r} with {n} samples: got {idx[0]}..{idx[-1]}")
    return idx


def _read(dataset, selection, path):
    """``dataset[selection]``; ValueError naming the file, the array and the samples of the damaged
    chunks when HDF5 reports corrupt data (a failed Fletcher-32 checksum of the files ``write_dataset``
    writes)."""
    try:
        return dataset[selection]
    except OSError as exc:
        raise ValueError(f"dataset {path!r}: array {dataset.name!r} is corrupt{_bad_samples(dataset, selection)} "
                         f"({exc})") from exc


def _bad_samples(dataset, selection):
    """`` in samples a..b, ...``: the rows of ``dataset``'s chunks within ``selection`` (``()``, a slice or
    sorted rows) that fail to read, chunk by chunk (after a failed read only); ``""`` if none is found."""
    rows = dataset.chunks[0] if dataset.chunks else len(dataset)
    if isinstance(selection, slice):
        lo, hi = selection.start or 0, selection.stop
    else:
        sel = np.asarray(selection).ravel()
        lo, hi = (int(sel[0]), int(sel[-1]) + 1) if sel.size else (0, len(dataset))
    bad = []
    for start in range(lo - lo % rows, hi, rows):
        try:
            dataset[start:start + rows]
        except OSError:
            bad.append(f"{start}..{min(start + rows, len(dataset)) - 1}")
    return f" in samples {', '.join(bad)}" if bad else ""


def split_indices(n: int, fractions=(0.8, 0.2), seed: int = 0, groups=None):
    """Random split of ``range(n)`` into a list of sorted index arrays with the given fractions. With
    ``groups`` (an (n,) array of group ids, e.g. the MD trajectory of each snapshot) whole groups go to
    one side, so correlated samples never leak across the split."""
    if n < 1:
        raise ValueError(f"cannot split n={n} samples")
    fr = np.asarray(fractions, dtype=float)
    if np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n)
        cuts = np.round(np.cumsum(fr)[:-1] * n).astype(int)
        return [np.sort(p) for p in np.split(perm, cuts)]
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
    uniq = rng.permutation(np.unique(groups))
    cuts = np.round(np.cumsum(fr)[:-1] * len(uniq)).astype(int)
    return [np.sort(np.flatnonzero(np.isin(groups, part))) for part in np.split(uniq, cuts)]


def h5_dataset(path, batch_size: int = 256, indices=None, shuffle: bool = False, seed: int = 0,
               x_dtype="float32", repeat: bool = False, drop_remainder: bool = False, augment=None):
    """Stream ``(X, Y)`` batches from an HDF5 file as a ``tf.data.Dataset``, one batch in memory at a time.

    Without ``shuffle`` batches are contiguous runs of the sorted ``indices`` (default all rows), one
    slab read each; with ``shuffle`` the indices are permuted afresh every epoch (seed ``(seed,
    epoch)``) and each batch reads its rows in sorted order. The returned dataset has ``set_epoch(e)``:
    the next pass draws epoch ``e``'s order (``training.fit`` calls it on resume, so an interrupted
    run continues the sequence an uninterrupted one draws; exact with ``repeat=False``, one pass per
    Keras epoch). ``augment``: None, or a function ``augment(x, y, key) -> (x, y)`` of TensorFlow
    ops mapped over the batches (``periodic_augment``, ``augment_symmetries``), ``key`` =
    ``batch_key(seed, epoch, b)`` for batch ``b`` of the pass's epoch: its draws depend on nothing
    else, so a resumed run augments as an uninterrupted one does. Raises FileNotFoundError (missing file),
    KeyError (no ``X``/``Y``), ValueError (mismatched lengths, wrong rank, corrupt file, bad batch size).
    """
    import tensorflow as tf

    path = os.fspath(path)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    with _open(path) as f:
        n = _check(f, path)
        x_shape = f["X"].shape[1:]
    idx = np.arange(n) if indices is None else _check_indices(indices, n, path)
    n_batches = len(idx) // batch_size if drop_remainder else -(-len(idx) // batch_size)
    epoch = [0]
    if augment is not None and not callable(augment):
        raise ArgumentError(f"augment must be None or a function (x, y, key) -> (x, y), got augment={augment!r}")

    def gen():
        e = epoch[0]
        rng = np.random.default_rng([seed, e])
        epoch[0] += 1
        order = rng.permutation(idx) if shuffle else idx
        with h5py.File(path, "r") as fh:
            X, Y = fh["X"], fh["Y"]
            for b in range(n_batches):
                rows = order[b * batch_size:(b + 1) * batch_size]
                srt = np.argsort(rows, kind="stable")
                rs = rows[srt]
                lo, hi = int(rs[0]), int(rs[-1]) + 1
                sel = slice(lo, hi) if hi - lo == len(rs) else rs   # contiguous: one slab read
                xb, yb = _read(X, sel, path), _read(Y, sel, path)
                if shuffle:  # back to the permuted order
                    inv = np.empty_like(srt)
                    inv[srt] = np.arange(len(srt))
                    xb, yb = xb[inv], yb[inv]
                out = xb.astype(x_dtype, copy=False), yb.astype("float32", copy=False)
                yield out if augment is None else out + (np.int64(e), np.int64(b))

    bdim = batch_size if drop_remainder else None
    signature = (tf.TensorSpec((bdim,) + tuple(x_shape), tf.as_dtype(x_dtype)), tf.TensorSpec((bdim, 1), tf.float32))
    if augment is not None:   # the (epoch, batch) of each batch travel with it to the augmentation
        signature += (tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.int64))
    ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
    ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
    if augment is not None:
        ds = ds.map(lambda x, y, e, b: augment(x, y, batch_key(seed, e, b)))
    if repeat:
        ds = ds.repeat()
    ds = ds.prefetch(2)

    def set_epoch(e):
        epoch[0] = check_int("epoch", e, minimum=0)

    ds.set_epoch = set_epoch
    return ds


def periodic_augment_numpy(x, rng):
    """``periodic_augment`` in numpy (any backend): a new ``(B, H, W, C)`` array, each sample with its own
    random whole-pixel periodic shift and mirror along both image axes drawn from the Generator ``rng``."""
    x = np.asarray(x)
    b = len(x)
    rows = np.arange(b)[:, None]
    out = x
    for axis in (1, 2):
        n = x.shape[axis]
        shift = rng.integers(0, n, size=(b, 1))
        sign = 2 * rng.integers(0, 2, size=(b, 1)) - 1
        idx = (sign * np.arange(n)[None, :] + shift) % n
        out = out[rows, idx] if axis == 1 else out[rows[:, :, None], np.arange(out.shape[1])[None, :, None],
                                                   idx[:, None, :]]
    return out


class ArrayBatches:
    """Shuffled ``(x, y)`` mini-batches of in-memory arrays as a ``keras.utils.PyDataset``
    (works under every Keras backend, unlike ``h5_dataset``'s ``tf.data``).

    The order is re-drawn every epoch from ``(seed, epoch)``; with ``augment`` batch ``i`` gets
    ``periodic_augment_numpy`` with its own generator ``(seed, epoch, i)``, so ``workers > 1``
    threads (Keras' prefetching) give the same batches as one, and ``training.fit`` resumes an
    interrupted run at the right epoch of this sequence (``set_epoch``). Build with
    ``ArrayBatches.make(x, y, batch_size, ...)``.
    """

    @staticmethod
    def make(x, y, batch_size, shuffle=True, seed=0, augment=False, x_dtype="float32", workers=1):
        import keras

        x = np.asarray(x, dtype=x_dtype)
        y = np.asarray(y, dtype="float32")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        y = y.reshape(len(x), -1)
        batch_size = check_int("batch_size", batch_size, minimum=1)

        class _Batches(keras.utils.PyDataset):
            def __init__(self):
                super().__init__(workers=int(workers))
                self.batch_size, self.epoch = batch_size, 0
                self._draw()

            def _draw(self):
                rng = np.random.default_rng([seed, self.epoch])
                self.order = rng.permutation(len(x)) if shuffle else np.arange(len(x))

            def __len__(self):
                return -(-len(x) // self.batch_size)

            def __getitem__(self, i):
                rows = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
                xb = x[rows]
                if augment:
                    xb = periodic_augment_numpy(xb, np.random.default_rng([seed, self.epoch, i]))
                return xb, y[rows]

            def on_epoch_end(self):
                self.epoch += 1
                self._draw()

            def set_epoch(self, epoch):
                """Continue at ``epoch`` (``training.fit`` calls this on resume), so a resumed run
                draws the same orders and augmentations as an uninterrupted one."""
                self.epoch = int(epoch)
                self._draw()

        return _Batches()


def batch_key(seed, epoch, batch):
    """The stateless random key of batch ``batch`` in epoch ``epoch`` of a stream seeded ``seed``: a
    ``(2,)`` int64 tensor for ``tf.random.stateless_*`` (``alg="philox"``), ``seed`` folded with
    ``epoch`` then ``batch`` (``tf.random.experimental.stateless_fold_in``). The same three integers
    always give the same key, whatever ran before (no global or op random state); ``h5_dataset``
    passes it to its ``augment``. ``epoch`` and ``batch`` may be scalar tensors."""
    import tensorflow as tf

    fold = tf.random.experimental.stateless_fold_in
    key = tf.stack([tf.constant(int(seed), tf.int64), tf.constant(0x5EED, tf.int64)])
    key = fold(key, tf.cast(epoch, tf.int64), alg="philox")
    return fold(key, tf.cast(batch, tf.int64), alg="philox")


def _keys(key, n):
    """``n`` independent stateless keys from ``key`` (a ``batch_key``)."""
    import tensorflow as tf

    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(key, tf.int64), num=n, alg="philox"))


def periodic_augment(x, y, key):
    """Random whole-pixel periodic translation and mirror along each image axis of a ``(B, H, W, C)``
    tensor, per sample (one gather per axis). Both are exact symmetries of a labelled periodic cell
    (the image of the moved structure, same energy), so ``y`` is passed through. The draws are
    stateless, from ``key`` alone (a ``(2,)`` integer tensor: ``batch_key(seed, epoch, batch)``; for
    ``h5_dataset(augment=periodic_augment)``)."""
    import tensorflow as tf

    keys = _keys(key, 4)
    out = x
    b = tf.shape(x)[0]
    for k, axis in enumerate((1, 2)):
        n = tf.shape(x)[axis]
        shift = tf.random.stateless_uniform((b, 1), keys[2 * k], 0, n, dtype=tf.int32, alg="philox")
        sign = 2 * tf.random.stateless_uniform((b, 1), keys[2 * k + 1], 0, 2, dtype=tf.int32, alg="philox") - 1
        idx = tf.math.floormod(sign * tf.range(n)[None, :] + shift, n)
        out = tf.gather(out, idx, axis=axis, batch_dims=1)
    return out, y


def augment_symmetries(x, y, key):
    """Exact symmetries of a periodic cell's energy for one ``(X, Y)`` batch: one random periodic shift
    for the whole batch (a different cut into tiles) and per-sample mirror flips along x and y
    (reversing a grid axis images ``x -> (n - 1) L / n - x``); ``Y`` is unchanged. The draws are
    stateless, from ``key`` alone (``batch_key(seed, epoch, batch)``; for
    ``h5_dataset(augment=augment_symmetries)``), so a resumed run draws what an uninterrupted one does.
    """
    import tensorflow as tf

    k_shift, k_flip = _keys(key, 2)
    shape = tf.shape(x)
    shift = tf.random.stateless_uniform([2], k_shift, 0, 2 ** 30, dtype=tf.int32, alg="philox") % shape[1:3]
    x = tf.roll(x, shift=shift, axis=[1, 2])
    flips = tf.random.stateless_uniform([shape[0], 2], k_flip, 0, 2, dtype=tf.int32, alg="philox") > 0
    x = tf.where(flips[:, 0, None, None, None], tf.reverse(x, axis=[1]), x)
    x = tf.where(flips[:, 1, None, None, None], tf.reverse(x, axis=[2]), x)
    return x, y
