"""Checks of a space potential the way its users will test it: turned, strained, repeated, relaxed.

Every function takes a :class:`~ednn_tf.potential.Potential` with the ``"atoms"`` readout and
returns plain numbers (eV, A, meV/atom, eV/A); :func:`run_checks` runs them all on the reference
sets of ``experiments/potential_checks.py`` and writes ``results.json`` and the plots.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .space import _rotation, predict_structures

__all__ = ["shipped_split", "chiral_cell", "stress_errors", "turned", "rotation_scan", "rotated_errors", "eos_fit", "supercell_errors", "translation_spread",
           "relax_lattice", "run_checks"]


def turned(atoms, angle_deg, forces=None):
    """A copy of ``atoms`` turned by ``angle_deg`` about z (positions and cell), and ``forces`` turned."""
    T = _rotation(angle_deg)
    R = np.eye(3)
    R[:2, :2] = T
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ R.T)
    out.positions = atoms.positions @ R.T
    return out if forces is None else (out, np.asarray(forces)[:, :2] @ T.T)


def chiral_cell(n, m, a=2.46, min_length=12.0):
    """Pristine graphene in a rectangular cell with the chiral direction ``n a1 + m a2`` along x (the
    issue's reproduction), repeated to at least ``min_length`` A along x and y."""
    from ase import Atoms

    a1, a2 = np.array([a, 0.0]), np.array([a / 2, a * math.sqrt(3) / 2])
    C = n * a1 + m * a2
    d = math.gcd(2 * n + m, 2 * m + n)
    T = (2 * m + n) // d * a1 - (2 * n + m) // d * a2
    th = -math.atan2(C[1], C[0])
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    inv = np.linalg.inv(np.array([C, T]).T)
    lattice = np.array([i * a1 + j * a2 for i in range(-30, 31) for j in range(-30, 31)])
    sites = np.concatenate([lattice, lattice + (a1 + a2) / 3])
    f = sites @ inv.T
    pos = sites[np.all((f >= -1e-9) & (f < 1 - 1e-9), axis=1)] @ R.T
    at = Atoms(f"C{len(pos)}", positions=np.c_[pos, np.zeros(len(pos))],
               cell=[np.linalg.norm(C), np.linalg.norm(T), 20.0], pbc=[True, True, False])
    return at.repeat((max(1, math.ceil(min_length / at.cell[0, 0])), max(1, math.ceil(min_length / at.cell[1, 1])), 1))


def rotation_scan(potential, atoms, angles):
    """E/atom (eV) of ``atoms`` turned by each of ``angles`` (deg)."""
    structures = [turned(atoms, a) for a in angles]
    return np.array([r["energy"] / len(atoms) for r in predict_structures(potential, structures, derivatives=False)])


def rotated_errors(potential, structures, energies, forces, seed=0):
    """Errors of ``potential`` on ``structures`` as they are and turned by random angles (seeded):
    energy MAE (meV/atom), force MAE (eV/A, in-plane components), the mean |E(turned) - E| (meV/atom)
    and the MAE between the turned structure's forces and the turned forces of the original; the mean
    |e_i(turned) - e_i| of the per-atom energies (meV: each atom's share, which a local potential's
    isometry leaves unchanged, not only their sum)."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0.0, 360.0, len(structures))
    n = np.array([len(a) for a in structures], dtype=np.float64)
    plain = predict_structures(potential, structures)
    pairs = [turned(a, t, f) for a, t, f in zip(structures, angles, forces)]
    turn = predict_structures(potential, [p[0] for p in pairs])

    def errs(res, fref):
        de = np.array([r["energy"] for r in res]) - energies
        df = np.concatenate([(r["forces"][:, :2] - np.asarray(f)[:, :2]).ravel() for r, f in zip(res, fref)])
        return 1e3 * float(np.mean(np.abs(de / n))), float(np.mean(np.abs(df)))

    e0, f0 = errs(plain, forces)
    e1, f1 = errs(turn, [p[1] for p in pairs])
    change = np.array([(b["energy"] - a["energy"]) / len(s) for a, b, s in zip(plain, turn, structures)])
    fturn = np.concatenate([(b["forces"][:, :2] - turned(s, t, a["forces"])[1]).ravel()
                            for a, b, s, t in zip(plain, turn, structures, angles)])
    return {"n": len(structures), "energy_mae_meV_per_atom": e0, "force_mae_eV_per_A": f0,
            "turned_energy_mae_meV_per_atom": e1, "turned_force_mae_eV_per_A": f1,
            "rotation_mean_abs_dE_meV_per_atom": 1e3 * float(np.mean(np.abs(change))),
            "rotation_max_abs_dE_meV_per_atom": 1e3 * float(np.max(np.abs(change))),
            "rotated_forces_mae_eV_per_A": float(np.mean(np.abs(fturn))),
            "rotation_atom_energy_mean_abs_change_meV": 1e3 * float(np.mean(np.abs(np.concatenate(
                [b["energies"] - a["energies"] for a, b in zip(plain, turn)]))))}


def stress_errors(potential, structures):
    """MAE of the in-plane stress (xx, yy, xy) against the labels ``atoms.get_stress()`` when every
    structure has one, as 2D stress ``sigma c`` (N/m, ``c`` the cell height); {} otherwise."""
    from ase.calculators.calculator import PropertyNotImplementedError

    try:
        ref = np.array([a.get_stress() for a in structures])
    except (RuntimeError, PropertyNotImplementedError):   # no calculator, or labels without stress
        return {}
    pred = np.array([r["stress"] for r in predict_structures(potential, structures)])
    c = np.array([abs(a.cell[2, 2]) for a in structures])[:, None]
    d = (pred - ref)[:, [0, 1, 5]] * c * 16.0217663
    return {"stress_2d_mae_N_per_m": float(np.mean(np.abs(d))),
            "label_stress_2d_mean_abs_N_per_m": float(np.mean(np.abs(ref[:, [0, 1, 5]] * c * 16.0217663)))}


def eos_fit(strains, e_per_atom, a0, area_per_atom0):
    """From E/atom (eV) at biaxial ``strains`` of a lattice constant ``a0`` (A) with ``area_per_atom0``
    (A^2 at strain 0): the quartic fit's largest residual (meV/atom), the equilibrium lattice
    constant (A) and the 2D bulk modulus ``B = A d2E/dA2`` at the minimum (N/m)."""
    s, e = np.asarray(strains, dtype=np.float64), np.asarray(e_per_atom, dtype=np.float64)
    area = area_per_atom0 * (1.0 + s) ** 2
    coef = np.polyfit(area, e, 4)
    resid = e - np.polyval(coef, area)
    grid = np.linspace(area.min(), area.max(), 20001)
    amin = grid[np.argmin(np.polyval(coef, grid))]
    curv = np.polyval(np.polyder(coef, 2), amin)
    return {"max_residual_meV_per_atom": 1e3 * float(np.max(np.abs(resid))),
            "a_eq_A": float(a0 * math.sqrt(amin / area_per_atom0)),
            "bulk_modulus_2d_N_per_m": float(amin * curv * 16.0217663)}


def supercell_errors(potential, structures, repeats=((2, 1), (1, 2), (2, 2), (3, 2))):
    """Largest ``|E(k1 x k2) / (k1 k2) - E|`` per atom (meV/atom) over ``structures`` and ``repeats``."""
    base = [r["energy"] for r in predict_structures(potential, structures, derivatives=False)]
    worst = 0.0
    for k in repeats:
        big = predict_structures(potential, [a.repeat((k[0], k[1], 1)) for a in structures], derivatives=False)
        for a, e, r in zip(structures, base, big):
            worst = max(worst, abs(r["energy"] / (k[0] * k[1]) - e) / len(a))
    return 1e3 * worst


def translation_spread(potential, structures, steps=6):
    """Largest change of E/atom (meV/atom) when every atom moves by ``t (1, 0.37) p``, ``t`` in [0, 1)."""
    worst = 0.0
    for a in structures:
        moved = []
        for t in np.arange(steps) / steps:
            b = a.copy()
            b.positions[:, :2] += t * potential.pitch * np.array([1.0, 0.37])
            moved.append(b)
        e = np.array([r["energy"] for r in predict_structures(potential, moved, derivatives=False)]) / len(a)
        worst = max(worst, float(e.max() - e.min()))
    return 1e3 * worst


def relax_lattice(potential, atoms, fmax=1e-3, steps=400):
    """Lattice constant (A) of a honeycomb ``atoms`` (x length = repeats x a) after a
    ``FrechetCellFilter`` relaxation with FIRE, and the steps taken."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from .calculator import EDNNCalculator

    a = atoms.copy()
    a.calc = EDNNCalculator(potential)
    a0 = a.cell.lengths()[0]
    opt = FIRE(FrechetCellFilter(a, mask=[True, True, False, False, False, True]), logfile=None)
    opt.run(fmax=fmax, steps=steps)
    return float(a.cell.lengths()[0] / a0), int(opt.get_number_of_steps())


def shipped_split(data="data/potentials"):
    """``(cells, train, val)``: the 1,500 labelled cells of ``hexagonal-gfn1`` (periodic in the
    plane) and the indices of its training and validation split (``split_indices(n, (0.9, 0.1),
    seed=0)``, as ``ednn-tf train`` drew it)."""
    import ase.io

    from ..data import split_indices

    cells = ase.io.read(f"{data}/hexagonal_varied_c012_gfn1_sc2.extxyz", ":")
    for a in cells:
        a.pbc = [True, True, False]
    train, val = split_indices(len(cells), (0.9, 0.1), seed=0)
    return cells, train, val


def run_checks(model, out, data="data/potentials"):
    """All checks of the module docstring on ``model`` (path or shipped name); writes
    ``out/results.json``, ``out/rotation.png`` and ``out/eos.png``; returns the results."""
    import ase.io

    from ..atoms.structures import honeycomb_sheet
    from ..potential import load_potential
    from ..util import write_json_atomic
    from .fit import evaluate, labelled_energies, labelled_forces

    pot = load_potential(model)
    os.makedirs(out, exist_ok=True)
    res = {"model": str(model), "card_name": pot.card.get("name")}
    cells, _, val = shipped_split(data)
    val = [cells[i] for i in val]
    res["validation"] = rotated_errors(pot, val, labelled_energies(val), labelled_forces(val))
    for name in ("hexagonal_othersizes", "checks_strained"):
        path = f"{data}/{name}_gfn1_sc2.extxyz"
        if os.path.isfile(path):
            s = ase.io.read(path, ":")
            r = evaluate(pot, s, labelled_energies(s), labelled_forces(s))
            res[name] = {k: r[k] for k in ("n", "energy_mae_meV_per_atom", "force_mae_xy_eV_per_A")}
            res[name].update(stress_errors(pot, s))
    angles = np.arange(0, 91)
    res["rotation_scan"] = {}
    for material in ("graphene", "hbn"):
        prim = honeycomb_sheet(1, 1, A0[material], SYMBOLS[material])
        prim.pbc = [True, True, False]
        e = rotation_scan(pot, prim, angles)
        res["rotation_scan"][material] = {"e_per_atom_eV": e.tolist(),
                                          "max_minus_min_meV_per_atom": 1e3 * float(e.max() - e.min())}
    chiral = {f"{n},{m}": chiral_cell(n, m) for n, m in ((2, 0), (2, 1), (3, 1))}
    res["chiral_e_per_atom_eV"] = {k: r["energy"] / len(chiral[k]) for k, r in
                                   zip(chiral, predict_structures(pot, list(chiral.values()), derivatives=False))}
    res["supercell_max_meV_per_atom"] = supercell_errors(pot, val[:12])
    res["translation_max_meV_per_atom"] = translation_spread(pot, val[:12])
    res["eos"] = _eos(pot, data)
    g = honeycomb_sheet(3, 2, 2.52, SYMBOLS["graphene"])
    g.pbc = [True, True, False]
    scale, steps = relax_lattice(pot, g)
    res["relaxation"] = {"start_a_A": 2.52, "relaxed_a_A": 2.52 * scale, "steps": steps}
    write_json_atomic(res, os.path.join(out, "results.json"))
    _plots(res, angles, out)
    return res


A0 = {"graphene": 2.46, "hbn": 2.50}
SYMBOLS = {"graphene": ("C", "C"), "hbn": ("B", "N")}


def _eos(pot, data):
    import ase.io

    from ..atoms.structures import honeycomb_sheet

    ref = ase.io.read(f"{data}/checks_eos_gfn1_sc2.extxyz", ":")
    out = {}
    strains = np.round(np.arange(-0.03, 0.03001, 0.001), 4)
    for material, a0 in A0.items():
        cells = []
        for s in strains:
            c = honeycomb_sheet(3, 2, a0 * (1 + s), SYMBOLS[material])
            c.pbc = [True, True, False]
            cells.append(c)
        e = np.array([r["energy"] for r in predict_structures(pot, cells, derivatives=False)]) / 24
        area0 = math.sqrt(3) / 4 * a0 ** 2            # A^2 per atom of a honeycomb lattice
        rows = [a for a in ref if a.info["material"] == material]
        rs = np.array([a.info["strain"] for a in rows])
        re = np.array([a.get_potential_energy() / len(a) for a in rows])
        out[material] = {"strains": strains.tolist(), "ednn_e_per_atom_eV": e.tolist(),
                         "gfn1_strains": rs.tolist(), "gfn1_e_per_atom_eV": re.tolist(),
                         "ednn": eos_fit(strains, e, a0, area0), "gfn1": eos_fit(rs, re, a0, area0),
                         "stress": stress_errors(pot, rows)}
    return out


def _plots(res, angles, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for material, r in res["rotation_scan"].items():
        e = np.array(r["e_per_atom_eV"])
        ax.plot(angles, 1e3 * (e - e[0]), label=f"{material} (max - min {r['max_minus_min_meV_per_atom']:.2f})")
    ax.set(xlabel="angle of the whole structure (deg)", ylabel="E/atom - E/atom(0 deg) (meV)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rotation.png"), dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (material, r) in zip(axes, res["eos"].items()):
        e, g = np.array(r["ednn_e_per_atom_eV"]), np.array(r["gfn1_e_per_atom_eV"])
        ax.plot(100 * np.array(r["strains"]), 1e3 * (e - e.min()), label="EDNN")
        ax.plot(100 * np.array(r["gfn1_strains"]), 1e3 * (g - g.min()), "o", label="GFN1-xTB")
        ax.set(title=material, xlabel="biaxial strain (%)", ylabel="E/atom - min (meV)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "eos.png"), dpi=120)
    plt.close(fig)
