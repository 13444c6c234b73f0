#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels that the GPU machine lacks and ssamba's import path
# needs, for benchmarks/gpu_check.sh to install there without network. Run it here, where pip
# can reach PyPI; it only downloads (a few MB). The GPU machine (see docs/performance.md) has
# Python 3.12 with torch, triton, numpy, numba, safetensors and tqdm, but not soundfile (which
# needs cffi, which needs pycparser) nor soxr.
#
#   bash benchmarks/gpu_wheels.sh            # then carry .whl along to the GPU machine
#
# Versions: those of the CPU machine's environment when this was written; override with e.g.
# WHEELS="soundfile==0.13.1 cffi==1.17.1 pycparser==2.22 soxr==0.5.0". One version of each name:
# two would stop the install there.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-"soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0"}
mkdir -p .whl
for spec in $WHEELS; do
  name=${spec%%[=<>]*}
  rm -f .whl/"$name"-*.whl  # keep one version of each
done
# shellcheck disable=SC2086  # WHEELS is a list of words
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl $WHEELS
ls -l .whl
