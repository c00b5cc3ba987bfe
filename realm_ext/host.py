"""The realm_* imports of DESIGN.md: validate, view guest memory, dispatch.

One `GuestImports` serves one guest. Its functions take the integers an engine
delivers (signed: masked to unsigned first) and return an int: >= 0 success, < 0 an
error code of realm_ext.abi, with the message kept for realm_last_error. Nothing
escapes as an exception and nothing is written outside the guest's own memory: every
pointer and length is checked against the memory as it is at this call, and tensors
cross as numpy views of that memory (no copies between guest memory and the kernels).

This module is the only one that knows both an engine (through `memory`, a function
returning the guest's memory as a uint8 array) and a backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from realm_ext import abi
from realm_ext._host_native import NOT_SET_UP_MESSAGE as NOT_SET_UP
from realm_ext._host_native import GuestTable
from realm_ext._kernels import CallControl, KernelError
from realm_ext.engines.base import ImportSpec, Instance
from realm_ext.model import Model

if TYPE_CHECKING:
    from realm_ext.backends.base import Backend

log = logging.getLogger("realm_ext.guest")

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
MAX_KV_CTX = 1 << 20  # positions per KV ring at most
MAX_KV_RINGS = 1024  # KV rings one guest may hold at once
# Host memory per KV ring beyond its K/V and scratch, counted against the guest's
# kv_limit: the C struct and its per-layer arrays, the KVRing and numpy objects, the
# tables' entries (tests/host/test_hostile_lifecycle.py measures it against this bound).
KV_RING_OVERHEAD = 4096
MAX_LOG_BYTES = 1 << 16


class _Fail(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class GrantedModel:
    """A model as a guest sees it: the host's copy and the blobs the guest may read (the
    backend locks the model's scratch itself, per chunk of a call)."""

    model: Model
    info: bytes
    vocab: bytes


@dataclass
class KVEntry:
    model_id: int
    ring: Any  # the backend's KV ring
    nbytes: int


class GuestState:
    """What one guest owns: granted models (host model id -> model), its KV rings
    (its own ids, from 1, never reused), its last error, its stream callback, the stop
    signals of its running call. The rings, the last error and the call count live in
    one GuestTable (realm_ext/_host_native.pyx), which both import paths read: `native`
    when the backend serves the forward imports in C (the engine binds its callbacks),
    else a table of this guest's own."""

    def __init__(
        self,
        backend: Backend,
        models: dict[int, GrantedModel],
        kv_limit: int,
        native: GuestTable | None = None,
    ):
        self.backend = backend
        self.models = models
        self.kv_limit = kv_limit  # bytes of host (or device) memory its KV rings may pin at once
        self.next_kv_id = 1
        self.on_emit: Callable[[str], bool] | None = None  # False back: stop generating
        self.control = CallControl()
        self.native = native
        self.table = native if native is not None else GuestTable()
        self.table.set_control(self.control)

    @property
    def kv(self) -> dict[int, KVEntry]:
        """Its KV rings by id (read only: add_kv and free_kv change them)."""
        return self.table.kv

    @property
    def last_error(self) -> bytes:
        return self.table.last_error

    @last_error.setter
    def last_error(self, message: bytes) -> None:
        self.table.last_error = message

    @property
    def calls(self) -> int:
        """Imports served (Python and native)."""
        return self.table.calls

    @property
    def kv_bytes(self) -> int:
        return sum(e.nbytes for e in self.kv.values())

    def add_kv(self, entry: KVEntry) -> int:
        kv_id = self.next_kv_id
        self.next_kv_id += 1
        self.table.add_kv(kv_id, entry)
        return kv_id

    def free_kv(self, kv_id: int) -> None:
        e = self.table.remove_kv(kv_id)
        self.backend.free_kv(self.models[e.model_id].model, e.ring)

    def free_all_kv(self) -> None:
        for kv_id in list(self.kv):
            self.free_kv(kv_id)

    def revoke(self, model_id: int) -> None:
        """The model is gone: forget it and the rings made for it."""
        for kv_id in [k for k, e in self.kv.items() if e.model_id == model_id]:
            self.free_kv(kv_id)
        self.models.pop(model_id, None)
        self.table.remove_model(model_id)


def _no_instance() -> np.ndarray:
    raise _Fail(abi.ERR_INVALID, NOT_SET_UP)


class GuestImports:
    """The realm_* functions of one guest, bound to a backend and the guest's memory.

    Until `bind` (and again after `unbind`) there is no instance: every import that
    touches memory, in Python or in C, returns ERR_INVALID with NOT_SET_UP. The guest
    binds an instance only once it is fully made (its start function has run), and
    unbinds it before closing it."""

    def __init__(self, backend: Backend, state: GuestState):
        self.backend = backend
        self.state = state
        self.memory: Callable[[], np.ndarray] = _no_instance

    def bind(self, instance: Instance) -> None:
        """Serve `instance` (an engine's Instance) from now on."""
        self.memory = instance.memory
        if self.state.native is not None:
            instance.bind_native(self.state.native)

    def unbind(self) -> None:
        """Back to the no-instance state (before the instance is closed)."""
        self.memory = _no_instance
        if self.state.native is not None:
            self.state.native.unbind_memory()

    @staticmethod
    def native_for(backend: Backend, models: dict[int, GrantedModel]) -> GuestTable | None:
        """A guest's table serving the forward imports of these models in C, when the
        backend offers native imports (the optional `native_runtime` of the backend
        contract, realm_ext/backends/base.py), else None."""
        native_runtime = getattr(backend, "native_runtime", None)
        if native_runtime is None:
            return None
        native = GuestTable()
        for mid, g in models.items():
            native.add_model(mid, *native_runtime(g.model))
        return native

    # -- the table the engines bind -------------------------------------------------

    def table(self) -> dict[str, ImportSpec]:
        i32, i64 = "i32", "i64"
        spec: dict[str, ImportSpec] = {
            "realm_model_info": ((i32, i32, i32), i32, self.model_info),
            "realm_vocab_size": ((i32,), i32, self.vocab_size),
            "realm_vocab_read": ((i32, i32, i32), i32, self.vocab_read),
            "realm_kv_create": ((i32, i32), i64, self.kv_create),
            "realm_kv_free": ((i64,), i32, self.kv_free),
            "realm_kv_truncate": ((i64, i32), i32, self.kv_truncate),
            "realm_forward_embedding": ((i32, i32, i32, i32), i32, self.forward_embedding),
            "realm_forward_layer": ((i32, i32, i32, i32, i32, i64, i32), i32, self.forward_layer),
            "realm_forward_layers": ((i32, i32, i32, i32, i32, i32, i64, i32), i32, self.forward_layers),
            "realm_forward_lm_head": ((i32, i32, i32, i32), i32, self.forward_lm_head),
            "realm_emit": ((i32, i32), i32, self.emit),
            "realm_log": ((i32, i32, i32), i32, self.log),
            "realm_last_error": ((i32, i32), i32, self.last_error),
        }
        return {
            name: (params, result, self._guarded(name, fn)) for name, (params, result, fn) in spec.items()
        }

    def _guarded(self, name: str, fn: Callable[..., int]) -> Callable[..., int]:
        count_call = self.state.table.count_call

        def call(*args: int) -> int:
            count_call()
            try:
                return fn(*args)
            except _Fail as e:
                return self._error(e.code, f"{name}: {e}")
            except MemoryError as e:
                return self._error(abi.ERR_NOMEM, f"{name}: out of memory ({e})")
            except KernelError as e:
                code = e.code if abi.ERR_INTERNAL <= e.code < 0 else abi.ERR_INTERNAL
                return self._error(code, f"{name}: {e}")
            except Exception as e:  # a host bug: report it, never raise into the engine
                log.exception("%s failed", name)
                return self._error(abi.ERR_INTERNAL, f"{name}: internal error: {type(e).__name__}: {e}")

        return call

    def _error(self, code: int, message: str) -> int:
        self.state.last_error = message.encode("utf-8", "replace")
        return code

    # -- validation helpers ----------------------------------------------------------

    def _model(self, model_id: int) -> GrantedModel:
        g = self.state.models.get(model_id & U32)
        if g is None:
            raise _Fail(abi.ERR_MODEL, f"model {model_id & U32} is unknown or not granted to this guest")
        return g

    def _kv(self, kv_id: int, model_id: int | None = None) -> KVEntry:
        e = self.state.kv.get(kv_id & U64)
        if e is None:
            raise _Fail(abi.ERR_KV, f"KV cache {kv_id & U64} is unknown or not owned by this guest")
        if model_id is not None and e.model_id != model_id:
            raise _Fail(abi.ERR_KV, f"KV cache {kv_id & U64} belongs to model {e.model_id}, not {model_id}")
        return e

    def _bytes(self, ptr: int, n: int) -> np.ndarray:
        """The guest's bytes [ptr, ptr + n) as a uint8 view."""
        mem = self.memory()
        if ptr + n > mem.size:
            raise _Fail(abi.ERR_BOUNDS, f"[{ptr}, {ptr + n}) is outside guest memory ({mem.size} bytes)")
        return mem[ptr : ptr + n]

    def _array(self, ptr: int, count: int, dtype: type) -> np.ndarray:
        """count 4-byte elements at ptr (which must be 4-byte aligned), as a view."""
        mem = self.memory()
        if ptr + 4 * count > mem.size:
            raise _Fail(
                abi.ERR_BOUNDS, f"[{ptr}, {ptr + 4 * count}) is outside guest memory ({mem.size} bytes)"
            )
        if ptr % 4:
            raise _Fail(abi.ERR_INVALID, f"pointer {ptr} is not 4-byte aligned")
        return np.frombuffer(mem, dtype, count, ptr)

    @staticmethod
    def _rows(length: int, width: int, what: str) -> int:
        if length == 0:
            raise _Fail(abi.ERR_INVALID, f"{what} is empty")
        if length % width:
            raise _Fail(abi.ERR_ROWS, f"{what} {length} is not a whole number of rows of {width}")
        return length // width

    @staticmethod
    def _no_overlap(a: int, na: int, b: int, nb: int, allow_equal: bool) -> None:
        if allow_equal and a == b and na == nb:
            return
        if a < b + nb and b < a + na:
            raise _Fail(abi.ERR_INVALID, "the output overlaps the input (only out == input is allowed)")

    def _check_positions(self, ring: Any, layers: range, position: int) -> None:
        n_pos = ring.n_pos
        for layer in layers:
            if position != n_pos[layer]:
                raise _Fail(
                    abi.ERR_RANGE,
                    f"layer {layer}: position {position} is not the ring's next position {n_pos[layer]}",
                )

    # -- model info and vocabulary ---------------------------------------------------

    def _write_blob(self, blob: bytes, out_ptr: int, out_len: int, what: str) -> int:
        out_ptr, out_len = out_ptr & U32, out_len & U32
        if out_len < len(blob):
            raise _Fail(abi.ERR_INVALID, f"out_len {out_len} is less than the {len(blob)}-byte {what}")
        self._bytes(out_ptr, len(blob))[:] = np.frombuffer(blob, np.uint8)
        return len(blob)

    def model_info(self, model_id: int, out_ptr: int, out_len: int) -> int:
        info = self._model(model_id).info
        n = min(out_len & U32, len(info))  # guests of an older version read a prefix
        if n < abi.MODEL_INFO_MIN_BYTES:
            raise _Fail(
                abi.ERR_INVALID, f"out_len {out_len & U32} is less than the {len(info)}-byte model info"
            )
        return self._write_blob(info[:n], out_ptr, n, "model info")

    def vocab_size(self, model_id: int) -> int:
        return len(self._model(model_id).vocab)

    def vocab_read(self, model_id: int, out_ptr: int, out_len: int) -> int:
        return self._write_blob(self._model(model_id).vocab, out_ptr, out_len, "vocabulary")

    # -- KV rings --------------------------------------------------------------------

    def kv_create(self, model_id: int, n_ctx: int) -> int:
        model_id, n_ctx = model_id & U32, n_ctx & U32
        model = self._model(model_id).model
        if not 1 <= n_ctx <= MAX_KV_CTX:
            raise _Fail(abi.ERR_INVALID, f"n_ctx {n_ctx} is outside 1..{MAX_KV_CTX}")
        if len(self.state.kv) >= MAX_KV_RINGS:
            raise _Fail(abi.ERR_NOMEM, f"this guest holds {MAX_KV_RINGS} KV rings, the most it may")
        nbytes = self.backend.kv_bytes(model, n_ctx) + KV_RING_OVERHEAD
        if self.state.kv_bytes + nbytes > self.state.kv_limit:
            raise _Fail(
                abi.ERR_NOMEM,
                f"a KV ring pinning {nbytes} bytes would exceed this guest's KV limit of "
                f"{self.state.kv_limit} bytes ({self.state.kv_bytes} held)",
            )
        return self.state.add_kv(KVEntry(model_id, self.backend.new_kv(model, n_ctx), nbytes))

    def kv_free(self, kv_id: int) -> int:
        self._kv(kv_id)
        self.state.free_kv(kv_id & U64)
        return 0

    def kv_truncate(self, kv_id: int, n_pos: int) -> int:
        ring = self._kv(kv_id).ring
        try:
            ring.truncate(n_pos & U32)
        except IndexError as e:
            raise _Fail(abi.ERR_RANGE, str(e)) from None
        return 0

    # -- the forward steps -----------------------------------------------------------

    def forward_embedding(self, model_id: int, ids_ptr: int, n_tokens: int, out_ptr: int) -> int:
        model_id, ids_ptr, n_tokens, out_ptr = model_id & U32, ids_ptr & U32, n_tokens & U32, out_ptr & U32
        g = self._model(model_id)
        c = g.model.config
        if n_tokens == 0:
            raise _Fail(abi.ERR_INVALID, "n_tokens is 0")
        ids = self._array(ids_ptr, n_tokens, np.int32)
        out = self._array(out_ptr, n_tokens * c.n_embd, np.float32)
        self._no_overlap(ids_ptr, 4 * n_tokens, out_ptr, 4 * out.size, allow_equal=False)
        try:
            self.backend.forward_embedding(g.model, ids, out)  # checks every id first
        except IndexError:
            raise _Fail(abi.ERR_INVALID, f"a token id is outside the vocabulary 0..{c.n_vocab - 1}") from None
        return 0

    def forward_layer(
        self, model_id: int, layer: int, hs_ptr: int, hs_len: int, position: int, kv_id: int, out_ptr: int
    ) -> int:
        return self.forward_layers(model_id, layer, 1, hs_ptr, hs_len, position, kv_id, out_ptr)

    def forward_layers(
        self,
        model_id: int,
        layer_begin: int,
        layer_count: int,
        hs_ptr: int,
        hs_len: int,
        position: int,
        kv_id: int,
        out_ptr: int,
    ) -> int:
        model_id, layer_begin, layer_count = model_id & U32, layer_begin & U32, layer_count & U32
        hs_ptr, hs_len, position, out_ptr = hs_ptr & U32, hs_len & U32, position & U32, out_ptr & U32
        g = self._model(model_id)
        c = g.model.config
        if layer_count == 0:
            raise _Fail(abi.ERR_INVALID, "layer_count is 0")
        if layer_begin >= c.n_layer or layer_count > c.n_layer - layer_begin:
            raise _Fail(
                abi.ERR_RANGE,
                f"layers {layer_begin}..{layer_begin + layer_count - 1} are outside 0..{c.n_layer - 1}",
            )
        n = self._rows(hs_len, c.n_embd, "hidden_states_len")
        ring = self._kv(kv_id, model_id).ring
        x = self._array(hs_ptr, hs_len, np.float32).reshape(n, c.n_embd)
        out = self._array(out_ptr, hs_len, np.float32).reshape(n, c.n_embd)
        self._no_overlap(hs_ptr, 4 * hs_len, out_ptr, 4 * hs_len, allow_equal=True)
        self._check_positions(ring, range(layer_begin, layer_begin + layer_count), position)
        first, count, control = layer_begin, layer_count, self.state.control
        self.backend.forward_layers(g.model, first, count, x, position, ring, out, control)
        return 0

    def forward_lm_head(self, model_id: int, hs_ptr: int, hs_len: int, out_ptr: int) -> int:
        model_id, hs_ptr, hs_len, out_ptr = model_id & U32, hs_ptr & U32, hs_len & U32, out_ptr & U32
        g = self._model(model_id)
        c = g.model.config
        n = self._rows(hs_len, c.n_embd, "hidden_states_len")
        x = self._array(hs_ptr, hs_len, np.float32).reshape(n, c.n_embd)
        out = self._array(out_ptr, n * c.n_vocab, np.float32).reshape(n, c.n_vocab)
        self._no_overlap(hs_ptr, 4 * hs_len, out_ptr, 4 * out.size, allow_equal=False)
        self.backend.forward_lm_head(g.model, x, out, self.state.control)
        return 0

    # -- stream, log, errors ---------------------------------------------------------

    def emit(self, text_ptr: int, text_len: int) -> int:
        data = self._bytes(text_ptr & U32, text_len & U32).tobytes()
        on_emit = self.state.on_emit
        if on_emit is not None and on_emit(data.decode("utf-8", "replace")) is False:
            raise _Fail(abi.ERR_CANCELLED, "the host's stream was closed")
        return 0

    def log(self, level: int, ptr: int, length: int) -> int:
        level, ptr, length = level & U32, ptr & U32, length & U32
        if level > 3:
            raise _Fail(abi.ERR_INVALID, f"log level {level} is not 0..3")
        text = self._bytes(ptr, min(length, MAX_LOG_BYTES)).tobytes().decode("utf-8", "replace")
        log.log((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[level], "guest: %s", text)
        return 0

    def last_error(self, out_ptr: int, out_len: int) -> int:
        msg = self.state.last_error
        n = min(out_len & U32, len(msg))
        self._bytes(out_ptr & U32, n)[:] = np.frombuffer(msg[:n], np.uint8)
        return len(msg)
