"""ednn_tf.distributed (+ distributed_train): single-process fallback (always) and a real 2-rank Horovod run
(skipped when horovod / horovodrun are not installed, see scripts/install_horovod.sh)."""
import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import requires_horovod
from ednn_tf import distributed as dist

REPO = Path(__file__).resolve().parents[1]
# On CPU the make_distributed step runs exactly the stock op sequence: bit-identical.
# GPU kernels (atomics in reductions) are not guaranteed deterministic: allow rounding.
_ON_GPU = bool(tf.config.list_physical_devices("GPU"))


def _assert_same(a, b):
    if _ON_GPU:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """Make sure every test here starts undecided and un-launched (fallback mode)."""
    for key in dist._LAUNCHER_ENV + ("EDNN_HOROVOD",):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(dist, "_hvd", None)
    yield


def _data(n=96, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (np.sin(x).sum(axis=1, keepdims=True) + 0.1 * x[:, :1] ** 2).astype("float32")
    return x, y


class SmallSubclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.out(self.hidden(x))


class SmallMixinModel(dist.DataParallelMixin, SmallSubclassed):
    pass


def _build(kind):
    if kind == "functional":
        inp = keras.Input((4,))
        out = keras.layers.Dense(1)(keras.layers.Dense(8, activation="tanh")(inp))
        return keras.Model(inp, out)
    if kind == "sequential":
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                                 keras.layers.Dense(1)])
    if kind in ("subclassed", "mixin"):
        return SmallSubclassed() if kind == "subclassed" else SmallMixinModel()
    raise ValueError(kind)


def _train(kind, distributed, x, y, callbacks=()):
    keras.utils.set_random_seed(42)
    model = _build(kind if kind != "mixin" or distributed else "subclassed")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    if distributed and kind != "mixin":
        assert dist.make_distributed(model) is model
    hist = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                     callbacks=list(callbacks))
    ev = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    return model, hist.history, ev


# ---------------------------------------------------------------------------
# (a) single process
# ---------------------------------------------------------------------------
def test_fallback_topology_and_helpers():
    assert dist.init() is False and dist.is_initialized()
    assert (dist.rank(), dist.size(), dist.local_rank()) == (0, 1, 0)
    assert dist.is_root() and not dist.is_distributed()
    assert dist.scale_learning_rate(1e-3) == 1e-3
    assert dist.local_batch_size(48) == 48
    cb = keras.callbacks.History()
    assert dist.root_only([cb]) == [cb] and dist.root_only(cb) == [cb] and dist.root_only(None) == []
    assert dist.root_verbose(2) == 2
    ds = tf.data.Dataset.range(10)
    assert dist.shard(ds) is ds
    g = [tf.ones(3), None]
    assert dist.allreduce_gradients(g) == g
    logs = {"loss": tf.constant(1.5)}
    assert dist.average_logs(logs) is logs


def test_lazy_init_and_forced_fallback(monkeypatch):
    # Launched-looking environment but EDNN_HOROVOD=0: stays single-process.
    monkeypatch.setenv("HOROVOD_RANK", "1")
    monkeypatch.setenv("EDNN_HOROVOD", "0")
    assert dist.size() == 1 and dist.rank() == 0  # lazily calls init()
    assert dist.is_initialized() and dist.init() is False


@pytest.mark.parametrize("kind", ["functional", "sequential", "subclassed", "mixin"])
def test_make_distributed_is_bit_identical_to_plain_fit(kind):
    x, y = _data()
    plain, h0, e0 = _train(kind, False, x, y)
    ddp, h1, e1 = _train(kind, True, x, y, callbacks=[dist.BroadcastInitialState()])
    assert getattr(ddp, "_ednn_data_parallel", False) or isinstance(ddp, dist.DataParallelMixin)
    assert len(plain.weights) == len(ddp.weights) > 0
    for a, b in zip(plain.weights, ddp.weights):
        _assert_same(a, b)
    assert h0.keys() == h1.keys()
    for key in h0:
        _assert_same(h0[key], h1[key])
    assert e0.keys() == e1.keys()
    for key in e0:
        _assert_same(e0[key], e1[key])


def test_make_distributed_on_ednn_model():
    from ednn_tf import EDNN, networks

    rng = np.random.default_rng(0)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), size=(32, 4, 4, 1))
    y = x.sum(axis=(1, 2, 3))[:, None].astype("float64")
    weights = []
    for distributed in (False, True):
        keras.utils.set_random_seed(0)
        model = EDNN(networks.ising_dense(3, seed=0), focus=1, context=1)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        if distributed:
            dist.make_distributed(model)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        weights.append([np.asarray(w) for w in model.weights])
    for a, b in zip(*weights):
        _assert_same(a, b)


def _plain_fit_weights(make_model, x, y, fits=1):
    """Weights after ``fits`` one-rank, unmodified fits (same seed, same batch order)."""
    keras.utils.set_random_seed(3)
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    for _ in range(fits):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.weights]


def _assert_weights(model, expect):
    assert len(model.weights) == len(expect) > 0
    for a, b in zip(model.weights, expect):
        _assert_same(a, b)


def test_make_distributed_before_compile_and_after_fit():
    x, y = _data(32)
    keras.utils.set_random_seed(3)
    model = _build("functional")
    dist.make_distributed(model)  # before compile
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    # the distributed step really trained: same weights as the plain one-rank fit
    _assert_weights(model, _plain_fit_weights(lambda: _build("functional"), x, y))

    keras.utils.set_random_seed(3)
    other = _build("sequential")
    other.compile(optimizer="sgd", loss="mse")
    other.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    dist.make_distributed(other)  # after fit: cached train function discarded
    assert other.train_function is None
    other.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert dist.make_distributed(other) is other  # idempotent
    _assert_weights(other, _plain_fit_weights(lambda: _build("sequential"), x, y, fits=2))


def test_custom_train_step_is_not_silently_replaced():
    class Custom(SmallSubclassed):
        def train_step(self, data):
            return super().train_step(data)

    keras.utils.set_random_seed(3)
    model = Custom()
    with pytest.raises(ValueError, match="own train_step"):
        dist.make_distributed(model)
    dist.make_distributed(model, replace_train_step=False)
    assert model.train_step.__func__ is Custom.train_step
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data(32)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    # the kept custom step trains exactly like the same model without make_distributed
    _assert_weights(model, _plain_fit_weights(Custom, x, y))


def test_training_names_reexported_lazily():
    from ednn_tf import distributed_train as dtrain

    for name in dtrain.__all__:
        assert getattr(dist, name) is getattr(dtrain, name) and name in dist.__all__
    with pytest.raises(AttributeError):
        dist.no_such_name  # noqa: B018


def test_broadcast_variables_single_process():
    model = _build("functional")
    model.compile(optimizer="adam", loss="mse")
    assert dist.broadcast_variables(model) == 0
    with pytest.raises(ValueError, match="build the model"):
        dist.broadcast_variables(SmallSubclassed())


def test_make_distributed_rejects_non_models():
    with pytest.raises(TypeError):
        dist.make_distributed(keras.layers.Dense(1))


# ---------------------------------------------------------------------------
# (b) two real Horovod ranks (gloo) vs one rank
# ---------------------------------------------------------------------------
WORKER = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    import keras, tensorflow as tf
    from ednn_tf import distributed as dist

    out_dir, global_batch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dist.init()
    r, n = dist.rank(), dist.size()
    # Ranks deliberately start from DIFFERENT weights: BroadcastInitialState must fix it.
    keras.utils.set_random_seed(1234 + 7 * r)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (np.sin(x).sum(axis=1, keepdims=True) + 0.1 * x[:, :1] ** 2).astype("float32")
    # shard() interleaves: with B/2 per rank, step k on the two ranks covers exactly
    # samples [kB, (k+1)B) - the same global batch as the 1-rank run.
    ds = dist.shard(tf.data.Dataset.from_tensor_slices((x, y)))
    ds = ds.batch(dist.local_batch_size(global_batch), drop_remainder=True)

    inp = keras.Input((4,))
    h = keras.layers.Dense(16, activation="tanh")(inp)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    # steps_per_execution=2: Keras runs the steps in a tf.while_loop (covers that path)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse",
                  metrics=["mae"], steps_per_execution=2)
    dist.make_distributed(model)
    bcast = dist.BroadcastInitialState()
    hist = model.fit(ds, epochs=epochs, shuffle=False, callbacks=[bcast],
                     verbose=dist.root_verbose(0))
    ev = model.evaluate(ds, verbose=0, return_dict=True)
    np.savez(os.path.join(out_dir, f"w_rank{r}_of{n}.npz"),
             *[np.asarray(w) for w in model.weights])
    with open(os.path.join(out_dir, f"log_rank{r}_of{n}.json"), "w") as f:
        json.dump({"size": n, "history": hist.history, "num_broadcast": bcast.num_broadcast,
                   "eval": {k: float(v) for k, v in ev.items()}}, f)

    # An unbuilt subclassed model (weights created while tracing the first step),
    # again with rank-dependent initial weights: the deferred broadcast must still
    # leave all ranks with identical weights.
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)

        def call(self, x):
            return self.b(self.a(x))

    keras.utils.set_random_seed(99 + r)
    sub = Sub()
    sub.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    dist.make_distributed(sub)
    sub.fit(ds, epochs=2, shuffle=False, callbacks=[dist.BroadcastInitialState()], verbose=0)
    np.savez(os.path.join(out_dir, f"sub_rank{r}_of{n}.npz"), *[np.asarray(w) for w in sub.weights])
''')


def _env():
    env = dict(os.environ)
    for key in dist._LAUNCHER_ENV + ("EDNN_HOROVOD",):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU-only comparison, also on GPU machines
    return env


def _horovodrun(np_, script, *args, timeout=120, extra_env=None):
    env = _env()
    env.update(extra_env or {})
    cmd = [shutil.which("horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo",
           sys.executable, str(script), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@requires_horovod
def test_two_ranks_match_one_rank(tmp_path, monkeypatch):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    B, epochs = 16, 3

    # The 1-rank reference runs the same script in this (single-process) interpreter:
    # saves a TensorFlow start-up.
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path), str(B), str(epochs)])
    runpy.run_path(str(script), run_name="__main__")
    assert dist.size() == 1
    two = _horovodrun(2, script, tmp_path, B, epochs)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]

    w1 = np.load(tmp_path / "w_rank0_of1.npz")
    w20 = np.load(tmp_path / "w_rank0_of2.npz")
    w21 = np.load(tmp_path / "w_rank1_of2.npz")
    assert len(w1.files) == len(w20.files) == 4
    for k in w1.files:
        # identical on both ranks (same averaged gradients applied to broadcast weights)
        np.testing.assert_array_equal(w20[k], w21[k])
        # 2 x (B/2) with averaged gradients == 1 x B, up to float rounding
        np.testing.assert_allclose(w20[k], w1[k], rtol=1e-5, atol=1e-6)

    s0, s1 = np.load(tmp_path / "sub_rank0_of2.npz"), np.load(tmp_path / "sub_rank1_of2.npz")
    assert len(s0.files) == 4
    for k in s0.files:
        np.testing.assert_array_equal(s0[k], s1[k])

    logs = {name: json.loads((tmp_path / f"log_{name}.json").read_text())
            for name in ("rank0_of1", "rank0_of2", "rank1_of2")}
    assert logs["rank0_of1"]["size"] == 1 and logs["rank0_of2"]["size"] == 2
    assert logs["rank0_of1"]["num_broadcast"] == 0
    assert logs["rank0_of2"]["num_broadcast"] == logs["rank1_of2"]["num_broadcast"] > 4
    # metrics are averaged over ranks: identical on both ranks and equal to the 1-rank run
    assert logs["rank0_of2"]["history"] == logs["rank1_of2"]["history"]
    assert logs["rank0_of2"]["eval"] == logs["rank1_of2"]["eval"]
    for key, values in logs["rank0_of1"]["history"].items():
        np.testing.assert_allclose(logs["rank0_of2"]["history"][key], values, rtol=1e-5)
    for key, value in logs["rank0_of1"]["eval"].items():
        np.testing.assert_allclose(logs["rank0_of2"]["eval"][key], value, rtol=1e-5)


DYING_WORKER = textwrap.dedent('''
    import os, time
    import numpy as np, keras, tensorflow as tf
    from ednn_tf import distributed as dist

    dist.init()
    x = np.random.default_rng(0).normal(size=(512, 4)).astype("float32")
    ds = dist.shard(tf.data.Dataset.from_tensor_slices((x, x[:, :1]))).batch(8).repeat()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    dist.make_distributed(model)

    class ExitEarly(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if dist.rank() == 1 and epoch == 1:
                os._exit(0)  # a *clean* exit: horovodrun alone would not notice

    model.fit(ds, epochs=10_000, steps_per_epoch=5, shuffle=False, verbose=0,
              callbacks=[dist.BroadcastInitialState(), ExitEarly()])
''')


@requires_horovod
def test_vanished_rank_makes_survivors_fail_instead_of_hanging(tmp_path):
    script = tmp_path / "dying.py"
    script.write_text(DYING_WORKER)
    res = _horovodrun(2, script, timeout=90)  # a hang would raise TimeoutExpired
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "Connection closed by peer" in out or "Horovod has been shut down" in out, out[-3000:]


@requires_horovod
def test_sharded_sheet_two_ranks_equal_one_rank(tmp_path):
    """experiments/large_sheet.py: 2 ranks (5 tile rows: uneven stripes) == 1 rank == whole-sheet EDNN."""
    import json

    script = REPO / "experiments" / "large_sheet.py"
    args = ["--repeats", "1", "--pixels-per-cell", "80", "--focus", "16", "--context", "8", "--width", "0.125",
            "--no-progress", "--map"]
    one = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "one")], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    two = _horovodrun(2, script, *args, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["ranks"] == 2 and r1["tiles"] == r2["tiles"] == 25
    import h5py

    maps = []
    for where, r in (("one", 0), ("two", 0), ("two", 1)):
        with h5py.File(tmp_path / where / f"tile_map_rank{r}.h5", "r") as fh:
            maps.append(fh["tile_energy"][()])
    rows = [~np.isnan(m).all(axis=1) for m in maps[1:]]
    assert rows[0].sum() == 3 and rows[1].sum() == 2 and not (rows[0] & rows[1]).any()   # 3 + 2 rows, disjoint
    whole, parts = maps[0], np.where(rows[0][:, None], maps[1], maps[2])
    # Each tile value is a float32 sub-network output; a different batch composition may change it by
    # a few ulps (oneDNN picks kernels by batch size), nothing more. The float64 totals then agree to
    # the sum of those roundings.
    ulp = 4 * np.finfo(np.float32).eps * float(np.abs(whole).max())
    np.testing.assert_allclose(parts, whole, rtol=0, atol=ulp)
    assert abs(r1["total_energy"] - float(np.sum(whole, dtype=np.float64))) <= 1e-12 + 25 * ulp
    assert abs(r1["total_energy"] - r2["total_energy"]) <= 25 * ulp
