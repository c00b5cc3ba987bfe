#!/usr/bin/env bash
# Build every tests/c/test_*.c (each has its own main) together with all of csrc/cpu/*.c under
# AddressSanitizer and UndefinedBehaviorSanitizer, run each, and fail if any fails.
#
#   tests/c/run.sh            binaries go to build/ctest/ (BUILD_DIR overrides)
#
# Threads: the tests run the kernels' loops with 1 to 3 threads on the pool of
# csrc/cpu/threadpool.c, whose workers live until exit (detached; LeakSanitizer does not
# report them). -ffp-contract=off as in setup.py, so the bit-exact checks see the same
# float semantics as the extension.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${BUILD_DIR:-build/ctest}
mkdir -p "$out"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

status=0
for test in tests/c/test_*.c; do
    exe="$out/$(basename "$test" .c)"
    gcc -std=gnu11 -O1 -g -pthread -fsanitize=address,undefined -fno-omit-frame-pointer \
        -fno-sanitize-recover=all -ffp-contract=off -Wall -Icsrc -Icsrc/cpu csrc/cpu/*.c "$test" -o "$exe" -lm
    if "$exe"; then
        echo "PASS $test"
    else
        echo "FAIL $test"
        status=1
    fi
done
exit $status
