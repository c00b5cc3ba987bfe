"""Tenants at run time: who a request is (its API key, compared in constant time) and
whether its tenant may start one more request (concurrency, tokens per minute)."""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable, Sequence

from realm_ext.serve.config import TenantConfig

WINDOW_S = 60.0  # the tokens-per-minute window


class RateLimited(Exception):
    """A tenant over one of its limits: `kind` "requests" (concurrency) or "tokens"
    (tokens per minute); retry_after: whole seconds until a retry may pass."""

    def __init__(self, kind: str, message: str, retry_after: int):
        super().__init__(message)
        self.kind = kind
        self.retry_after = max(1, retry_after)


class TokenWindow:
    """Tokens spent over the last WINDOW_S seconds (a sliding window of events)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0
        self._lock = threading.Lock()
        self._clock = clock or time.monotonic

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - WINDOW_S:
            self._total -= self._events.popleft()[1]

    def add(self, tokens: int) -> None:
        if tokens <= 0:
            return
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._events.append((now, tokens))
            self._total += tokens

    def used(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return self._total

    def seconds_until_below(self, limit: int) -> float:
        """How long until the window holds fewer than `limit` tokens (0: it does now)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            total = self._total
            if total < limit:
                return 0.0
            for t, n in self._events:  # oldest first: each leaves the window at t + WINDOW_S
                total -= n
                if total < limit:
                    return max(0.0, t + WINDOW_S - now)
            return WINDOW_S


class Tenant:
    """One tenant's configuration and its live counters."""

    def __init__(self, config: TenantConfig):
        self.config = config
        self.name = config.name
        self.in_flight = 0
        self.tokens = TokenWindow()
        self._lock = threading.Lock()

    def admit(self) -> Callable[[], None]:
        """Take one of the tenant's request slots, or raise RateLimited; returns the
        slot's release (idempotent)."""
        c = self.config
        with self._lock:
            if self.in_flight >= c.max_concurrent:
                raise RateLimited(
                    "requests",
                    f"Rate limit reached for tenant {self.name}: {c.max_concurrent} concurrent "
                    "request(s) at most. Retry when one of them has finished.",
                    1,
                )
            if c.tokens_per_minute:
                used = self.tokens.used()
                if used >= c.tokens_per_minute:
                    wait = self.tokens.seconds_until_below(c.tokens_per_minute)
                    raise RateLimited(
                        "tokens",
                        f"Rate limit reached for tenant {self.name}: {c.tokens_per_minute} tokens per "
                        f"minute, {used} used. Retry in {math.ceil(wait)} s.",
                        math.ceil(wait),
                    )
            self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self.in_flight -= 1

        return release


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    """Maps an API key to its tenant. Every configured key is compared, each with
    hmac.compare_digest over SHA-256 digests (equal lengths), so the time taken says
    nothing about which key, or how much of one, matched. No key configured: every
    request is the open server's one tenant."""

    def __init__(self, tenants: Sequence[Tenant]):
        self._open = tenants[0] if len(tenants) == 1 and tenants[0].config.key is None else None
        self._keys = [(_digest(t.config.key), t) for t in tenants if t.config.key is not None]

    @property
    def is_open(self) -> bool:
        return self._open is not None

    def tenant(self, key: str | None) -> Tenant | None:
        """The tenant of `key`; None for a missing or wrong key (on a server with keys)."""
        if self._open is not None:
            return self._open
        if key is None:
            return None
        d = _digest(key)
        found = None
        for digest, tenant in self._keys:
            if hmac.compare_digest(d, digest) and found is None:
                found = tenant
        return found
