"""The ``ednn-tf`` command line (``setup.py`` console script; also ``python -m ednn_tf.cli``).

``ednn-tf label DATA --oracle NAME [--oracle-setting K=V ...] --out OUT.extxyz``: energies (eV)
and forces (eV/A) of every structure in DATA (any file ASE reads), computed in parallel worker
processes and resumable: finished structures are kept in ``OUT.labels.npz`` and a rerun computes
only the rest. OUT is written atomically at the end; ``ase.io.read(OUT, ":")[i]`` then returns
them with ``get_potential_energy()`` / ``get_forces()``.

Every bad input exits with status 2 and a message naming the value (missing file, unknown oracle
or setting, a structure the oracle cannot label) before any work starts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main", "parse_setting"]


def parse_setting(item):
    """``(key, value)`` of one ``KEY=VALUE`` (VALUE parsed as JSON, else kept as a string)."""
    key, sep, value = str(item).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"a setting must be KEY=VALUE, got {item!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def read_structures(path, index=":"):
    """All frames of ``path`` (``ase.io.read``); ValueError naming the file when it is missing,
    unreadable or empty."""
    import ase.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"structure file not found: {path!r}")
    try:
        frames = ase.io.read(path, index=index)
    except Exception as exc:  # ASE raises many types for a bad file
        raise ValueError(f"could not read structures from {path!r}: {type(exc).__name__}: {exc}") from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ValueError(f"{path!r} holds no structures for index {index!r}")
    return frames


def write_labelled(path, structures, energies, forces, info):
    """Write ``structures`` with their energies (eV) and forces (eV/A) as extxyz, atomically."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from .util import atomic_path

    out = []
    for atoms, e, f in zip(structures, energies, forces):
        a = atoms.copy()
        a.info.update(info)
        a.calc = SinglePointCalculator(a, energy=float(e), forces=f)
        out.append(a)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, out, format="extxyz")
    return os.fspath(path)


def _label(args):
    from .labels import oracles
    from .labels.labelling import label_structures

    oracle = oracles.get_oracle(args.oracle, **dict(parse_setting(s) for s in args.oracle_setting))
    structures = read_structures(args.data)
    for i, atoms in enumerate(structures):
        try:
            oracle.check(atoms)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{args.data!r} structure {i}: {exc}") from None
    energies, forces = label_structures(structures, oracle, n_workers=args.workers, checkpoint=args.out + ".labels.npz",
                                        progress=not args.no_progress, threads_per_worker=args.threads,
                                        forces=True)
    info = {"oracle": oracle.name, "oracle_settings": json.dumps(oracle.settings, sort_keys=True)}
    write_labelled(args.out, structures, energies, forces, info)
    print(f"labelled {len(structures)} structures with {oracle.name} -> {args.out}")


def _parser():
    ap = argparse.ArgumentParser(prog="ednn-tf", description="Extensive deep neural network potentials.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("label", help="energies and forces of every structure in a file, from an oracle")
    p.add_argument("data", help="structure file (any format ASE reads; all frames)")
    p.add_argument("--oracle", required=True, help="gfn1-xtb, rebo, tersoff-bnc or lj")
    p.add_argument("--oracle-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="oracle setting (repeatable; VALUE parsed as JSON), e.g. supercell=2")
    p.add_argument("--out", required=True, help="labelled extxyz file (checkpoint: OUT.labels.npz)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--threads", type=int, default=None, help="threads per worker (default cores / workers)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_label)
    return ap


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, ImportError) as exc:
        print(f"ednn-tf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
