"""Atom-move Monte Carlo with a space potential (the ``"atoms"`` readout): :class:`SpaceAtomEnergy` has
the interface :class:`ednn_tf.apply.atom_mc.AtomMetropolis` drives (``delta_energy``, ``accept``,
``reject``, ``move``, ``energy``, ``positions``, ``full_energy``), and :func:`local_energy` picks it or
:class:`~ednn_tf.apply.atom_mc.AtomicLocalEnergy` (the cell readout's exact local updates) for a
potential.

Each proposal is evaluated as the whole structure's energy through the one evaluation path
(:func:`ednn_tf.apply.space.predict_structures`, energies only): exact, at O(N) per move, which is
what small cells need; a local update by blocks (only the atoms within the interaction range of the
moved atom) is not written yet.
"""
from __future__ import annotations

import numpy as np

from ..potential import load_potential
from .space import predict_structures

__all__ = ["MoveProposals", "SpaceAtomEnergy", "local_energy"]


class MoveProposals:
    """``reject`` and ``move`` of an MC energy object with ``delta_energy`` and ``accept`` (this
    module's :class:`SpaceAtomEnergy` and :class:`~ednn_tf.apply.atom_mc.AtomicLocalEnergy`)."""

    def reject(self):
        """Forget the last proposed move (calling it is optional)."""
        self._pending = None

    def move(self, i, new_position):
        """Move atom ``i`` unconditionally; returns dE (eV)."""
        self.delta_energy(i, new_position)
        return self.accept()


class SpaceAtomEnergy(MoveProposals):
    """Energy (eV) of ``atoms`` under a space ``potential`` (path, shipped name or Potential) and of
    single-atom moves (A). The structure is checked once, here."""

    def __init__(self, potential, atoms):
        self.potential = load_potential(potential)
        if self.potential.readout != "atoms":
            raise ValueError(f"SpaceAtomEnergy needs the 'atoms' readout, got {self.potential.readout!r}")
        self.atoms = atoms.copy()
        self.atoms.calc = None
        self.energy = self.full_energy()
        self.n_evaluated_tiles, self._pending = 0, None

    @property
    def positions(self):
        """A copy of the current positions (N, 3) A."""
        return self.atoms.positions.copy()

    def full_energy(self):
        """The energy of the current structure from scratch (eV)."""
        return predict_structures(self.potential, [self.atoms], derivatives=False)[0]["energy"]

    @property
    def n_terms(self):
        """Terms of the energy: one per atom."""
        return len(self.atoms)

    def refresh(self):
        """Re-evaluate the energy from scratch; returns its change (eV): 0, since every move is
        evaluated whole (kept for the interface of AtomicLocalEnergy)."""
        energy = self.full_energy()
        drift, self.energy, self._pending = energy - self.energy, energy, None
        return drift

    def delta_energy(self, i, new_position):
        """Energy change (eV) of moving atom ``i`` to ``new_position`` (2 or 3 coordinates, A; z kept
        if 2); the state is not changed until :meth:`accept`."""
        new = self.atoms.positions[i].copy()
        new[:len(new_position)] = np.asarray(new_position, dtype=np.float64)
        trial = self.atoms.copy()
        trial.positions[i] = new
        e = predict_structures(self.potential, [trial], derivatives=False)[0]["energy"]
        self.n_evaluated_tiles += len(trial)
        self._pending = (int(i), new, e)
        return e - self.energy

    def accept(self):
        """Apply the last proposed move; returns its dE (eV)."""
        if self._pending is None:
            raise RuntimeError("accept() needs a move proposed by delta_energy() first")
        i, new, e = self._pending
        dE, self.energy = e - self.energy, e
        self.atoms.positions[i] = new
        self._pending = None
        return dE


def local_energy(potential, atoms):
    """The MC energy object for ``potential``: :class:`SpaceAtomEnergy` for the ``"atoms"`` readout,
    :class:`~ednn_tf.apply.atom_mc.AtomicLocalEnergy` otherwise."""
    from .atom_mc import AtomicLocalEnergy
    from .calculator import resolve_model

    model = resolve_model(potential)
    if getattr(model, "readout", None) == "atoms":
        return SpaceAtomEnergy(model, atoms)
    return AtomicLocalEnergy(model, atoms)
