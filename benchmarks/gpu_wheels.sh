#!/usr/bin/env bash
# Wheels that the GPU machine lacks (../shared/NOTES.md), for Python 3.12 on manylinux x86_64, into .gpu-wheels/
# (git-ignored); benchmarks/gpu.sh installs them there. Run on a machine that reaches PyPI.
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu-wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu-wheels \
  "datasets==5.2.0" "evaluate==0.4.6" "pydantic==2.14.*" "pydantic-core" "annotated-types" "typing-inspection" \
  "dill==0.4.1" "multiprocess==0.70.19" "xxhash" "fsspec<=2026.9.0"
du -sh .gpu-wheels && ls .gpu-wheels
