"""One generation on a pooled guest, in a worker thread, its pieces handed to the
event loop.

A guest's generate is blocking: `Job.run` (in a worker thread) takes a guest from the
pool and runs `Guest.generate_to` (completions) or `Guest.chat_to` (chat) with an
on_emit callback that applies the stop strings and queues each piece for the async
side (`Job.next_piece`). At most MAX_QUEUED pieces wait; a guest that emits faster than
the client reads waits inside realm_emit (back-pressure), for the tenant's time limit
at most. `Job.stop` (a client gone, the server draining) makes on_emit refuse the next
piece and cancels a long import in progress (Guest.cancel), so the guest stops within
a token. When the guest is done, the job releases everything it holds from the worker
thread itself, whatever the async side is doing: a chat guest whose reply was cut off
forgets the conversation (its ring freed, reset_chat), a guest that failed is closed
and replaced, the guest goes back to its pool, and the tenant's slot is freed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from realm_ext import abi
from realm_ext.api import RealmError
from realm_ext.engines.base import GuestError, GuestLimitError
from realm_ext.serve.pool import GuestPool, History, PooledGuest

MAX_QUEUED = 256  # pieces waiting for the async side at most
_END = object()


class StopMatcher:
    """OpenAI's `stop`: the text ends before the first occurrence of any stop string,
    which is never returned. Text that could be the start of a stop string is held
    back until the next piece decides."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hit = False
        self._buf = ""

    def feed(self, piece: str) -> str:
        """The text that may be passed on after `piece`; sets `hit` at a stop string."""
        if not self.stops:
            return piece
        buf = self._buf + piece
        at = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if at >= 0:
            self.hit, self._buf = True, ""
            return buf[:at]
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._buf = buf[len(buf) - hold :]
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """What is held back, once the generation has ended without a stop string."""
        out, self._buf = self._buf, ""
        return out


class GuestUnsupported(Exception):
    """The tenant's guest lacks the exports a request needs (its own .wasm)."""


@dataclass
class Result:
    """What a job did. error: the exception that ended it (None: it finished)."""

    parts: list[str] = field(default_factory=list)  # the text passed on, piece by piece
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    started: float = 0.0  # time.monotonic() the request arrived
    first_piece: float | None = None  # time.monotonic() of the first piece out
    ended: float = 0.0
    error: BaseException | None = None
    stopped: bool = False  # Job.stop ended it (the client left, or the server drained)
    reused_tokens: int = 0  # chat: prompt tokens reused from the guest's ring
    pieces: int = 0  # pieces the guest emitted

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def ttft(self) -> float | None:
        return None if self.first_piece is None else self.first_piece - self.started


@dataclass
class Request:
    """What to generate: kind "completion" (prompt: the text) or "chat" (prompt: the
    rendered conversation, history: its messages, for the pool's routing)."""

    kind: str
    prompt: str
    params: abi.GenerateParams
    stops: Sequence[str] = ()
    history: History | None = None
    started: float = field(default_factory=time.monotonic)


def count_prompt_tokens(pg: PooledGuest, prompt: str, params: abi.GenerateParams) -> int:
    """The prompt's tokens as the guest's realm_generate counts them: its tokenizer
    (special tokens parsed) and BOS / EOS where the model's tokenizer asks for them.
    0 for a guest of a tenant's own that exports no realm_tokenize."""
    if not pg.has("realm_tokenize"):
        return 0
    guest = pg.guest
    tok = guest.state.models[guest.model_id()].model.tokenizer
    n = len(guest.tokenize(prompt, special=True))
    if params.add_bos:
        n += (tok.add_bos and tok.bos_id is not None) + (tok.add_eos and tok.eos_id is not None)
    return n


class Job:
    """One request's generation (the module docstring). `on_done(result)` runs once in
    the worker thread when everything is released."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: GuestPool,
        request: Request,
        on_done: Callable[[Result], None],
    ):
        self.loop, self.pool, self.request, self.on_done = loop, pool, request, on_done
        self.result = Result(started=request.started)
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self._credits = threading.Semaphore(MAX_QUEUED)
        self._stop = threading.Event()
        self._guest: PooledGuest | None = None
        self._guest_lock = threading.Lock()
        self.done = threading.Event()
        self.next_check = 0.0  # time.monotonic() at which the async side next looks at its client

    # -- the worker thread ---------------------------------------------------------------

    def _post(self, item: object) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
            return True
        except RuntimeError:  # the event loop is gone (the server has stopped)
            self._stop.set()
            return False

    def _emit(self, text: str, deadline: float) -> bool:
        while not self._credits.acquire(timeout=0.05):
            if self._stop.is_set() or time.monotonic() > deadline:
                self._stop.set()
                return False
        if self.result.first_piece is None:
            self.result.first_piece = time.monotonic()
        self.result.parts.append(text)
        return self._post(text)

    @staticmethod
    def _forget_chat(pg: PooledGuest) -> None:
        """A reply the client never got: the conversation goes, its ring freed."""
        pg.history = None
        pg.guest.reset_chat()

    def run(self) -> None:
        req, res = self.request, self.result
        pg: PooledGuest | None = None
        healthy = True
        try:
            if self._stop.is_set():
                res.stopped = True
                return
            pg = self.pool.acquire(req.history)
            with self._guest_lock:
                self._guest = pg
            if self._stop.is_set():
                res.stopped = True
                return
            guest = pg.guest
            deadline = time.monotonic() + self.pool.tenant.time_limit
            matcher = StopMatcher(req.stops)

            def on_emit(piece: str) -> bool:
                res.pieces += 1
                if self._stop.is_set():
                    return False
                text = matcher.feed(piece)
                if text and not self._emit(text, deadline):
                    return False
                return not matcher.hit

            if req.kind == "completion":
                res.prompt_tokens = count_prompt_tokens(pg, req.prompt, req.params)
                n = guest.generate_to(req.prompt, on_emit, params=req.params)
            else:
                if not (pg.has("realm_chat_open") and pg.has("realm_chat_generate")):
                    raise GuestUnsupported(
                        "this tenant's guest does not support chat (no realm_chat_generate)"
                    )
                n = guest.chat_to(req.prompt, on_emit, params=req.params)
                s = guest.last_stats
                if s is not None:
                    res.prompt_tokens, res.reused_tokens = s.prompt_tokens, s.cached_tokens
            res.completion_tokens = n
            if not matcher.hit and not self._stop.is_set():
                tail = matcher.flush()
                if tail:
                    self._emit(tail, deadline)
            res.stopped = self._stop.is_set() and not matcher.hit
            if res.stopped and time.monotonic() > deadline:
                # the client read slower than the tenant's time limit allows
                res.error = GuestLimitError(
                    "time",
                    "the client did not take the output within the tenant's time limit "
                    f"({self.pool.tenant.time_limit} s)",
                )
            res.finish_reason = "length" if n >= req.params.max_tokens and not matcher.hit else "stop"
            if req.kind == "chat":
                if res.stopped or res.error is not None:
                    self._forget_chat(pg)
                else:
                    pg.history = (*(req.history or ()), ("assistant", res.text))
        except GuestUnsupported as e:
            res.error = e
        except RealmError as e:
            if self._stop.is_set() and e.code == abi.ERR_CANCELLED and pg is not None:
                res.stopped = True  # Job.stop cancelled a long import: the guest is fine
                res.finish_reason = "stop"
                res.completion_tokens = res.pieces  # realm_generate returned -8, not its count
                self._forget_chat(pg)
            else:
                res.error, healthy = e, False
        except BaseException as e:  # a trap, a limit, a failed start: the guest is replaced
            res.error, healthy = e, False
        finally:
            res.ended = time.monotonic()
            with self._guest_lock:
                self._guest = None
            if pg is not None:
                if not healthy:
                    pg.history = None
                try:
                    self.pool.release(pg, healthy)
                except BaseException as e:  # closing a broken guest: never lose the rest
                    res.error = res.error or e
            self.done.set()
            try:
                self.on_done(res)
            finally:
                self._post(_END)

    # -- the event loop ------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the generation soon (from any thread): the next piece is refused and a
        long import in progress returns at its next chunk."""
        self._stop.set()
        with self._guest_lock:
            if self._guest is not None:
                self._guest.guest.cancel()

    async def next_piece(self, timeout: float | None = None) -> str | None:
        """The next piece; None at the end. asyncio.TimeoutError after `timeout` s."""
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if item is _END:
            self.queue.put_nowait(_END)  # stays at the end
            return None
        self._credits.release()
        assert isinstance(item, str)
        return item


def is_guest_failure(error: BaseException) -> bool:
    """An error of the guest (a trap, a limit, an ABI error code) rather than the server's."""
    return isinstance(error, (GuestError, RealmError, MemoryError))
