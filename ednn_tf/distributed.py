"""Data-parallel training of Keras 3 models with Horovod (TensorFlow backend).

``horovod.tensorflow.keras`` (``hvd.DistributedOptimizer``, its callbacks, ...) targets tf.keras 2 and
does not work with Keras 3, so this module builds on the low-level ``horovod.tensorflow`` collectives.

Typical use (launch with ``horovodrun -np N --gloo python train.py``)::

    from ednn_tf import distributed as dist

    dist.init()                                    # first thing in the script
    ds = dist.shard(raw_ds)                        # each rank its own slice
    ds = ds.shuffle(1024).batch(dist.local_batch_size(256), drop_remainder=True)

    model = build_model()                          # any Keras 3 model
    model.compile(optimizer=keras.optimizers.Adam(dist.scale_learning_rate(1e-3)), loss="mse")
    dist.make_distributed(model)                   # before or after compile
    model.fit(ds, epochs=10,
              callbacks=[dist.BroadcastInitialState(),
                         *dist.root_only([keras.callbacks.ModelCheckpoint(...)])],
              verbose=dist.root_verbose(1))

Without Horovod, or without a Horovod launcher, every function degrades to a single process (rank 0
of size 1, no collectives), so the same script runs with plain ``python``. The training half
(``make_distributed``, ``DataParallelMixin``, ``BroadcastInitialState``, ``allreduce_gradients``, ...)
lives in :mod:`ednn_tf.distributed_train` and is reachable here, loaded on first use. Design, rules
and failure handling: docs/distributed.md.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Iterable

import keras
import numpy as np

from .util import lazy_exports

__all__ = ["init", "is_initialized", "is_distributed", "rank", "size", "local_rank", "is_root", "allreduce_sum",
           "allgather_object", "barrier", "shard", "local_batch_size", "scale_learning_rate", "root_only",
           "root_verbose", "broadcast_variables", "FAILURE_ENV_DEFAULTS"]

log = logging.getLogger(__name__)

#: Environment defaults set (where not already set) right before ``hvd.init()``: a frozen rank makes the
#: others fail after the Gloo timeout (Horovod: 30 s; 120 s tolerates slow start-up), and a collective
#: some alive rank never submits shuts Horovod down after the stall time (Horovod: warn forever; under
#: Gloo this needs the fix of scripts/install_horovod.sh). A rank that dies is handled by ``horovodrun``.
#: docs/distributed.md ("Failures") has the measurements.
FAILURE_ENV_DEFAULTS: dict[str, str] = {
    "HOROVOD_GLOO_TIMEOUT_SECONDS": "120",
    "HOROVOD_STALL_CHECK_TIME_SECONDS": "60",
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "600",
}

# Set by a Horovod-compatible launcher (horovodrun/gloo: HOROVOD_RANK; mpirun/srun for an MPI build).
_LAUNCHER_ENV = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")

# None = not decided yet; False = single-process fallback; else the imported ``horovod.tensorflow``.
_hvd: Any = None


def init(*, configure_gpus: bool = True) -> bool:
    """Initialise Horovod if a Horovod launcher started this process (``HOROVOD_RANK`` etc. set); idempotent,
    call it first (before TensorFlow touches a GPU). Returns ``True`` if Horovod is active, ``False`` for
    the single-process fallback (Horovod missing or not launched). ``EDNN_HOROVOD=1`` forces
    ``hvd.init()`` (raises if Horovod is missing), ``EDNN_HOROVOD=0`` the fallback. Applies
    :data:`FAILURE_ENV_DEFAULTS`; with visible GPUs and ``configure_gpus`` enables memory growth and
    shows each process only GPU ``local_rank() % n_gpus`` (on CPU nothing is pinned).
    """
    global _hvd
    if _hvd is not None:
        return _hvd is not False
    mode = os.environ.get("EDNN_HOROVOD", "auto").strip().lower()
    force = mode in ("1", "true", "on", "yes")
    if mode in ("0", "false", "off", "no") or not (force or any(k in os.environ for k in _LAUNCHER_ENV)):
        _hvd = False
        return False
    try:
        import horovod.tensorflow as hvd  # lazy: heavy, optional dependency
    except ImportError as exc:
        if force:
            raise
        warnings.warn(f"Launched by a Horovod launcher but horovod.tensorflow cannot be imported ({exc}); "
                      f"running single-process. See scripts/install_horovod.sh.", RuntimeWarning, stacklevel=2)
        _hvd = False
        return False
    for key, value in FAILURE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    hvd.init()
    _hvd = hvd
    if configure_gpus:
        _configure_gpus(hvd.local_rank())
    log.info("horovod initialised: rank %d of %d (local rank %d)", hvd.rank(), hvd.size(), hvd.local_rank())
    return True


def _configure_gpus(local_rank_: int) -> None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return  # CPU: nothing to pin
    try:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpus[local_rank_ % len(gpus)], "GPU")
    except RuntimeError as exc:  # devices already initialised
        warnings.warn(f"Could not pin GPU {local_rank_ % len(gpus)} to this rank ({exc}); call "
                      f"ednn_tf.distributed.init() before TensorFlow uses the GPU.", RuntimeWarning, stacklevel=3)


def _backend():
    """The horovod.tensorflow module, or None in single-process mode."""
    if _hvd is None:
        init()
    return _hvd or None


def is_initialized() -> bool:
    """True once :func:`init` has decided (either Horovod or the fallback)."""
    return _hvd is not None


def rank() -> int:
    """Global rank of this process (0 without Horovod)."""
    hvd = _backend()
    return hvd.rank() if hvd else 0


def size() -> int:
    """Number of processes (1 without Horovod)."""
    hvd = _backend()
    return hvd.size() if hvd else 1


def local_rank() -> int:
    """Rank of this process on its node (0 without Horovod)."""
    hvd = _backend()
    return hvd.local_rank() if hvd else 0


def is_root() -> bool:
    """True on rank 0 (always true without Horovod)."""
    return rank() == 0


def is_distributed() -> bool:
    """True if more than one process takes part (collectives are needed)."""
    return size() > 1


def allreduce_sum(value):
    """Sum a number or array over all ranks in float64 (returns a numpy float64 array/scalar)."""
    hvd = _backend()
    arr = np.asarray(value, dtype=np.float64)
    if not hvd or hvd.size() == 1:
        return arr
    import tensorflow as tf

    return hvd.allreduce(tf.constant(arr), op=hvd.Sum, name=None).numpy()


def allgather_object(obj) -> list:
    """Every rank's ``obj`` (any picklable value), as a list ordered by rank."""
    hvd = _backend()
    if not hvd or hvd.size() == 1:
        return [obj]
    return list(hvd.allgather_object(obj))


def barrier() -> None:
    """Wait until every rank arrives (no-op without Horovod)."""
    hvd = _backend()
    if hvd and hvd.size() > 1:
        import tensorflow as tf

        hvd.allreduce(tf.constant(0.0), op=hvd.Sum)   # completes only when every rank has joined


def shard(dataset, *, even: bool = True):
    """Give each rank a disjoint 1/size() slice of the *unbatched*, deterministically ordered
    ``tf.data.Dataset`` (then shuffle, and batch with :func:`local_batch_size`). With ``even`` and a known
    cardinality it is first cut to a multiple of ``size()`` (unequal batch counts would leave ranks
    waiting in an allreduce). Identity when ``size() == 1``."""
    n = size()
    if n == 1:
        return dataset
    if even:
        card = int(dataset.cardinality())
        if card >= 0 and card % n:
            dataset = dataset.take(card - card % n)
    return dataset.shard(num_shards=n, index=rank())


def local_batch_size(global_batch_size: int) -> int:
    """Per-rank batch size for a given global batch size (must divide evenly)."""
    n = size()
    if global_batch_size % n:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the number of ranks {n}")
    return global_batch_size // n


def scale_learning_rate(lr: float) -> float:
    """``lr * size()``: for a fixed *per-rank* batch (the global batch grows with ``size()``); keep ``lr``
    when a fixed global batch is split over the ranks (:func:`local_batch_size`)."""
    return lr * size()


def root_only(callbacks: Any) -> list:
    """``callbacks`` (a callback, a list of them, or None) as a list on rank 0, ``[]`` on the others: for
    side effects that must happen once (ModelCheckpoint, CSVLogger, plots). Not for callbacks that run
    collectives or change training (BroadcastInitialState, EarlyStopping, ReduceLROnPlateau)."""
    cbs = [callbacks] if isinstance(callbacks, keras.callbacks.Callback) else list(callbacks or [])
    return cbs if is_root() else []


def root_verbose(verbose: int | str = "auto") -> int | str:
    """``verbose`` argument for ``fit``/``evaluate``: as given on rank 0, 0 elsewhere."""
    return verbose if is_root() else 0


def _broadcast(variables: Iterable, root_rank: int, hvd, prefix: str) -> int:
    """Assign ``root_rank``'s value to each variable; returns how many."""
    variables = list(variables)
    for i, v in enumerate(variables):
        value = v.value if isinstance(v, keras.Variable) else v   # a Keras 3 variable wraps a tf.Variable
        v.assign(hvd.broadcast(value, root_rank=root_rank, name=f"{prefix}.{i}"))
    return len(variables)


def broadcast_variables(model: keras.Model, root_rank: int = 0, *, include_optimizer: bool = True) -> int:
    """Copy all model weights and optimizer variables (an unbuilt optimizer is built first) from
    ``root_rank`` to every rank; returns how many (0 without Horovod or with one process). The model
    must be built. Collective: every rank calls it."""
    if not model.built:
        raise ValueError("broadcast_variables: build the model first (call it on data or use "
                         "BroadcastInitialState in fit)")
    hvd = _backend()
    if not hvd or hvd.size() == 1:
        return 0
    n = _broadcast(model.weights, root_rank, hvd, "ednn_bcast_model")
    opt = getattr(model, "optimizer", None)
    if include_optimizer and opt is not None:
        if not opt.built:
            opt.build(model.trainable_variables)
        n += _broadcast(opt.variables, root_rank, hvd, "ednn_bcast_opt")
    return n


# The training half, re-exported lazily (distributed_train imports this module).
_TRAIN_NAMES = ("allreduce_gradients", "average_logs", "distributed_train_step", "make_distributed",
                "DataParallelMixin", "BroadcastInitialState")
__getattr__, __dir__ = lazy_exports(globals(), {n: ".distributed_train" for n in _TRAIN_NAMES})
__all__ += sorted(_TRAIN_NAMES)
