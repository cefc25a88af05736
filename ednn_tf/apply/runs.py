"""What the experiment scripts share: their process environment (``script_environment``, called
before anything imports numpy or TensorFlow; this module imports neither at load time) and the
sidecar ``<model stem>.json`` beside a trained model (grid ``shape``, ``gamma`` in A, ``cutoff`` in
gammas, ``oracle``, ...) that lets another script render structures the way the model was trained."""
from __future__ import annotations

import json
import os

__all__ = ["script_environment", "sidecar_path", "load_sidecar", "write_render_settings", "read_render_settings"]

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def script_environment(main):
    """Quiet TensorFlow's C++ log; when the script runs as a program (``main``), single-threaded
    BLAS/OpenMP (stable per-call latency on a shared machine). Variables already set are kept.
    Returns the repository root (the folder holding ``ednn_tf``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if main:
        for var in _THREAD_VARIABLES:
            os.environ.setdefault(var, "1")
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sidecar_path(model_path):
    """``<stem>.json`` beside the ``.keras`` file ``model_path``."""
    return os.path.splitext(os.fspath(model_path))[0] + ".json"


def load_sidecar(model_path):
    """The sidecar dict of ``model_path`` (``<stem>.json``, else ``<path>.json``) and its path, or
    ``({}, None)`` when there is none."""
    for cand in (sidecar_path(model_path), os.fspath(model_path) + ".json"):
        if os.path.isfile(cand):
            with open(cand) as fh:
                return json.load(fh), cand
    return {}, None


def write_render_settings(model_path, settings):
    """Write ``settings`` (JSON-able dict) as the sidecar of ``model_path``, atomically; returns its path."""
    from ..util import write_json_atomic

    return write_json_atomic(settings, sidecar_path(model_path))


def read_render_settings(model_path, shape=None, gamma=None, cutoff=None):
    """``{"shape", "gamma", "cutoff", "channels", "oracle", "source"}`` of a saved model: the arguments
    given (not None) > its sidecar > the ``results.json`` of ``experiments/hexagonal.py`` in its folder
    (``config.grid``) > the renderer's defaults; ``source``: the file read, or None. ValueError when
    no grid shape is known."""
    from ..atoms import cells

    found, source = load_sidecar(model_path)
    if source is None:
        cand = os.path.join(os.path.dirname(os.path.abspath(model_path)), "results.json")
        if os.path.isfile(cand):
            with open(cand) as fh:
                conf = json.load(fh).get("config", {})
            if "grid" in conf:
                found, source = {"shape": [conf["grid"], conf["grid"]], "oracle": conf.get("oracle")}, cand
    settings = {"shape": found.get("shape"), "gamma": found.get("gamma", cells.DEFAULT_GAMMA),
                "cutoff": found.get("cutoff", cells.DEFAULT_CUTOFF), "channels": found.get("channels"),
                "oracle": found.get("oracle"), "source": source}
    given = {"shape": None if shape is None else list(shape), "gamma": gamma, "cutoff": cutoff}
    settings.update({key: value for key, value in given.items() if value is not None})
    if settings["shape"] is None:
        raise ValueError(f"no image shape for {model_path}: pass a shape or write a sidecar "
                         f"{sidecar_path(model_path)} with {{\"shape\": [nx, ny], \"gamma\": 0.2, \"cutoff\": 6.0}}")
    return settings
