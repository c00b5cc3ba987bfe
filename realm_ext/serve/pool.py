"""Guests pooled per (tenant, model): made on demand up to the tenant's concurrency
limit, kept between requests (no instantiation per request once warm), and replaced
when one errors or traps.

A chat request goes to the idle guest whose last conversation shares the longest
prefix of messages with the new one: `Guest.chat_to` keeps the conversation's KV ring
and token ids and evaluates only what follows the longest common *token* prefix, so
a client that sends back the history (its last reply included) re-evaluates only the
new message. A request that matches no conversation prefers a guest without one (or a
new guest), then the guest used least recently, so live conversations are kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from realm_ext.api import Guest, Host
from realm_ext.model import Model
from realm_ext.serve.config import TenantConfig

History = tuple[tuple[str, str], ...]  # (role, content) of each message of a conversation


class PoolExhausted(RuntimeError):
    """Every guest of the pool is busy (the tenant's admission should prevent it)."""


@dataclass(eq=False)
class PooledGuest:
    """A guest of a pool and what the pool knows of it."""

    guest: Guest
    exports: frozenset[str]
    history: History | None = None  # its conversation: the messages and the reply, as last held
    last_used: float = 0.0
    requests: int = 0

    def has(self, export: str) -> bool:
        return export in self.exports


def common_prefix(a: Sequence[tuple[str, str]], b: Sequence[tuple[str, str]]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class GuestPool:
    """The guests of one tenant on one model. Thread-safe; acquire and release may be
    called from any thread (acquire may make a guest: call it off the event loop)."""

    def __init__(self, host: Host, model: Model, model_name: str, tenant: TenantConfig, wasm: bytes | None):
        self.host, self.model, self.model_name, self.tenant = host, model, model_name, tenant
        self.size = tenant.max_concurrent
        self._wasm = wasm
        self._lock = threading.Lock()
        self._idle: list[PooledGuest] = []
        self._busy: set[PooledGuest] = set()
        self._making = 0
        self.created = 0  # guests made over the pool's life
        self.replaced = 0  # guests dropped after an error
        self._closed = False

    def _make(self) -> PooledGuest:
        t = self.tenant
        guest = self.host.guest(
            models=[self.model],
            engine="wasmtime",  # the engine that bounds time (a tenant's guest is untrusted)
            memory_limit=t.memory_limit,
            time_limit=t.time_limit,
            wasm=self._wasm,
        )
        inst = guest._instance  # the exports decide what a tenant's own guest can serve
        exports = frozenset(inst.exports()) if inst is not None else frozenset()
        return PooledGuest(guest, exports)

    def _pick(self, history: History | None) -> PooledGuest | None:
        """An idle guest for a request (None: make one); under the lock."""
        if not self._idle:
            return None
        if history:
            best = max(self._idle, key=lambda pg: common_prefix(pg.history or (), history))
            if common_prefix(best.history or (), history) > 0:
                return best
        fresh = [pg for pg in self._idle if pg.history is None]
        if fresh:
            return fresh[-1]
        if len(self._idle) + len(self._busy) + self._making < self.size:
            return None  # room for a new guest: keep the conversations the idle ones hold
        return min(self._idle, key=lambda pg: pg.last_used)

    def acquire(self, history: History | None = None) -> PooledGuest:
        """A guest for one request: an idle one (see the module), or a new one."""
        with self._lock:
            if self._closed:
                raise PoolExhausted("the server is shutting down")
            pg = self._pick(history)
            if pg is not None:
                self._idle.remove(pg)
                self._busy.add(pg)
                pg.requests += 1
                return pg
            if len(self._idle) + len(self._busy) + self._making >= self.size:
                raise PoolExhausted(
                    f"all {self.size} guests of {self.tenant.name}/{self.model_name} are busy"
                )
            self._making += 1
        try:
            pg = self._make()
        finally:
            with self._lock:
                self._making -= 1
        with self._lock:
            self.created += 1
            self._busy.add(pg)
            pg.requests += 1
        return pg

    def release(self, pg: PooledGuest, healthy: bool = True) -> None:
        """Back to the pool; a guest that failed (`healthy` False) is closed and dropped,
        and the pool makes a fresh one when it needs one."""
        with self._lock:
            self._busy.discard(pg)
            pg.last_used = time.monotonic()
            keep = healthy and not self._closed and pg.guest._instance is not None
            if keep:
                self._idle.append(pg)
            elif not healthy:
                self.replaced += 1
        if not keep:
            pg.guest.close()

    def counts(self) -> tuple[int, int]:
        """(idle, busy) guests."""
        with self._lock:
            return len(self._idle), len(self._busy)

    def guests(self) -> list[PooledGuest]:
        with self._lock:
            return list(self._idle) + list(self._busy)

    def idle_guests(self) -> list[PooledGuest]:
        with self._lock:
            return list(self._idle)

    def close(self) -> None:
        """Close the idle guests; busy ones are closed as they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for pg in idle:
            pg.guest.close()
