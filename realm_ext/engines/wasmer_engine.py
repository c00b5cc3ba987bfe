"""The wasmer engine (wasmer + wasmer-compiler-cranelift; Python <= 3.10).

Memory is capped by giving the guest an imported memory (`env.memory`) whose maximum
is the cap: a grow past it fails (-1 to the guest). A guest that exports its own
memory instead is refused, since nothing would bound it. wasmer's Python bindings
offer no fuel or interruption, so this engine cannot bound CPU time, and they keep the
GIL while guest code runs: a guest that loops forever (in a call or in its start
function) freezes the whole process. Use wasmtime for guests you do not trust.

wasmer's objects are pinned to the thread that made them (using or dropping one on
another thread panics), so each instance lives on a thread of its own: every call is
handed to that thread, and the host's imports run there too.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
from wasmer import Function, FunctionType, ImportObject, Memory, MemoryType, Module, Store, Type, engine
from wasmer import Instance as _WasmerInstance
from wasmer_compiler_cranelift import Compiler

from realm_ext.engines.base import GuestError, ImportFn, ImportSpec, Limits, NativeImports, required_pages

_TYPES = {"i32": Type.I32, "i64": Type.I64}


class WasmerInstance:
    """The engine-facing instance; the wasmer objects live in a _Wasmer on its thread."""

    engine = "wasmer"

    def __init__(self, wasm: bytes, imports: dict[str, ImportSpec], limits: Limits):
        if limits.time is not None or limits.fuel is not None:
            raise GuestError("the wasmer engine cannot bound CPU time: time_limit and fuel need wasmtime")
        self.limits = limits
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        box: list[_Wasmer] = []
        ready: Future = Future()
        args = (self._jobs, box, wasm, imports, limits, ready)
        thread = threading.Thread(target=_serve, args=args, name="realm-wasmer", daemon=True)
        thread.start()
        ready.result()  # instantiation errors are raised here
        self._box = box
        self._owner = thread.ident
        self._exports = set(box[0].functions)
        self._stop = weakref.finalize(self, self._jobs.put, None)

    def run(self, fn: Callable[[], Any]) -> Any:
        """fn() on the instance's thread."""
        if threading.get_ident() == self._owner:
            return fn()
        if not self._stop.alive:
            raise GuestError("the guest is closed")
        done: Future = Future()
        self._jobs.put((fn, done))
        return done.result()

    def serves_imports_here(self) -> bool:
        """Is this the instance's thread (where its imports run)?"""
        return threading.get_ident() == self._owner

    def memory(self) -> np.ndarray:
        """The memory itself on the instance's thread (the host's imports); a copy on
        any other (a view must not outlive a call there)."""
        if threading.get_ident() == self._owner:
            return self._box[0].memory()
        return self.run(lambda: self._box[0].memory().copy())

    def exports(self) -> set[str]:
        return self._exports

    def bind_native(self, native: NativeImports) -> None:
        raise GuestError("the wasmer engine has no native imports")

    def call(self, name: str, *args: int) -> int:
        return self.run(lambda: self._box[0].call(name, *args))

    def close(self) -> None:
        self._stop()


def _serve(
    jobs: queue.SimpleQueue, box: list, wasm: bytes, imports: dict, limits: Limits, ready: Future
) -> None:
    """The instance's thread: make it, run jobs until told to stop, drop it here."""
    try:
        box.append(_Wasmer(wasm, imports, limits))
    except BaseException as e:
        e.__traceback__ = e.__context__ = e.__cause__ = None  # see below
        ready.set_exception(e)
        return
    ready.set_result(None)
    while (job := jobs.get()) is not None:
        fn, done = job
        try:
            done.set_result(fn())
        except BaseException as e:
            # No reference to this thread's frames (and the wasmer objects in them) may
            # leave it: a cycle collected on another thread would drop them there.
            e.__traceback__ = e.__context__ = e.__cause__ = None
            done.set_exception(e)
            del e
        del job, fn, done
    box.clear()


class _Wasmer:
    """The wasmer store, module, memory and instance of one guest (one thread only)."""

    def __init__(self, wasm: bytes, imports: dict[str, ImportSpec], limits: Limits):
        store = Store(engine.Universal(Compiler))
        try:
            module = Module(store, wasm)
        except Exception as e:
            raise GuestError(f"the guest module does not compile: {e}") from None
        env: dict[str, object] = {}
        memory: Memory | None = None
        for imp in module.imports:
            if imp.module != "env":
                raise GuestError(f"the guest imports {imp.module}.{imp.name}: only 'env' is provided")
            if isinstance(imp.type, MemoryType):
                if imp.name != "memory":
                    raise GuestError(f"the guest imports a memory named {imp.name!r}, not 'memory'")
                required_pages(imp.type.minimum, limits)
                top = (
                    limits.max_pages if imp.type.maximum is None else min(imp.type.maximum, limits.max_pages)
                )
                memory = Memory(store, MemoryType(minimum=imp.type.minimum, maximum=top, shared=False))
                env["memory"] = memory
            elif isinstance(imp.type, FunctionType):
                spec = imports.get(imp.name)
                if spec is None:
                    raise GuestError(f"the guest imports env.{imp.name}, which the host does not provide")
                params, result, fn = spec
                want = FunctionType([_TYPES[p] for p in params], [_TYPES[result]])
                if list(imp.type.params) != list(want.params) or list(imp.type.results) != list(want.results):
                    raise GuestError(f"the guest imports env.{imp.name} with the wrong signature")
                env[imp.name] = Function(store, _guarded(fn), want)
            else:
                raise GuestError(f"the guest imports env.{imp.name}, which is not a function or the memory")
        if memory is None:
            raise GuestError(
                "on wasmer the guest must import env.memory (the host caps it); it exports its own"
            )
        self._memory = memory
        io = ImportObject()
        io.register("env", env)
        try:
            self._instance = _WasmerInstance(module, io)
        except Exception as e:
            raise GuestError(f"cannot instantiate the guest: {e}") from None
        self.functions = {name: f for name, f in self._instance.exports if isinstance(f, Function)}
        self._view_size = -1
        self._view = np.empty(0, np.uint8)

    def memory(self) -> np.ndarray:
        size = self._memory.data_size
        if size != self._view_size:  # grown: the old buffer no longer covers it
            self._view = np.frombuffer(self._memory.buffer, np.uint8)
            self._view_size = size
        return self._view

    def call(self, name: str, *args: int) -> int:
        func = self.functions.get(name)
        if func is None:
            raise GuestError(f"the guest exports no function {name!r}")
        try:
            return func(*args)
        except RuntimeError as e:
            raise GuestError(f"the guest trapped in {name}: {e}") from None


def _guarded(fn: ImportFn) -> ImportFn:
    def call(*args: int) -> int:
        try:
            return fn(*args)
        except BaseException:  # the host's functions catch their own; this is the last net
            return -9

    return call
