"""The 2D nearest-neighbour Ising model: exact energies, Onsager's solution and a fast sampler.

Pure numpy (scipy is imported lazily where needed); no TensorFlow. This module produces the
training data of Sec. 3.1 of Mills et al. (Chem. Sci. 2019): spin lattices ``s_i = +-1`` on a
periodic square lattice and their total energy

    H = -J sum_<ij> s_i s_j ,

the sum running over nearest-neighbour bonds, each bond counted once (every site's right and
lower neighbour, with periodic wrap-around).

Units: energies are in units of ``J`` (pass ``J`` to get them in another unit); temperatures are
``k_B T`` in the same unit, i.e. in units of ``J / k_B`` for ``J = 1``. The exact critical
temperature of the infinite lattice is ``TC = 2 / ln(1 + sqrt 2) ~ 2.269`` (times ``|J|``).

Contents
--------
``ising_energy(spins, J)``
    Exact total energy of one lattice or a batch (vectorised).
``TC``, ``onsager_energy_per_spin(T, J)``, ``onsager_magnetisation(T, J)``
    Onsager's exact infinite-lattice results.
``sample_configurations(L, temperatures, ...)``
    Equilibrium configurations of many replicas at once (each with its own temperature):
    colour-parallel Metropolis sweeps plus a vectorised Swendsen-Wang cluster update.
``sample_uniform_temperatures(L, n_samples, t_min, t_max, ...)``
    The same with temperatures drawn uniformly from ``[t_min, t_max]``.
``generate_dataset(path, L, n_samples, ...)``
    Sample, compute the exact energies and write an HDF5 dataset (``ednn_tf.data`` schema).

Small lattices: every function uses the same periodic neighbour map as ``np.roll``, so for a
side of length 1 or 2 the "right" and "left" neighbours coincide and such a pair is counted
twice (and a site whose side is 1 is its own neighbour, contributing ``-J s_i s_i = -J``). This is
exactly what a local operator summed over periodic 3x3 tiles (``ednn_tf.testing.IsingTileEnergy``)
computes, so data and models agree for every lattice size. The sampler needs sides >= 2 and
samples ``exp(-H/T)`` with this same ``H``.
"""
from __future__ import annotations

import functools
import math
import sys
import time

import numpy as np

__all__ = ["TC", "ising_energy", "onsager_energy_per_spin", "onsager_magnetisation", "sample_configurations",
           "sample_uniform_temperatures", "generate_dataset", "DEFAULT_T_MIN", "DEFAULT_T_MAX"]

#: Exact critical temperature of the infinite square-lattice Ising model, k_B T_c / J (Onsager 1944).
TC = 2.0 / math.log(1.0 + math.sqrt(2.0))

#: Default temperature range of ``generate_dataset`` (units of J/k_B): from deep in the ordered
#: phase (T = 0.44 Tc, where 8x8 lattices are almost always fully aligned) to well into the
#: disordered phase (T = 2.2 Tc, energy per spin ~ -0.4 J), so ordered, critical and disordered
#: configurations, and hence the whole range of reachable low-to-moderate energies, are represented.
DEFAULT_T_MIN = 1.0
DEFAULT_T_MAX = 5.0

# sites per replica chunk handled at once by the sampler (bounds memory; ~ 100 MB peak per chunk)
_MAX_SITES_PER_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------
# input validation
# ------------------------------------------------------------------------------------------------
def _check_J(J, positive=False):
    try:
        Jf = float(J)
    except (TypeError, ValueError):
        raise ValueError(f"J must be a real number, got J={J!r}") from None
    if not math.isfinite(Jf) or (positive and Jf <= 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"J must be {need}, got J={J!r}")
    return Jf


def _as_spins(spins):
    """Validate a spin array; return (int8 array (N, H, W), single_lattice_flag)."""
    s = np.asarray(spins)
    if s.dtype == object or not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise ValueError(f"spins must be an integer or float array of +1/-1, got dtype {s.dtype}")
    if s.ndim == 4:
        if s.shape[-1] != 1:
            raise ValueError(f"4-D spins must have shape (N, L, M, 1), got shape {s.shape}")
        s = s[..., 0]
    if s.ndim not in (2, 3):
        raise ValueError(f"spins must have shape (L, M), (N, L, M) or (N, L, M, 1), got shape {np.shape(spins)}")
    if s.shape[-1] < 1 or s.shape[-2] < 1:
        raise ValueError(f"spins must have non-empty lattice dimensions, got shape {np.shape(spins)}")
    bad = (s != 1) & (s != -1)
    if bad.any():
        value = s[np.unravel_index(np.argmax(bad), s.shape)]
        raise ValueError(f"spins must contain only +1 and -1, got value {value!r}")
    single = s.ndim == 2
    s = s.astype(np.int8, copy=False)
    return (s[None] if single else s), single


def _as_temperatures(T, name="temperatures"):
    try:
        t = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be real numbers, got {T!r}") from None
    bad = ~(np.isfinite(t) & (t > 0))
    if bad.any():
        raise ValueError(f"{name} must be finite and > 0 (units of J/k_B), got {t[bad].ravel()[0]!r}")
    return t


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def _lattice_shape(L):
    if isinstance(L, (tuple, list)):
        if len(L) != 2:
            raise ValueError(f"L must be an int or a pair (H, W), got L={L!r}")
        h, w = L
    else:
        h = w = L
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
            raise ValueError(f"lattice sides must be integers >= 2 for the sampler, got L={L!r}")
    return int(h), int(w)


# ------------------------------------------------------------------------------------------------
# exact energy
# ------------------------------------------------------------------------------------------------
def ising_energy(spins, J=1.0):
    """Exact total energy ``H = -J sum_<ij> s_i s_j`` of periodic square-lattice spin configurations.

    Every site is bonded to its right and lower neighbour with periodic wrap-around, so each bond is
    counted once; an all-up ``L x M`` lattice has ``H = -2 J L M``. Neighbours are taken exactly as
    ``np.roll`` gives them, so a side of length 2 counts its (coinciding) left/right pair twice and a
    side of length 1 bonds a site to itself (consistent with a periodic 3x3-tile local operator).

    Args:
        spins: array of +1/-1 (any integer or float dtype), shape ``(L, M)`` for one lattice or
            ``(N, L, M)`` / ``(N, L, M, 1)`` for a batch. Non-square lattices are allowed.
        J: coupling constant (energy unit); ``J > 0`` is ferromagnetic.

    Returns:
        float64 energy in units of J times ``J``: a numpy scalar for one ``(L, M)`` lattice, else an
        ``(N,)`` array.

    Raises:
        ValueError: wrong rank/shape, values other than +1/-1, or a non-finite ``J``.
    """
    J = _check_J(J)
    s, single = _as_spins(spins)
    # int8 products lie in [-2, 2]; sum in int64 (exact), then scale.
    nb = np.roll(s, -1, axis=2)
    nb += np.roll(s, -1, axis=1)
    nb *= s
    e = -J * nb.sum(axis=(1, 2), dtype=np.int64).astype(np.float64)
    return e[0] if single else e


# ------------------------------------------------------------------------------------------------
# Onsager's exact solution
# ------------------------------------------------------------------------------------------------
def onsager_energy_per_spin(T, J=1.0):
    """Exact internal energy per spin of the infinite 2D Ising ferromagnet (Onsager 1944).

        u(T) = -J coth(2K) [1 + (2/pi) (2 tanh^2(2K) - 1) K_1(k^2)],   K = J / T,
        k = 2 sinh(2K) / cosh^2(2K),

    with ``K_1(m)`` the complete elliptic integral of the first kind (parameter ``m = k^2``). At
    ``T = TC`` the logarithmic divergence of ``K_1`` is multiplied by zero and ``u = -sqrt(2) J``;
    ``u -> -2 J`` as ``T -> 0`` and ``u -> 0`` as ``T -> inf``.

    Args:
        T: temperature(s) ``k_B T`` in units of J/k_B (scalar or array), finite and > 0.
        J: ferromagnetic coupling, > 0.

    Returns:
        float64 energy per spin in units of J (times ``J``), a scalar for scalar ``T`` else an array
        of ``T``'s shape.
    """
    from scipy.special import ellipk

    J = _check_J(J, positive=True)
    t = _as_temperatures(T, "T")
    K2 = 2.0 * J / t
    with np.errstate(over="ignore"):
        th = np.tanh(K2)
        sech = 1.0 / np.cosh(K2)  # overflow -> inf -> sech = 0 at very low T: fine
    m = np.minimum((2.0 * th * sech) ** 2, 1.0)
    kell = ellipk(m)
    with np.errstate(invalid="ignore"):
        term = (2.0 * th * th - 1.0) * kell
    term = np.where(np.isfinite(kell), term, 0.0)  # exactly at Tc: 0 * log-divergence -> 0
    u = -J / th * (1.0 + (2.0 / np.pi) * term)
    return u[()] if u.ndim == 0 else u


def onsager_magnetisation(T, J=1.0):
    """Exact spontaneous magnetisation per spin of the infinite 2D Ising ferromagnet (Onsager/Yang).

        m(T) = [1 - sinh(2J/T)^-4]^(1/8)  for T < TC J,  and 0 for T >= TC J.

    Args:
        T: temperature(s) in units of J/k_B (scalar or array), finite and > 0.
        J: ferromagnetic coupling, > 0.

    Returns:
        float64 |magnetisation| per spin in [0, 1], scalar for scalar ``T`` else an array.
    """
    J = _check_J(J, positive=True)
    t = _as_temperatures(T, "T")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        x = 1.0 - np.sinh(2.0 * J / t) ** -4.0
        m = np.where(t < TC * J, np.clip(x, 0.0, 1.0) ** 0.125, 0.0)
    return m[()] if m.ndim == 0 else m


# ------------------------------------------------------------------------------------------------
# sampler
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _lattice(h, w):
    """Neighbour tables and a proper colouring of the periodic h x w lattice (sites in C order).

    Returns (right, down, classes) where right/down are (n,) flat neighbour indices and classes is a
    tuple of (idx (n_c,), nbs (4, n_c)) for each colour: no two sites of a colour are neighbours, so
    all sites of one colour can be Metropolis-updated simultaneously. Even sides give the two
    checkerboard colours; odd sides a greedy colouring with 3 (or 4) colours.
    """
    idx = np.arange(h * w).reshape(h, w)
    right = np.roll(idx, -1, axis=1).ravel()
    left = np.roll(idx, 1, axis=1).ravel()
    down = np.roll(idx, -1, axis=0).ravel()
    up = np.roll(idx, 1, axis=0).ravel()
    nbs = np.stack([right, down, left, up])
    if h % 2 == 0 and w % 2 == 0:
        colour = (np.add.outer(np.arange(h), np.arange(w)) % 2).ravel()
    else:
        colour = np.full(h * w, -1)
        for i in range(h * w):
            used = {int(colour[j]) for j in nbs[:, i]}
            colour[i] = next(c for c in range(5) if c not in used)
    classes = []
    for c in range(int(colour.max()) + 1):
        sel = np.flatnonzero(colour == c)
        classes.append((sel, np.ascontiguousarray(nbs[:, sel])))
    for a in (right, down):
        a.setflags(write=False)
    return right, down, tuple(classes)


def _metropolis_sweep(s, lat, tables, rng):
    """One colour-parallel Metropolis sweep of all replicas. ``s``: (R, n) int8, modified in place.

    ``tables``: (R, 9) float32, acceptance probability min(1, exp(-2 J x / T)) for x = s_i h_i + 4.
    """
    for sel, nb in lat[2]:
        si = s[:, sel]
        h = s[:, nb[0]] + s[:, nb[1]]
        h += s[:, nb[2]]
        h += s[:, nb[3]]
        h *= si
        h += 4
        p = np.take_along_axis(tables, h.astype(np.intp), axis=1)
        flip = rng.random(si.shape, dtype=np.float32) < p
        s[:, sel] = np.where(flip, -si, si)


class _BondGraph:
    """Per-chunk constant arrays for the Swendsen-Wang graph of ``R`` replicas of ``n`` sites.

    Node ``r * n + i`` is site ``i`` of replica ``r``; ``targets[r, i]`` are the global indices of
    its right and lower neighbour (its two bonds, each counted once as in ``ising_energy``).
    """

    def __init__(self, R, n, lat):
        self.itype = np.int32 if 2 * R * n < 2**31 - 1 else np.int64
        base = np.arange(R, dtype=self.itype)[:, None] * self.itype(n)
        self.targets = np.stack([base + lat[0].astype(self.itype), base + lat[1].astype(self.itype)], axis=-1)
        self.ones = np.ones(2 * R * n, dtype=np.float64)   # edge weights (csgraph works in float64)
        self.indptr = np.zeros(R * n + 1, dtype=self.itype)
        self.active = np.empty((R, n, 2), dtype=bool)


def _swendsen_wang(s, lat, graph_arrays, p_bond, sign_j, rng):
    """One Swendsen-Wang update of all replicas at once. ``s``: (R, n) int8, modified in place.

    Every satisfied bond (``J s_i s_j > 0``) is activated with probability ``p_bond = 1 -
    exp(-2|J|/T)`` of its replica; the connected components of the active bonds (periodic, all
    replicas in one sparse graph whose nodes are ``replica * n + site``) are found with
    ``scipy.sparse.csgraph.connected_components``, and each cluster is flipped with probability 1/2.
    This is the standard Swendsen-Wang (Edwards-Sokal) move and satisfies detailed balance for
    ``exp(-H/T)``.
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import connected_components

    R, n = s.shape
    g = graph_arrays
    active = g.active
    for k, nb in enumerate((lat[0], lat[1])):
        np.logical_and(s * s[:, nb] == sign_j, rng.random(s.shape, dtype=np.float32) < p_bond[:, None],
                       out=active[:, :, k])
    # CSR built directly in node order (up to two out-edges per node); connected_components with
    # directed=False follows every edge both ways.
    targets = g.targets[active]
    counts = active[:, :, 0].view(np.int8) + active[:, :, 1].view(np.int8)
    np.cumsum(counts.ravel(), dtype=g.itype, out=g.indptr[1:])
    graph = csr_array((g.ones[:len(targets)], targets, g.indptr), shape=(R * n, R * n), copy=False)
    n_comp, labels = connected_components(graph, directed=False)
    sign = np.where(rng.random(n_comp) < 0.5, np.int8(-1), np.int8(1))
    s *= sign[labels].reshape(R, n)


def _acceptance_tables(temps, J):
    x = np.arange(-4, 5, dtype=np.float64)
    with np.errstate(over="ignore"):
        p = np.exp(-2.0 * J * x[None, :] / temps[:, None])
    return np.minimum(p, 1.0).astype(np.float32)


def _initial_state(R, h, w, temps, J, rng):
    """Ordered start (ground state, random global sign) below TC|J|, random spins above.

    For J < 0 the ground state is the Neel state, used only when both sides are even (odd sides
    frustrate the antiferromagnet and every replica starts random)."""
    n = h * w
    s = np.where(rng.random((R, n)) < 0.5, np.int8(-1), np.int8(1))
    if J > 0 or (J < 0 and h % 2 == 0 and w % 2 == 0):
        ground = np.ones(n, dtype=np.int8) if J > 0 else \
            (1 - 2 * (np.add.outer(np.arange(h), np.arange(w)) % 2)).astype(np.int8).ravel()
        cold = temps < TC * abs(J)
        sign = np.where(rng.random(R) < 0.5, np.int8(-1), np.int8(1))
        s[cold] = sign[cold, None] * ground[None, :]
    return s


def sample_configurations(L, temperatures, n_per_temperature=1, seed=0, n_thermalise=None, n_between=5,
                          cluster=True, metropolis=True, J=1.0, progress=False):
    """Equilibrium Ising configurations of many replicas simulated at once, one per temperature.

    Each entry of ``temperatures`` is one replica (Markov chain) on a periodic ``L x L`` lattice.
    All replicas evolve together in one ``(R, L*L)`` int8 array (in chunks of about a million
    sites). One *sweep* is a colour-parallel Metropolis sweep over all sites (checkerboard for even
    sides) followed, with ``cluster=True``, by one Swendsen-Wang cluster update; both satisfy
    detailed balance for ``exp(-H/T)``, and the cluster move removes critical slowing down so that
    snapshots near ``TC`` decorrelate within a few sweeps. Replicas start ordered below ``TC`` and
    random above, run ``n_thermalise`` sweeps, then record ``n_per_temperature`` snapshots
    separated by ``n_between`` sweeps (snapshots of one replica are consecutive in the output).

    Args:
        L: lattice side (int >= 2), or a pair ``(H, W)`` for a rectangular lattice.
        temperatures: scalar or 1-D array of ``k_B T`` in units of J/k_B, each finite and > 0;
            repeat a value to get independent chains at the same temperature.
        n_per_temperature: snapshots recorded per replica (>= 1).
        seed: seed of ``numpy.random.default_rng``; the same seed (and arguments) gives
            bit-identical output.
        n_thermalise: sweeps before the first snapshot (>= 0); default ``20 + max(H, W) // 4``
            (22 for 8x8, 52 for 128x128). With the cluster move a 128x128 lattice at ``TC``
            equilibrates from the random or ordered start within ~15 sweeps.
        n_between: sweeps between consecutive snapshots of a replica (>= 1). At ``TC`` the
            energy autocorrelation after 5 sweeps (with the cluster move) is ~0.02 on 8x8 and
            ~0.15 on 32x32.
        cluster: include the Swendsen-Wang update in every sweep.
        metropolis: include the Metropolis sweep (set False to use the cluster move alone).
        J: coupling (energy unit); the sampled distribution is ``exp(-H/T)`` with ``H`` as in
            ``ising_energy``. ``J < 0`` (antiferromagnet) is supported.
        progress: print progress to stderr.

    Returns:
        ``(spins, temps)``: int8 ``(N, H, W)`` of +-1 and float64 ``(N,)`` with
        ``N = len(temperatures) * n_per_temperature``; ``temps = np.repeat(temperatures, n_per_temperature)``.
    """
    h, w = _lattice_shape(L)
    t = _as_temperatures(temperatures)
    if t.ndim > 1:
        raise ValueError(f"temperatures must be a scalar or 1-D, got shape {t.shape}")
    t = np.atleast_1d(t)
    n_per = _check_int(n_per_temperature, "n_per_temperature", 1)
    n_therm = 20 + max(h, w) // 4 if n_thermalise is None else _check_int(n_thermalise, "n_thermalise", 0)
    n_between = _check_int(n_between, "n_between", 1)
    J = _check_J(J)
    if not (cluster or metropolis):
        raise ValueError("at least one of cluster=True or metropolis=True is needed, got both False")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got seed={seed!r}")

    rng = np.random.default_rng(seed)
    lat = _lattice(h, w)
    n = h * w
    R_total = len(t)
    out = np.empty((R_total, n_per, n), dtype=np.int8)
    chunk = max(1, _MAX_SITES_PER_CHUNK // n)
    n_chunks = -(-R_total // chunk)
    n_sweeps = n_therm + (n_per - 1) * n_between
    sign_j = np.int8(1 if J >= 0 else -1)
    t0 = time.perf_counter()
    for ci, lo in enumerate(range(0, R_total, chunk)):
        tc = t[lo:lo + chunk]
        s = _initial_state(len(tc), h, w, tc, J, rng)
        tables = _acceptance_tables(tc, J)
        p_bond = (-np.expm1(-2.0 * abs(J) / tc)).astype(np.float32)
        graph_arrays = _BondGraph(len(tc), n, lat) if cluster else None

        def sweep():
            if metropolis:
                _metropolis_sweep(s, lat, tables, rng)
            if cluster:
                _swendsen_wang(s, lat, graph_arrays, p_bond, sign_j, rng)

        for _ in range(n_therm):
            sweep()
        for k in range(n_per):
            if k:
                for _ in range(n_between):
                    sweep()
            out[lo:lo + chunk, k] = s
        if progress:
            print(f"\rising: {h}x{w}, replicas {min(lo + chunk, R_total)}/{R_total} (chunk {ci + 1}/{n_chunks}, "
                  f"{n_sweeps} sweeps each), {time.perf_counter() - t0:.1f} s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr, flush=True)
    return out.reshape(R_total * n_per, h, w), np.repeat(t, n_per)


def sample_uniform_temperatures(L, n_samples, t_min=DEFAULT_T_MIN, t_max=DEFAULT_T_MAX, snapshots_per_replica=10,
                                seed=0, **sampler_options):
    """``n_samples`` configurations with temperatures drawn uniformly from ``[t_min, t_max]``.

    ``ceil(n_samples / snapshots_per_replica)`` replicas get independent uniform temperatures (drawn
    with ``default_rng(seed)``); each records ``snapshots_per_replica`` snapshots via
    ``sample_configurations`` (seeded with ``seed + 1``), and the output is cut to ``n_samples``.

    Returns:
        ``(spins int8 (n_samples, L, L), temps float64 (n_samples,), replica int64 (n_samples,))``;
        ``replica`` identifies the chain each snapshot came from (use it as ``groups`` when splitting,
        so correlated snapshots of one chain never straddle a train/test split).
    """
    n_samples = _check_int(n_samples, "n_samples", 1)
    per = _check_int(snapshots_per_replica, "snapshots_per_replica", 1)
    lo, hi = _as_temperatures([t_min, t_max], "t_min/t_max")
    if hi < lo:
        raise ValueError(f"t_max must be >= t_min, got t_min={t_min!r}, t_max={t_max!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got seed={seed!r}")
    n_rep = -(-n_samples // per)
    temps = np.random.default_rng(seed).uniform(lo, hi, n_rep)
    spins, t = sample_configurations(L, temps, n_per_temperature=per,
                                     seed=None if seed is None else seed + 1, **sampler_options)
    replica = np.repeat(np.arange(n_rep, dtype=np.int64), per)
    return spins[:n_samples], t[:n_samples], replica[:n_samples]


def generate_dataset(path, L=8, n_samples=100_000, t_min=DEFAULT_T_MIN, t_max=DEFAULT_T_MAX, seed=0, J=1.0,
                     progress=True, snapshots_per_replica=10, **sampler_options):
    """Sample Ising configurations and write them with their exact energies to an HDF5 dataset.

    Temperatures are uniform in ``[t_min, t_max]`` (default ``[1.0, 5.0]`` J/k_B: from the ordered
    phase at 0.44 Tc through the transition to the disordered phase at 2.2 Tc, so the dataset holds
    ground-state-like, critical and disordered lattices). ``snapshots_per_replica`` snapshots are
    taken from each chain (``n_between`` sweeps apart, Metropolis + Swendsen-Wang), see
    ``sample_uniform_temperatures`` and ``sample_configurations`` for ``**sampler_options``
    (``n_thermalise``, ``n_between``, ``cluster``, ``metropolis``).

    Written with ``ednn_tf.data.write_dataset`` (atomic):
        ``X`` int8 ``(N, L, L, 1)`` spins, ``Y`` float64 ``(N, 1)`` total energy ``ising_energy(X, J)``
        (units of J), ``temperatures`` float64 ``(N,)``, ``replica`` int64 ``(N,)`` (chain id, for
        group-aware splits), and provenance attributes (L, J, seed, t_min, t_max, sampler settings).

    Returns the path written.
    """
    from . import data  # h5py only; imported lazily to keep this module light

    J = _check_J(J)
    h, w = _lattice_shape(L)
    opts = dict(n_thermalise=None, n_between=5, cluster=True, metropolis=True)
    unknown = set(sampler_options) - set(opts)
    if unknown:
        raise ValueError(f"unknown sampler options {sorted(unknown)}; allowed: {sorted(opts)}")
    opts.update(sampler_options)
    n_therm = 20 + max(h, w) // 4 if opts["n_thermalise"] is None else opts["n_thermalise"]
    t0 = time.perf_counter()
    spins, temps, replica = sample_uniform_temperatures(L, n_samples, t_min, t_max, snapshots_per_replica, seed,
                                                        J=J, progress=progress, **opts)
    energy = ising_energy(spins, J)
    attrs = dict(generator="ednn_tf.ising.generate_dataset", system="2D Ising, periodic square lattice",
                 hamiltonian="H = -J sum_<ij> s_i s_j, each nearest-neighbour bond once", unit="J",
                 temperature_unit="J/k_B", L=h if h == w else [h, w], J=J, seed=-1 if seed is None else int(seed),
                 n_samples=int(n_samples), t_min=float(t_min), t_max=float(t_max),
                 temperature_distribution="uniform", snapshots_per_replica=int(snapshots_per_replica),
                 sampler="colour-parallel Metropolis + Swendsen-Wang", sampling_seconds=time.perf_counter() - t0,
                 n_thermalise=int(n_therm), n_between=int(opts["n_between"]), cluster=bool(opts["cluster"]),
                 metropolis=bool(opts["metropolis"]))
    return data.write_dataset(path, spins[..., None], energy[:, None], attrs=attrs, temperatures=temps,
                              replica=replica)
