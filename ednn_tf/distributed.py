"""Data-parallel training of Keras 3 models with Horovod (TensorFlow backend).

``horovod.tensorflow.keras`` (``hvd.DistributedOptimizer``, its callbacks, ...)
targets tf.keras 2 and does not work with Keras 3, so this module builds
data parallelism on the low-level ``horovod.tensorflow`` collectives instead.

Typical use (launch with ``horovodrun -np N --gloo python train.py``)::

    from ednn_tf import distributed as dist

    dist.init()                                    # first thing in the script
    ds = dist.shard(raw_ds)                        # each rank its own slice
    ds = ds.shuffle(1024).batch(dist.local_batch_size(256), drop_remainder=True)

    model = build_model()                          # any Keras 3 model
    model.compile(optimizer=keras.optimizers.Adam(dist.scale_learning_rate(1e-3)),
                  loss="mse")
    dist.make_distributed(model)                   # before or after compile
    model.fit(ds, epochs=10,
              callbacks=[dist.BroadcastInitialState(),
                         *dist.root_only([keras.callbacks.ModelCheckpoint(...)])],
              verbose=dist.root_verbose(1))

Every function degrades to a single process (rank 0 of size 1, no collective
ops at all) when Horovod is not installed or the script was not started by a
Horovod launcher, so the same script runs unchanged with plain ``python``.

Design: :func:`make_distributed` replaces ``train_step`` (and wraps
``get_metrics_result`` / ``make_*_function``) on the *instance*, so it works for
functional, Sequential and subclassed models without changing their class
(saving/loading is unaffected). Classes that want data parallelism built in
can inherit :class:`DataParallelMixin` instead; models with their own custom
``train_step`` call :func:`allreduce_gradients` inside it and use
``make_distributed(model, replace_train_step=False)``. See docs/distributed.md.
"""
from __future__ import annotations

import logging
import os
import types
import warnings
from typing import Any, Iterable, Sequence

import keras

__all__ = [
    "init",
    "is_initialized",
    "is_distributed",
    "rank",
    "size",
    "local_rank",
    "is_root",
    "allreduce_sum",
    "allgather_object",
    "barrier",
    "shard",
    "local_batch_size",
    "scale_learning_rate",
    "root_only",
    "root_verbose",
    "allreduce_gradients",
    "average_logs",
    "distributed_train_step",
    "make_distributed",
    "DataParallelMixin",
    "broadcast_variables",
    "BroadcastInitialState",
    "FAILURE_ENV_DEFAULTS",
]

log = logging.getLogger(__name__)

#: Environment defaults applied (with ``os.environ.setdefault``, i.e. only if
#: the variable is not already set) right before ``hvd.init()``. They turn a
#: dead / frozen / diverging rank into an error on the surviving ranks instead
#: of an indefinite hang:
#:
#: * ``HOROVOD_GLOO_TIMEOUT_SECONDS``: timeout of the Gloo rendezvous and of
#:   every Gloo collective. A rank that is frozen (or whose host vanished)
#:   makes the others fail after this many seconds. Horovod's default is 30 s;
#:   120 s tolerates slow start-up (TensorFlow import) on loaded nodes.
#: * ``HOROVOD_STALL_CHECK_TIME_SECONDS`` / ``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS``:
#:   if some ranks wait for a collective that another (alive) rank never
#:   submits - e.g. unequal numbers of batches per rank, or a collective
#:   issued on rank 0 only - Horovod warns after the check time and shuts down
#:   (every pending op raises) after the shutdown time. Horovod's default is
#:   to warn forever and never shut down. Under Gloo this needs the one-word
#:   fix applied by scripts/install_horovod.sh (stock 0.28.1 never detects a
#:   stall with the Gloo controller).
#:
#: A rank that *dies* (crash, OOM kill, SIGKILL) is handled by ``horovodrun``
#: itself: it terminates all remaining workers and exits non-zero.
FAILURE_ENV_DEFAULTS: dict[str, str] = {
    "HOROVOD_GLOO_TIMEOUT_SECONDS": "120",
    "HOROVOD_STALL_CHECK_TIME_SECONDS": "60",
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "600",
}

# Environment variables that indicate that this process was started by a
# Horovod-compatible launcher (horovodrun/gloo sets HOROVOD_RANK; the others
# are set by mpirun/srun in case a Horovod built with MPI is used).
_LAUNCHER_ENV = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")

# Module state: None = not decided yet; False = single-process fallback;
# otherwise the imported ``horovod.tensorflow`` module.
_hvd: Any = None


# ---------------------------------------------------------------------------
# Initialisation and topology
# ---------------------------------------------------------------------------
def _launched_by_horovod() -> bool:
    return any(k in os.environ for k in _LAUNCHER_ENV)


def init(*, configure_gpus: bool = True) -> bool:
    """Initialise Horovod if this process was launched by a Horovod launcher.

    Idempotent; call it first thing in the training script (before TensorFlow
    touches a GPU). Returns ``True`` if Horovod is active (possibly with
    ``size() == 1``), ``False`` for the single-process fallback.

    Behaviour:

    * Horovod is imported lazily. If it is not installed, or the process was
      not started by ``horovodrun`` (no ``HOROVOD_RANK`` etc. in the
      environment), nothing is initialised and ``rank() == 0``,
      ``size() == 1``. Set ``EDNN_HOROVOD=1`` to force ``hvd.init()`` anyway
      (raises if Horovod is missing) or ``EDNN_HOROVOD=0`` to force the
      fallback.
    * :data:`FAILURE_ENV_DEFAULTS` are applied before ``hvd.init()``.
    * On CPU nothing is pinned. If GPUs are visible and ``configure_gpus``,
      memory growth is enabled and each process sees only GPU
      ``local_rank() % n_gpus``.
    """
    global _hvd
    if _hvd is not None:
        return _hvd is not False

    mode = os.environ.get("EDNN_HOROVOD", "auto").strip().lower()
    if mode in ("0", "false", "off", "no"):
        _hvd = False
        return False
    force = mode in ("1", "true", "on", "yes")
    if not force and not _launched_by_horovod():
        _hvd = False
        return False

    try:
        import horovod.tensorflow as hvd  # lazy: heavy, optional dependency
    except ImportError as exc:
        if force:
            raise
        warnings.warn(
            f"Launched by a Horovod launcher but horovod.tensorflow cannot be "
            f"imported ({exc}); running single-process. "
            f"See scripts/install_horovod.sh.",
            RuntimeWarning,
            stacklevel=2,
        )
        _hvd = False
        return False

    for key, value in FAILURE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    hvd.init()
    _hvd = hvd
    if configure_gpus:
        _configure_gpus(hvd.local_rank())
    log.info("horovod initialised: rank %d of %d (local rank %d)",
             hvd.rank(), hvd.size(), hvd.local_rank())
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
        warnings.warn(
            f"Could not pin GPU {local_rank_ % len(gpus)} to this rank ({exc}); "
            f"call ednn_tf.distributed.init() before TensorFlow uses the GPU.",
            RuntimeWarning,
            stacklevel=3,
        )


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


# ---------------------------------------------------------------------------
# Small collectives (identity without Horovod)
# ---------------------------------------------------------------------------
def allreduce_sum(value):
    """Sum a number or array over all ranks in float64 (returns a numpy float64 array/scalar)."""
    import numpy as np

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


# ---------------------------------------------------------------------------
# Data, learning rate, callbacks
# ---------------------------------------------------------------------------
def shard(dataset, *, even: bool = True):
    """Give each rank a disjoint 1/size() slice of a ``tf.data.Dataset``.

    Apply it to the *unbatched*, deterministically ordered dataset (before
    ``shuffle``/``batch``), then batch with :func:`local_batch_size`. With
    ``even=True`` and a known cardinality, the dataset is first truncated to a
    multiple of ``size()`` so that every rank gets exactly the same number of
    elements (unequal numbers of batches per rank would leave ranks waiting
    in an allreduce). Identity when ``size() == 1``.
    """
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
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the "
            f"number of ranks {n}")
    return global_batch_size // n


def scale_learning_rate(lr: float) -> float:
    """Linear learning-rate scaling: ``lr * size()``.

    Use it when the *per-rank* batch size is kept fixed, so that the global
    batch grows with ``size()``. If you split a fixed global batch over the
    ranks (:func:`local_batch_size`), keep the learning rate unchanged.
    """
    return lr * size()


def root_only(callbacks: Any) -> list:
    """Return ``callbacks`` (a callback, a list of them, or None) as a list on
    rank 0 and ``[]`` on the other ranks.

    Use for anything with side effects that must happen once: ModelCheckpoint,
    CSVLogger, TensorBoard, plotting, progress output. Do *not* wrap callbacks
    that run collectives or change training (BroadcastInitialState,
    EarlyStopping, ReduceLROnPlateau must run on every rank; their decisions
    stay consistent because the logged metrics are averaged over ranks).
    """
    if callbacks is None:
        cbs: list = []
    elif isinstance(callbacks, keras.callbacks.Callback):
        cbs = [callbacks]
    else:
        cbs = list(callbacks)
    return cbs if is_root() else []


def root_verbose(verbose: int | str = "auto") -> int | str:
    """``verbose`` argument for ``fit``/``evaluate``: as given on rank 0, 0 elsewhere."""
    return verbose if is_root() else 0


# ---------------------------------------------------------------------------
# Collectives used inside train/test steps
# ---------------------------------------------------------------------------
def _grouped_average(tensors: Sequence, hvd) -> list:
    """Average a list of tensors over ranks, one grouped allreduce per dtype."""
    out = list(tensors)
    by_dtype: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for idx in by_dtype.values():
        reduced = hvd.grouped_allreduce([tensors[i] for i in idx], op=hvd.Average)
        for i, r in zip(idx, reduced):
            out[i] = r
    return out


def allreduce_gradients(grads: Sequence) -> list:
    """Average gradients over all ranks (``None`` entries are kept as ``None``).

    Call it between ``tape.gradient`` and ``optimizer.apply`` in a custom
    ``train_step``. Returns ``list(grads)`` unchanged when ``size() == 1``.
    ``tf.IndexedSlices`` are handled by Horovod (allgather).
    """
    grads = list(grads)
    hvd = _backend()
    if not hvd or hvd.size() == 1:
        return grads
    idx = [i for i, g in enumerate(grads) if g is not None]
    reduced = _grouped_average([grads[i] for i in idx], hvd)
    for i, r in zip(idx, reduced):
        grads[i] = r
    return grads


def average_logs(logs):
    """Average every floating-point entry of a (nested) logs structure over ranks.

    Non-float entries are returned unchanged. Identity when ``size() == 1``.
    Every rank must call it the same number of times (it is a collective).
    Inside a traced ``train_step`` it issues one extra collective per step and
    must not be used with ``steps_per_execution > 1`` (overlapping loop
    iterations would submit two ops with the same Horovod name).
    """
    hvd = _backend()
    if not hvd or hvd.size() == 1 or not logs:
        return logs
    import tensorflow as tf

    flat = [tf.convert_to_tensor(v) for v in tf.nest.flatten(logs)]
    idx = [i for i, t in enumerate(flat) if t.dtype.is_floating]
    reduced = _grouped_average([flat[i] for i in idx], hvd)
    for i, r in zip(idx, reduced):
        flat[i] = r
    return tf.nest.pack_sequence_as(logs, flat)


def distributed_train_step(model: keras.Model, data) -> dict:
    """Data-parallel equivalent of Keras 3's TensorFlow ``Model.train_step``.

    Forward pass and ``compute_loss`` under a ``tf.GradientTape``, gradients
    averaged over ranks with ``hvd.grouped_allreduce(op=hvd.Average)``, then
    ``optimizer.apply_gradients``; returns ``model.compute_metrics(...)``
    (rank-local running metrics; epoch-level metrics are averaged by the
    ``get_metrics_result`` wrapper, see :func:`make_distributed`). With
    one process it performs exactly the operations of the stock
    ``train_step`` (bit-identical results).
    """
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        compute_loss = getattr(model, "_compute_loss", None) or model.compute_loss
        loss = compute_loss(x=x, y=y, y_pred=y_pred,
                            sample_weight=sample_weight, training=True)
        tracker = getattr(model, "_loss_tracker", None)  # feeds logs["loss"]
        if tracker is not None:
            batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
            tracker.update_state(loss, sample_weight=batch)
        if model.optimizer is not None:
            loss = model.optimizer.scale_loss(loss)

    trainable = model.trainable_weights
    if trainable:
        grads = tape.gradient(loss, trainable)
        grads = allreduce_gradients(grads)
        model.optimizer.apply_gradients(zip(grads, trainable))
    else:
        warnings.warn("The model does not have any trainable weights.")
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _average_metrics_if_eager(logs):
    # Only outside tf.function (see make_distributed): epoch-end, evaluate-end
    # and run_eagerly steps. Inside the traced step the logs stay rank-local.
    import tensorflow as tf

    return average_logs(logs) if tf.executing_eagerly() else logs


def _disable_jit_if_distributed(model: keras.Model) -> None:
    # Horovod ops have no XLA kernels in this build (xla_mpi_ops.cc is
    # patched out), and Keras' jit_compile="auto" turns XLA on when a GPU is
    # present.
    if is_distributed() and not model.run_eagerly and model.jit_compile:
        warnings.warn("Horovod collectives cannot be XLA-compiled; "
                      "setting model.jit_compile = False.", RuntimeWarning,
                      stacklevel=3)
        model.jit_compile = False


# ---------------------------------------------------------------------------
# Making a model data-parallel
# ---------------------------------------------------------------------------
def _has_custom_train_step(model: keras.Model) -> bool:
    step = type(model).train_step
    return step is not keras.Model.train_step and step is not DataParallelMixin.train_step


def make_distributed(model: keras.Model, *, average_metrics: bool = True,
                     replace_train_step: bool | None = None) -> keras.Model:
    """Make ``model.fit`` train data-parallel over all Horovod ranks.

    Works for functional, Sequential and subclassed ``keras.Model`` s without
    changing the model's class (so saving/loading is unaffected); on the
    instance it

    * replaces ``train_step`` by :func:`distributed_train_step` (gradients
      averaged over ranks before ``optimizer.apply_gradients``);
    * wraps ``get_metrics_result`` so that the metrics Keras reports at the
      end of every epoch, for validation and from ``evaluate`` are averaged
      over ranks (``average_metrics=True``). Keras builds those logs from the
      metric objects (``get_metrics_result()``, called eagerly), not from
      ``train_step``'s return value. Every rank then logs the same epoch
      numbers, so EarlyStopping / ReduceLROnPlateau / ModelCheckpoint(monitor)
      take the same decision on all ranks. Per-*batch* logs
      (``on_train_batch_end``, the progress bar during an epoch) stay
      rank-local: averaging inside the traced step would cost a second
      collective per step and breaks ``steps_per_execution > 1`` (Keras runs
      consecutive steps in a ``tf.while_loop`` whose iterations may overlap,
      and Horovod rejects two in-flight ops with the same name);
    * switches XLA off (``jit_compile``) when ``size() > 1``.

    Can be called before or after ``compile`` (a cached train function is
    discarded). Returns the model. In a single process the training is
    bit-identical to the unmodified model.

    Models whose class defines its own ``train_step``: by default
    (``replace_train_step=None``) this raises ``ValueError``, because that
    logic would be silently replaced. Either call :func:`allreduce_gradients`
    on the gradients inside your ``train_step`` and pass
    ``replace_train_step=False`` (your step is kept; metric averaging and the
    XLA switch are still installed), or pass ``replace_train_step=True`` to
    use the standard data-parallel step anyway.

    Caveat: with ``average_metrics`` the metric collection is a collective:
    every rank must call ``evaluate`` (or ``fit`` with validation data)
    together - evaluating on rank 0 only would wait for the other ranks (the
    stall guard in :data:`FAILURE_ENV_DEFAULTS` turns that into an error).
    """
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError("ednn_tf.distributed requires the TensorFlow backend")
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}")
    if isinstance(model, DataParallelMixin) or getattr(model, "_ednn_data_parallel", False):
        return model
    if replace_train_step is None:
        if _has_custom_train_step(model):
            raise ValueError(
                f"{type(model).__name__} defines its own train_step, which "
                f"make_distributed would replace. Call "
                f"ednn_tf.distributed.allreduce_gradients() on the gradients "
                f"inside it and pass replace_train_step=False (or pass True to "
                f"use the standard data-parallel train_step instead).")
        replace_train_step = True

    orig_metrics_result = model.get_metrics_result
    orig_make_train = model.make_train_function
    orig_make_test = model.make_test_function

    def train_step(self, data):
        return distributed_train_step(self, data)

    def get_metrics_result(self):
        return _average_metrics_if_eager(orig_metrics_result())

    def make_train_function(self, force=False):
        _disable_jit_if_distributed(self)
        return orig_make_train(force)

    def make_test_function(self, force=False):
        _disable_jit_if_distributed(self)
        return orig_make_test(force)

    if replace_train_step:
        model.train_step = types.MethodType(train_step, model)
    model.make_train_function = types.MethodType(make_train_function, model)
    model.make_test_function = types.MethodType(make_test_function, model)
    if average_metrics:
        model.get_metrics_result = types.MethodType(get_metrics_result, model)
    # Discard functions traced with the old steps.
    model.train_function = None
    model.test_function = None
    model._ednn_data_parallel = True
    return model


class DataParallelMixin:
    """Mixin giving a ``keras.Model`` subclass data-parallel ``fit``.

    Put it first in the bases: ``class EDNN(DataParallelMixin, keras.Model)``.
    Same behaviour as :func:`make_distributed` for every instance, and free
    in single-process runs. Set the class attribute ``average_metrics =
    False`` to keep metrics per rank.
    """

    average_metrics = True

    def train_step(self, data):
        return distributed_train_step(self, data)

    def get_metrics_result(self):
        logs = super().get_metrics_result()
        return _average_metrics_if_eager(logs) if self.average_metrics else logs

    def make_train_function(self, force=False):
        _disable_jit_if_distributed(self)
        return super().make_train_function(force)

    def make_test_function(self, force=False):
        _disable_jit_if_distributed(self)
        return super().make_test_function(force)


# ---------------------------------------------------------------------------
# Consistent initial state
# ---------------------------------------------------------------------------
def _broadcast(variables: Iterable, root_rank: int, hvd, prefix: str) -> int:
    n = 0
    for i, v in enumerate(variables):
        # Keras 3 variables wrap a tf.Variable: broadcast its value.
        value = v.value if isinstance(v, keras.Variable) else v
        v.assign(hvd.broadcast(value, root_rank=root_rank, name=f"{prefix}.{i}"))
        n += 1
    return n


def broadcast_variables(model: keras.Model, root_rank: int = 0, *,
                        include_optimizer: bool = True) -> int:
    """Copy all model weights (trainable and not) and optimizer variables from
    ``root_rank`` to every rank. Returns the number of variables broadcast
    (0 without Horovod or with one process).

    The model must be built. If it has an unbuilt optimizer, the optimizer is
    built first (``optimizer.build(model.trainable_variables)``) so that its
    slots exist on all ranks. Every rank must call it (collective).
    """
    if not model.built:
        raise ValueError("broadcast_variables: build the model first "
                         "(call it on data or use BroadcastInitialState in fit)")
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


class BroadcastInitialState(keras.callbacks.Callback):
    """Broadcast model and optimizer state from ``root_rank`` when ``fit`` starts.

    Pass it to ``fit`` on *every* rank (not through :func:`root_only`). Needed
    whenever ranks may start from different weights (random initialisation
    without a common seed, checkpoint restored on rank 0 only, ...).

    If the model is already built at ``on_train_begin`` (functional and
    Sequential models, or any model that was called / ``build()``-t before
    ``fit``), the broadcast happens before the first step, building the
    optimizer if needed, and N-rank training reproduces 1-rank training.
    A subclassed model that is still unbuilt only creates its weights while
    the first train step is traced; the broadcast then happens at the end of
    the first batch (as Horovod's own Keras callback does): all ranks are
    consistent from the second step on, but the first step used each rank's
    own initial weights. Build such models before ``fit`` (e.g.
    ``model.build((None, L, L, 1))`` or ``model(x[:1])``) to avoid this.
    """

    def __init__(self, root_rank: int = 0):
        super().__init__()
        self.root_rank = root_rank
        self.num_broadcast = 0
        self._pending = False

    def _broadcast(self):
        self.num_broadcast = broadcast_variables(self.model, self.root_rank)
        self._pending = False

    def on_train_begin(self, logs=None):
        if self.model.built:
            self._broadcast()
            return
        self._pending = True
        if is_distributed():
            warnings.warn(
                f"BroadcastInitialState: {type(self.model).__name__} is not built "
                f"when fit() starts; its weights are broadcast after the first "
                f"batch. Build the model before fit() for exactly consistent "
                f"first steps.", RuntimeWarning, stacklevel=2)

    def on_train_batch_end(self, batch, logs=None):
        if self._pending:
            self._broadcast()
