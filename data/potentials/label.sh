#!/bin/bash
# k-converged GFN1-xTB labels (2x2 k-mesh: supercell=2) with forces for the varied hexagonal cells, chunk by
# chunk, resumable (each chunk's checkpoint is <out>.labels.npz). Usage: bash data/potentials/label.sh 0 1 ...
cd "$(dirname "$0")/../.."
for k in "$@"; do
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m ednn_tf.cli label data/potentials/hexagonal_varied_chunk$k.extxyz \
      --oracle gfn1-xtb --oracle-setting supercell=2 --workers "${WORKERS:-1}" --threads 1 \
      --out data/potentials/hexagonal_varied_chunk${k}_gfn1_sc2.extxyz || exit 1
done
