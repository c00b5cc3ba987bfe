"""The shipped WebAssembly guest (built from guest/ by guest/build.sh)."""

from pathlib import Path

WASM_PATH = Path(__file__).with_name("realm_guest.wasm")
