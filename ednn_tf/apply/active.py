"""The pieces of an active-learning round (``experiments/active_learning.py``): explore new frames
with a committee's mean, pick those where it disagrees, label them with an oracle (resumable), and
score a committee on a held-out set. Units: eV, A, fs, K.
"""
from __future__ import annotations

import numpy as np

from ..util import check_float, check_int

__all__ = ["explore", "label_frames", "committee_errors", "pick", "Steps", "write_frames", "read_frames",
           "labels_to_reach"]


class Steps:
    """Runs a step of a resumable experiment unless its output file exists; stops the process
    (``SystemExit``) after ``max_steps`` executed steps (a planned interruption)."""

    def __init__(self, max_steps=None):
        self.max_steps, self.done = max_steps, 0

    def __call__(self, path, make):
        import os

        if os.path.exists(path):
            return path
        make()
        self.done += 1
        if self.max_steps is not None and self.done >= self.max_steps:
            print(f"stopped after {self.done} steps (--max-steps); run the same command again to go on")
            raise SystemExit(0)
        return path


def write_frames(path, frames):
    """``frames`` to the extxyz file ``path``, atomically (folders made)."""
    import os

    import ase.io

    from ..util import atomic_path

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


def read_frames(path):
    """Every frame of the extxyz file ``path``."""
    import ase.io

    return ase.io.read(path, ":")


def labels_to_reach(labels, errors, target):
    """The number of labels at which a learning curve (``errors`` after ``labels``, ascending labels)
    first reaches ``target``, linearly interpolated between rounds; None when it never does."""
    labels, errors = np.asarray(labels, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    if labels.shape != errors.shape or labels.ndim != 1 or not len(labels) or np.any(np.diff(labels) <= 0):
        raise ValueError(f"need matching 1-d curves with ascending labels, got {labels.tolist()} and {errors.tolist()}")
    if errors[0] <= target:
        return float(labels[0])
    for k in range(1, len(labels)):
        if errors[k] <= target:
            t = (errors[k - 1] - target) / (errors[k - 1] - errors[k])
            return float(labels[k - 1] + t * (labels[k] - labels[k - 1]))
    return None


def _variant(atoms, rng, max_strain, vacancy_p):
    """A copy of ``atoms`` strained biaxially and in shear by up to ``max_strain``, turned by a random
    angle about z (cell and positions) and, with probability ``vacancy_p``, with one atom removed."""
    a = atoms.copy()
    a.calc = None
    e = rng.uniform(-max_strain, max_strain, 3)
    F = np.eye(3)
    F[:2, :2] += np.array([[e[0], e[2]], [e[2], e[1]]])
    a.set_cell(a.cell.array @ F.T, scale_atoms=True)
    a.rotate(float(rng.uniform(0.0, 360.0)), "z", rotate_cell=True)
    if len(a) > 8 and rng.random() < vacancy_p:
        del a[int(rng.integers(len(a)))]
    return a


def explore(committee, starts, seed, *, temperatures=(300.0, 1500.0), md_steps=40, every=10, timestep_fs=1.0,
            max_strain=0.04, vacancy_p=0.3, progress=False):
    """Candidate frames: for each start structure (and each temperature) a strained, turned copy
    (maybe with a vacancy), then ASE Langevin MD with the committee's mean forces, in-plane (every z
    held: a 2D potential's structure limit), a snapshot every ``every`` steps. Deterministic from
    ``seed``. Returns a list of Atoms (no calculator) with ``info`` ``source`` (start index),
    ``temperature_K`` and ``step``."""
    from ase import units
    from ase.constraints import FixCartesian
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tqdm.auto import tqdm

    from .calculator import EDNNCalculator

    md_steps = check_int("md_steps", md_steps, minimum=0)
    every = check_int("every", every, minimum=1)
    check_float("timestep_fs", timestep_fs, minimum=0.0, strict=True)
    rng = np.random.default_rng([int(seed), 5])
    calc = EDNNCalculator(committee)
    frames = []
    jobs = [(i, s, T) for i, s in enumerate(starts) for T in temperatures]
    for i, start, T in tqdm(jobs, desc="explore", unit="run", disable=not progress):
        a = _variant(start, rng, max_strain, vacancy_p)
        frames.append(_frame(a, i, T, 0))
        if not md_steps:
            continue
        a.calc = calc
        # a 2D potential: z held, or the thermostat's kicks lift atoms off the plane (the constraint also
        # zeroes the z momenta that MaxwellBoltzmannDistribution draws)
        a.set_constraint(FixCartesian(range(len(a)), mask=(False, False, True)))
        MaxwellBoltzmannDistribution(a, temperature_K=T, rng=rng)
        dyn = Langevin(a, timestep_fs * units.fs, temperature_K=T, friction=0.02, rng=rng, fixcm=False)
        for step in range(every, md_steps + 1, every):
            dyn.run(every)
            frames.append(_frame(a, i, T, step))
    return frames


def _frame(atoms, source, T, step):
    f = atoms.copy()
    f.calc = None
    f.set_constraint()
    f.set_velocities(np.zeros((len(f), 3)))
    f.info.update(source=int(source), temperature_K=float(T), step=int(step))
    return f


def pick(deviations, n, strategy, seed, trust_lo=0.0, trust_hi=np.inf):
    """Indices of ``n`` frames: ``"deviation"`` (:func:`ednn_tf.apply.uncertainty.select_frames`) or
    ``"random"`` (uniform without replacement from ``seed``: the baseline of the learning curves)."""
    from .uncertainty import select_frames

    if strategy == "deviation":
        return select_frames(deviations, n, trust_lo, trust_hi)
    if strategy == "random":
        rng = np.random.default_rng([int(seed), 7])
        return np.sort(rng.choice(len(deviations), size=min(int(n), len(deviations)), replace=False))
    raise ValueError(f"strategy must be 'deviation' or 'random', got {strategy!r}")


def label_frames(frames, oracle, checkpoint, workers=1, progress=False):
    """``frames`` labelled by ``oracle`` with energies and forces (copies with a single-point
    calculator), resumable from the ``checkpoint`` ``.npz`` (:func:`ednn_tf.labels.labelling.label_structures`)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from ..labels.labelling import label_structures

    energies, forces = label_structures(frames, oracle, n_workers=workers, checkpoint=checkpoint,
                                        progress=progress, forces=True)
    out = []
    for a, e, f in zip(frames, energies, forces):
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=float(e), forces=f)
        out.append(b)
    return out


def committee_errors(committee, labelled):
    """The committee mean's errors on ``labelled`` structures (energy MAE meV/atom, in-plane force MAE
    eV/A) and its spread (mean and largest max_force_dev, eV/A), and the Spearman correlation between
    each frame's max_force_dev and its actual in-plane force MAE."""
    from scipy.stats import spearmanr

    from .uncertainty import predict_committee

    res = predict_committee(committee, labelled)
    n = np.array([len(a) for a in labelled])
    dE = np.array([r["energy"] - a.get_potential_energy() for r, a in zip(res, labelled)]) / n
    fe = [np.abs(r["forces"][:, :2] - a.get_forces()[:, :2]).mean() for r, a in zip(res, labelled)]
    dev = [r["max_force_dev"] for r in res]
    rho = float(spearmanr(dev, fe)[0]) if len(labelled) > 2 else float("nan")
    return {"n": len(labelled), "energy_mae_meV_per_atom": float(np.abs(dE).mean() * 1e3),
            "force_mae_xy_eV_per_A": float(np.mean(fe)), "max_force_dev_mean": float(np.mean(dev)),
            "max_force_dev_max": float(np.max(dev)), "spearman_dev_vs_force_error": rho}
