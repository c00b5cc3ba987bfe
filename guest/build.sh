#!/usr/bin/env bash
# Build the shipped guest, realm_ext/guest/realm_guest.wasm, from guest/src/*.c.
#
#   bash guest/build.sh           build it (the same bytes on every build)
#   bash guest/build.sh --check   build to a temporary file and fail if it differs
#                                 from the committed one
#
# The compiler is zig's clang from the PyPI package ziglang (pinned in the `test`
# extra), run as `python -m ziglang cc`; set PYTHON to pick the interpreter.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out=realm_ext/guest/realm_guest.wasm
python="${PYTHON:-python3}"

check=0
case "${1:-}" in
--check) check=1 ;;
"") ;;
*)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Relative paths only, and sorted sources: nothing about this machine ends up in the
# output. -mcpu=mvp keeps to the core instruction set every engine runs; -s strips the
# names and debug info. The host supplies the memory (env.memory, capped); the stack is
# 64 KiB below the heap.
mapfile -t sources < <(ls guest/src/*.c | LC_ALL=C sort)
ZIG_GLOBAL_CACHE_DIR="$tmp/zig-cache" ZIG_LOCAL_CACHE_DIR="$tmp/zig-cache" \
    "$python" -m ziglang cc \
    --target=wasm32-freestanding -mcpu=mvp -O2 -std=c11 \
    -nostdlib -ffreestanding -fno-builtin -Wall -Wextra -Werror \
    -Iguest/include -Icsrc -Iguest/src \
    -Wl,--no-entry -Wl,--import-memory -Wl,-z,stack-size=65536 -Wl,--strip-all \
    -o "$tmp/realm_guest.wasm" "${sources[@]}"

if [ "$check" = 1 ]; then
    if ! cmp -s "$tmp/realm_guest.wasm" "$out"; then
        echo "guest/build.sh --check: $out is not what guest/src builds; run bash guest/build.sh" >&2
        exit 1
    fi
    echo "guest/build.sh --check: $out is up to date"
else
    mkdir -p "$(dirname "$out")"
    cp "$tmp/realm_guest.wasm" "$out"
    echo "built $out ($(wc -c <"$out") bytes)"
fi
