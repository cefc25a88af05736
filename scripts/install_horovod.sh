#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (TensorFlow + Gloo, no MPI) against the
# TensorFlow that is already installed in the active Python environment.
#
# Why a script: the horovod 0.28.1 sdist fails to compile against
# TensorFlow >= 2.19 solely because horovod/tensorflow/xla_mpi_ops.cc (the
# XLA custom-call ops, which ednn_tf never uses) is always compiled and uses
# XLA headers/APIs that changed. We drop that one source file from
# horovod/tensorflow/CMakeLists.txt and build everything else unchanged.
#
# Second, optional one-word patch (on by default): in
# horovod/common/gloo/gloo_controller.cc the vector of global ranks is
# `reserve()`d instead of `resize()`d, so it stays empty and the stall
# inspector (HOROVOD_STALL_CHECK_TIME_SECONDS /
# HOROVOD_STALL_SHUTDOWN_TIME_SECONDS) never warns about, nor shuts down, a
# stalled job when Gloo is the controller. We change reserve -> resize.
# The patches applied are recorded in <site-packages>/horovod/EDNN_PATCHES.
#
# Usage:
#   scripts/install_horovod.sh                               # CPU node: TF + Gloo
#   HOROVOD_GPU_OPERATIONS=NCCL scripts/install_horovod.sh   # GPU node (NCCL)
#
# Environment knobs (all optional):
#   PYTHON                    python interpreter to use        (default: python)
#   HOROVOD_VERSION           version to build                 (default: 0.28.1)
#   HOROVOD_BUILD_JOBS        parallel compile jobs            (default: nproc)
#   HOROVOD_GPU_OPERATIONS    e.g. NCCL; passed through to the horovod build.
#                             Needs CUDA + NCCL development files and the GPU
#                             `tensorflow` wheel (not tensorflow-cpu).
#                             HOROVOD_CUDA_HOME / HOROVOD_NCCL_HOME etc. are
#                             inherited from the environment as usual.
#   HOROVOD_FORCE_REBUILD=1   rebuild even if horovod already imports
#   HOROVOD_KEEP_BUILD_DIR=1  keep the temporary source/build directory
#   HOROVOD_PATCH_GLOO_STALL=0  do not apply the gloo stall-check fix
#
# Idempotent: if `import horovod.tensorflow` already works with the installed
# TensorFlow and Gloo is built in, it exits immediately (warning if that
# horovod lacks the stall-check fix).
set -euo pipefail

PYTHON="${PYTHON:-python}"
HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
JOBS="${HOROVOD_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { printf '[install_horovod] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --------------------------------------------------------------------------
# 0. Already installed and working?
# --------------------------------------------------------------------------
horovod_ok() {
    "$PYTHON" - "$HOROVOD_VERSION" >/dev/null 2>&1 <<'PYEOF'
import sys
import horovod
import horovod.tensorflow as hvd  # loads mpi_lib against the installed TF
assert horovod.__version__ == sys.argv[1], horovod.__version__
assert hvd.gloo_built(), "gloo not built"
PYEOF
}

installed_patches() {
    "$PYTHON" 2>/dev/null <<'PYEOF' || true
import importlib.util, pathlib
spec = importlib.util.find_spec("horovod")
if spec and spec.origin:
    p = pathlib.Path(spec.origin).parent / "EDNN_PATCHES"
    if p.exists():
        print(p.read_text().strip())
PYEOF
}

if [[ "${HOROVOD_FORCE_REBUILD:-0}" != "1" ]] && horovod_ok; then
    log "horovod ${HOROVOD_VERSION} with TensorFlow + Gloo already works; nothing to do."
    if ! installed_patches | grep -q gloo-stall-fix; then
        log "warning: the installed horovod lacks the gloo stall-check fix (see the" \
            "header of this script); rerun with HOROVOD_FORCE_REBUILD=1 to rebuild."
    fi
    exit 0
fi

# --------------------------------------------------------------------------
# 1. Prerequisites
# --------------------------------------------------------------------------
"$PYTHON" -c "import tensorflow" >/dev/null 2>&1 \
    || die "TensorFlow is not importable with $PYTHON; install tensorflow(-cpu) first."
TF_VERSION="$("$PYTHON" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)"
log "TensorFlow ${TF_VERSION} found."

command -v g++ >/dev/null 2>&1 || die "g++ not found (apt-get install g++)."

if ! cmake --version >/dev/null 2>&1; then
    log "cmake not found; installing it from PyPI."
    "$PYTHON" -m pip install --quiet 'cmake>=3.13,<4'
    hash -r
    cmake --version >/dev/null 2>&1 || die "cmake still not available on PATH."
fi
log "$(cmake --version | head -n1) found."

# Horovod's runtime dependencies; with --no-build-isolation the build also
# needs setuptools/wheel importable up front.
if ! "$PYTHON" -c "import cloudpickle, psutil, yaml, packaging, setuptools, wheel" >/dev/null 2>&1; then
    log "installing build/runtime dependencies from PyPI"
    "$PYTHON" -m pip install --quiet cloudpickle psutil pyyaml packaging setuptools wheel
fi

# --------------------------------------------------------------------------
# 2. Fetch + patch the sdist
# --------------------------------------------------------------------------
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")"
cleanup() {
    if [[ "${HOROVOD_KEEP_BUILD_DIR:-0}" == "1" ]]; then
        log "build directory kept at ${WORKDIR}"
    else
        rm -rf "${WORKDIR}"
    fi
}
trap cleanup EXIT

log "downloading horovod==${HOROVOD_VERSION} sdist into ${WORKDIR}"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
    "horovod==${HOROVOD_VERSION}" -d "${WORKDIR}"
SDIST="${WORKDIR}/horovod-${HOROVOD_VERSION}.tar.gz"
[[ -f "${SDIST}" ]] || die "sdist not found after download: ${SDIST}"
tar -xzf "${SDIST}" -C "${WORKDIR}"
SRC="${WORKDIR}/horovod-${HOROVOD_VERSION}"

CMAKELISTS="${SRC}/horovod/tensorflow/CMakeLists.txt"
[[ -f "${CMAKELISTS}" ]] || die "unexpected sdist layout: ${CMAKELISTS} missing"
log "patching horovod/tensorflow/CMakeLists.txt: dropping xla_mpi_ops.cc"
sed -i '/xla_mpi_ops\.cc/d' "${CMAKELISTS}"
if grep -q 'xla_mpi_ops' "${CMAKELISTS}"; then
    die "patch failed: xla_mpi_ops.cc still referenced"
fi
PATCHES="no-xla-ops"

if [[ "${HOROVOD_PATCH_GLOO_STALL:-1}" == "1" ]]; then
    GLOO_CTRL="${SRC}/horovod/common/gloo/gloo_controller.cc"
    if grep -q 'global_ranks_\.reserve(size_);' "${GLOO_CTRL}"; then
        log "patching horovod/common/gloo/gloo_controller.cc: global_ranks_ reserve -> resize"
        sed -i 's/global_ranks_\.reserve(size_);/global_ranks_.resize(size_);/' "${GLOO_CTRL}"
        grep -q 'global_ranks_\.resize(size_);' "${GLOO_CTRL}" || die "gloo stall patch failed"
        PATCHES="${PATCHES} gloo-stall-fix"
    else
        log "warning: gloo_controller.cc has an unexpected layout; stall-check fix not applied"
    fi
fi

# --------------------------------------------------------------------------
# 3. Build + install
# --------------------------------------------------------------------------
export HOROVOD_WITH_TENSORFLOW=1
export HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_MPI=1
export HOROVOD_WITHOUT_PYTORCH=1
export HOROVOD_WITHOUT_MXNET=1
# horovod's setup.py compiles with -j8 unless MAKEFLAGS is set.
export MAKEFLAGS="-j${JOBS}"
if [[ -n "${HOROVOD_GPU_OPERATIONS:-}" ]]; then
    export HOROVOD_GPU_OPERATIONS
    log "GPU build requested: HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS}"
fi

if "$PYTHON" -m pip show horovod >/dev/null 2>&1; then
    log "uninstalling the currently installed horovod first"
    "$PYTHON" -m pip uninstall --yes horovod
fi

log "building (MAKEFLAGS=${MAKEFLAGS}, patches: ${PATCHES}); this takes minutes..."
start=$(date +%s)
"$PYTHON" -m pip install --no-build-isolation --no-cache-dir "${SRC}"
log "build + install took $(( $(date +%s) - start )) s"

# --------------------------------------------------------------------------
# 4. Record patches + verify
# --------------------------------------------------------------------------
cd /  # import the installed package, not the source tree
"$PYTHON" - "${PATCHES}" <<'PYEOF'
import pathlib, sys
import horovod
(pathlib.Path(horovod.__file__).parent / "EDNN_PATCHES").write_text(sys.argv[1] + "\n")
PYEOF

if ! horovod_ok; then
    "$PYTHON" -c "import horovod.tensorflow as hvd; print('gloo_built', hvd.gloo_built())" || true
    die "horovod installed but 'import horovod.tensorflow' (with gloo) does not work."
fi
"$PYTHON" - <<'PYEOF'
import horovod, horovod.tensorflow as hvd, tensorflow as tf
print(f"[install_horovod] OK: horovod {horovod.__version__}, TF {tf.__version__}, "
      f"gloo={bool(hvd.gloo_built())} mpi={bool(hvd.mpi_built())} "
      f"nccl={bool(hvd.nccl_built())}", flush=True)
PYEOF
command -v horovodrun >/dev/null 2>&1 || log "warning: horovodrun is not on PATH (check your pip scripts dir)."
