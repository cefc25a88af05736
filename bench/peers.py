"""The EDNN potential beside its peers, one thread, one run (issue "run it big", item 5): energy +
forces atoms/s and peak memory against the number of atoms, and MD steps/s of a 10^5-atom sheet.

    python bench/peers.py                                   # 10^2 .. 10^5 atoms, ~5 min
    python bench/peers.py --sizes 1e2 1e3 1e4 1e5 1e6 1e7   # up to 10^7 (~1 h of one core)
    python bench/peers.py --md-atoms 0                      # no MD

Every point runs in a fresh process (``--child``), one TensorFlow / OpenMP thread, on a rattled
graphene sheet (rectangular 4-atom cells, a = 2.46 A, rattle 0.05 A) of about the asked size:
  * ``ednn``: the shipped ``hexagonal-gfn1`` (``EDNNCalculator``: energy, forces, stress), blocks of
    ``apply.space.DEFAULT_BLOCK`` px; ``ednn-api``: the same through ``predict_structures`` directly
    (ASE's ``Calculator`` keeps a copy of the structure: 32 bytes an atom);
  * ``tersoff``: LAMMPS Tersoff BNC (a classical potential's speed; the ``tersoff-bnc`` oracle);
  * ``gfn1-xtb``: the oracle (tblite, Gamma point, no supercell), up to ``--gfn1-max`` atoms;
  * ``mace``: a trained MACE model file (``--mace-model``; the issue's peer: 64 channels, L = 0,
    r_max 5 A, float32), through ``mace.calculators.MACECalculator`` on the CPU. MACE is not a
    dependency of this project; in its own environment: ``python -m venv .venv-mace &&
    .venv-mace/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu &&
    .venv-mace/bin/pip install mace-torch -e ".[oracles]"``, then ``.venv-mace/bin/python
    bench/peers.py --mace-model M.model``. Without it the bench prints why and skips MACE.
Each point: median of ``--repeats`` calls after a warm-up (the first call traces and builds neighbour
lists), peak RSS of the process (``ru_maxrss``). EDNN sizes above ``--sample-above`` atoms make one
call that checks, frames and cuts the whole structure as always but evaluates only its first
``--sample-blocks`` blocks: the time is the set-up plus the measured time per block times the number
of blocks (every block has the same window), the memory is the full call's. Writes ``--out`` (JSON) and prints the table with the
EDNN / peer ratios of the same run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV1 = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def sheet(n_atoms, seed=0):
    """A rattled graphene sheet of about ``n_atoms`` atoms (a multiple of 4), roughly square, built
    with numpy (no temporary copies: the 10^7-atom sheet is 0.3 GB)."""
    from ase import Atoms

    from ednn_tf.atoms.structures import FRACTIONAL

    a, b = 2.46, 2.46 * math.sqrt(3.0)
    nx = max(1, round(math.sqrt(n_atoms / 4 * math.sqrt(3))))
    ny = max(1, round(n_atoms / 4 / nx))
    pos = np.zeros((nx, ny, 4, 3))
    pos[..., 0] = (np.arange(nx)[:, None, None] + FRACTIONAL[None, None, :, 0]) * a
    pos[..., 1] = (np.arange(ny)[None, :, None] + FRACTIONAL[None, None, :, 1]) * b
    pos[..., 2] = 10.0
    pos = pos.reshape(-1, 3)
    rng = np.random.default_rng(seed)
    for k in range(0, len(pos), 10 ** 6):
        pos[k:k + 10 ** 6, :2] += rng.normal(0.0, 0.05, (len(pos[k:k + 10 ** 6]), 2))
    return Atoms(numbers=np.full(len(pos), 6), positions=pos, cell=[nx * a, ny * b, 20.0], pbc=(True, True, False))


class _PredictStructures:
    """``apply.space.predict_structures`` behind a calculator's ``calculate`` (no copy of the
    structure kept, unlike ASE's ``Calculator``): the ``ednn-api`` code."""

    def __init__(self):
        from ednn_tf import load_potential

        self.potential, self.results = load_potential("hexagonal-gfn1"), {}

    def calculate(self, atoms, properties, changes):
        from ednn_tf.apply.space import predict_structures

        self.results = predict_structures(self.potential, [atoms])[0]


def _calculator(code):
    if code == "ednn-api":
        return _PredictStructures()
    if code == "ednn":
        from ednn_tf import load_potential
        from ednn_tf.apply.calculator import EDNNCalculator

        return EDNNCalculator(load_potential("hexagonal-gfn1"))
    if code == "tersoff":
        from ednn_tf.labels.oracles import get_oracle

        return get_oracle("tersoff-bnc").calculator()
    if code == "gfn1-xtb":
        from ednn_tf.labels.oracles import get_oracle

        return get_oracle("gfn1-xtb").calculator()
    if code == "mace":
        import torch
        from mace.calculators import MACECalculator

        model = os.environ.get("EDNN_BENCH_MACE_MODEL")
        if not model:
            raise RuntimeError("no MACE model: pass --mace-model PATH (a trained MACE .model file)")

        torch.set_num_threads(1)
        return MACECalculator(model_paths=model, device="cpu", default_dtype="float32")
    raise ValueError(f"unknown code {code!r}")


def _sampled_ednn(calc, at, k_blocks):
    """One EDNN energy + forces call on ``at`` that evaluates only its first ``k_blocks`` blocks (the
    whole structure is checked, framed and cut as in a full call, so the memory is the full call's):
    the figures of a full call extrapolated by the number of blocks."""
    import itertools

    from ednn_tf.apply import space

    seen, marks, full = [], {}, space.block_frames

    def sampled(frame, block, pitch, context, gamma):
        marks["blocks"] = int(np.prod(space.block_counts(frame, block, pitch)[0]))
        for k, f in enumerate(itertools.islice(full(frame, block, pitch, context, gamma), k_blocks)):
            if k == 1:                              # after the first block: set-up and tracing done
                marks["eval_start"] = time.perf_counter()
            if k:
                seen.append(f.read)
            yield f

    space.block_frames = sampled
    t0 = time.perf_counter()
    calc.calculate(at, ["energy", "forces"], ["positions"])
    t1 = time.perf_counter()
    space.block_frames = full
    per_block = (t1 - marks["eval_start"]) / len(seen)
    total = (marks["eval_start"] - t0) + per_block * marks["blocks"]
    return {"seconds": total, "sampled_blocks": len(seen), "blocks": marks["blocks"],
            "setup_s": marks["eval_start"] - t0, "atoms_per_s_in_blocks": sum(seen) / (t1 - marks["eval_start"])}


def child(code, n_atoms, repeats, md_steps, sample_blocks=0):
    """One point in this process: JSON on stdout."""
    try:
        calc = _calculator(code)
    except Exception as exc:       # an optional peer that is not installed: skipped with the reason
        return {"code": code, "skipped": f"{type(exc).__name__}: {exc}"}
    at = sheet(n_atoms)
    at.calc = calc
    if sample_blocks and code.startswith("ednn"):
        out = {"code": code, "atoms": len(at), **_sampled_ednn(calc, at, sample_blocks)}
        out["atoms_per_s"] = len(at) / out["seconds"]
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    props = ["energy", "forces"]
    t0 = time.perf_counter()
    calc.calculate(at, props, ["positions"])       # warm-up: tracing, neighbour lists
    first = time.perf_counter() - t0
    times = []
    for k in range(repeats):
        at.positions[:, :2] += 1e-4 * (-1) ** k     # a new structure each call (no cache)
        t0 = time.perf_counter()
        calc.calculate(at, props, ["positions"])
        times.append(time.perf_counter() - t0)
    out = {"code": code, "atoms": len(at), "seconds": float(np.median(times)), "first_call_s": first,
           "atoms_per_s": len(at) / float(np.median(times))}
    if md_steps:
        from ase import units
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(at, timestep=0.5 * units.fs)
        t0 = time.perf_counter()
        dyn.run(md_steps)
        out["md_steps_per_s"] = md_steps / (time.perf_counter() - t0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_point(code, n, repeats, md_steps=0, sample_blocks=0, timeout=7200):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", code, str(n), str(repeats), str(md_steps),
           str(sample_blocks)]
    env = {**os.environ, **ENV1}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {"code": code, "atoms": n, "failed": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e2, 1e3, 1e4, 1e5])
    ap.add_argument("--codes", nargs="+", default=["ednn", "tersoff", "gfn1-xtb", "mace"])
    ap.add_argument("--mace-model", help="a trained MACE .model file (needs mace-torch; see above)")
    ap.add_argument("--gfn1-max", type=float, default=250)
    ap.add_argument("--tersoff-max", type=float, default=1e5,
                    help="LAMMPS Tersoff through ASE's LAMMPS interface: its set-up grows faster than N "
                         "(20 s at 10^5 atoms, over 200 s at 10^6): larger sizes only on request")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--md-atoms", type=float, default=1e5, help="sheet of the MD steps/s (0: none)")
    ap.add_argument("--md-steps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(REPO, "results", "bench_peers.json"))
    ap.add_argument("--sample-above", type=float, default=2e6,
                    help="EDNN sizes above this evaluate --sample-blocks blocks of the whole call and extrapolate")
    ap.add_argument("--sample-blocks", type=int, default=300)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        sys.path.insert(0, REPO)
        code, n, rep, md, sample = args.child
        print(json.dumps(child(code, int(float(n)), int(rep), int(md), int(sample))))
        return None
    if args.mace_model:
        os.environ["EDNN_BENCH_MACE_MODEL"] = os.path.abspath(args.mace_model)
    rows, skipped = [], {}
    for code in args.codes:
        for n in args.sizes:
            if (code == "gfn1-xtb" and n > args.gfn1_max) or (code == "tersoff" and n > args.tersoff_max):
                continue
            sample = args.sample_blocks if code.startswith("ednn") and n > args.sample_above else 0
            r = run_point(code, int(n), args.repeats if n < 1e6 else 1, sample_blocks=sample)
            if "skipped" in r:
                skipped[code] = r["skipped"]
                print(f"{code}: skipped ({r['skipped']})", flush=True)
                break
            rows.append(r)
            print(json.dumps(r), flush=True)
    md = []
    if args.md_atoms:
        for code in ("ednn", "tersoff"):
            if code in args.codes and code not in skipped:
                md.append(run_point(code, int(args.md_atoms), 1, md_steps=args.md_steps))
                print(json.dumps(md[-1]), flush=True)
    _table(rows, md, skipped)
    out = {"rows": rows, "md": md, "skipped": skipped, "threads": 1, "command": "python bench/peers.py " +
           " ".join(sys.argv[1:]), "cpu": _cpu(), "date": time.strftime("%Y-%m-%d %H:%M")}
    sys.path.insert(0, REPO)
    from ednn_tf.util import write_json_atomic

    write_json_atomic(out, args.out)
    print(f"wrote {args.out}")
    return out


def _cpu():
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        return ""


def _table(rows, md, skipped):
    by = {(r["code"], r["atoms"]): r for r in rows if "atoms_per_s" in r}
    ednn = {n: r for (c, n), r in by.items() if c == "ednn"}
    print(f"\n{'code':10s} {'atoms':>10s} {'atoms/s':>10s} {'peak MB':>8s} {'EDNN/peer':>10s}")
    for (code, n), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        ratio = ""
        match = [e for m, e in ednn.items() if abs(math.log(m / n)) < 0.1]
        if code != "ednn" and match:
            ratio = f"{match[0]['atoms_per_s'] / r['atoms_per_s']:.3g}"
        print(f"{code:10s} {n:10,d} {r['atoms_per_s']:10,.0f} {r['peak_rss_mb']:8.0f} {ratio:>10s}")
    for r in md:
        if "md_steps_per_s" in r:
            print(f"MD {r['code']}: {r['atoms']:,} atoms, {r['md_steps_per_s']:.4g} steps/s")
    for code, why in skipped.items():
        print(f"{code}: skipped: {why}")


if __name__ == "__main__":
    main()
