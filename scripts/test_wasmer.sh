#!/usr/bin/env bash
# The engine tests on the wasmer engine. wasmer's Python bindings stop at Python 3.10,
# so this makes a Python 3.10 venv (.venv-py310) with the package and wasmer, and runs
# the engine, host, API, guest, hostile-guest and concurrency tests there (the wasmtime
# cases run again too).
# With no Python 3.10 on the machine it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

PY310=${PYTHON310:-}
if [[ -z "$PY310" ]]; then
    # pyenv's own 3.10 first (a python3.10 shim on PATH may refuse to run), then PATH
    for cand in "$HOME"/.pyenv/versions/3.10*/bin/python3.10 python3.10; do
        if "$cand" -c "import sys; assert sys.version_info[:2] == (3, 10)" > /dev/null 2>&1; then
            PY310=$cand
            break
        fi
    done
fi
if [[ -z "$PY310" ]]; then
    echo "SKIP wasmer engine tests: no Python 3.10 here (wasmer's bindings need Python <= 3.10)"
    exit 0
fi

VENV=.venv-py310
[[ -x $VENV/bin/python ]] || "$PY310" -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade --quiet pip "setuptools>=77" wheel
"$VENV/bin/python" -m pip install --quiet -e ".[test,wasmer]"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/engines tests/test_host.py tests/test_api.py tests/guest \
    tests/test_hostile.py tests/test_concurrency.py
