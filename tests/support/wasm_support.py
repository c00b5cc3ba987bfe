"""Helpers for tests that run guests: the engines, and the WAT test guests."""

from __future__ import annotations

from pathlib import Path

import pytest

ENGINE_NAMES = ["wasmtime", "wasmer"]
WAT_DIR = Path(__file__).resolve().parents[1] / "wat"


def require_engine(name: str) -> str:
    """name, or a skip saying why this Python lacks that engine."""
    from realm_ext.engines import available

    if not available(name):
        pytest.skip(
            f"engine {name} is not installed in this Python "
            "(wasmer's bindings need Python <= 3.10: scripts/test_wasmer.sh runs these tests in a 3.10 venv)"
        )
    return name


def wat(name: str) -> bytes:
    """tests/wat/NAME.wat compiled to wasm."""
    text = (WAT_DIR / f"{name}.wat").read_text()
    try:
        import wasmtime

        return bytes(wasmtime.wat2wasm(text))
    except ImportError:
        import wasmer

        return bytes(wasmer.wat2wasm(text))
