#!/usr/bin/env bash
# Issue 15, item 5: the GPU figures of the 1 um^2 sheet and of bench/tiles.py, for a GPU node.
# Not run in this repository's sessions without a GPU lease; every command stays under 10 minutes
# (the device tool's per-command limit). Run from the repository root:
#     bash docs/gpu_scale_check.sh [OUT]            # OUT defaults to results/gpu_scale
# Needs: the package installed (pip install -e . with `tensorflow` instead of `tensorflow-cpu`), or,
# on a node that has JAX but no TensorFlow, KERAS_BACKEND=jax (bench/tiles.py runs on any Keras
# backend; large_sheet.py's streaming path needs TensorFlow for its sharded reader).
set -euo pipefail
OUT=${1:-results/gpu_scale}; mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# 1. Throughput: paper tile CNN and the energy-density network, inference and training, against matmul.
timeout 540 python bench/tiles.py --batch 64 --repeats 10 --matmul-n 8192 --json "$OUT/bench_tiles_gpu.json" \
    | tee "$OUT/bench_tiles_gpu.txt"
# 2. A 1.83 % timing sample of the >= 35.2 M-atom sheet first (seconds on a GPU), then the whole sheet.
timeout 300 python experiments/large_sheet.py --repeats 306 --sample-tile-rows 32 --batch-tiles 1024 \
    --out "$OUT/sheet_sample" --no-progress | tee "$OUT/sheet_sample.txt"
timeout 590 python experiments/large_sheet.py --repeats 306 --batch-tiles 1024 --count-atoms \
    --record "$OUT/large_sheet_1um2_gpu.json" --out "$OUT/sheet" | tee "$OUT/sheet.txt"
echo "records in $OUT (compare with docs/measurements/large_sheet_1um2.json, the 2-core CPU run)"
