"""Small shared mechanisms: argument checks that name the value received, atomic file writes,
one JSON coercer. Pure Python + numpy: importable from worker processes without TensorFlow.

Checks raise :class:`ArgumentError`, which is both a ``ValueError`` and a ``TypeError`` (a bad
type and a bad value are the same mistake to a caller: both are caught by either ``except``).
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os

import numpy as np

__all__ = ["ArgumentError", "check_int", "check_float", "check_positive", "check_positive_axes", "check_bool",
           "check_choice", "check_batch_size", "check_finite_array", "check_model_file", "argument_errors", "atomic_path", "remove_stale_temps",
           "write_json_atomic", "to_jsonable", "attr_value", "lazy_exports"]


class ArgumentError(ValueError, TypeError):
    """A bad argument (wrong type or value); the message names the argument and the value received."""


# --- checks ---
def check_int(name, value, minimum=None, maximum=None):
    """``int(value)`` if ``value`` is an integer (not a bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{name} must be an integer, got {name}={value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ArgumentError(f"{name} must be an integer >= {minimum}, got {name}={value}")
    if maximum is not None and value > maximum:
        raise ArgumentError(f"{name} must be an integer <= {maximum}, got {name}={value}")
    return value


def check_float(name, value, minimum=None, maximum=None, strict=False):
    """``float(value)`` for a finite real number (not a bool) with ``value >= minimum`` (``>`` if
    ``strict``) and ``value <= maximum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {name}={value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ArgumentError(f"{name} must be {'>' if strict else '>='} {minimum}, got {name}={value!r}")
    if maximum is not None and value > maximum:
        raise ArgumentError(f"{name} must be <= {maximum}, got {name}={value!r}")
    return value


def check_positive(name, value):
    """``float(value)`` for a finite number > 0."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value <= 0):
        raise ArgumentError(f"{name} must be a positive finite number, got {name}={value!r}")
    return float(value)


def check_positive_axes(name, value, ndim=None):
    """A positive finite number as ``float``, or a sequence of them (one per axis; ``ndim`` of them if
    given) as a ``tuple`` of floats."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return check_positive(name, value)
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)) or not len(value) \
            or (ndim is not None and len(value) != ndim):
        want = "a positive number" + ("" if ndim is None else f" or {ndim} of them, one per axis")
        raise ArgumentError(f"{name} must be {want}, got {name}={value!r}")
    return tuple(check_positive(f"{name}[{k}]", v) for k, v in enumerate(value))


def check_bool(name, value):
    """``value`` if it is a bool (or numpy bool), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentError(f"{name} must be True or False, got {name}={value!r}")
    return bool(value)


def check_choice(name, value, choices):
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {sorted(choices, key=str)}, got {name}={value!r}")
    return value


def check_batch_size(name, value, n, what):
    """``int(value)`` for a batch size in ``1..n``, ``n`` the training samples (``what`` says where that
    number comes from, e.g. ``"--n-train"``). A larger batch is refused, not clamped: batches are whole
    (a larger one gives no training step, or one smaller batch than asked for), and clamping would
    quietly change the experiment (its steps and the noise of each step)."""
    value = check_int(name, value)
    if not 1 <= value <= n:
        raise ArgumentError(f"{name} must be in 1..{n} (no larger than the training set: {what}), got {name}={value}")
    return value


def check_finite_array(name, arr):
    """``arr`` if it holds no NaN or inf (non-float arrays pass); ArgumentError naming ``name``, how many
    values are non-finite and the first sample (index along axis 0) that holds one."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fc" or np.all(np.isfinite(arr)):
        return arr
    bad = ~np.isfinite(arr.reshape(len(arr), -1) if arr.ndim else arr.reshape(1, 1))
    first = int(np.flatnonzero(bad.any(axis=1))[0])
    raise ArgumentError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf), the first in sample {first}")


def check_model_file(path):
    """``os.fspath(path)`` if it names an existing, complete ``.keras`` archive (a zip file); ValueError
    naming the path for a missing file and for a truncated or corrupt one (with what to do)."""
    import zipfile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"model file not found: {path!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"model file {path!r} ({os.path.getsize(path)} bytes) is not a complete .keras archive "
                         f"(truncated or corrupt zip): copy it again, or delete it to train a new model")
    return path


@contextlib.contextmanager
def argument_errors(parser):
    """Inside the block, an :class:`ArgumentError` (a ``check_*`` helper's) ends the script the way argparse
    ends it for a malformed option: the one line ``<prog>: error: <message>`` on stderr and exit status 2,
    no traceback. For the checks an experiment script runs on its arguments before any work."""
    try:
        yield
    except ArgumentError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


# --- atomic writes ---
@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same extension, parent folders created) and rename it onto
    ``path`` once the block finishes without an exception (a text file, ``h5py.File``, ``np.savez``,
    ``model.save``); on an exception the temporary file is removed. The temporary name is
    ``<stem>.tmp-<pid><ext>``; those a killed process left beside ``path`` (its pid no longer running on
    this machine) are removed first (``remove_stale_temps``)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    remove_stale_temps(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _pid_running(pid):
    """True when a process ``pid`` exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def remove_stale_temps(path):
    """Remove the ``<stem>.tmp-<pid><ext>`` files of ``atomic_path`` writes to ``path`` whose process is gone
    (killed mid-write); a running writer's file, and every other file, is kept. Returns the removed paths."""
    import glob
    import re

    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    pattern = re.compile(re.escape(os.path.basename(root)) + r"\.tmp-(\d+)" + re.escape(ext) + "$")
    removed = []
    for cand in glob.glob(glob.escape(root) + ".tmp-*" + glob.escape(ext)):
        match = pattern.match(os.path.basename(cand))
        if match and int(match.group(1)) != os.getpid() and not _pid_running(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):   # another process cleaned it first
                os.remove(cand)
                removed.append(cand)
    return removed


def write_json_atomic(obj, path):
    """Write ``to_jsonable(obj)`` as indented JSON, atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(to_jsonable(obj), fh, indent=2)
    return os.fspath(path)


# --- JSON ---
def to_jsonable(o):
    """Plain JSON data from nested dicts/lists/tuples of numpy and Python values: arrays become lists, numpy
    scalars Python scalars, dict keys strings, non-finite floats ``None`` (strict JSON), anything else ``str``."""
    if isinstance(o, dict):
        return {str(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return to_jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (str, bool, int)):
        return o
    return str(o)


def attr_value(value):
    """An HDF5 attribute value: scalars, strings and numeric arrays as they are, anything else as
    JSON text (``to_jsonable``)."""
    if isinstance(value, (str, bytes, int, float, bool, np.integer, np.floating, np.bool_)):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in value):
        return np.asarray(value)
    return json.dumps(to_jsonable(value))


# --- lazy module attributes ---
def lazy_exports(namespace, exports):
    """PEP 562 ``(__getattr__, __dir__)`` for the module whose ``globals()`` is ``namespace``.

    ``exports`` maps a name to the module it comes from (relative to the package, e.g. ``".model"``),
    imported on first access, so importing the module stays light and import cycles are avoided. A
    name that is the last part of its module's name (``"data": ".data"``) is the module itself.
    """
    import importlib

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name], namespace["__package__"])
        return module if module.__name__.rsplit(".", 1)[-1] == name else getattr(module, name)

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
