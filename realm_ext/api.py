"""The Python API of DESIGN.md: a `Host` owns models and a backend; a `Guest` is one
sandboxed WebAssembly instance with its own memory, KV rings and granted models.

    with Host(device="cpu") as host:
        model = host.load("model.gguf")
        with host.guest(models=[model]) as guest:
            for piece in guest.generate("Once upon a time", max_tokens=32, seed=1):
                print(piece, end="", flush=True)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from realm_ext import abi
from realm_ext.backends import make_backend
from realm_ext.backends.cpu import DEFAULT_WEIGHTS
from realm_ext.chat_template import ChatTemplate, check_messages
from realm_ext.engines import open_instance, resolve_engine
from realm_ext.engines.base import WASM_PAGE, GuestError, GuestLimitError, Instance, Limits, parse_size
from realm_ext.errors import RealmExtError
from realm_ext.host import GrantedModel, GuestImports, GuestState
from realm_ext.model import Model, load_gguf
from realm_ext.stream import PieceStream

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.11

GUEST_WASM = Path(__file__).parent / "guest" / "realm_guest.wasm"

T = TypeVar("T")


class RealmError(RealmExtError, RuntimeError):
    """A guest export returned one of the ABI's error codes."""

    def __init__(self, what: str, code: int, detail: str = ""):
        name = abi.ERROR_NAMES.get(code, "unknown error")
        super().__init__(f"{what} failed: {name} ({code})" + (f": {detail}" if detail else ""))
        self.code = code


class ModelNotGrantedError(RealmExtError, KeyError, ValueError):
    """A model this host has not loaded (or has unloaded), or one not granted to the
    guest it is asked of. Both a KeyError and a ValueError, as these cases were."""

    __str__ = ValueError.__str__  # the message as given, not KeyError's repr of it


class Host:
    """Loaded models (one shared copy each), a backend, and the guests made here.

    device: "auto", "cpu" or "cuda". n_threads: CPU kernel threads. weights: where the CPU
    kernels read a model's weights: "repack" (the default: the file's memory map, with a
    repacked copy of the matrices the kernels read faster so), "mmap" (the file's map
    only) or "load" (one copy of everything in anonymous memory)."""

    def __init__(self, device: str = "auto", n_threads: int | None = None, weights: str = DEFAULT_WEIGHTS):
        self.backend = make_backend(device, n_threads, weights)
        self.device = self.backend.name
        self._lock = threading.Lock()
        self._models: dict[int, GrantedModel] = {}
        self._next_model_id = 1
        self._guests: list[Guest] = []

    def load(self, path: str | os.PathLike[str] | Model) -> Model:
        """Load a GGUF file (memory-mapped) once; every guest granted it shares it."""
        model = path if isinstance(path, Model) else load_gguf(path)
        with self._lock:
            for g in self._models.values():
                if g.model is model:
                    return model
            info, vocab = abi.model_info(model), abi.vocab_blob(model)
            self._models[self._next_model_id] = GrantedModel(model, info, vocab)
            self._next_model_id += 1
        self.backend.prepare(model)
        return model

    # Locks: a guest's lock may be held while this host's lock is taken (Guest.model_id
    # from inside a call), never the other way round, except on a guest no other thread
    # can reach yet (Host.guest).

    def model_id(self, model: Model) -> int:
        with self._lock:  # another thread may be loading or unloading
            for mid, g in self._models.items():
                if g.model is model:
                    return mid
        raise ModelNotGrantedError(f"{model!r} was not loaded by this host")

    def unload(self, model: Model) -> None:
        """Forget a model; guests granted it get 'model unknown' from then on (a call
        running in one of them finishes first)."""
        with self._lock:
            mid = next((i for i, g in self._models.items() if g.model is model), None)
            if mid is None:
                raise ModelNotGrantedError(f"{model!r} was not loaded by this host")
            self._models.pop(mid)
            guests = list(self._guests)
        for guest in guests:  # each waits for its running call
            guest._revoke(mid)

    def guest(
        self,
        models: Sequence[Model],
        engine: str = "auto",
        memory_limit: int | str = "64MiB",
        time_limit: float | None = None,
        fuel: int | None = None,
        kv_limit: int | str = "4GiB",
        wasm: bytes | str | os.PathLike[str] | None = None,
        native_imports: bool = True,
    ) -> Guest:
        """A new guest granted `models`. memory_limit caps its linear memory; time_limit
        (seconds) or fuel bound each call into it (wasmtime); kv_limit caps the KV
        storage it may hold; wasm is a guest module (default: the shipped guest).
        native_imports: on wasmtime with the CPU backend, serve the forward imports
        from C (the Python versions otherwise; same results, slower crossings)."""
        if wasm is None:
            wasm = GUEST_WASM
        if not isinstance(wasm, bytes):
            wasm = Path(wasm).read_bytes()
        with self._lock:
            granted = {}
            for m in models:
                mid = next((i for i, g in self._models.items() if g.model is m), None)
                if mid is None:
                    raise ModelNotGrantedError(f"{m!r} was not loaded by this host")
                granted[mid] = self._models[mid]
        limits = Limits(memory=parse_size(memory_limit), time=time_limit, fuel=fuel)
        guest = Guest(
            self, resolve_engine(engine), wasm, granted, limits, parse_size(kv_limit), native_imports
        )
        with self._lock:
            # a model unloaded while the guest was being made: revoke it here (no other
            # thread knows this guest yet)
            for mid in granted:
                if self._models.get(mid) is not granted[mid]:
                    guest._revoke(mid)
            self._guests.append(guest)
        return guest

    def close(self) -> None:
        for guest in list(self._guests):
            guest.close()
        with self._lock:
            self._models.clear()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class GenerateStats:
    """What the last generate or chat call did. seconds: the whole call; first_token_s:
    from the call to the first piece out (None when nothing came out). The prompt
    counts come from the guest's realm_chat_stats (chat calls only; 0 otherwise):
    prompt_tokens of the rendered conversation, cached_tokens of them reused from the
    conversation's ring, evaluated_tokens run through the model."""

    tokens: int
    seconds: float
    memory_pages: int
    heap_bytes: int
    host_calls: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    evaluated_tokens: int = 0
    first_token_s: float | None = None
    restarted: bool = False  # the ring could not be rewound (it had wrapped) and started over

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first per second after the first piece (the decode rate,
        the prompt's evaluation left out)."""
        if self.first_token_s is None or self.tokens < 2 or self.seconds <= self.first_token_s:
            return 0.0
        return (self.tokens - 1) / (self.seconds - self.first_token_s)


@dataclass
class _Conversation:
    """The guest's open conversation (realm_chat_open's handle), valid in the instance
    it was opened in only (a reset makes a new instance, which holds none)."""

    handle: int
    model_id: int
    n_ctx: int
    epoch: int


class Guest:
    """One guest instance. Calls into it are serialized (a guest is single-threaded);
    different guests run in parallel threads. After a trap or a limit, its KV rings
    are released and a fresh instance replaces it, so the guest stays usable."""

    def __init__(
        self,
        host: Host,
        engine: str,
        wasm: bytes,
        models: dict[int, GrantedModel],
        limits: Limits,
        kv_limit: int,
        native_imports: bool = True,
    ):
        self.host = host
        self.engine = engine
        self.limits = limits
        self._wasm = wasm
        self._lock = threading.RLock()
        use_native = native_imports and engine == "wasmtime"
        native = GuestImports.native_for(host.backend, models) if use_native else None
        self.state = GuestState(host.backend, dict(models), kv_limit, native)
        self.imports = GuestImports(host.backend, self.state)
        self.last_stats: GenerateStats | None = None
        self._instance: Instance | None = None
        self._closed = "the guest is closed"  # why, once _instance is None
        self._deadline: float | None = None  # time.monotonic() at which the running call's time is up
        self._runner: ThreadPoolExecutor | None = None  # runs generate()'s guest calls
        self._epoch = 0  # instances started so far: a conversation lives in one of them
        self._chat: _Conversation | None = None
        self._templates: dict[tuple[int, str | None], ChatTemplate] = {}
        self._start()

    def _start(self) -> None:
        """A fresh instance; the imports serve it only once it is fully made."""
        inst = open_instance(self.engine, self._wasm, self.imports.table(), self.limits, self.state.native)
        self.imports.bind(inst)
        self._instance = inst
        self._epoch += 1

    def _drop_instance(self) -> None:
        """Release the KV rings, unbind the imports, then close the instance."""
        self.state.free_all_kv()
        self.imports.unbind()
        inst, self._instance = self._instance, None
        if inst is not None:
            inst.close()

    def _reset(self, cause: GuestError) -> None:
        """After a trap or a limit: a fresh instance in place of the failed one. When that
        fails too (say, its start function traps), the guest stays closed, and `cause`,
        the error the caller sees, says so."""
        self._drop_instance()
        try:
            self._start()
        except GuestError as e:
            self._closed = f"the guest is closed: its restart after an error failed: {e}"
            cause.args = (f"{cause}; the guest could not be restarted ({e}) and is closed",)

    def cancel(self) -> None:
        """Stop the call running in this guest soon, from any thread: a long forward
        import returns ERR_CANCELLED at its next chunk, realm_emit refuses the next
        piece. The next call into the guest is not affected."""
        self.state.control.cancel()

    def _revoke(self, model_id: int) -> None:
        with self._lock:
            self.state.revoke(model_id)

    # -- raw access --------------------------------------------------------------------

    def call(self, name: str, *args: int) -> int:
        """Call an export. On a trap or a limit the guest is reset (KV rings released,
        fresh instance) and the error is raised."""
        with self._lock:
            if self._instance is None:
                raise GuestError(self._closed)
            self._deadline = None if self.limits.time is None else time.monotonic() + self.limits.time
            self.state.control.arm(self._deadline)  # the long imports stop at it, between chunks
            try:
                return self._instance.call(name, *args)
            except GuestError as e:
                self._reset(e)
                raise

    # The instance is touched only under the guest's lock: on wasmtime a store is not
    # safe to use from two threads at once (and while an import runs, the memory is
    # reached through that call's caller context, valid only until it returns).

    def _touch(self, fn: Callable[[Instance], T]) -> T:
        """fn(instance), run where the instance may be touched, under the lock."""
        inst = self._instance
        if inst is not None and inst.serves_imports_here():
            # inside an import, on the engine's own thread (wasmer): the call in
            # progress holds the lock on this thread's behalf
            return fn(inst)
        with self._lock:
            inst = self._instance
            if inst is None:
                raise GuestError(self._closed)
            return inst.run(lambda: fn(inst))

    def memory(self) -> np.ndarray:
        """A copy of the guest's linear memory (uint8)."""
        return self._touch(lambda inst: inst.memory().copy())

    @property
    def memory_pages(self) -> int:
        return self._touch(lambda inst: inst.memory().size) // WASM_PAGE

    def alloc(self, n: int) -> int:
        ptr = self.call("realm_alloc", max(1, n)) & 0xFFFFFFFF
        if ptr == 0:
            raise MemoryError(f"the guest could not allocate {n} bytes (memory limit {self.limits.memory})")
        return ptr

    def free(self, ptr: int) -> None:
        self.call("realm_free", ptr)

    def write(self, ptr: int, data: bytes | np.ndarray) -> None:
        """Copy data into guest memory at ptr."""
        buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data.reshape(-1).view(np.uint8)

        def put(inst: Instance) -> None:
            mem = inst.memory()
            if ptr < 0 or ptr + buf.size > mem.size:
                raise IndexError(f"[{ptr}, {ptr + buf.size}) is outside guest memory ({mem.size} bytes)")
            mem[ptr : ptr + buf.size] = buf

        self._touch(put)

    def read(self, ptr: int, n: int) -> bytes:
        """n bytes of guest memory at ptr."""

        def get(inst: Instance) -> bytes:
            mem = inst.memory()
            if ptr < 0 or ptr + n > mem.size:
                raise IndexError(f"[{ptr}, {ptr + n}) is outside guest memory ({mem.size} bytes)")
            return mem[ptr : ptr + n].tobytes()

        return self._touch(get)

    def model_id(self, model: Model | None = None) -> int:
        """The host's id of `model` (default: the first granted); ModelNotGrantedError
        when the host has not loaded it or this guest was not granted it."""
        if model is None:
            if not self.state.models:
                raise ModelNotGrantedError("this guest has no model granted")
            return next(iter(self.state.models))
        mid = self.host.model_id(model)
        if mid not in self.state.models:
            raise ModelNotGrantedError(f"{model!r} is not granted to this guest")
        return mid

    def _put(self, data: bytes) -> int:
        ptr = self.alloc(len(data))
        self.write(ptr, data)
        return ptr

    def _check(self, what: str, rc: int) -> int:
        if rc < 0:
            raise RealmError(what, rc, self.state.last_error.decode("utf-8", "replace"))
        return rc

    # -- tokenizer ---------------------------------------------------------------------

    def tokenize(self, text: str, model: Model | None = None, *, special: bool = False) -> list[int]:
        """Token ids of text (no BOS), by the guest's tokenizer. special: the text of
        control tokens ("<|im_start|>") becomes those tokens, as llama.cpp's
        parse_special (user-defined tokens always do)."""
        data = text.encode("utf-8")
        flags = abi.TOKENIZE_SPECIAL if special else 0
        with self._lock:
            text_ptr = self._put(data)
            cap = len(data) + 2  # enough unless spaces fall back to bytes (then: retry)
            try:
                while True:
                    out_ptr = self.alloc(4 * cap)
                    try:
                        rc = self.call(
                            "realm_tokenize", self.model_id(model), text_ptr, len(data), out_ptr, cap, flags
                        )
                        n = self._check("realm_tokenize", rc)
                        if n <= cap:
                            return np.frombuffer(self.read(out_ptr, 4 * n), "<u4").tolist()
                        cap = n
                    finally:
                        self.free(out_ptr)
            finally:
                self.free(text_ptr)

    def detokenize(self, ids: Sequence[int], model: Model | None = None) -> str:
        """The text of token ids, by the guest's detokenizer."""
        arr = np.asarray(ids, "<u4")
        with self._lock:
            ids_ptr = self._put(arr.tobytes())
            cap = 16 * len(arr) + 16
            try:
                while True:
                    out_ptr = self.alloc(cap)
                    try:
                        n = self._check(
                            "realm_detokenize",
                            self.call(
                                "realm_detokenize", self.model_id(model), ids_ptr, len(arr), out_ptr, cap
                            ),
                        )
                        if n <= cap:
                            return self.read(out_ptr, n).decode("utf-8", "replace")
                        cap = n
                    finally:
                        self.free(out_ptr)
            finally:
                self.free(ids_ptr)

    # -- generation --------------------------------------------------------------------

    def _stream(self, produce: Callable[[Callable[[str], bool]], object]) -> Iterator[str]:
        """Run produce(on_emit) in the guest's worker thread and yield the pieces it
        emits. The pieces wait in a bounded stream; a guest that emits faster than this
        consumer reads waits in realm_emit. Closing the iterator stops the guest."""
        stream = PieceStream()

        def run() -> None:
            try:
                produce(lambda piece: stream.put(piece, self._deadline))
            except BaseException as e:  # handed to the consumer
                stream.end(e)
                return
            why = f"the consumer did not take the guest's output in its time limit ({self.limits.time} s)"
            stream.end(GuestLimitError("time", why) if stream.timed_out else None)

        if self._runner is None:  # one long-lived thread per guest, not one per call
            self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realm-guest")
        worker = self._runner.submit(run)
        try:
            while pieces := stream.take():
                yield from pieces
        finally:
            stream.close()
            self.cancel()  # a long import in progress stops at its next chunk
            worker.result()

    def generate(
        self,
        prompt: str,
        model: Model | None = None,
        *,
        params: abi.GenerateParams | None = None,
        **options: Unpack[abi.GenerateOptions],
    ) -> Iterator[str]:
        """Stream the text pieces the guest emits while it generates from `prompt`.
        The keywords are the fields of realm_ext.abi.GenerateParams, with its defaults;
        or pass one GenerateParams as `params` (and no other keyword). Closing the
        iterator early stops the guest."""
        gp = abi.generate_params(params, options)
        yield from self._stream(lambda emit: self.generate_to(prompt, emit, model, gp))

    def _timed_emit(
        self, on_emit: Callable[[str], bool], t0: float, first: list[float]
    ) -> Callable[[str], bool]:
        def emit(piece: str) -> bool:
            if not first:
                first.append(time.perf_counter() - t0)
            return on_emit(piece)

        return emit

    def _stats(
        self, tokens: int, seconds: float, calls0: int, first: list[float], **extra: Any
    ) -> GenerateStats:
        if self._instance is not None and "realm_heap_bytes" in self._instance.exports():
            heap = self.call("realm_heap_bytes") & 0xFFFFFFFF
        else:
            heap = 0
        return GenerateStats(
            max(tokens, 0),
            seconds,
            self.memory_pages,
            heap,
            self.state.calls - calls0,
            first_token_s=first[0] if first else None,
            **extra,
        )

    def generate_to(
        self,
        prompt: str,
        on_emit: Callable[[str], bool],
        model: Model | None = None,
        params: abi.GenerateParams | None = None,
        **options: Unpack[abi.GenerateOptions],
    ) -> int:
        """Run realm_generate, handing each piece to on_emit (False back stops it);
        returns the number of tokens generated. Stats land in self.last_stats. The
        settings: as generate's (keywords, or one GenerateParams)."""
        gp = abi.generate_params(params, options)
        data = prompt.encode("utf-8")
        packed = gp.pack()
        with self._lock:
            prompt_ptr, params_ptr = self._put(data), self._put(packed)
            calls0 = self.state.calls
            first: list[float] = []
            t0 = time.perf_counter()
            self.state.on_emit = self._timed_emit(on_emit, t0, first)
            try:
                rc = self.call(
                    "realm_generate", self.model_id(model), prompt_ptr, len(data), params_ptr, len(packed)
                )
            finally:
                self.state.on_emit = None
            self.last_stats = self._stats(rc, time.perf_counter() - t0, calls0, first)
            self.free(prompt_ptr)
            self.free(params_ptr)
            return self._check("realm_generate", rc)

    # -- chat --------------------------------------------------------------------------

    def chat_template(self, model: Model | None = None, source: str | None = None) -> ChatTemplate:
        """The chat template chat() renders with: the model's tokenizer.chat_template,
        or `source` (a Jinja2 template's text, or a name in chat_template.BUILTIN)."""
        mid = self.model_id(model)
        key = (mid, source)
        if key not in self._templates:
            self._templates[key] = ChatTemplate.for_model(self.state.models[mid].model, source)
        return self._templates[key]

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: Model | None = None,
        chat_template: str | None = None,
        *,
        params: abi.GenerateParams | None = None,
        **options: Unpack[abi.GenerateOptions],
    ) -> Iterator[str]:
        """Stream the assistant's reply to `messages` (the whole conversation so far, each
        {"role": ..., "content": ...}), rendered with the model's chat template (or
        `chat_template`). The guest keeps one conversation: the tokens of the previous
        call's prompt and reply stay in its KV ring, and only what follows the longest
        common prefix with this call's is evaluated (last_stats.cached_tokens says how
        many were reused). The settings: as generate's; n_ctx is the conversation's ring size
        (a change, or another model, starts a new conversation). Generation stops at the
        tokenizer's end-of-generation token. A reset of the guest (a trap, a limit)
        loses the conversation; the next call starts a new one and evaluates it all."""
        check_messages(messages)
        gp = abi.generate_params(params, options)
        text = self.chat_template(model, chat_template).prompt(messages)
        yield from self._stream(lambda emit: self.chat_to(text, emit, model, gp))

    def reset_chat(self) -> None:
        """Forget the conversation: the next chat call starts a new one."""
        with self._lock:
            conv, self._chat = self._chat, None
            if conv is not None and conv.epoch == self._epoch and self._instance is not None:
                self.call("realm_chat_close", conv.handle)

    def _conversation(self, model_id: int, n_ctx: int) -> _Conversation:
        """The open conversation for this model and ring size, or a new one."""
        conv = self._chat
        if conv is not None and conv.epoch != self._epoch:
            conv = self._chat = None  # its instance is gone, and the conversation with it
        if conv is not None and (conv.model_id, conv.n_ctx) != (model_id, n_ctx):
            self.reset_chat()
            conv = None
        if conv is None:
            handle = self._check("realm_chat_open", self.call("realm_chat_open", model_id, n_ctx))
            conv = self._chat = _Conversation(handle, model_id, n_ctx, self._epoch)
        return conv

    def chat_to(
        self,
        prompt: str,
        on_emit: Callable[[str], bool],
        model: Model | None = None,
        params: abi.GenerateParams | None = None,
        **options: Unpack[abi.GenerateOptions],
    ) -> int:
        """Run realm_chat_generate on the guest's conversation with `prompt`, the whole
        conversation already rendered, handing each piece to on_emit (False back stops
        it); returns the number of tokens generated. Stats land in self.last_stats. The
        settings: as generate's (keywords, or one GenerateParams)."""
        gp = abi.generate_params(params, options)
        data = prompt.encode("utf-8")
        packed = gp.pack()
        with self._lock:
            conv = self._conversation(self.model_id(model), gp.n_ctx)
            prompt_ptr, params_ptr = self._put(data), self._put(packed)
            stats_ptr = self._put(bytes(abi.CHAT_STATS.size))
            calls0 = self.state.calls
            first: list[float] = []
            t0 = time.perf_counter()
            self.state.on_emit = self._timed_emit(on_emit, t0, first)
            try:
                rc = self.call(
                    "realm_chat_generate",
                    conv.handle,
                    prompt_ptr,
                    len(data),
                    params_ptr,
                    len(packed),
                    stats_ptr,
                    abi.CHAT_STATS.size,
                )
            finally:
                self.state.on_emit = None
            seconds = time.perf_counter() - t0
            s = abi.ChatStats.unpack(self.read(stats_ptr, abi.CHAT_STATS.size))
            self.last_stats = self._stats(
                rc,
                seconds,
                calls0,
                first,
                prompt_tokens=s.n_prompt,
                cached_tokens=s.n_cached,
                evaluated_tokens=s.n_evaluated,
                restarted=s.restarted,
            )
            for ptr in (prompt_ptr, params_ptr, stats_ptr):
                self.free(ptr)
            return self._check("realm_chat_generate", rc)

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Release the guest's KV rings and its instance."""
        with self._lock:
            self._drop_instance()
            self._chat = None
            self._closed = "the guest is closed"
            if self._runner is not None:
                self._runner.shutdown(wait=False)
                self._runner = None
        with self.host._lock:
            if self in self.host._guests:
                self.host._guests.remove(self)

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
