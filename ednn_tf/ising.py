"""The 2D nearest-neighbour Ising model: exact energies and Onsager's solution (pure numpy, no TensorFlow).

The training data of Sec. 3.1 of Mills et al. (Chem. Sci. 2019): spins ``s_i = +-1`` on a periodic
square lattice with total energy ``H = -J sum_<ij> s_i s_j``, each nearest-neighbour bond counted
once (every site's right and lower neighbour, periodic). The sampler (``sample_configurations``,
``sample_uniform_temperatures``, ``generate_dataset``) lives in :mod:`ednn_tf.ising_sampler` and is
reachable here too, loaded on first use.

Units: energies in units of ``J``; temperatures ``k_B T`` in the same unit (``J / k_B`` for ``J = 1``).
The infinite lattice has ``TC = 2 / ln(1 + sqrt 2) ~ 2.269`` (times ``|J|``).

Small lattices: the neighbour map is ``np.roll``'s, so on a side of length 1 or 2 the "right" and
"left" neighbours coincide and the pair is counted twice (a site on a side of 1 is its own
neighbour, contributing ``-J``): exactly what a local operator summed over periodic 3x3 tiles
(``ednn_tf.testing.IsingTileEnergy``) computes, so data and models agree for every lattice size.
"""
from __future__ import annotations

import math

import numpy as np

from .util import check_float, lazy_exports

__all__ = ["TC", "ising_energy", "onsager_energy_per_spin", "onsager_magnetisation", "DEFAULT_T_MIN",
           "DEFAULT_T_MAX"]

#: Exact critical temperature of the infinite square-lattice Ising model, k_B T_c / J (Onsager 1944).
TC = 2.0 / math.log(1.0 + math.sqrt(2.0))

#: Default temperature range of ``generate_dataset`` (units of J/k_B): from deep in the ordered phase
#: (T = 0.44 Tc, 8x8 lattices almost always fully aligned) to well into the disordered phase (T = 2.2 Tc,
#: energy per spin ~ -0.4 J), so ordered, critical and disordered configurations are all represented.
DEFAULT_T_MIN = 1.0
DEFAULT_T_MAX = 5.0


def _check_J(J, positive=False):
    return check_float("J", J, minimum=0 if positive else None, strict=True)


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


def ising_energy(spins, J=1.0):
    """Exact total energy ``H = -J sum_<ij> s_i s_j`` of periodic spin lattices (an all-up ``L x M``
    lattice has ``H = -2 J L M``).

    ``spins``: +1/-1 of any integer or float dtype, ``(L, M)`` for one lattice or ``(N, L, M)`` /
    ``(N, L, M, 1)`` for a batch; ``J``: coupling (energy unit, ``J > 0`` ferromagnetic). Returns the
    float64 energy (a numpy scalar for one lattice, else ``(N,)``); raises ValueError for a wrong
    shape, values other than +-1 or a non-finite ``J``.
    """
    J = _check_J(J)
    s, single = _as_spins(spins)
    # int8 products lie in [-2, 2]; sum in int64 (exact), then scale.
    nb = np.roll(s, -1, axis=2)
    nb += np.roll(s, -1, axis=1)
    nb *= s
    e = -J * nb.sum(axis=(1, 2), dtype=np.int64).astype(np.float64)
    return e[0] if single else e


def onsager_energy_per_spin(T, J=1.0):
    """Exact internal energy per spin of the infinite 2D Ising ferromagnet (Onsager 1944).

        u(T) = -J coth(2K) [1 + (2/pi) (2 tanh^2(2K) - 1) K_1(k^2)],   K = J / T,
        k = 2 sinh(2K) / cosh^2(2K),

    with ``K_1(m)`` the complete elliptic integral of the first kind (parameter ``m = k^2``). At
    ``T = TC`` the logarithmic divergence of ``K_1`` is multiplied by zero and ``u = -sqrt(2) J``;
    ``u -> -2 J`` as ``T -> 0`` and ``u -> 0`` as ``T -> inf``.

    ``T``: temperature(s) ``k_B T`` in units of J/k_B (scalar or array), finite and > 0; ``J``:
    ferromagnetic coupling, > 0. Returns float64 energy per spin in units of J (times ``J``), a
    scalar for scalar ``T``, else an array of ``T``'s shape.
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

    ``T``: temperature(s) in units of J/k_B (scalar or array), finite and > 0; ``J``: ferromagnetic
    coupling, > 0. Returns float64 |magnetisation| per spin in [0, 1], a scalar for scalar ``T``.
    """
    J = _check_J(J, positive=True)
    t = _as_temperatures(T, "T")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        x = 1.0 - np.sinh(2.0 * J / t) ** -4.0
        m = np.where(t < TC * J, np.clip(x, 0.0, 1.0) ** 0.125, 0.0)
    return m[()] if m.ndim == 0 else m


# The sampler, re-exported lazily (ising_sampler imports this module).
_SAMPLER_NAMES = ("sample_configurations", "sample_uniform_temperatures", "generate_dataset")
__getattr__, __dir__ = lazy_exports(globals(), {n: ".ising_sampler" for n in _SAMPLER_NAMES})
__all__ += sorted(_SAMPLER_NAMES)
