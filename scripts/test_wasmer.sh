#!/usr/bin/env bash
# The engine tests on the wasmer engine. wasmer's Python bindings stop at Python 3.10,
# so this makes a Python 3.10 venv (.venv-py310) with the package and wasmer, and runs
# the engine, host, API, guest, hostile-guest and concurrency tests there (the wasmtime
# cases run again too).
#
# The Python 3.10 it uses: $PYTHON310 when set; else pyenv's (`pyenv prefix 3.10`, then
# versions/3.10*/ under $PYENV_ROOT, `pyenv root`, the root of the pyenv on PATH and each
# of $PYENV_ROOTS, by default "$HOME/.pyenv /root/.pyenv /opt/pyenv"); else python3.10
# on PATH. With none it says so and exits 0, except under CI=true: then it fails.
#
#   bash scripts/test_wasmer.sh                  run the tests
#   bash scripts/test_wasmer.sh --find-python    print the interpreter it would use (exit 1: none)
set -euo pipefail
cd "$(dirname "$0")/.."
PYENV_ROOTS=${PYENV_ROOTS-"$HOME/.pyenv /root/.pyenv /opt/pyenv"}

case "${1:-}" in
    "" | --find-python) ;;
    *) echo "usage: $0 [--find-python]" >&2; exit 2 ;;
esac

is_py310() {
    "$1" -c "import sys; sys.exit(sys.version_info[:2] != (3, 10))" > /dev/null 2>&1
}

# Prints the first Python 3.10 found (its sys.executable); returns 1 when there is none.
find_python310() {
    if [[ -n "${PYTHON310:-}" ]]; then
        is_py310 "$PYTHON310" || { echo "PYTHON310=$PYTHON310 is not a Python 3.10" >&2; return 1; }
        echo "$PYTHON310"
        return 0
    fi
    local cands=() roots=() extra=() pyenv_bin prefix root cand
    if pyenv_bin=$(command -v pyenv); then
        # a pyenv shim such as python3.10 may refuse to run: ask pyenv itself first
        if prefix=$(pyenv prefix 3.10 2> /dev/null); then cands+=("$prefix/bin/python3.10"); fi
        # its root: where it says, and where it is installed (ROOT/bin/pyenv, ROOT/libexec/pyenv)
        roots+=("$(pyenv root 2> /dev/null || true)" "${pyenv_bin%/*/pyenv}")
    fi
    read -ra extra <<< "$PYENV_ROOTS"
    roots+=("${PYENV_ROOT:-}" "${extra[@]}")
    for root in "${roots[@]}"; do
        [[ -n "$root" ]] && cands+=("$root"/versions/3.10*/bin/python3.10)
    done
    cands+=(python3.10)
    for cand in "${cands[@]}"; do
        if is_py310 "$cand"; then
            "$cand" -c "import sys; print(sys.executable)"
            return 0
        fi
    done
    return 1
}

if ! PY310=$(find_python310); then
    msg="no Python 3.10 found (wasmer's bindings need Python <= 3.10): none from pyenv (\$PYENV_ROOT,"
    msg+=" pyenv root, PYENV_ROOTS=\"$PYENV_ROOTS\"), no python3.10 on PATH; set PYTHON310=/path/to/python3.10"
    if [[ -n "${PYTHON310:-}" || "${1:-}" == --find-python ]]; then
        [[ -n "${PYTHON310:-}" ]] || echo "$msg" >&2
        exit 1
    fi
    case "${CI:-}" in
        true | 1) echo "error: wasmer engine tests cannot run under CI: $msg" >&2; exit 1 ;;
    esac
    echo "SKIP wasmer engine tests: $msg"
    exit 0
fi
if [[ "${1:-}" == --find-python ]]; then
    echo "$PY310"
    exit 0
fi

VENV=.venv-py310
[[ -x $VENV/bin/python ]] || "$PY310" -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade --quiet pip "setuptools>=77" wheel
"$VENV/bin/python" -m pip install --quiet -e ".[test,wasmer]"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/engines tests/guest \
    tests/host/test_host.py tests/host/test_api.py tests/host/test_hostile.py \
    tests/host/test_hostile_lifecycle.py tests/host/test_concurrency.py
