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

__all__ = ["ArgumentError", "check_int", "check_float", "check_positive", "check_bool", "check_choice", "atomic_path",
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


# --- atomic writes ---
@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same extension, parent folders created) and rename it onto
    ``path`` once the block finishes without an exception (a text file, ``h5py.File``, ``np.savez``,
    ``model.save``); on an exception the temporary file is removed."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
