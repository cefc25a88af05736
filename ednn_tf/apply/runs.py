"""What the experiment scripts share: their process environment (``script_environment``, called
before anything imports numpy or TensorFlow; this module imports neither at load time) and
``write_render_settings``, the ``<model stem>.json`` record beside a trained model that
``experiments/porous_graphene.py`` still writes (grid ``shape``, ``gamma`` in A, ``cutoff`` in
gammas, ``oracle``, ...). Models meant for other scripts are saved as self-describing
:class:`ednn_tf.potential.Potential` files instead (``ednn_tf.load_potential``), which carry their
image settings; nothing reads these records back. ``porous_figures``: that script's figures."""
from __future__ import annotations

import os

__all__ = ["script_environment", "sidecar_path", "write_render_settings", "porous_figures"]

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


def porous_figures(out, path, meta, test_idx, pred, cfg, oracle_name, median):
    """``experiments/porous_graphene.py``'s Fig. 7 parity/error plot of the test set and the training curve
    (every epoch, across resumes), PNGs in ``out``."""
    from .. import data, plots, training

    y, a_t, n_t = meta["Y"][test_idx, 0], meta["areas"][test_idx], meta["n_atoms"][test_idx]
    example = data.read_arrays(path, ["X"], indices=test_idx[:1])["X"][0]
    Lx, Ly = meta["cell"][test_idx[0], 0, 0], meta["cell"][test_idx[0], 1, 1]
    plots.porous_parity(example, (0, Lx, 0, Ly), y / a_t, pred / a_t, os.path.join(out, "fig7_parity_error.png"),
                        color=n_t, label="atoms",
                        title=f"EDNN f={cfg['focus']} c={cfg['context']} px ({cfg['pixels_per_cell']} px/cell), "
                              f"{oracle_name} test set: median |err| {median:.3f} meV/A^2")
    log = training.read_log(os.path.join(out, "train"))
    curves = {k: log[k] for k in ("loss", "val_loss") if k in log}
    if curves:
        plots.training_curves(curves, os.path.join(out, "training_loss.png"), key="loss [eV^2]")
