"""Monte Carlo with EDNN energies: local dE, colouring, cache consistency, exact sampling."""
import itertools

import keras
import numpy as np
import pytest

from ednn_tf import EDNN, networks, testing, tiling
from ednn_tf.apply.lattice_mc import LocalEnergy, Metropolis, colouring_1d, lattice_colouring
from ednn_tf.apply.thermo import binder_crossing, thermodynamics
from ednn_tf.tiling import TileIndex


def _spins(rng, *shape):
    return rng.choice(np.array([-1.0, 1.0], np.float32), size=shape)


def _dense_model(f, c, seed, ndim=2):
    t = f + 2 * c
    if ndim == 2:
        return EDNN(networks.ising_dense(t, seed=seed), focus=f, context=c)
    init = keras.initializers.GlorotUniform(seed=seed)
    inp = keras.Input((t, t, t, 1))
    h = keras.layers.Dense(16, activation="tanh", kernel_initializer=init)(keras.layers.Flatten()(inp))
    return EDNN(keras.Model(inp, keras.layers.Dense(1, kernel_initializer=init)(h)), focus=f, context=c)


def _onsager(T):
    try:
        from ednn_tf.ising import onsager_energy_per_spin
        return float(onsager_energy_per_spin(T))
    except ImportError:  # reference formula (Onsager 1944), J = k_B = 1
        from scipy.special import ellipk
        K = 1.0 / T
        k = 2 * np.sinh(2 * K) / np.cosh(2 * K) ** 2
        return float(-1 / np.tanh(2 * K) * (1 + 2 / np.pi * (2 * np.tanh(2 * K) ** 2 - 1) * ellipk(k * k)))


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f,c,L", [(1, 1, 8), (1, 2, 10), (2, 1, 8), (2, 2, 12), (3, 1, 9), (1, 3, 4)])
def test_local_delta_equals_full_difference(f, c, L):
    rng = np.random.default_rng(f * 10 + c)
    model = _dense_model(f, c, seed=f + 7 * c)
    s = _spins(rng, L, L)
    le = LocalEnergy(model, s)
    e0 = model.predict_total(s[None, ..., None])[0]
    assert le.energy == pytest.approx(e0, abs=1e-4)
    sites = np.concatenate([rng.integers(0, L, size=(6, 2)), [[0, 0], [L - 1, L - 1]]])
    d = le.delta_energy(sites)
    flipped = np.repeat(s[None], len(sites), axis=0)
    flipped[np.arange(len(sites)), sites[:, 0], sites[:, 1]] *= -1
    ref = model.predict_total(flipped[..., None]) - e0
    np.testing.assert_allclose(d, ref, atol=2e-4 * max(1.0, np.abs(ref).max()))
    assert np.abs(ref).max() > 1e-3  # the check is not vacuous
    # flip updates the cache; the cached total follows the full evaluation
    d_flip = le.flip(sites[:3])
    s2 = s.copy()
    for i, j in sites[:3]:
        s2[i, j] *= -1
    e2 = model.predict_total(s2[None, ..., None])[0]
    assert d_flip == pytest.approx(e2 - e0, abs=2e-4)
    assert le.energy == pytest.approx(e2, abs=2e-4)
    np.testing.assert_array_equal(le.spins[..., 0], s2)
    np.testing.assert_allclose(le.contributions[0], np.asarray(model.tile_contributions(s2[None, ..., None]))[0],
                               atol=1e-5)


def test_local_delta_3d():
    rng = np.random.default_rng(3)
    model = _dense_model(1, 1, seed=3, ndim=3)
    s = _spins(rng, 4, 6, 3)
    le = LocalEnergy(model, s, ndim=3)
    e0 = model.predict_total(s[None, ..., None])[0]
    sites = np.array([[0, 0, 0], [3, 5, 2], [1, 2, 1]])
    flipped = np.repeat(s[None], 3, axis=0)
    flipped[np.arange(3), sites[:, 0], sites[:, 1], sites[:, 2]] *= -1
    np.testing.assert_allclose(le.delta_energy(sites), model.predict_total(flipped[..., None]) - e0, atol=1e-4)


def test_affected_tiles_match_tiling():
    for f, c, shape in [(1, 1, (6, 9)), (2, 1, (8, 6)), (3, 1, (9, 6)), (1, 4, (5, 7))]:
        idx = TileIndex(shape, f, c)
        for site in [(0, 0), (shape[0] - 1, 2), (3, shape[1] - 1)]:
            tiles, _ = idx.tiles_of(idx.flat_sites([site]))
            got = {tuple(r) for r in idx.tile_coords(tiles)}
            assert got == {tuple(r) for r in tiling.tiles_containing(site, f, c, shape)}
        k = idx.n_tiles // 2
        win = tiling.tile_window(np.unravel_index(k, idx.tile_grid), f, c, shape)
        np.testing.assert_array_equal(idx.windows[k], np.ravel_multi_index(np.ix_(*win), shape))


@pytest.mark.parametrize("f,c,shape", [(1, 1, (9, 12)), (1, 1, (16, 16)), (1, 1, (128, 128)), (2, 1, (8, 8)),
                                       (2, 1, (10, 14)), (1, 2, (7, 11)), (3, 2, (6, 12)), (1, 1, (2, 5))])
def test_colouring_no_tile_holds_two_sites_of_one_colour(f, c, shape):
    colours, n = lattice_colouring(shape, f, c)
    t = f + 2 * c
    assert colours.shape == shape and colours.min() == 0 and colours.max() == n - 1
    assert len(np.unique(colours)) == n
    if all(L % t == 0 for L in shape):
        assert n == t * t  # the minimum possible
    seen = set()
    sites = list(itertools.product(*map(range, shape)))
    if len(sites) > 2000:  # large lattice: check a band of sites crossing the periodic seam
        sites = [s for s in sites if s[0] < 8 or s[0] >= shape[0] - 8]
    for site in sites:
        for tile in tiling.tiles_containing(site, f, c, shape):
            key = (tuple(tile), int(colours[site]))
            assert key not in seen, f"tile {tuple(tile)} holds two sites of colour {colours[site]}"
            seen.add(key)


def test_colouring_1d_counts_and_bad_input():
    col, n = colouring_1d(128, 3)
    assert n == 4 and np.bincount(col).tolist() == [42, 42, 42, 2]
    assert colouring_1d(12, 3)[1] == 3
    assert colouring_1d(2, 3)[1] == 2
    with pytest.raises(ValueError, match="tile_size=0"):
        colouring_1d(8, 0)
    with pytest.raises(ValueError, match="n=-1"):
        colouring_1d(-1, 3)


@pytest.mark.parametrize("f,c,L", [(1, 1, 10), (2, 1, 10)])
def test_cache_consistent_after_sweeps(f, c, L):
    rng = np.random.default_rng(5)
    model = _dense_model(f, c, seed=11)
    mc = Metropolis(model, _spins(rng, 3, L, L), temperatures=[0.05, 0.2, 1.0], seed=1)
    e, m = mc.sweep(25)
    full = mc.full_energy()
    np.testing.assert_allclose(mc.total_energy(), full, atol=5e-4)
    np.testing.assert_allclose(e, full, atol=5e-4)
    np.testing.assert_allclose(m, mc.spins.mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(mc.contributions, np.asarray(model.tile_contributions(mc.spins)), atol=1e-5)
    assert np.all((mc.acceptance > 0.01) & (mc.acceptance < 0.99))
    assert mc.refresh() < 5e-4


@pytest.mark.parametrize("f,c,shape", [(1, 1, (1, 6)), (2, 0, (2, 4))])
def test_parallel_updates_sample_the_ednn_boltzmann_distribution(f, c, shape):
    """Exact enumeration of a tiny lattice (colours holding two sites each, updated in parallel):
    the visited-state histogram matches exp(-E_EDNN/T)/Z of the model's own energy."""
    n = int(np.prod(shape))
    model = _dense_model(f, c, seed=2)
    states = np.array(list(itertools.product([-1.0, 1.0], repeat=n)), np.float32).reshape((-1, *shape, 1))
    energy = model.predict_total(states, batch_size=256)
    T = 0.5 * energy.std()
    p = np.exp(-(energy - energy.min()) / T)
    p /= p.sum()
    R = 256
    mc = Metropolis(model, _spins(np.random.default_rng(0), R, *shape), T, seed=4)
    assert mc.colour_sizes().min() == 2
    mc.sweep(20)
    counts = np.zeros(len(states))
    weights = 2 ** np.arange(n)[::-1]
    for _ in range(150):
        mc.sweep(1)
        codes = ((mc.spins.reshape(R, n) > 0) * weights).sum(axis=1)
        counts += np.bincount(codes, minlength=len(states))
    q = counts / counts.sum()
    tv = 0.5 * np.abs(q - p).sum()
    assert 0.5 * np.abs(p - 1 / len(p)).sum() > 0.3  # far from uniform: the check discriminates
    assert tv < 0.05, f"total variation distance {tv:.3f}"


def test_exact_ising_subnet_matches_onsager():
    """An EDNN whose subnet is the exact Ising bond term: energy per spin on 16x16 agrees with
    Onsager's infinite-lattice result (finite-size effects are tiny at these T)."""
    model = EDNN(testing.exact_ising_subnet(1, 1), focus=1, context=1)
    temps = np.repeat([1.5, 3.5], 16)
    mc = Metropolis(model, np.ones((32, 16, 16), np.float32), temps, seed=0)
    mc.sweep(150)
    obs = mc.run(500)
    u = obs["energy"] / 256
    for i, T in enumerate([1.5, 3.5]):
        got = u[:, 16 * i:16 * (i + 1)].mean()
        assert got == pytest.approx(_onsager(T), rel=0.01), (T, got, _onsager(T))
    m = np.abs(obs["magnetisation"]).mean(axis=0)
    assert m[:16].mean() > 0.95 and m[16:].mean() < 0.2
    s = mc.spins[..., 0]
    exact = -(s * (np.roll(s, -1, 1) + np.roll(s, -1, 2))).sum(axis=(1, 2))
    np.testing.assert_allclose(mc.total_energy(), exact)


def test_bad_input():
    model = _dense_model(1, 1, seed=0)
    with pytest.raises(ValueError, match="temperatures"):
        Metropolis(model, np.ones((2, 6, 6)), [1.0, -1.0])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        Metropolis(model, np.ones((2, 6, 6)), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="spins must have shape"):
        Metropolis(model, np.ones((6, 6)), 1.0)
    with pytest.raises(ValueError, match="focus=2"):
        LocalEnergy(_dense_model(2, 1, seed=0), np.ones((5, 6)))
    le = LocalEnergy(model, np.ones((6, 6)))
    with pytest.raises(ValueError, match=r"site \(6, 0\)"):
        le.delta_energy([[6, 0]])
    with pytest.raises(ValueError, match="sites must be"):
        le.delta_energy([[1, 2, 3]])
    with pytest.raises(ValueError, match="NaN"):
        LocalEnergy(model, np.full((6, 6), np.nan))
    with pytest.raises(ValueError, match="n_sweeps"):
        Metropolis(model, np.ones((1, 6, 6)), 1.0).sweep(-1)
    with pytest.raises(ValueError, match="EDNN"):
        LocalEnergy(networks.ising_dense(3), np.ones((6, 6)))


def test_thermodynamics_and_binder_crossing():
    rng = np.random.default_rng(0)
    T = np.array([1.0, 2.0, 1.0, 2.0])
    e = rng.normal(-100.0, 3.0, size=(400, 4))
    m = rng.choice([-0.5, 0.5], size=(400, 4))  # |m| constant: Binder cumulant exactly 2/3
    th = thermodynamics(e, m, T, n_sites=50, n_blocks=8)
    np.testing.assert_array_equal(th["T"], [1.0, 2.0])
    np.testing.assert_allclose(th["energy_per_site"], [e[:, [0, 2]].mean() / 50, e[:, [1, 3]].mean() / 50])
    np.testing.assert_allclose(th["specific_heat"], [e[:, [0, 2]].var() / 50, e[:, [1, 3]].var() / 200])
    np.testing.assert_allclose(th["binder"], 2 / 3)
    np.testing.assert_allclose(th["abs_magnetisation"], 0.5)
    assert np.all(th["energy_per_site_err"] > 0) and th["n_samples"].tolist() == [800, 800]
    Ts = np.linspace(2.0, 2.5, 6)
    assert binder_crossing(Ts, 0.6 - 0.2 * (Ts - 2.27), 0.6 - 0.5 * (Ts - 2.27)) == pytest.approx(2.27)
    assert binder_crossing(Ts, Ts, Ts + 1) is None
    with pytest.raises(ValueError, match="n_blocks"):
        thermodynamics(e, m, T, n_sites=50, n_blocks=1)


def test_experiment_script_tiny(tmp_path):
    """experiments/ising_mc.py end to end on the tiny preset (exact sub-network as the 'EDNN')."""
    pytest.importorskip("ednn_tf.ising")
    from conftest import run_experiment
    res = run_experiment("ising_mc", tmp_path, "--model", "exact", "--preset", "tiny", "--no-progress")
    assert (tmp_path / "thermodynamics.png").exists()
    for L in ("8", "16"):
        e, x = res["runs"]["ednn"][L]["thermo"], res["runs"]["exact"][L]["thermo"]
        assert len(e["T"]) == 5 and np.all(np.isfinite(e["energy_per_site"]))
        assert res["runs"]["ednn"][L]["final_config_energy_error_per_site"]["max_abs"] < 1e-5
        assert e["energy_per_site"][0] == pytest.approx(x["energy_per_site"][0], abs=0.05)  # T=1.5, ordered
