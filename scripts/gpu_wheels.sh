#!/usr/bin/env bash
# The wheels a lent GPU machine lacks, for benchmarks/gpu_check.sh to install offline
# there: realm-ext's dependencies that the machine's Python 3.12 image does not hold
# (numpy, click, tqdm, requests, pyyaml, Cython, pytest, psutil, sentencepiece and
# cupy-cuda13x are there). cp312 manylinux x86-64 builds, into .whl/ (gitignored);
# the device `run` call names .whl in its carry (see benchmarks/gpu_check.sh).
#
#     bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# the versions this project's tests run with (pyproject.toml's ranges)
WHEELS=("gguf==0.19.0" "wasmtime==50.0.1" "platformdirs==4.14.8")

rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
