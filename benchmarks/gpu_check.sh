#!/usr/bin/env bash
# The one GPU check (an H100/H200 machine with no network):
# build realm-ext, run the GPU tests, benchmark, and leave JSON + a markdown table in
# $OUT. Every step runs under a hard `timeout` (and all of them within $GPU_CHECK_BUDGET
# seconds, 450 by default), and a failing step never stops the next: each step's status
# lands in $OUT/steps.tsv and $OUT/summary.md.
#
# Before the call, here (needs the network; the GPU machine has none):
#     bash scripts/gpu_wheels.sh        # gguf, wasmtime, platformdirs wheels into .whl/
#
# Then, on the GPU machine, with .whl/ copied along:
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=570)
# What comes back, under files_at: summary.md (steps + tables), steps.tsv, env.txt,
# pytest.txt, log.txt (every step's output), gpu_kernels.json, gpu.json.
#
# Here, without a GPU, to check the script itself (wheels, build, the tests skip):
#     bash benchmarks/gpu_check.sh --dry-run      # writes ./gpu_check_out/ (gitignored)
#
# Steps: env (GPU, driver, versions) -> wheels (pip --no-index --target /tmp/site) ->
# build (setup.py build_ext --inplace) -> tests (tests/backends/test_cuda*.py on the GPU;
# their numpy-emulated half is left to CI) -> tests_concurrency (the cuda half of
# tests/host/test_concurrency.py) -> benchmarks.gpu_kernels --quick -> benchmarks.gpu --quick.
set -uo pipefail # no -e: every step runs, its status is recorded
cd "$(dirname "$0")/.." || exit 1

DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PY:-python3}
BUDGET=${GPU_CHECK_BUDGET:-450}
mkdir -p "$OUT"
LOG=$OUT/log.txt STEPS=$OUT/steps.tsv PYTEST_LOG=$OUT/pytest.txt
: >"$LOG"
: >"$PYTEST_LOG"
printf 'step\tstatus\tseconds\n' >"$STEPS"
export PYTHONUNBUFFERED=1
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/cupy-cache} # kernels compiled once, shared by the steps
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$STEPS"; }

# step NAME LIMIT_S LOGFILE CMD...: CMD under `timeout` (LIMIT_S, or what is left of the
# budget), its output appended to LOGFILE; records ok / failed(rc) / timeout.
step() {
    local name=$1 limit=$2 logfile=$3 left rc t0=$SECONDS status
    shift 3
    left=$((BUDGET - (SECONDS - START)))
    if ((left < 10)); then
        record "$name" "skipped (budget of ${BUDGET}s spent)" 0
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (limit ${limit}s): $*" | tee -a "$logfile"
    timeout -k 10 "$limit" "$@" >>"$logfile" 2>&1
    rc=$?
    case $rc in
    0) status=ok ;;
    124 | 137) status="timeout after ${limit}s" ;;
    *) status="failed ($rc)" ;;
    esac
    record "$name" "$status" $((SECONDS - t0))
    return $rc
}

gpu_step() { # a step that needs the GPU: skipped in a dry run
    if ((DRY)); then
        record "$1" "skipped (dry run)" 0
        return 0
    fi
    step "$@"
}

env_info() {
    nvidia-smi || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import platform, sys
print("python", sys.version.split()[0], platform.machine())
import numpy
print("numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "cuda available:", cupy.cuda.is_available())
    if cupy.cuda.is_available():
        p = cupy.cuda.runtime.getDeviceProperties(0)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        print("device", name, "sm", f"{p['major']}{p['minor']}", "SMs", p["multiProcessorCount"],
              "memory GiB", round(p["totalGlobalMem"] / 2**30, 1))
        print("driver", cupy.cuda.runtime.driverGetVersion(), "runtime", cupy.cuda.runtime.runtimeGetVersion())
except Exception as e:  # reported, not fatal
    print("cupy:", type(e).__name__, e)
EOF
}

install_wheels() {
    ls .whl/*.whl || {
        echo "no .whl/: run scripts/gpu_wheels.sh here and carry .whl"
        return 1
    }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    "$PY" -c "import gguf, wasmtime, platformdirs, click, tqdm, numpy; print('imports ok')"
}

export PY
export -f env_info install_wheels # run by `timeout ... bash -c NAME` (timeout runs programs, not functions)

pytest_args=(-q -ra -p no:cacheprovider)
"$PY" -c "import pytest_timeout" 2>/dev/null && pytest_args+=(--timeout=120)

step env 60 "$OUT/env.txt" bash -c env_info
step wheels 120 "$LOG" bash -c install_wheels
step build 180 "$LOG" "$PY" setup.py build_ext --inplace -q -j 16
step tests 210 "$PYTEST_LOG" "$PY" -m pytest "${pytest_args[@]}" tests/backends/ -k "cuda and not emulated"
step tests_concurrency 60 "$PYTEST_LOG" "$PY" -m pytest "${pytest_args[@]}" tests/host/test_concurrency.py -k "cuda"
gpu_step bench_kernels 75 "$LOG" "$PY" -m benchmarks.gpu_kernels --quick --json "$OUT/gpu_kernels.json"
gpu_step bench_gpu 150 "$LOG" "$PY" -m benchmarks.gpu --quick --kernels-json "$OUT/gpu_kernels.json" \
    --models-dir /tmp/realm-models --json "$OUT/gpu.json"

# the summary: steps, then each benchmark's table (from its JSON)
"$PY" - "$OUT" <<'EOF' || echo "summary: failed"
import importlib, json, pathlib, sys

out = pathlib.Path(sys.argv[1])
lines = ["# benchmarks/gpu_check.sh", "", "| step | status | seconds |", "|---|---|---:|"]
for row in (out / "steps.tsv").read_text().splitlines()[1:]:
    lines.append("| " + " | ".join(row.split("\t")) + " |")
for name, module in (("gpu_kernels.json", "benchmarks.gpu_kernels"), ("gpu.json", "benchmarks.gpu")):
    path = out / name
    if path.is_file():
        try:
            table = importlib.import_module(module).table(json.loads(path.read_text()))
        except Exception as e:  # the JSON is there either way
            table = f"(table failed: {type(e).__name__}: {e})"
        lines += ["", f"## {module}", "", table if module == "benchmarks.gpu" else f"```\n{table}\n```"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
EOF
echo
echo "---- pytest: failures and summaries"
grep -E "^(FAILED|ERROR)|passed|failed|skipped|error" "$PYTEST_LOG" | grep -v "^SKIPPED" | tail -n 40
echo
cat "$OUT/summary.md" 2>/dev/null
echo "total $((SECONDS - START)) s"
