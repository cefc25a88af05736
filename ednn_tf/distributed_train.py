"""Data-parallel ``fit`` for Keras 3 models: the training half of :mod:`ednn_tf.distributed`.

:func:`make_distributed` (per instance) and :class:`DataParallelMixin` (per class) install
:func:`distributed_train_step` (gradients averaged over ranks with :func:`allreduce_gradients`),
rank-averaged epoch metrics (:func:`average_logs`) and the XLA switch; :class:`BroadcastInitialState`
gives every rank the root's initial weights. :mod:`ednn_tf.distributed` holds the topology, small
collectives, sharding and ``broadcast_variables``, and re-exports every name defined here
(``dist.make_distributed`` etc.). See docs/distributed.md.
"""
from __future__ import annotations

import types
import warnings
from typing import Any, Sequence

import keras

from .distributed import _backend, broadcast_variables, is_distributed

__all__ = ["allreduce_gradients", "average_logs", "distributed_train_step", "make_distributed", "DataParallelMixin",
           "BroadcastInitialState"]


def _grouped_average(values: list, keep, hvd) -> list:
    """``values`` with the entries where ``keep(v)`` averaged over ranks, one grouped allreduce per dtype."""
    out = list(values)
    by_dtype: dict[Any, list[int]] = {}
    for i, t in enumerate(values):
        if keep(t):
            by_dtype.setdefault(t.dtype, []).append(i)
    for idx in by_dtype.values():
        for i, r in zip(idx, hvd.grouped_allreduce([values[i] for i in idx], op=hvd.Average)):
            out[i] = r
    return out


def allreduce_gradients(grads: Sequence) -> list:
    """Gradients averaged over all ranks (``None`` kept; unchanged when ``size() == 1``; ``IndexedSlices``
    handled by Horovod): call it between ``tape.gradient`` and ``optimizer.apply`` in a custom step."""
    hvd = _backend()
    if not hvd or hvd.size() == 1:
        return list(grads)
    return _grouped_average(list(grads), lambda g: g is not None, hvd)


def average_logs(logs):
    """Every floating-point entry of a (nested) logs structure averaged over ranks (others unchanged;
    identity when ``size() == 1``). A collective; in a traced ``train_step`` one extra per step, and
    not with ``steps_per_execution > 1`` (two in-flight ops would share a Horovod name)."""
    hvd = _backend()
    if not hvd or hvd.size() == 1 or not logs:
        return logs
    import tensorflow as tf

    flat = [tf.convert_to_tensor(v) for v in tf.nest.flatten(logs)]
    return tf.nest.pack_sequence_as(logs, _grouped_average(flat, lambda t: t.dtype.is_floating, hvd))


def distributed_train_step(model: keras.Model, data) -> dict:
    """Keras 3's TensorFlow ``Model.train_step`` with the gradients averaged over ranks
    (:func:`allreduce_gradients`); returns the rank-local ``model.compute_metrics(...)`` (epoch metrics
    are averaged by the ``get_metrics_result`` wrapper). With one process: bit-identical to the stock step.
    """
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        compute_loss = getattr(model, "_compute_loss", None) or model.compute_loss
        loss = compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        tracker = getattr(model, "_loss_tracker", None)  # feeds logs["loss"]
        if tracker is not None:
            batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
            tracker.update_state(loss, sample_weight=batch)
        if model.optimizer is not None:
            loss = model.optimizer.scale_loss(loss)

    trainable = model.trainable_weights
    if trainable:
        grads = allreduce_gradients(tape.gradient(loss, trainable))
        model.optimizer.apply_gradients(zip(grads, trainable))
    else:
        warnings.warn("The model does not have any trainable weights.")
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _average_metrics_if_eager(logs):
    # Epoch-end, evaluate-end and run_eagerly steps only: inside the traced step logs stay rank-local.
    import tensorflow as tf

    return average_logs(logs) if tf.executing_eagerly() else logs


def _disable_jit_if_distributed(model: keras.Model) -> None:
    # Horovod ops have no XLA kernels in this build (xla_mpi_ops.cc is patched out), and Keras'
    # jit_compile="auto" turns XLA on when a GPU is present.
    if is_distributed() and not model.run_eagerly and model.jit_compile:
        warnings.warn("Horovod collectives cannot be XLA-compiled; setting model.jit_compile = False.",
                      RuntimeWarning, stacklevel=3)
        model.jit_compile = False


def make_distributed(model: keras.Model, *, average_metrics: bool = True,
                     replace_train_step: bool | None = None) -> keras.Model:
    """Make ``model.fit`` data-parallel over all Horovod ranks; returns ``model`` (docs/distributed.md).

    On the instance (any ``keras.Model``; its class, hence saving, is unchanged) it replaces
    ``train_step`` by :func:`distributed_train_step`, wraps ``get_metrics_result`` so epoch,
    validation and ``evaluate`` metrics are averaged over ranks (``average_metrics``; per-batch logs
    stay rank-local) and switches XLA off when ``size() > 1``. Before or after ``compile``; bit-identical
    in a single process. A class with its own ``train_step`` raises ValueError unless
    ``replace_train_step`` is ``False`` (keep it; call :func:`allreduce_gradients` inside it) or ``True``
    (use the standard step). With ``average_metrics`` every rank must ``evaluate`` together (a collective).
    """
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError("ednn_tf.distributed requires the TensorFlow backend")
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}")
    if isinstance(model, DataParallelMixin) or getattr(model, "_ednn_data_parallel", False):
        return model
    if replace_train_step is None:
        if type(model).train_step not in (keras.Model.train_step, DataParallelMixin.train_step):
            raise ValueError(f"{type(model).__name__} defines its own train_step, which make_distributed would "
                             f"replace. Call ednn_tf.distributed.allreduce_gradients() on the gradients inside it "
                             f"and pass replace_train_step=False (or pass True to use the standard data-parallel "
                             f"train_step instead).")
        replace_train_step = True
    _install_instance_methods(model, replace_train_step, average_metrics)
    model.train_function = model.test_function = None     # discard functions traced with the old steps
    model._ednn_data_parallel = True
    return model


def _install_instance_methods(model: keras.Model, replace_train_step: bool, average_metrics: bool) -> None:
    """Bind the data-parallel step / metric / make_*_function wrappers on ``model``."""
    orig_metrics_result, orig_make_train, orig_make_test = (model.get_metrics_result, model.make_train_function,
                                                            model.make_test_function)

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


class DataParallelMixin:
    """Data-parallel ``fit`` for a ``keras.Model`` subclass, as :func:`make_distributed` on every instance
    (first in the bases: ``class M(DataParallelMixin, keras.Model)``); ``average_metrics = False`` keeps
    metrics per rank."""

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


class BroadcastInitialState(keras.callbacks.Callback):
    """Broadcast model and optimizer state from ``root_rank`` when ``fit`` starts; pass it on *every*
    rank. A model built before ``fit`` is broadcast before the first step (N ranks reproduce 1 rank);
    an unbuilt one after the first batch (its first step used each rank's own weights), so build
    subclassed models first (``model.build((None, L, L, 1))``)."""

    def __init__(self, root_rank: int = 0):
        super().__init__()
        self.root_rank, self.num_broadcast, self._pending = root_rank, 0, False

    def _broadcast(self):
        self.num_broadcast = broadcast_variables(self.model, self.root_rank)
        self._pending = False

    def on_train_begin(self, logs=None):
        if self.model.built:
            self._broadcast()
            return
        self._pending = True
        if is_distributed():
            warnings.warn(f"BroadcastInitialState: {type(self.model).__name__} is not built when fit() starts; "
                          f"its weights are broadcast after the first batch. Build the model before fit() for "
                          f"exactly consistent first steps.", RuntimeWarning, stacklevel=2)

    def on_train_batch_end(self, batch, logs=None):
        if self._pending:
            self._broadcast()
