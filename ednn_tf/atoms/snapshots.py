"""Rendered MD snapshot data sets: one HDF5 file of images, energies and the structures behind them.

``write_snapshot_dataset`` renders every snapshot of MD trajectories (dicts as
``ednn_tf.labels.md.read_trajectory`` returns them; nothing here imports ``labels``) into
``ednn_tf.data``'s schema plus per-snapshot extras; ``load_snapshots`` rebuilds the ``ase.Atoms``;
``image_sums`` reads the per-image pixel sums (the atom-count baseline of ``ednn_tf.atoms.heads``); ``predict_totals``
a model's totals over rows of the file, in chunks.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..util import atomic_path, attr_value

__all__ = ["write_snapshot_dataset", "load_snapshots", "image_sums", "predict_totals"]

_COLUMNS = {"trajectory": "i4", "step": "i8", "temperature": "f8", "numbers": "i2", "positions": "f8",
            "n_atoms": "i4", "cell": "f8", "pbc": "?", "n_pores": "i2"}


def _create_columns(f, S, n_max, pixels):
    shapes = {"numbers": (S, n_max), "positions": (S, n_max, 3), "cell": (S, 3, 3), "pbc": (S, 3)}
    cols = {k: f.create_dataset(k, shapes.get(k, (S,)), dt) for k, dt in _COLUMNS.items()}
    cols["X"] = f.create_dataset("X", (S, pixels, pixels, 1), "f4", chunks=(1, pixels, pixels, 1))
    cols["Y"] = f.create_dataset("Y", (S, 1), "f8")
    return cols


def _frames(tr):
    """The snapshots of one trajectory dict as ``ase.Atoms`` (positions only)."""
    from ase import Atoms

    return [Atoms(numbers=tr["numbers"], positions=pos, cell=tr["cell"], pbc=tr["pbc"]) for pos in tr["positions"]]


def write_snapshot_dataset(path, trajectories, n_snapshots, geometries, pixels, gamma, attrs, progress=True):
    """Render every snapshot of ``trajectories`` on ``pixels x pixels`` with width ``gamma`` and write
    the HDF5 data set in chunks (one trajectory at a time, so the paper-size set never has to fit in
    memory), atomically (``util.atomic_path``); ``attrs`` become file attributes.

    ``trajectories``: an iterable (e.g. a generator over ``ednn_tf.labels.md.read_trajectory``) of
    trajectory dicts, trajectory ``k`` started from ``geometries[k]``, ``n_snapshots`` of them in all.
    Schema (``ednn_tf.data``'s, plus per-snapshot extras): X (S, px, px, 1) float32, Y (S, 1) eV,
    trajectory (S,) geometry index, step (S,) MD step, temperature (S,) kinetic K, numbers (S, n_max),
    positions (S, n_max, 3) A (zero-padded), n_atoms (S,), cell (S, 3, 3) A, pbc (S, 3), n_pores (S,).
    """
    import h5py
    from tqdm.auto import tqdm

    from . import render

    n_max = max(len(g) for g in geometries)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        d = _create_columns(f, int(n_snapshots), n_max, pixels)
        lo = 0
        for k, tr in enumerate(tqdm(trajectories, desc=f"rendering {pixels}x{pixels}", unit="traj",
                                    total=len(geometries), disable=not progress, file=sys.stderr)):
            n, hi = len(tr["numbers"]), lo + len(tr["energies"])
            d["X"][lo:hi] = render.render_many(_frames(tr), shape=(pixels, pixels), gamma=gamma, progress=False)
            d["Y"][lo:hi, 0] = tr["energies"]
            d["trajectory"][lo:hi] = tr["meta"]["index"]
            d["step"][lo:hi] = tr["steps"]
            d["temperature"][lo:hi] = tr["temperatures"]
            d["numbers"][lo:hi, :n] = tr["numbers"]
            d["positions"][lo:hi, :n] = tr["positions"]
            d["n_atoms"][lo:hi] = n
            d["cell"][lo:hi] = tr["cell"]
            d["pbc"][lo:hi] = tr["pbc"]
            d["n_pores"][lo:hi] = geometries[k].info.get("n_pores", -1)
            lo = hi
        if lo != n_snapshots:
            raise ValueError(f"n_snapshots is {n_snapshots} but the trajectories hold {lo} snapshots")
        for key, v in attrs.items():
            f.attrs[key] = attr_value(v)
    return os.fspath(path)


def load_snapshots(path, indices=None):
    """Rebuild the ``ase.Atoms`` of (rows ``indices`` of) a file written by ``write_snapshot_dataset``."""
    from ase import Atoms

    from .. import data

    arr = data.read_arrays(path, ["numbers", "positions", "n_atoms", "cell", "pbc"], indices=indices)
    return [Atoms(numbers=z[:n], positions=p[:n], cell=c, pbc=b)
            for z, p, n, c, b in zip(arr["numbers"], arr["positions"], arr["n_atoms"], arr["cell"], arr["pbc"])]


def _per_image(path, indices, chunk, fn):
    """``fn(X rows)`` (one float64 per image) over the images ``indices`` (sorted), read in chunks."""
    import h5py

    indices = np.sort(np.asarray(indices))
    out = np.empty(len(indices), np.float64)
    with h5py.File(path, "r") as f:
        for lo in range(0, len(indices), chunk):
            rows = indices[lo:lo + chunk]
            out[lo:lo + len(rows)] = fn(f["X"][rows])
    return out


def image_sums(path, indices, chunk=256):
    """Pixel sum of every image ``indices`` (sorted; float64), read in chunks."""
    return _per_image(path, indices, chunk, lambda x: x.astype(np.float64).sum(axis=(1, 2, 3)))


def predict_totals(model, path, indices, chunk=256, batch_size=32):
    """``model.predict_total`` (an EDNN's total per image) over rows ``indices`` (sorted) of the
    data file ``path``, reading the images in chunks of ``chunk``."""
    return _per_image(path, indices, chunk, lambda x: model.predict_total(x.astype(np.float32), batch_size=batch_size))
