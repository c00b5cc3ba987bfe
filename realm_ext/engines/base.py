"""What every engine offers the host: limits, errors, the import table, an instance.

An engine never knows about kernels (DESIGN.md): it compiles a guest, binds the host's
import functions (plain Python callables taking and returning ints) and runs exports.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from realm_ext.errors import RealmExtError

WASM_PAGE = 65536
MAX_MEMORY = 65536 * WASM_PAGE  # a wasm32 memory's largest size: 4 GiB

# An import: (parameter types, result type, function). Types are "i32" or "i64"; the
# function gets the integers as the engine delivers them (signed) and returns an int.
ImportFn = Callable[..., int]
ImportSpec = tuple[tuple[str, ...], str, ImportFn]


class GuestError(RealmExtError, RuntimeError):
    """The guest trapped, or could not be instantiated."""


class GuestLimitError(GuestError):
    """The guest ran past one of its limits (the message names it)."""

    def __init__(self, limit: str, message: str):
        super().__init__(message)
        self.limit = limit


_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "64MiB", "512 KiB", "1GB"."""
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", size)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read {size!r} as a size (e.g. 64MiB, 1GiB, 65536)")
        value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


@dataclass(frozen=True)
class Limits:
    """A guest's limits. memory: bytes of linear memory at most (rounded down to whole
    64 KiB pages). time: seconds per export call (wasmtime: epoch deadline; None: no
    limit). fuel: wasm instructions' fuel per export call (wasmtime only; None: off)."""

    memory: int = 64 * 2**20
    time: float | None = None
    fuel: int | None = None

    def __post_init__(self) -> None:
        if self.memory > MAX_MEMORY:
            raise ValueError(f"memory limit {self.memory} bytes is over 4 GiB, a wasm32 memory's most")
        if self.time is not None and not self.time > 0:
            raise ValueError(f"time limit {self.time} s must be positive")
        if self.fuel is not None and self.fuel < 1:
            raise ValueError(f"fuel {self.fuel} must be positive")

    @property
    def max_pages(self) -> int:
        return max(1, self.memory // WASM_PAGE)


T = TypeVar("T")


class NativeImports(Protocol):
    """C implementations of some imports (realm_ext._host_native.GuestTable): `functions`
    (import name -> address of a wasmtime unchecked callback), `env_address` (their env
    pointer), and where the guest's memory is, once the instance exists."""

    @property
    def functions(self) -> dict[str, int]: ...

    @property
    def env_address(self) -> int: ...

    def bind_wasmtime_memory(
        self, memory: int, caller_context: int, memory_data: int, memory_size: int
    ) -> None: ...


class Instance(Protocol):
    """One instantiated guest: its memory and its exports."""

    engine: str

    def memory(self) -> np.ndarray:
        """A uint8 view of the whole linear memory as it is now (re-derive it after any
        call into the guest: memory can grow and move)."""
        ...

    def call(self, name: str, *args: int) -> int:
        """Call an export; GuestLimitError past a limit, GuestError on a trap."""
        ...

    def exports(self) -> set[str]: ...

    def bind_native(self, native: NativeImports) -> None:
        """Serve the C imports (wasmtime) from this instance's memory."""
        ...

    def run(self, fn: Callable[[], T]) -> T:
        """fn() where the instance may be touched (wasmer: its own thread)."""
        ...

    def serves_imports_here(self) -> bool:
        """Is the current thread the instance's own, where its imports run (wasmer)?"""
        ...

    def close(self) -> None: ...


def required_pages(min_pages: int, limits: Limits) -> None:
    """Raise when a module's own minimum memory exceeds the cap."""
    if min_pages > limits.max_pages:
        raise GuestLimitError(
            "memory",
            f"the guest needs {min_pages * WASM_PAGE} bytes of memory at start, over its "
            f"memory limit of {limits.memory} bytes",
        )
