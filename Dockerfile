# ednn_tf in a container: the README's test install, `pip install -e ".[test,oracles]"` plus
# Horovod via scripts/install_horovod.sh, so that inside the image the whole test suite passes and
# every experiment and `ednn-tf` command runs (GFN1-xTB, REBO, Tersoff, Horovod included).
#
#   docker build -t ednn_tf .                                   # full image (default target)
#   docker run --rm -v $PWD/results:/app/results ednn_tf        # Ising quick preset -> results/ising-quick/
#   docker run --rm ednn_tf python scripts/run_tests.py         # the test suite (one process per file)
#   docker build --target slim -t ednn_tf:slim .                # core + pytest only (see below)
#
# scripts/check_docker.sh builds and checks all of this with podman (README, Development).
#
# Stages: `deps` (a venv with the core and test dependencies) -> `build` (+ oracles, + a compiler
# and Horovod built against the installed TensorFlow) -> `full` (the venv copied onto the plain
# base: no compiler in the final image). Dependencies are installed from setup.py alone with a
# stub package, so editing the code (`COPY . /app`, last) reuses every dependency layer.
ARG BASE=python:3.11-slim

FROM ${BASE} AS base
ENV PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /app

FROM base AS deps
RUN python3 -m venv /opt/venv && python -m pip install -q --upgrade pip setuptools wheel
COPY setup.py /app/
RUN mkdir ednn_tf && : > ednn_tf/__init__.py \
 && python -m pip install -q ".[test]" && python -m pip uninstall -y -q ednn_tf \
 && rm -rf ednn_tf build ./*.egg-info

FROM deps AS build
# g++/make for Horovod; Python.h where the base image lacks it (a Debian-python stand-in for
# python:3.11-slim, see ../shared/tools/container_base_image.sh, needs python3-dev).
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends g++ make \
      $(python -c "import os, sysconfig; print('' if os.path.exists(sysconfig.get_paths()['include'] + '/Python.h') else 'python3-dev')") \
      >/dev/null \
 && rm -rf /var/lib/apt/lists/*
RUN mkdir ednn_tf && : > ednn_tf/__init__.py \
 && python -m pip install -q ".[test,oracles]" && python -m pip uninstall -y -q ednn_tf \
 && rm -rf ednn_tf build ./*.egg-info
COPY scripts/install_horovod.sh /app/scripts/
RUN HOROVOD_BUILD_JOBS=$(nproc) bash scripts/install_horovod.sh \
 && python -m pip uninstall -y -q cmake

# Core + pytest, no oracles, no Horovod (2.07 GB vs 3.5 GB): trains, evaluates and predicts with
# EDNNs (Ising experiments, `ednn-tf train/eval/predict/info/models`, the `lj` oracle); the
# oracle and Horovod tests skip with their reason, which is how CI-less users check the guards.
FROM base AS slim
COPY --from=deps /opt/venv /opt/venv
COPY . /app
RUN python -m pip install -q --no-deps -e . && ednn-tf models >/dev/null
CMD ["python", "experiments/ising.py"]

FROM base AS full
# tblite's C extension needs GNU OpenMP (the build stage has it through g++)
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libgomp1 >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /opt/venv /opt/venv
COPY . /app
RUN python -m pip install -q --no-deps -e . && ednn-tf models >/dev/null
CMD ["python", "experiments/ising.py"]
