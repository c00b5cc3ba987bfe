"""Keys and limits: constant-time key lookup, the concurrency slots, the token window."""

from __future__ import annotations

import pytest

from realm_ext.serve.config import TenantConfig
from realm_ext.serve.tenants import WINDOW_S, Authenticator, RateLimited, Tenant, TokenWindow


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_window_slides():
    clock = Clock()
    w = TokenWindow(clock)
    w.add(10)
    clock.t += 20
    w.add(15)
    assert w.used() == 25
    assert w.seconds_until_below(30) == 0
    assert w.seconds_until_below(25) == pytest.approx(WINDOW_S - 20)  # when the 10 leave
    assert w.seconds_until_below(5) == pytest.approx(WINDOW_S)  # when the 15 leave too
    clock.t += WINDOW_S - 20
    assert w.used() == 15
    clock.t += 20
    assert w.used() == 0


def test_concurrency_slots():
    t = Tenant(TenantConfig("a", "k", max_concurrent=2))
    r1, r2 = t.admit(), t.admit()
    with pytest.raises(RateLimited) as e:
        t.admit()
    assert (e.value.kind, e.value.retry_after) == ("requests", 1)
    r1()
    r1()  # idempotent
    assert t.in_flight == 1
    r3 = t.admit()
    r2(), r3()
    assert t.in_flight == 0


def test_tokens_per_minute():
    t = Tenant(TenantConfig("a", "k", tokens_per_minute=100))
    clock = Clock()
    t.tokens = TokenWindow(clock)
    t.admit()()
    t.tokens.add(60)
    clock.t += 10
    t.tokens.add(50)
    with pytest.raises(RateLimited) as e:
        t.admit()
    assert e.value.kind == "tokens" and e.value.retry_after == 50  # the 60 leave at 60 s
    clock.t += 50
    t.admit()()


def test_authenticator():
    a, b = Tenant(TenantConfig("a", "key-a")), Tenant(TenantConfig("b", "key-b"))
    auth = Authenticator([a, b])
    assert not auth.is_open
    assert auth.tenant("key-a") is a and auth.tenant("key-b") is b
    assert auth.tenant("key-") is None and auth.tenant("key-ab") is None and auth.tenant(None) is None
    anon = Tenant(TenantConfig("anonymous", None))
    open_auth = Authenticator([anon])
    assert open_auth.is_open and open_auth.tenant(None) is anon and open_auth.tenant("x") is anon
