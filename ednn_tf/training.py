"""Training helpers: ``fit`` is ``model.fit`` plus what long physics runs need (a tqdm bar over epochs,
``BackupAndRestore`` so a rerun with the same ``workdir`` resumes at the last finished epoch, a CSV
log of every epoch); ``train_or_reuse`` adds the atomically saved final model.
"""
from __future__ import annotations

import os

import keras

from .util import ArgumentError, atomic_path, check_model_file

__all__ = ["EpochProgress", "fit", "save_model_atomic", "cosine_schedule", "train_or_reuse", "read_log",
           "check_backup", "backup_dir", "recover_backup"]


class EpochProgress(keras.callbacks.Callback):
    """One tqdm bar over epochs, showing the latest logs (loss, val_loss, ...)."""

    def __init__(self, epochs, desc="training", disable=False):
        super().__init__()
        self.epochs, self.desc, self.disable = epochs, desc, disable
        self.bar = None

    def on_train_begin(self, logs=None):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=self.epochs, desc=self.desc, unit="epoch", disable=self.disable, dynamic_ncols=True)

    def on_epoch_begin(self, epoch, logs=None):
        if self.bar is not None and self.bar.n < epoch:   # resumed run: jump to the restored epoch
            self.bar.update(epoch - self.bar.n)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in (logs or {}).items()}, refresh=False)
            self.bar.update(1)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()


class _FiniteLoss(keras.callbacks.Callback):
    """Stop training with ValueError when an epoch ends with a NaN or inf loss (a step size too large,
    or non-finite data where the batch checks are ignored); placed before the backup, so that epoch is
    not saved."""

    def on_epoch_end(self, epoch, logs=None):
        import math

        for key, value in (logs or {}).items():
            if key.endswith("loss") and not math.isfinite(float(value)):
                raise ValueError(f"training stopped: {key} = {float(value)} at the end of epoch {epoch} (the weights "
                                 f"are no longer finite: a step size too large, or NaN/inf in the data); that "
                                 f"epoch was not saved")


class _Backup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backups are replaced whole, and whose restore failures (a truncated or
    corrupt weights file, one from another model) raise ValueError naming the backup and what to do.

    Keras writes ``latest.weights.h5`` and then ``training_metadata.json`` in place, so a kill between
    the two (or during either) leaves weights and epoch that disagree, and a resume then repeats an
    epoch on the wrong weights. Here each backup is written into ``<backup>.tmp-<pid>`` and swapped in
    by two renames (``<backup>`` -> ``<backup>.old``, the new folder -> ``<backup>``); ``recover_backup``
    undoes a swap cut short, so a kill at any point leaves the previous or the new backup whole. The
    finished run's backup is renamed away before it is removed, for the same reason.
    """

    def on_train_begin(self, logs=None):
        recover_backup(self.backup_dir)
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"corrupt training backup {os.path.join(self.backup_dir, 'latest.weights.h5')!r} "
                             f"({type(exc).__name__}: {exc}); delete {self.backup_dir!r} to restart training from "
                             f"epoch 0") from exc

    def _save_model(self):
        import json
        import shutil

        tmp, old = f"{self.backup_dir}.tmp-{os.getpid()}", f"{self.backup_dir}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.model.save_weights(filepath=os.path.join(tmp, "latest.weights.h5"), overwrite=True)
        with open(os.path.join(tmp, "training_metadata.json"), "w") as fh:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, fh)
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(self.backup_dir):
            os.rename(self.backup_dir, old)
        os.rename(tmp, self.backup_dir)
        shutil.rmtree(old, ignore_errors=True)

    def on_train_end(self, logs=None):
        import shutil

        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            done = f"{self.backup_dir}.done-{os.getpid()}"
            os.rename(self.backup_dir, done)   # a kill while removing it leaves no partial backup
            shutil.rmtree(done, ignore_errors=True)


def recover_backup(backup):
    """Put the backup folder ``backup`` of ``fit`` in a whole state after a kill: a swap cut short
    (``<backup>`` missing, ``<backup>.old`` present) is undone, and what a killed process left
    (``<backup>.old`` beside a whole backup, ``<backup>.tmp-<pid>`` of a process no longer running,
    ``<backup>.done-<pid>``) is removed. Returns ``backup``."""
    import glob
    import shutil

    from .util import _pid_running

    old = f"{backup}.old"
    if os.path.isdir(old):
        if os.path.exists(os.path.join(backup, "training_metadata.json")):
            shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.rmtree(backup, ignore_errors=True)
            os.rename(old, backup)
    for path in glob.glob(glob.escape(backup) + ".tmp-*") + glob.glob(glob.escape(backup) + ".done-*"):
        pid = path.rsplit("-", 1)[1]
        if pid.isdigit() and (path.endswith(f".done-{pid}") or not _pid_running(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
    return backup


def save_model_atomic(model, path):
    """``model.save`` to a temporary file then rename, so a crash never leaves a half-written model."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return os.fspath(path)


def cosine_schedule(lr, total_steps, decay=True, alpha=0.01, warmup_steps=0):
    """Adam step size: constant ``lr``, or cosine-decayed to ``alpha * lr`` over ``total_steps``
    (``decay``), after a linear warm-up from ``lr / 100`` over ``warmup_steps``."""
    if not decay and not warmup_steps:
        return lr
    steps = max(1, (total_steps - warmup_steps) if decay else 10 ** 12)
    return keras.optimizers.schedules.CosineDecay(lr / 100 if warmup_steps else lr, decay_steps=steps, alpha=alpha,
                                                  warmup_target=lr if warmup_steps else None,
                                                  warmup_steps=warmup_steps)


def _trim_log(path, epochs_done):
    """Keep only the rows of the CSV training log ``path`` for epochs ``< epochs_done`` (those the
    backup resumes after; all rows are dropped when training starts afresh), atomically."""
    if not os.path.exists(path):
        return
    with open(path) as fh:
        lines = fh.read().splitlines(keepends=True)
    if not lines:
        return
    keep = [lines[0]]
    for line in lines[1:]:
        try:
            if int(float(line.split(",", 1)[0])) < epochs_done:
                keep.append(line)
        except ValueError:          # a torn last line of a killed write
            continue
    if len(keep) == len(lines):
        return
    if len(keep) == 1:              # no epoch kept: CSVLogger writes its header again
        keep = []
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.writelines(keep)


def read_log(workdir):
    """The per-epoch columns of ``workdir/log.csv`` written by ``fit`` (``{}`` if there is none)."""
    import numpy as np

    path = os.path.join(workdir, "log.csv")
    if not os.path.exists(path):
        return {}
    log = np.genfromtxt(path, delimiter=",", names=True)
    return {k: np.atleast_1d(log[k]).tolist() for k in log.dtype.names if k != "epoch"}


def train_or_reuse(path, build, data, *, epochs, workdir, lr, loss="mse", rank=0, **fit_kwargs):
    """Load the model saved at the ``.keras`` file ``path``, or build, compile (Adam with ``lr``, a rate or
    schedule), train resumably with ``fit`` and save it there: every experiment's train-or-reuse step.

    ``build() -> uncompiled model`` and ``data() -> (x, y, extra_fit_kwargs)`` (``y`` None for a
    dataset) are called only when training, so a reused model never opens its data. Returns ``(model,
    info)``, ``info = {"reused", "seconds", "history"}``: the wall time of this training session (None
    when reused) and the per-epoch logs (from ``workdir/log.csv`` when reused).
    """
    import importlib
    import time

    importlib.import_module(".model", __package__)  # registers EDNN and TileLayer, so load_model finds them

    if os.path.exists(path):
        print(f"reusing {path}")
        return keras.models.load_model(check_model_file(path)), {"reused": True, "seconds": None,
                                                                 "history": read_log(workdir)}
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    x, y, extra = data()
    t0 = time.time()
    hist = fit(model, x, y, epochs=epochs, workdir=workdir, rank=rank, **{**fit_kwargs, **extra})
    seconds = time.time() - t0
    if rank == 0:
        save_model_atomic(model, path)
    # a run whose backup already held every epoch trains none: its history is in log.csv
    return model, {"reused": False, "seconds": seconds, "history": dict(hist.history) or read_log(workdir)}


def backup_dir(workdir, rank=0):
    """The ``BackupAndRestore`` folder ``fit`` keeps in ``workdir`` for Horovod ``rank``."""
    return os.path.join(workdir, "backup" if rank == 0 else f"backup-rank{rank}")


def check_backup(backup, epochs):
    """The epoch the backup folder ``backup`` resumes a run of ``epochs`` epochs at (0 without one):
    ArgumentError when it already holds more than ``epochs`` (a rerun with fewer epochs than the
    interrupted run), ValueError for unreadable metadata; both name the folder and what to do. Called
    by ``fit``, and by scripts before any work."""
    done = _backed_up_epoch(recover_backup(backup))
    if done > epochs:
        raise ArgumentError(f"the training backup {backup!r} is at epoch {done}, past epochs={epochs}: rerun with "
                            f"epochs >= {done} to finish the run it belongs to, or delete {backup!r} to train "
                            f"{epochs} epochs from the start")
    return done


def _check_has_batches(x, batch_size, fit_kwargs):
    """ValueError when the training data ``x`` of ``fit`` gives no batch per epoch (so no step: Keras
    would end with ``KeyError: 'loss'``), naming what was received."""
    if fit_kwargs.get("steps_per_epoch"):
        return
    if hasattr(x, "element_spec"):
        if int(x.cardinality()) == 0:
            raise ValueError("the training dataset has no batches (cardinality 0; with drop_remainder=True a batch "
                             "larger than the training set gives none): use a smaller batch size")
    elif len(x) == 0:
        raise ValueError(f"the training data has no {'batches' if isinstance(x, keras.utils.PyDataset) else 'samples'} "
                         f"(batch_size={batch_size})")


def _backed_up_epoch(backup):
    """The epoch a ``keras.callbacks.BackupAndRestore`` backup in ``backup`` resumes at (0 if none)."""
    import json

    path = os.path.join(backup, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    try:
        with open(path) as fh:
            return int(json.load(fh)["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"corrupt training backup {path!r} ({exc}); delete {backup!r} to restart") from exc


def fit(model, x, y=None, *, epochs, workdir, batch_size=None, validation_data=None, callbacks=(),
        progress=True, desc="training", rank=0, **fit_kwargs):
    """``model.fit`` of a compiled model that survives interruption; returns the ``History``.

    ``x``, ``y``, ``batch_size``, ``validation_data`` as for ``model.fit`` (``x`` may be a ``tf.data``
    dataset or a ``PyDataset`` such as ``data.ArrayBatches``). A rerun continues after the last
    completed of ``epochs`` (weights and optimiser state from the backup); ``ArrayBatches`` and
    ``data.h5_dataset`` (with its ``augment``, keyed on ``(seed, epoch, batch)``) also continue their
    order and augmentation with ``set_epoch``: bit-identical to an uninterrupted run. A ``tf.data``
    pipeline with its own random ops (``Dataset.shuffle``, op-seeded ``tf.random``) restarts those
    streams instead. ``workdir`` holds the backup (removed once
    training completes) and ``log.csv``. Only Horovod ``rank`` 0 logs and shows the bar
    (``progress``); each rank keeps its own backup (``backup``, ``backup-rank<r>``).

    Before training: ValueError for data with no batch, ArgumentError for a backup past ``epochs``
    (``check_backup``); a backup already at ``epochs`` restores the final weights and trains none (the
    returned history is then empty; ``log.csv`` has it). A corrupt backup raises ValueError naming it; an
    epoch that ends with a NaN or inf loss raises ValueError and is not saved.
    """
    _check_has_batches(x, batch_size, fit_kwargs)
    backup = backup_dir(workdir, rank)
    done = check_backup(backup, epochs)
    os.makedirs(workdir, exist_ok=True)
    is_dataset = hasattr(x, "element_spec")
    is_pydataset = isinstance(x, keras.utils.PyDataset)
    if not model.built:   # BackupAndRestore needs built variables to restore into
        import numpy as np
        shape = (x.element_spec[0].shape if is_dataset else np.shape(x[0][0]) if is_pydataset
                 else np.shape(x))
        model(np.zeros((1,) + tuple(int(s) for s in shape[1:]), "float32"))
    if is_dataset or hasattr(x, "set_epoch"):
        # a Dataset, or a PyDataset such as ArrayBatches, shuffles itself; Keras' own shuffle of a
        # PyDataset's batch order draws from Python's global random state, which a resume cannot restore
        fit_kwargs.setdefault("shuffle", False)
    if hasattr(x, "set_epoch"):   # e.g. data.ArrayBatches: continue its (seed, epoch) sequence
        x.set_epoch(done)
    cbs = [_FiniteLoss()]
    if rank == 0:
        # the log line before the backup: a run killed between the two redoes that epoch, and
        # _trim_log drops the rows the backup does not hold, so log.csv has every epoch once
        log_path = os.path.join(workdir, "log.csv")
        _trim_log(log_path, done)
        cbs.append(keras.callbacks.CSVLogger(log_path, append=True))
    cbs.append(_Backup(backup, save_freq="epoch", delete_checkpoint=True))
    if rank == 0 and progress:
        cbs.append(EpochProgress(epochs, desc=desc))
    cbs.extend(callbacks)
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, validation_data=validation_data,
                     callbacks=cbs, verbose=0, **fit_kwargs)
