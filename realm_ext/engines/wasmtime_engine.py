"""The wasmtime engine (the default).

Limits: linear memory is capped twice, by the store's limiter and, when the guest
imports `env.memory`, by the maximum of the memory the host creates; a failed grow
returns -1 to the guest. The store also caps tables (MAX_TABLES of MAX_TABLE_ELEMENTS),
and allows one memory in all (a guest that imports env.memory may define none) and one
instance. Time is bounded per export call, and for the
start function during instantiation, by an epoch deadline (one process-wide ticker
thread advances the epoch every EPOCH_TICK seconds); fuel, when asked for, bounds
executed instructions.

Imports are bound through wasmtime's *unchecked* function API (raw argument slots,
no per-call Val conversion), several times cheaper a call than wasmtime-py's checked
path (docs/PERF.md). The slots are read with ctypes at the address wasmtime passes.
This reaches into wasmtime-py's ctypes bindings, hence the pinned wasmtime version.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import wasmtime
from wasmtime import _ffi as ffi

if TYPE_CHECKING:
    from _ctypes import CFuncPtr

from realm_ext.engines.base import (
    WASM_PAGE,
    GuestError,
    GuestLimitError,
    ImportFn,
    ImportSpec,
    Limits,
    NativeImports,
    T,
    required_pages,
)

EPOCH_TICK = 0.01  # seconds per epoch tick
_NO_DEADLINE = 2**62  # ticks: "never" for calls without a time limit
# Tables live in host memory outside the linear-memory cap: a guest could otherwise
# table.grow or declare its way to gigabytes. At most 8 tables of 65536 elements
# (8 bytes each: 4 MiB in all), one memory and one instance per guest's store.
MAX_TABLE_ELEMENTS = 1 << 16
MAX_TABLES = 8

_VALTYPES = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}
_RAW = 16  # bytes per wasmtime_val_raw_t slot

# Private prototypes of the few C functions on the hot path, with plain address
# arguments and results (no ctypes pointer objects per call). Declared here, apart from
# wasmtime-py's own bindings, so its argtypes stay as they are.
_P = ctypes.c_void_p
_UNCHECKED_CB = ctypes.CFUNCTYPE(_P, _P, _P, _P, ctypes.c_size_t)  # -> wasm_trap_t * (0: none)
_define_func_unchecked = ctypes.CFUNCTYPE(
    _P, _P, _P, ctypes.c_size_t, _P, ctypes.c_size_t, _P, _UNCHECKED_CB, _P, _P
)(("wasmtime_linker_define_func_unchecked", ffi.dll))
_caller_context = ctypes.CFUNCTYPE(_P, _P)(("wasmtime_caller_context", ffi.dll))
_memory_data = ctypes.CFUNCTYPE(_P, _P, _P)(("wasmtime_memory_data", ffi.dll))
_memory_data_size = ctypes.CFUNCTYPE(ctypes.c_size_t, _P, _P)(("wasmtime_memory_data_size", ffi.dll))
_MEMORY_API = (_caller_context, _memory_data, _memory_data_size)  # for native imports


class _Engines:
    """wasmtime.Engine objects (one per fuel setting) and compiled modules, shared
    by every guest of the process; the epoch ticker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[bool, wasmtime.Engine] = {}
        self._modules: dict[tuple[bool, bytes], wasmtime.Module] = {}
        self._ticker: threading.Thread | None = None

    def engine(self, fuel: bool) -> wasmtime.Engine:
        with self._lock:
            if fuel not in self._engines:
                cfg = wasmtime.Config()
                cfg.epoch_interruption = True
                cfg.consume_fuel = fuel
                cfg.cranelift_opt_level = "speed"
                self._engines[fuel] = wasmtime.Engine(cfg)
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="realm-epoch", daemon=True)
                self._ticker.start()
            return self._engines[fuel]

    def module(self, wasm: bytes, fuel: bool) -> wasmtime.Module:
        engine = self.engine(fuel)
        key = (fuel, hashlib.sha256(wasm).digest())
        with self._lock:
            mod = self._modules.get(key)
        if mod is None:
            try:
                mod = wasmtime.Module(engine, wasm)
            except wasmtime.WasmtimeError as e:
                raise GuestError(f"the guest module does not compile: {e}") from None
            with self._lock:
                self._modules[key] = mod
        return mod

    def _tick(self) -> None:
        while True:
            time.sleep(EPOCH_TICK)
            with self._lock:
                engines = list(self._engines.values())
            for e in engines:
                e.increment_epoch()


_SHARED = _Engines()


def _raw_callback(inst: WasmtimeInstance, params: tuple[str, ...], result: str, fn: ImportFn) -> CFuncPtr:
    """A C callback reading the raw argument slots, calling fn, writing its result.
    While fn runs, inst reaches its memory through the caller's store context."""
    unpack = struct.Struct("<" + "".join("i12x" if p == "i32" else "q8x" for p in params)).unpack
    size = max(1, len(params)) * _RAW
    result_at = ctypes.c_int64.from_address if result == "i64" else ctypes.c_int32.from_address
    string_at = ctypes.string_at

    def callback(env: int | None, caller: int, slots: int, n: int) -> int:
        # Nothing may raise out of here: ctypes would hand wasmtime a garbage trap pointer.
        outer = inst._ctx, inst._view_now
        try:
            inst._ctx, inst._view_now = _caller_context(caller), None
            r = fn(*unpack(string_at(slots, size)))
        except BaseException:  # the host's functions catch their own; this is the last net
            r = -9
        inst._ctx, inst._view_now = outer
        try:
            result_at(slots).value = r
        except BaseException:
            result_at(slots).value = -9
        return 0  # no trap

    return _UNCHECKED_CB(callback)


class WasmtimeInstance:
    engine = "wasmtime"

    def __init__(
        self, wasm: bytes, imports: dict[str, ImportSpec], limits: Limits, native: NativeImports | None = None
    ):
        self.limits = limits
        use_fuel = limits.fuel is not None
        module = _SHARED.module(wasm, use_fuel)
        self._store = self._new_store(module, use_fuel)
        self._callbacks: list[CFuncPtr] = []  # the C callbacks must outlive the instance
        self._ctx: int | None = None  # the caller's store context (an address) while an import runs
        self._view_now: np.ndarray | None = None  # the memory view derived during the running import
        self._memory: wasmtime.Memory | None = None  # env.memory, or else the exported one
        self._instance: wasmtime.Instance | None = None
        linker = wasmtime.Linker(self._store.engine)
        natives, native_env = (native.functions, native.env_address) if native is not None else ({}, None)
        for imp in module.imports:
            name, typ = imp.name or "", imp.type  # a core module's imports all have names
            if imp.module != "env":
                raise GuestError(f"the guest imports {imp.module}.{name}: only 'env' is provided")
            if isinstance(typ, wasmtime.MemoryType):
                self._define_memory(linker, name, typ)
            elif isinstance(typ, wasmtime.FuncType):
                spec = imports.get(name)
                if spec is None:
                    raise GuestError(f"the guest imports env.{name}, which the host does not provide")
                cb: CFuncPtr
                if name in natives:  # a C callback: env is the native state
                    cb, env = _UNCHECKED_CB(natives[name]), native_env
                else:
                    cb, env = _raw_callback(self, *spec), None
                self._define_function(linker, name, typ, spec, cb, env)
            else:
                raise GuestError(f"the guest imports env.{name}, which is not a function or the memory")
        memory = self._instantiate(linker, module)
        self._memory_addr = ctypes.addressof(memory._memory)  # the wasmtime_memory_t
        self._view_key: tuple[int, int] = (0, 0)
        self._view = np.empty(0, np.uint8)

    def _new_store(self, module: wasmtime.Module, use_fuel: bool) -> wasmtime.Store:
        """A store of this guest's own, with the limits of the module's docstring."""
        store = wasmtime.Store(_SHARED.engine(use_fuel))
        imports_memory = any(isinstance(imp.type, wasmtime.MemoryType) for imp in module.imports)
        store.set_limits(
            memory_size=self.limits.max_pages * WASM_PAGE,
            table_elements=MAX_TABLE_ELEMENTS,
            tables=MAX_TABLES,
            memories=0 if imports_memory else 1,  # one memory in all (the host's does not count)
            instances=1,
        )
        return store

    def _define_memory(self, linker: wasmtime.Linker, name: str, mtype: wasmtime.MemoryType) -> None:
        """env.memory: created by the host, its maximum capped at the guest's limit."""
        if name != "memory":
            raise GuestError(f"the guest imports a memory named {name!r}, not 'memory'")
        lim, limits = mtype.limits, self.limits
        required_pages(lim.min, limits)
        top = limits.max_pages if lim.max is None else min(lim.max, limits.max_pages)
        self._memory = wasmtime.Memory(self._store, wasmtime.MemoryType(wasmtime.Limits(lim.min, top)))
        linker.define(self._store, "env", "memory", self._memory)

    def _define_function(
        self,
        linker: wasmtime.Linker,
        name: str,
        got: wasmtime.FuncType,
        spec: ImportSpec,
        cb: CFuncPtr,
        env: int | None,
    ) -> None:
        """env.<name> as the unchecked callback cb (with its env pointer), once the
        guest's import has the signature of the host's spec."""
        params, result, _ = spec
        want = wasmtime.FuncType([_VALTYPES[p]() for p in params], [_VALTYPES[result]()])
        same_params = [str(t) for t in got.params] == [str(t) for t in want.params]
        if not same_params or [str(t) for t in got.results] != [str(t) for t in want.results]:
            raise GuestError(f"the guest imports env.{name} with the wrong signature")
        self._callbacks.append(cb)
        name_b = name.encode()
        linker_p, type_p = ctypes.cast(linker.ptr(), _P), ctypes.cast(want.ptr(), _P)
        err = _define_func_unchecked(linker_p, b"env", 3, name_b, len(name_b), type_p, cb, env, None)
        if err:
            ptr = ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t))
            raise GuestError(f"cannot bind env.{name}: {wasmtime.WasmtimeError._from_ptr(ptr)}")

    def _instantiate(self, linker: wasmtime.Linker, module: wasmtime.Module) -> wasmtime.Memory:
        """Instantiate (running the start function under the call limits) and find the
        guest's exports and its memory (returned)."""
        self._arm()  # a start function runs inside instantiate: the same bounds as a call
        try:
            self._instance = linker.instantiate(self._store, module)
        except wasmtime.Trap as e:
            raise self._trap_error(e, "its start function") from None
        except wasmtime.WasmtimeError as e:
            raise GuestError(f"cannot instantiate the guest: {e}") from None
        exports = self._instance.exports(self._store)
        self._exports = {name: exports[name] for name in exports}
        if self._memory is None:
            mem = self._exports.get("memory")
            if not isinstance(mem, wasmtime.Memory):
                raise GuestError("the guest neither imports env.memory nor exports 'memory'")
            self._memory = mem
        return self._memory

    def memory(self) -> np.ndarray:
        """The memory as it is now: derived once per import call (and on every call from
        outside the guest), re-wrapped only when its base or size changed."""
        view = self._view_now
        if view is not None:
            return view
        ctx = self._ctx if self._ctx is not None else ctypes.cast(self._store._context(), _P)
        addr = _memory_data(ctx, self._memory_addr) or 0
        size = _memory_data_size(ctx, self._memory_addr)
        if (addr, size) != self._view_key:
            self._view = (
                np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(addr)) if size else self._view
            )
            self._view_key = (addr, size)
        if self._ctx is not None:
            self._view_now = self._view
        return self._view

    def exports(self) -> set[str]:
        return set(self._exports)

    def bind_native(self, native: NativeImports) -> None:
        """Point the C imports at this instance's memory (once it is fully made; the host
        unbinds them before close)."""
        native.bind_wasmtime_memory(self._memory_addr, *(ctypes.cast(f, _P).value or 0 for f in _MEMORY_API))

    def run(self, fn: Callable[[], T]) -> T:
        """fn() (any thread may use a wasmtime store, one at a time)."""
        return fn()

    def serves_imports_here(self) -> bool:
        """Imports run on the calling thread: no thread of the instance's own."""
        return False

    def call(self, name: str, *args: int) -> int:
        func = self._exports.get(name)
        if not isinstance(func, wasmtime.Func):
            raise GuestError(f"the guest exports no function {name!r}")
        self._arm()
        try:
            return func(self._store, *args)
        except wasmtime.Trap as e:
            raise self._trap_error(e, name) from None
        except wasmtime.WasmtimeError as e:
            raise GuestError(f"calling the guest's {name} failed: {e}") from None

    def _arm(self) -> None:
        """The time and fuel budget of one call into the guest."""
        lim = self.limits
        if lim.time is None:
            self._store.set_epoch_deadline(_NO_DEADLINE)
        else:
            self._store.set_epoch_deadline(max(1, int(lim.time / EPOCH_TICK + 0.5)))
        if lim.fuel is not None:
            self._store.set_fuel(lim.fuel)

    def _trap_error(self, e: wasmtime.Trap, where: str) -> GuestError:
        lim = self.limits
        code = e.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            return GuestLimitError("time", f"the guest ran past its time limit of {lim.time} s in {where}")
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return GuestLimitError("fuel", f"the guest ran out of its fuel ({lim.fuel}) in {where}")
        return GuestError(f"the guest trapped in {where}: {e.message}")

    def close(self) -> None:
        self._exports = {}
        self._instance = None
        self._memory = None
        self._view = np.empty(0, np.uint8)
        self._view_key = (0, 0)
