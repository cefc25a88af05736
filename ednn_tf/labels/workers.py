"""THE worker pool of ``ednn_tf.labels``: labelling and MD both run their tasks through :func:`run_tasks`.

Each worker is a fresh interpreter importing only ``ednn_tf.labels.workers`` (the package is lazy: no
TensorFlow) with ``OMP_NUM_THREADS = threads``, exchanging pickles over stdin/stdout; C-level prints
(LAMMPS, tblite) go to /dev/null. It is initialised with ``factory(*args)`` (a module-level function,
pickled by reference) returning the task function; each message ``(index, payload)`` gets
``task(*payload)`` back.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback

import numpy as np

__all__ = ["PickleWorker", "run_tasks", "sigterm_as_exit", "pack_atoms", "unpack_atoms", "hash_atoms", "cpu_count"]

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_WORKER_BOOT = ("import sys; sys.path.insert(0, sys.argv[1])\n"
                "from ednn_tf.labels.workers import _worker_main; _worker_main()\n")


# --- structures over pipes ---
def pack_atoms(atoms, info=False):
    """``(numbers, positions, cell, pbc[, info JSON])`` arrays of an ``ase.Atoms``."""
    out = (np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.positions, dtype=np.float64),
           np.asarray(atoms.cell, dtype=np.float64), np.asarray(atoms.pbc, dtype=bool))
    if info:
        out += (json.dumps(atoms.info, default=str),)
    return out


def unpack_atoms(packed):
    """The ``ase.Atoms`` of :func:`pack_atoms` (with its ``info`` if it was packed)."""
    from ase import Atoms

    atoms = Atoms(numbers=packed[0], positions=packed[1], cell=packed[2], pbc=packed[3])
    if len(packed) > 4:
        atoms.info.update(json.loads(packed[4]))
    return atoms


def hash_atoms(h, atoms):
    """Feed numbers, positions, cell and pbc of ``atoms`` into the hashlib object ``h``."""
    for arr in pack_atoms(atoms):
        h.update(np.ascontiguousarray(arr).tobytes())
        h.update(b"|")
    return h


def cpu_count():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


# --- one worker process ---
class PickleWorker:
    """A worker subprocess running :func:`_worker_main`, exchanging pickles over stdin/stdout."""

    def __init__(self, threads: int):
        env = {**os.environ, **dict.fromkeys(_THREAD_VARIABLES, str(threads))}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_BOOT, _ROOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, start_new_session=True)

    def send(self, msg):
        pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()

    def recv(self):
        try:
            return pickle.load(self.proc.stdout)
        except (EOFError, pickle.UnpicklingError):
            return ("died", None, f"worker process exited with code {self.proc.wait()}")

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


def _worker_main():  # runs in the worker subprocess
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # C-level prints (LAMMPS, tblite) must not corrupt the result stream
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    task = None
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
                task = msg[1](*msg[2])
                reply = ("ready", None, None)
            else:
                reply = ("ok", msg[1], task(*msg[2]))
        except BaseException:
            reply = ("error", msg[1] if kind == "task" else None, traceback.format_exc())
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


# --- the pool ---
@contextlib.contextmanager
def sigterm_as_exit():
    """SIGTERM (timeouts, schedulers) -> SystemExit inside the block, so ``finally`` clauses run."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum, frame):
            raise SystemExit(128 + signum)
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_tasks(todo, record, *, local, payload, factory, args, n_workers, threads, what, item):
    """``record(i, result)`` for every ``i`` in ``todo`` as results arrive: ``local(i)`` in this process
    (one worker or one task), else ``task(*payload(i))`` in ``min(n_workers, len(todo))`` workers. A
    failing task raises RuntimeError "``what`` failed in a worker process (``item`` i)" with the
    worker's traceback; the workers are killed on any exception (Ctrl-C included)."""
    if not todo:
        return
    if n_workers == 1 or len(todo) == 1:
        for i in todo:
            record(i, local(i))
        return
    _Pool(todo, payload, min(n_workers, len(todo)), what, item).run(factory, args, threads, record)


class _Pool:
    def __init__(self, todo, payload, n_workers, what, item):
        self.todo, self.payload, self.n_workers, self.what, self.item = todo, payload, n_workers, what, item
        self.tasks: queue.Queue = queue.Queue()
        for i in todo:
            self.tasks.put(i)
        self.results: queue.Queue = queue.Queue()
        self.stop = threading.Event()

    def serve(self, worker, init):
        try:
            worker.send(init)
        except (BrokenPipeError, OSError):
            pass  # the process died at start-up; recv() reports its exit code
        ready = worker.recv()
        if ready[0] != "ready":
            self.results.put(ready)
            return
        while not self.stop.is_set():
            try:
                i = self.tasks.get_nowait()
            except queue.Empty:
                return
            try:
                worker.send(("task", i, self.payload(i)))
            except (BrokenPipeError, OSError):
                self.results.put(worker.recv())
                return
            msg = worker.recv()
            self.results.put(("died", i, msg[2]) if msg[0] == "died" else msg)
            if msg[0] != "ok":
                return

    def run(self, factory, args, threads, record):
        workers, threads_ = [], []
        try:
            for _ in range(self.n_workers):
                workers.append(PickleWorker(threads))
                t = threading.Thread(target=self.serve, args=(workers[-1], ("init", factory, args)), daemon=True)
                t.start()
                threads_.append(t)
            self.collect(threads_, record)
        except BaseException:
            self.stop.set()
            for w in workers:
                w.close(kill=True)
            raise
        finally:
            self.stop.set()
            for w in workers:
                w.close()
            for t in threads_:
                t.join(timeout=5)

    def collect(self, threads_, record):
        received = 0
        while received < len(self.todo):
            try:
                kind, i, payload = self.results.get(timeout=0.2)
            except queue.Empty:
                if not any(t.is_alive() for t in threads_) and self.results.empty():
                    raise RuntimeError(f"all {self.n_workers} worker processes stopped with "
                                       f"{len(self.todo) - received} {self.item}s unfinished") from None
                continue
            if kind != "ok":
                where = f"{self.item} {i}" if i is not None else "start-up"
                raise RuntimeError(f"{self.what} failed in a worker process ({where}):\n{payload}")
            received += 1
            record(i, payload)
