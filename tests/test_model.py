"""EDNN model: physics properties, float64 summation, save/load, config, bad input."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ednn_tf import model as model_lib
from ednn_tf import networks, testing
from ednn_tf.model import EDNN


def _brute_force_ising(s, J=1.0):
    L, M = s.shape
    e = 0.0
    for i in range(L):
        for j in range(M):
            e -= J * s[i, j] * (s[(i + 1) % L, j] + s[i, (j + 1) % M])
    return e


def _spins(rng, n, L, M=None):
    return rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, L, M or L, 1))


@pytest.fixture(scope="module")
def trained_f2c1():
    """A small EDNN (f=2, c=1) fitted for a few steps to the Ising energy, so weights are generic."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = _spins(rng, 256, 8)
    y = np.array([_brute_force_ising(s[..., 0]) for s in x])[:, None]
    model = EDNN(networks.ising_dense(4, seed=0), focus=2, context=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    return model


@pytest.mark.parametrize("L", [8, 128])
def test_exact_local_operator_tiles_sum_to_energy(L):
    """f=1, c=1 with a sub-network that is exactly the local Ising term: sum of tiles == H."""
    rng = np.random.default_rng(L)
    x = _spins(rng, 3, L)
    model = EDNN(testing.exact_ising_subnet(1, 1), focus=1, context=1)
    exact = np.array([_brute_force_ising(s[..., 0]) for s in x])
    np.testing.assert_array_equal(np.asarray(model(x)).ravel(), exact)   # integers: exact
    np.testing.assert_array_equal(model.predict_total(x), exact)
    testing.assert_tiles_sum_to_total(model, x)


def test_exact_local_operator_f2_c1():
    rng = np.random.default_rng(3)
    x = _spins(rng, 2, 8, 12)
    model = EDNN(testing.exact_ising_subnet(2, 1), focus=2, context=1)
    exact = [_brute_force_ising(s[..., 0]) for s in x]
    np.testing.assert_array_equal(np.asarray(model(x)).ravel(), exact)


def test_trained_model_periodic_shift_invariance(trained_f2c1):
    x = _spins(np.random.default_rng(1), 4, 8)
    testing.assert_shift_invariant(trained_f2c1, x, shifts=[(2, 0), (0, 6), (4, 2), (6, 6)])
    # a roll by a non-multiple of f is not a symmetry of the tiling: it must change the output
    rolled = np.roll(x, 1, axis=1)
    assert np.max(np.abs(np.asarray(trained_f2c1(rolled)) - np.asarray(trained_f2c1(x)))) > 1e-3


def test_trained_model_supercell_extensivity(trained_f2c1):
    x = _spins(np.random.default_rng(2), 4, 8)
    testing.assert_supercell_extensive(trained_f2c1, x, ks=(1, 2, 4))
    testing.assert_tiles_sum_to_total(trained_f2c1, np.tile(x, (1, 4, 4, 1)))


def test_same_model_any_size(trained_f2c1):
    for shape in [(2, 2), (8, 8), (16, 6), (128, 128)]:
        x = _spins(np.random.default_rng(4), 2, *shape)
        out = trained_f2c1.predict(x, verbose=0)
        assert out.shape == (2, 1)
        assert trained_f2c1.tile_contributions(x).shape == (2, shape[0] // 2, shape[1] // 2)


def test_float64_summation_of_many_tiles():
    """2^20 tiles of a float32 constant: the total is exact in float64, not float32-rounded."""
    inp = keras.Input((1, 1, 1))
    sub = keras.Model(inp, keras.layers.Dense(1, kernel_initializer="zeros",
                                              bias_initializer=keras.initializers.Constant(0.1))(inp)[:, 0, 0])
    model = EDNN(sub, focus=1, context=0)
    x = np.zeros((1, 1024, 1024, 1), np.float32)
    n = 1024 * 1024
    expect = n * float(np.float32(0.1))
    total = float(np.asarray(model(x))[0, 0])
    assert model(x).dtype == tf.float64
    assert abs(total - expect) < 1e-9 * expect

    # Generic float32 tile values (an identity subnet: value = pixel): EDNN's total, and
    # model.sum_tiles on numpy and on tensor input, equal the exactly rounded float64 sum ...
    ident = keras.Model(inp, keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")(inp)[:, 0, 0])
    vals = np.random.default_rng(1).uniform(0.0, 1.0, (1, 1024, 1024, 1)).astype(np.float32)
    exact = math.fsum(vals.astype(np.float64).ravel())
    for got in (np.asarray(EDNN(ident, focus=1, context=0)(vals))[0, 0],
                model_lib.sum_tiles(vals), model_lib.sum_tiles(tf.constant(vals))):
        assert abs(float(got) - exact) <= 1e-12 * exact
    # ... where a plain float32 running sum is off by far more
    seq32 = float(np.cumsum(vals.ravel(), dtype=np.float32)[-1])
    assert abs(seq32 - exact) > 1e-6 * exact


def test_autodiff_matches_finite_differences():
    """d total / d input through tiling + subnet, in float64, against central differences."""
    keras.utils.set_random_seed(5)
    t = 4
    inp = keras.Input((t, t, 2), dtype="float64")
    h = keras.layers.Flatten(dtype="float64")(inp)
    h = keras.layers.Dense(8, activation="tanh", dtype="float64")(h)
    sub = keras.Model(inp, keras.layers.Dense(1, dtype="float64")(h))
    model = EDNN(sub, focus=2, context=1, dtype="float64")
    x = np.random.default_rng(6).normal(size=(1, 4, 6, 2))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        e = model(xt)
    grad = tape.gradient(e, xt).numpy()
    eps = 1e-6
    rng = np.random.default_rng(7)
    for _ in range(8):
        idx = tuple(int(rng.integers(0, n)) for n in x.shape)
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        fd = (float(model(xp)[0, 0]) - float(model(xm)[0, 0])) / (2 * eps)
        assert abs(fd - grad[idx]) < 1e-6 * max(1.0, abs(fd)), (idx, fd, grad[idx])


def test_3d_model_extensive_and_consistent():
    keras.utils.set_random_seed(8)
    t = 4
    inp = keras.Input((t, t, t, 1))
    h = keras.layers.Conv3D(4, 3, activation="relu")(inp)
    h = keras.layers.Flatten()(h)
    sub = keras.Model(inp, keras.layers.Dense(1)(h))
    model = EDNN(sub, focus=2, context=1)
    x = np.random.default_rng(9).normal(size=(2, 4, 2, 6, 1)).astype(np.float32)
    assert model.tile_contributions(x).shape == (2, 2, 1, 3)
    testing.assert_tiles_sum_to_total(model, x)
    testing.assert_supercell_extensive(model, x, ks=(1, 2))
    testing.assert_shift_invariant(model, x, shifts=[(2, 0, 4), (0, 2, 2)])


def test_save_load_round_trip_identical(tmp_path, trained_f2c1):
    x = _spins(np.random.default_rng(10), 5, 16, 8)
    path = tmp_path / "m.keras"
    trained_f2c1.save(path)
    loaded = keras.models.load_model(path)   # no custom_objects
    assert type(loaded) is EDNN and (loaded.focus, loaded.context) == (2, 1)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trained_f2c1.predict(x, verbose=0))
    np.testing.assert_array_equal(loaded.tile_contributions(x).numpy(), trained_f2c1.tile_contributions(x).numpy())


def test_save_load_cnn_and_custom_layer_subnets(tmp_path):
    for sub, f, c, ch in [(networks.paper_cnn(16, channels=2, width=0.25, dense=16, seed=1), 8, 4, 2),
                          (testing.exact_ising_subnet(1, 1), 1, 1, 1)]:
        model = EDNN(sub, focus=f, context=c, check_finite=True)
        x = np.random.default_rng(11).normal(size=(2, 16, 24, ch)).astype(np.float32)
        ref = model.predict(x, verbose=0)
        model.save(tmp_path / "m.keras")
        loaded = keras.models.load_model(tmp_path / "m.keras")
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), ref)
        assert loaded.check_finite is True


def test_get_config_from_config():
    model = EDNN(networks.ising_dense(5, seed=3), focus=1, context=2, output_dtype="float32", name="e")
    clone = EDNN.from_config(model.get_config())
    assert (clone.focus, clone.context, clone.output_dtype, clone.name) == (1, 2, "float32", "e")
    assert [w.shape for w in clone.subnet.weights] == [w.shape for w in model.subnet.weights]
    sub = testing.IsingTileEnergy(2, 1, J=0.5)
    assert testing.IsingTileEnergy.from_config(sub.get_config()).J == 0.5


def test_paper_networks_shapes():
    dense = networks.ising_dense(3)
    assert [l.units for l in dense.layers if isinstance(l, keras.layers.Dense)] == [288, 64, 64, 1]
    assert dense.layers[-1].activation is keras.activations.linear
    cnn = networks.paper_cnn(128)
    convs = [l for l in cnn.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 13
    assert [(l.filters, l.kernel_size[0], l.strides[0]) for l in convs] == list(networks.PAPER_CNN_LAYERS)
    assert [l.units for l in cnn.layers if isinstance(l, keras.layers.Dense)] == [1024, 1]
    assert cnn.layers[-1].activation is keras.activations.linear
    assert cnn.get_layer("conv13").output.shape[1:] == (16, 16, 32)   # 128 / 2^3


def test_bad_inputs_and_mismatched_subnet():
    with pytest.raises(ValueError, match="tiles 5 wide"):
        EDNN(networks.ising_dense(3), focus=1, context=2)
    with pytest.raises(ValueError, match="output_dtype"):
        EDNN(networks.ising_dense(3), focus=1, context=1, output_dtype="int8")
    model = EDNN(networks.ising_dense(3), focus=1, context=1)
    with pytest.raises(ValueError, match="input has 2"):
        model(np.zeros((1, 4, 4, 2), np.float32))
    model = EDNN(networks.ising_dense(4), focus=2, context=1)
    with pytest.raises(ValueError, match=r"spatial size 5"):
        model.predict_total(np.zeros((1, 4, 5, 1)))
    with pytest.raises(ValueError, match="rank 3"):
        model.predict_total(np.zeros((4, 4, 1)))
    bad = np.zeros((1, 4, 4, 1))
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        model.predict_total(bad)


def test_cnn_initializers_he_keeps_the_signal_through_relus():
    """He-normal kernels have std sqrt(2 / fan_in); through the 13 ReLU convolutions they keep the
    output's dependence on the input, which Glorot kernels shrink by orders of magnitude."""
    x = np.random.default_rng(0).random((16, 32, 32, 1)).astype(np.float32) * 6.0
    spread = {}
    for init in ("glorot", "he"):
        cnn = networks.paper_cnn(32, width=0.25, dense=32, seed=4, initializer=init)
        k = cnn.get_layer("conv5").kernel.numpy()
        if init == "he":
            assert k.std() == pytest.approx(np.sqrt(2.0 / np.prod(k.shape[:3])), rel=0.15)
        y = np.asarray(cnn(x))[:, 0]
        spread[init] = y.std() / x.std()
        same = networks.paper_cnn(32, width=0.25, dense=32, seed=4, initializer=init)
        np.testing.assert_array_equal(same(x), cnn(x))       # seeded: reproducible
    assert spread["he"] > 10 * spread["glorot"], spread
    plain = networks.plain_cnn(32, 32, width=0.25, dense=8, seed=1, initializer="he")
    assert plain.get_layer("conv1").kernel_initializer.__class__.__name__ == "HeNormal"
    with pytest.raises(ValueError, match="initializer must be one of .*'xavier'"):
        networks.paper_cnn(32, initializer="xavier")


def test_normalise_to_data_gives_unit_std_on_real_inputs():
    rng = np.random.default_rng(1)
    x = np.zeros((64, 32, 32, 1), np.float32)                   # sparse "atoms" on an empty background
    idx = rng.integers(0, 32, size=(64, 6, 2))
    for b in range(64):
        x[b, idx[b, :, 0], idx[b, :, 1], 0] = rng.uniform(5, 7, 6)
    cnn = networks.paper_cnn(32, width=0.25, dense=16, seed=2, initializer="he")
    before = float(np.std(cnn.predict(x, verbose=0)))
    stds = networks.normalise_to_data(cnn, x, target=1.0)
    assert [n for n, _ in stds][0] == "conv1" and len(stds) == 15     # 13 convs + 2 dense
    # zero biases + ReLU: each division rescales the output exactly, so the stds multiply to the old one
    assert np.prod([s for _, s in stds]) == pytest.approx(before, rel=1e-3)
    after = np.asarray(cnn.predict(x, verbose=0))
    assert after.std() == pytest.approx(1.0, rel=1e-3)
    for name in ("conv7", "dense1"):                               # every layer at unit std
        probe = keras.Model(cnn.input, cnn.get_layer(name).output)
        assert float(np.std(probe.predict(x, verbose=0))) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match=r"batch of the model's inputs \(32, 32, 1\), got \(4, 16, 16, 1\)"):
        networks.normalise_to_data(cnn, np.zeros((4, 16, 16, 1)))
    with pytest.raises(ValueError, match="constant output"):
        networks.normalise_to_data(cnn, np.zeros((4, 32, 32, 1)))


def test_predict_total_bounds_tiles_per_subnet_call(trained_f2c1, monkeypatch):
    """``predict_total`` cuts at most ``max_call_elements`` tile values per sub-network call, whatever
    ``batch_size`` asks (a 4096-lattice batch once held 1.6 GB per layer, issue 15), at least one
    configuration per call, and gives the same totals as one call for the whole batch."""
    model = trained_f2c1
    x = _spins(np.random.default_rng(7), 23, 8, 12)              # 4 x 6 tiles of 4 x 4 values each
    per_config = 4 * 6 * 4 * 4
    whole = model.predict_total(x, batch_size=64)                 # default budget: one call
    calls = []
    real = EDNN.tile_contributions
    monkeypatch.setattr(EDNN, "tile_contributions", lambda self, t, training=False: (calls.append(len(t)),
                                                                                      real(self, t, training))[1])
    monkeypatch.setattr(model, "max_call_elements", 5 * per_config + 3)
    chunked = model.predict_total(x, batch_size=64)
    assert calls == [5, 5, 5, 5, 3]
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)         # per-tile values: independent of the batch
    calls.clear()
    assert model.predict_total(x, batch_size=2).shape == (23,) and max(calls) == 2   # a smaller batch_size wins
    calls.clear()
    monkeypatch.setattr(model, "max_call_elements", 1)            # below one configuration: one per call
    np.testing.assert_allclose(model.predict_total(x[:3], batch_size=64), whole[:3], rtol=1e-6)
    assert calls == [1, 1, 1]
