"""ednn_tf.ising: exact energies, Onsager's solution, the Metropolis + Swendsen-Wang sampler and
the dataset writer. Units: energies in J, temperatures in J/k_B."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from ednn_tf import ising


def _brute_energy(s, J=1.0):
    """-J sum over every site of s_i (s_right + s_down), periodic, by explicit loops."""
    L, M = s.shape
    e = 0.0
    for i in range(L):
        for j in range(M):
            e -= J * s[i, j] * (s[i, (j + 1) % M] + s[(i + 1) % L, j])
    return e


def _random_spins(rng, *shape):
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)


# ------------------------------------------------------------------------------------------------
# exact energy
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (2, 2), (2, 3), (3, 3), (4, 5), (5, 4), (6, 7), (8, 8)])
def test_energy_matches_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    batch = _random_spins(rng, 7, *shape)
    ref = np.array([_brute_energy(s) for s in batch])
    e = ising.ising_energy(batch)
    assert e.dtype == np.float64 and e.shape == (7,)
    np.testing.assert_array_equal(e, ref)
    np.testing.assert_array_equal(ising.ising_energy(batch[..., None]), ref)            # (N, L, M, 1)
    np.testing.assert_array_equal(ising.ising_energy(batch.astype(np.float32)), ref)    # float input
    for k in range(3):                                                                  # single form
        single = ising.ising_energy(batch[k])
        assert np.ndim(single) == 0 and single == ref[k]
    np.testing.assert_allclose(ising.ising_energy(batch, J=-0.5), -0.5 * ref)


def test_energy_ground_state_and_multiples_of_four():
    for L, M in [(4, 4), (8, 8), (6, 10), (3, 5), (1, 1)]:
        assert ising.ising_energy(np.ones((L, M), np.int8)) == -2 * L * M
        assert ising.ising_energy(-np.ones((L, M)), J=2.5) == -2 * 2.5 * L * M
    # the 2 L M bonds of an even periodic lattice: an even number are broken -> E = -2LM + 2*broken in steps of 4
    rng = np.random.default_rng(1)
    for L, M in [(8, 8), (4, 6), (16, 16)]:
        e = ising.ising_energy(_random_spins(rng, 200, L, M))
        np.testing.assert_array_equal(np.mod(e, 4.0), 0.0)
        assert e.min() >= -2 * L * M and e.max() <= 2 * L * M
    # checkerboard: every bond broken
    cb = 1 - 2 * (np.add.outer(np.arange(6), np.arange(8)) % 2)
    assert ising.ising_energy(cb) == 2 * 6 * 8


def test_energy_bad_input():
    with pytest.raises(ValueError, match="0"):
        ising.ising_energy(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="0.5"):
        ising.ising_energy(np.array([[1, 0.5], [1, -1]]))
    with pytest.raises(ValueError, match="nan"):
        ising.ising_energy(np.array([[1, np.nan], [1, -1]]))
    with pytest.raises(ValueError, match="2"):
        ising.ising_energy(np.array([[1, 2], [1, -1]]))
    for shape in [(4,), (2, 3, 4, 4, 1), (2, 4, 4, 2), (0, 4)]:
        with pytest.raises(ValueError, match="shape"):
            ising.ising_energy(np.ones(shape))
    with pytest.raises(ValueError, match="dtype"):
        ising.ising_energy(np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="J=inf"):
        ising.ising_energy(np.ones((4, 4)), J=float("inf"))


# ------------------------------------------------------------------------------------------------
# Onsager
# ------------------------------------------------------------------------------------------------
def test_onsager_known_values():
    assert ising.TC == pytest.approx(2.269185314213022, rel=1e-15)
    assert ising.onsager_energy_per_spin(ising.TC) == pytest.approx(-np.sqrt(2), abs=1e-12)
    for dt in (1e-9, -1e-9):   # continuous through Tc (0 * log-divergence)
        assert ising.onsager_energy_per_spin(ising.TC + dt) == pytest.approx(-np.sqrt(2), abs=1e-6)
    assert ising.onsager_energy_per_spin(0.05) == pytest.approx(-2.0, abs=1e-12)
    assert ising.onsager_energy_per_spin(1e-3) == -2.0                # no overflow warnings/NaN
    assert ising.onsager_energy_per_spin(1e4) == pytest.approx(-2e-4, rel=1e-3)   # u ~ -2J tanh(J/T)
    T = np.array([[1.0, 2.0], [3.0, 4.0]])
    u = ising.onsager_energy_per_spin(T)
    assert u.shape == (2, 2) and np.all(np.diff(u.ravel()) > 0)       # increasing in T
    np.testing.assert_allclose(ising.onsager_energy_per_spin(2 * T, J=2.0), 2 * u, rtol=1e-14)
    assert isinstance(ising.onsager_energy_per_spin(1.5), float)


@pytest.mark.parametrize("T", [1.5, 2.0, 3.0, 4.0])
def test_onsager_energy_is_derivative_of_free_energy(T):
    """Independent check: u = d(beta f)/d beta from Onsager's double-integral free energy."""
    n = 512
    th = (np.arange(n) + 0.5) * 2 * np.pi / n     # midpoint rule, spectrally accurate for T != Tc
    c = np.cos(th)[:, None] + np.cos(th)[None, :]

    def minus_beta_f(K):
        return np.log(2) / 2 + np.mean(np.log(np.cosh(2 * K) ** 2 - np.sinh(2 * K) * c)) / 2

    K, h = 1 / T, 1e-5
    u = -(minus_beta_f(K + h) - minus_beta_f(K - h)) / (2 * h)
    assert ising.onsager_energy_per_spin(T) == pytest.approx(u, abs=1e-7)


def test_onsager_magnetisation():
    m = ising.onsager_magnetisation(np.array([0.5, 1.0, 2.0, 2.25, ising.TC, 2.3, 5.0]))
    assert m[0] == pytest.approx(1.0, abs=1e-6) and ising.onsager_magnetisation(0.1) == pytest.approx(1.0, abs=1e-15)
    assert m[1] == pytest.approx((1 - np.sinh(2.0) ** -4) ** 0.125, rel=1e-14)
    assert m[2] == pytest.approx(0.911319377877496, rel=1e-12)
    assert np.all(np.diff(m[:4]) < 0) and 0 < m[3] < 0.7
    np.testing.assert_array_equal(m[4:], 0.0)


def test_onsager_bad_input():
    for bad in (0.0, -1.0, np.nan, np.inf, [1.0, -2.0]):
        with pytest.raises(ValueError, match="T must be finite and > 0"):
            ising.onsager_energy_per_spin(bad)
        with pytest.raises(ValueError, match="T must be finite and > 0"):
            ising.onsager_magnetisation(bad)
    with pytest.raises(ValueError, match="J=-1"):
        ising.onsager_energy_per_spin(2.0, J=-1)


# ------------------------------------------------------------------------------------------------
# sampler
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples_32():
    temps = np.repeat([1.5, 3.5], 256)
    return ising.sample_configurations(32, temps, n_per_temperature=2, seed=3)


def test_sampler_output_format(samples_32):
    spins, temps = samples_32
    assert spins.dtype == np.int8 and spins.shape == (1024, 32, 32)
    assert temps.dtype == np.float64 and temps.shape == (1024,)
    np.testing.assert_array_equal(temps, np.repeat([1.5, 3.5], 512))
    assert set(np.unique(spins)) == {-1, 1}
    np.testing.assert_array_equal(np.mod(ising.ising_energy(spins), 4), 0)


@pytest.mark.parametrize("T", [1.5, 3.5])
def test_sampler_energy_matches_onsager(samples_32, T):
    spins, temps = samples_32
    e = ising.ising_energy(spins[temps == T]) / 32 ** 2
    u = ising.onsager_energy_per_spin(T)
    assert e.mean() == pytest.approx(u, rel=0.02)
    if T < ising.TC:
        m = np.abs(spins[temps == T].mean(axis=(1, 2)))
        assert m.mean() == pytest.approx(ising.onsager_magnetisation(T), rel=0.02)
        # the cluster move flips the ordered lattices: both signs of m are sampled
        m_signed = spins[temps == T].mean(axis=(1, 2))
        assert 0.3 < np.mean(m_signed > 0) < 0.7


@pytest.mark.parametrize("cluster,metropolis", [(False, True), (True, False)])
def test_each_move_alone_matches_onsager(cluster, metropolis):
    temps = np.repeat([1.5, 3.5], 160)
    spins, t = ising.sample_configurations(32, temps, n_per_temperature=2, seed=5, cluster=cluster,
                                           metropolis=metropolis)
    for T in (1.5, 3.5):
        e = ising.ising_energy(spins[t == T]) / 32 ** 2
        assert e.mean() == pytest.approx(ising.onsager_energy_per_spin(T), rel=0.02)


def test_sampler_seed_reproducible():
    kw = dict(n_per_temperature=3, n_thermalise=3, n_between=2)
    a, ta = ising.sample_configurations(8, [1.0, 2.3, 4.0], seed=11, **kw)
    b, tb = ising.sample_configurations(8, [1.0, 2.3, 4.0], seed=11, **kw)
    c, _ = ising.sample_configurations(8, [1.0, 2.3, 4.0], seed=12, **kw)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta, tb)
    assert not np.array_equal(a, c)
    x1, t1, r1 = ising.sample_uniform_temperatures(6, 25, 1.0, 4.0, snapshots_per_replica=4, seed=2, n_thermalise=2)
    x2, t2, r2 = ising.sample_uniform_temperatures(6, 25, 1.0, 4.0, snapshots_per_replica=4, seed=2, n_thermalise=2)
    x3, t3, _ = ising.sample_uniform_temperatures(6, 25, 1.0, 4.0, snapshots_per_replica=4, seed=3, n_thermalise=2)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(t1, t2)
    assert x1.shape == (25, 6, 6) and t1.shape == (25,) and not np.array_equal(t1, t3)
    assert np.all((t1 >= 1.0) & (t1 <= 4.0))
    np.testing.assert_array_equal(r1, np.repeat(np.arange(7), 4)[:25])
    assert np.all(t1[r1 == 0] == t1[0]) and len(np.unique(t1)) == 7


def _exact_distribution(h, w, T, J):
    """Boltzmann probabilities of every configuration of an h x w periodic lattice."""
    states = np.array(list(itertools.product([-1, 1], repeat=h * w)), dtype=np.int8).reshape(-1, h, w)
    e = ising.ising_energy(states, J)
    p = np.exp(-(e - e.min()) / T)
    return states, p / p.sum()


def _chi2_pvalue(observed, expected_p):
    """Pearson chi-square p-value; bins with expected count < 5 are pooled."""
    from scipy.stats import chi2
    exp = expected_p * observed.sum()
    small = exp < 5
    obs_b = np.append(observed[~small], observed[small].sum())
    exp_b = np.append(exp[~small], exp[small].sum())
    if exp_b[-1] == 0:
        obs_b, exp_b = obs_b[:-1], exp_b[:-1]
    stat = np.sum((obs_b - exp_b) ** 2 / exp_b)
    return chi2.sf(stat, len(exp_b) - 1)


@pytest.mark.parametrize("h,w,T,J,cluster,metropolis", [
    (2, 2, 3.0, 1.0, True, False),     # coinciding neighbours: the (0,1) pair is two bonds
    (3, 3, 2.5, 1.0, True, False),     # odd sides (no checkerboard)
    (2, 3, 2.0, -1.0, True, False),    # antiferromagnet, non-square
    (3, 3, 2.5, 1.0, False, True),     # Metropolis alone with 3 colours
    (2, 4, 1.5, 1.0, True, True),
])
def test_moves_preserve_boltzmann_exactly(h, w, T, J, cluster, metropolis):
    """State histogram of 40,000 independent chains vs exact enumeration (chi-square)."""
    states, p = _exact_distribution(h, w, T, J)
    spins, _ = ising.sample_configurations((h, w), np.full(40_000, T), n_thermalise=12, seed=7, J=J,
                                           cluster=cluster, metropolis=metropolis)
    code = ((spins.reshape(len(spins), -1) > 0) * (1 << np.arange(h * w)[::-1])).sum(axis=1)
    counts = np.bincount(code, minlength=len(states))
    assert _chi2_pvalue(counts, p) > 1e-3
    # the test has power: the same samples are rejected against a slightly different temperature
    _, p_wrong = _exact_distribution(h, w, T * 1.1, J)
    assert _chi2_pvalue(counts, p_wrong) < 1e-6


def test_sampler_handles_rectangular_and_odd():
    spins, temps = ising.sample_configurations((6, 10), [2.0, 3.0], n_per_temperature=2, n_thermalise=5, seed=0)
    assert spins.shape == (4, 6, 10)
    spins, _ = ising.sample_configurations(5, 2.0, n_thermalise=5, seed=0)
    assert spins.shape == (1, 5, 5)


def test_sampler_bad_input():
    with pytest.raises(ValueError, match="-1.0"):
        ising.sample_configurations(8, [2.0, -1.0])
    with pytest.raises(ValueError, match="0.0"):
        ising.sample_configurations(8, 0.0)
    with pytest.raises(ValueError, match="nan"):
        ising.sample_configurations(8, [np.nan])
    with pytest.raises(ValueError, match="L=1"):
        ising.sample_configurations(1, [2.0])
    with pytest.raises(ValueError, match="L=8.5"):
        ising.sample_configurations(8.5, [2.0])
    with pytest.raises(ValueError, match="shape"):
        ising.sample_configurations(8, np.ones((2, 2)))
    with pytest.raises(ValueError, match="n_per_temperature=0"):
        ising.sample_configurations(8, [2.0], n_per_temperature=0)
    with pytest.raises(ValueError, match="n_between=0"):
        ising.sample_configurations(8, [2.0], n_between=0)
    with pytest.raises(ValueError, match="n_thermalise=-1"):
        ising.sample_configurations(8, [2.0], n_thermalise=-1)
    with pytest.raises(ValueError, match="both False"):
        ising.sample_configurations(8, [2.0], cluster=False, metropolis=False)
    with pytest.raises(ValueError, match="seed=-3"):
        ising.sample_configurations(8, [2.0], seed=-3)
    with pytest.raises(ValueError, match="t_min=3.0"):
        ising.sample_uniform_temperatures(8, 10, t_min=3.0, t_max=2.0)
    with pytest.raises(ValueError, match="n_samples=0"):
        ising.sample_uniform_temperatures(8, 0)


# ------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------
def test_generate_dataset(tmp_path):
    from ednn_tf import data
    path = ising.generate_dataset(tmp_path / "ising.h5", L=6, n_samples=57, t_min=1.5, t_max=4.0, seed=4,
                                  J=1.0, progress=False, n_thermalise=5, n_between=2)
    arr = data.read_arrays(path, ["X", "Y", "temperatures", "replica"])
    X, Y, T = arr["X"], arr["Y"], arr["temperatures"]
    assert X.dtype == np.int8 and X.shape == (57, 6, 6, 1)
    assert Y.dtype == np.float64 and Y.shape == (57, 1)
    np.testing.assert_array_equal(Y[:, 0], ising.ising_energy(X))
    assert T.shape == (57,) and np.all((T >= 1.5) & (T <= 4.0))
    assert arr["replica"].shape == (57,)
    attrs = data.read_attrs(path)
    for k, v in dict(L=6, J=1.0, seed=4, t_min=1.5, t_max=4.0, n_samples=57, n_thermalise=5, n_between=2,
                     unit="J").items():
        assert attrs[k] == v, k
    assert bool(attrs["cluster"]) and bool(attrs["metropolis"])
    # J and T scaled together (exact powers of two): the same trajectories, energies scaled by J
    path2 = ising.generate_dataset(tmp_path / "ising2.h5", L=6, n_samples=57, t_min=3.0, t_max=8.0, seed=4, J=2.0,
                                   progress=False, n_thermalise=5, n_between=2)
    arr2 = data.read_arrays(path2, ["X", "Y"])
    np.testing.assert_array_equal(arr2["X"], X)
    np.testing.assert_array_equal(arr2["Y"], 2 * Y)
    with pytest.raises(ValueError, match="bogus"):
        ising.generate_dataset(tmp_path / "x.h5", L=4, n_samples=4, progress=False, bogus=1)


def test_module_does_not_import_tensorflow():
    # ising and its sampler (reached through ising's lazy re-export) stay TF-free
    code = ("import sys; from ednn_tf import ising; "
            "ising.sample_configurations(4, [2.0], n_thermalise=1); ising.onsager_energy_per_spin(2.0); "
            "assert 'ednn_tf.ising_sampler' in sys.modules; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert out.stdout.strip() == "False"
