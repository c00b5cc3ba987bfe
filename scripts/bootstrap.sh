#!/usr/bin/env bash
# Set up a development machine: the package (editable, with its C kernels built),
# the test tools, and llama-cpp-python for the parity tests against llama.cpp.
#
# llama-cpp-python builds from source (about 10 minutes on 2 cores the first time;
# pip caches the wheel after that). Skip it with REALM_SKIP_LLAMA_CPP=1: the parity
# tests then skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LLAMA_CPP_VERSION=0.3.36

"$PY" -m pip install --upgrade --quiet pip "setuptools>=77" wheel
"$PY" -m pip install --quiet -e ".[test]"

if [[ "${REALM_SKIP_LLAMA_CPP:-0}" != 1 ]]; then
    if ! "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_VERSION')" 2>/dev/null; then
        # ggml's native build dies with SIGILL in its AMX path on some Xeons that report
        # AMX to the compiler: keep the native SIMD (AVX-512, as NUMERICS.md measured)
        # but never emit AMX instructions.
        echo "building llama-cpp-python $LLAMA_CPP_VERSION from source (about 10 minutes the first time)"
        CMAKE_ARGS="-DGGML_NATIVE=ON" \
        CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
        CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
            "$PY" -m pip install --quiet "llama-cpp-python==$LLAMA_CPP_VERSION"
    fi
fi
# the real files the tests read: SmolLM2 (the default model) and llama.cpp's tokenizer
# test vocabularies
"$PY" scripts/fetch_test_data.py
echo "realm-ext is set up: try 'realm-ext generate --prompt \"Once upon a time\" -n 32'"
