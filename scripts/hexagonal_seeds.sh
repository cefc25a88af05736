#!/usr/bin/env bash
# Repeats of the hexagonal EDNN-vs-CNN comparison over several initialisation seeds, every network
# in its own process (on a GPU node several share the device: 3 at a time on an H100 in session 3),
# then each seed's pair tested together (plain and symmetrised) and all seeds combined.
#
#   scripts/hexagonal_seeds.sh OUT_PREFIX "SEEDS" [hexagonal.py options...]
#   KERAS_BACKEND=jax scripts/hexagonal_seeds.sh results/hex-gpu12k "0 1" --preset gpu \
#       --n-structures 12000 --n-train 9600 --n-val 1200
#   scripts/hexagonal_seeds.sh /tmp/hex-tiny "0 1" --preset tiny      # seconds, on a CPU
#
# Writes OUT_PREFIX-seed<S>-{ednn,cnn}/ (training, one network each), OUT_PREFIX-seed<S>/ (both
# networks: test, symmetrised test) and OUT_PREFIX-seeds.json (experiments/hexagonal_seeds.py).
# MAX_JOBS (default 3) caps the concurrent training processes. Every step is resumable: rerun the
# same command after an interruption. The data file is prepared once, before the parallel step.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    sed -n '2,14p' "$0"; exit 2
fi
prefix=$1; seeds=$2; shift 2
max_jobs=${MAX_JOBS:-3}
for s in $seeds; do
    [[ $s =~ ^[0-9]+$ ]] || { echo "seeds must be non-negative integers, got '$s'" >&2; exit 2; }
done

echo "== data"
python experiments/hexagonal.py "$@" --skip ednn cnn --no-progress --out "${prefix}-data"

echo "== training (${max_jobs} processes at a time)"
pids=(); names=()
for s in $seeds; do
    for m in ednn cnn; do
        other=$([ "$m" = ednn ] && echo cnn || echo ednn)
        out="${prefix}-seed${s}-${m}"
        if [ -f "$out/${m}.keras" ]; then echo "$out: trained"; continue; fi
        while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do sleep 5; done
        python experiments/hexagonal.py "$@" --init-seed "$s" --skip "$other" transfer blur --no-progress \
            --out "$out" > "${out}.log" 2>&1 &
        pids+=($!); names+=("$out")
        echo "started $out (log ${out}.log)"
    done
done
fail=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then echo "FAILED: ${names[$i]} (see ${names[$i]}.log)" >&2; fail=1; fi
done
[ "$fail" = 0 ] || exit 1

echo "== test both networks of each seed"
dirs=()
for s in $seeds; do
    d="${prefix}-seed${s}"
    mkdir -p "$d"
    for m in ednn cnn; do
        src="${prefix}-seed${s}-${m}"
        for f in "${m}.keras" "${m}.train.json" "train_${m}"; do
            [ -e "$d/$f" ] || cp -r "$src/$f" "$d/"
        done
    done
    python experiments/hexagonal.py "$@" --init-seed "$s" --skip transfer blur --no-progress --out "$d"
    dirs+=("$d")
done

echo "== all seeds"
python experiments/hexagonal_seeds.py "${dirs[@]}" --json "${prefix}-seeds.json"
