"""What the experiment scripts share: their process environment (``script_environment``, called
before anything imports numpy or TensorFlow; this module imports neither at load time) and
``write_render_settings``, the ``<model stem>.json`` record beside a trained model that
``experiments/porous_graphene.py`` still writes (grid ``shape``, ``gamma`` in A, ``cutoff`` in
gammas, ``oracle``, ...). Models meant for other scripts are saved as self-describing
:class:`ednn_tf.potential.Potential` files instead (``ednn_tf.load_potential``), which carry their
image settings; nothing reads these records back."""
from __future__ import annotations

import os

__all__ = ["script_environment", "sidecar_path", "write_render_settings"]

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


def write_render_settings(model_path, settings):
    """Write ``settings`` (JSON-able dict) as the sidecar of ``model_path``, atomically; returns its path."""
    from ..util import write_json_atomic

    return write_json_atomic(settings, sidecar_path(model_path))
