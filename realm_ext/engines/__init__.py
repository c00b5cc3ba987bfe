"""Engines: instantiate a guest, bind the host's imports, enforce its limits.

"wasmtime" (the default) bounds memory, time and fuel; "wasmer" (Python 3.10 only: its
bindings end there) bounds memory through an imported memory with a maximum, and
cannot bound CPU time.
"""

from __future__ import annotations

import importlib

from realm_ext.engines.base import GuestError, GuestLimitError, ImportSpec, Instance, Limits, NativeImports

ENGINES = {
    "wasmtime": ("realm_ext.engines.wasmtime_engine", "WasmtimeInstance"),
    "wasmer": ("realm_ext.engines.wasmer_engine", "WasmerInstance"),
}

__all__ = [
    "ENGINES",
    "GuestError",
    "GuestLimitError",
    "Limits",
    "available",
    "open_instance",
    "resolve_engine",
]


def _load(name: str) -> type:
    module, cls = ENGINES[name]
    return getattr(importlib.import_module(module), cls)


def available(name: str) -> bool:
    """Can this engine be used in this Python?"""
    try:
        _load(name)
    except ImportError:
        return False
    return True


def resolve_engine(name: str) -> str:
    """ "auto" -> wasmtime, else wasmer; a named engine must be available."""
    if name == "auto":
        for candidate in ENGINES:
            if available(candidate):
                return candidate
        raise ImportError("no WebAssembly engine: pip install wasmtime")
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(ENGINES)} or 'auto'")
    if not available(name):
        hint = " (its Python bindings need Python <= 3.10)" if name == "wasmer" else ""
        raise ImportError(f"engine {name!r} is not installed{hint}: pip install 'realm-ext[{name}]'")
    return name


def open_instance(
    name: str,
    wasm: bytes,
    imports: dict[str, ImportSpec],
    limits: Limits,
    native: NativeImports | None = None,
) -> Instance:
    """A new instance of wasm with imports bound. native (optional, wasmtime only): C
    implementations of some imports (engines.base.NativeImports), whose
    `bind_wasmtime_memory` the instance's `bind_native` calls once the host binds it."""
    engine = resolve_engine(name)
    if engine == "wasmtime":
        return _load(engine)(wasm, imports, limits, native)
    return _load(engine)(wasm, imports, limits)
