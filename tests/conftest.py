import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
