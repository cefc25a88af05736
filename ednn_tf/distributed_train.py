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
    """Average gradients over all ranks (``None`` entries are kept as ``None``).

    Call it between ``tape.gradient`` and ``optimizer.apply`` in a custom ``train_step``. Returns
    ``list(grads)`` unchanged when ``size() == 1``. ``tf.IndexedSlices`` are handled by Horovod
    (allgather).
    """
    hvd = _backend()
    if not hvd or hvd.size() == 1:
        return list(grads)
    return _grouped_average(list(grads), lambda g: g is not None, hvd)


def average_logs(logs):
    """Average every floating-point entry of a (nested) logs structure over ranks.

    Non-float entries are returned unchanged. Identity when ``size() == 1``. Every rank must call it
    the same number of times (it is a collective). Inside a traced ``train_step`` it issues one extra
    collective per step and must not be used with ``steps_per_execution > 1`` (overlapping loop
    iterations would submit two ops with the same Horovod name).
    """
    hvd = _backend()
    if not hvd or hvd.size() == 1 or not logs:
        return logs
    import tensorflow as tf

    flat = [tf.convert_to_tensor(v) for v in tf.nest.flatten(logs)]
    return tf.nest.pack_sequence_as(logs, _grouped_average(flat, lambda t: t.dtype.is_floating, hvd))


def distributed_train_step(model: keras.Model, data) -> dict:
    """Data-parallel equivalent of Keras 3's TensorFlow ``Model.train_step``.

    Forward pass and ``compute_loss`` under a ``tf.GradientTape``, gradients averaged over ranks
    with ``hvd.grouped_allreduce(op=hvd.Average)``, then ``optimizer.apply_gradients``; returns
    ``model.compute_metrics(...)`` (rank-local running metrics; epoch-level metrics are averaged by
    the ``get_metrics_result`` wrapper, see :func:`make_distributed`). With one process it performs
    exactly the operations of the stock ``train_step`` (bit-identical results).
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
    """Make ``model.fit`` train data-parallel over all Horovod ranks.

    Works for functional, Sequential and subclassed ``keras.Model`` s without changing the model's
    class (so saving/loading is unaffected); on the instance it

    * replaces ``train_step`` by :func:`distributed_train_step` (gradients averaged over ranks
      before ``optimizer.apply_gradients``);
    * wraps ``get_metrics_result`` so that the metrics Keras reports at the end of every epoch, for
      validation and from ``evaluate`` are averaged over ranks (``average_metrics=True``). Keras
      builds those logs from the metric objects (``get_metrics_result()``, called eagerly), not from
      ``train_step``'s return value, so every rank logs the same epoch numbers and EarlyStopping /
      ReduceLROnPlateau / ModelCheckpoint(monitor) decide alike on all ranks. Per-*batch* logs stay
      rank-local: averaging inside the traced step would cost a second collective per step and
      breaks ``steps_per_execution > 1`` (consecutive steps run in a ``tf.while_loop`` whose
      iterations may overlap, and Horovod rejects two in-flight ops with the same name);
    * switches XLA off (``jit_compile``) when ``size() > 1``.

    Can be called before or after ``compile`` (a cached train function is discarded). Returns the
    model. In a single process the training is bit-identical to the unmodified model.

    A model whose class defines its own ``train_step`` raises ``ValueError`` by default
    (``replace_train_step=None``: that logic would be silently replaced). Either call
    :func:`allreduce_gradients` on the gradients inside it and pass ``replace_train_step=False``
    (the step is kept; metric averaging and the XLA switch are still installed), or pass ``True``
    to use the standard data-parallel step anyway.

    Caveat: with ``average_metrics`` the metric collection is a collective: every rank must call
    ``evaluate`` (or ``fit`` with validation data) together; evaluating on rank 0 only would wait
    for the other ranks (the stall guard in :data:`FAILURE_ENV_DEFAULTS` turns that into an error).
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
    """Mixin giving a ``keras.Model`` subclass data-parallel ``fit``.

    Put it first in the bases: ``class EDNN(DataParallelMixin, keras.Model)``. Same behaviour as
    :func:`make_distributed` for every instance, and free in single-process runs. Set the class
    attribute ``average_metrics = False`` to keep metrics per rank.
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


class BroadcastInitialState(keras.callbacks.Callback):
    """Broadcast model and optimizer state from ``root_rank`` when ``fit`` starts.

    Pass it to ``fit`` on *every* rank (not through :func:`root_only`). Needed whenever ranks may
    start from different weights (random initialisation without a common seed, checkpoint restored
    on rank 0 only, ...).

    If the model is built at ``on_train_begin`` (functional and Sequential models, or any model
    called / ``build()``-t before ``fit``), the broadcast happens before the first step, building the
    optimizer if needed, and N-rank training reproduces 1-rank training. An unbuilt subclassed model
    only creates its weights while the first train step is traced; the broadcast then happens at the
    end of the first batch (as Horovod's own Keras callback does): ranks agree from the second step
    on, but the first step used each rank's own initial weights. Build such models before ``fit``
    (``model.build((None, L, L, 1))`` or ``model(x[:1])``) to avoid this.
    """

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
