"""Many clients at once, the tenants' limits (429 + Retry-After), a hostile tenant's
guest beside a well-behaved tenant, and a client that leaves mid-stream."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from support.serve_support import KEYS, guest_params

from realm_ext.serve import TenantConfig


def _wait(cond, timeout=10.0, what="the condition"):
    t_end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t_end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_16_concurrent_clients_each_get_their_direct_guest_text(start_server, tiny_chat, direct):
    served = start_server({"tiny": tiny_chat}, [TenantConfig("alice", KEYS["alice"], max_concurrent=16)])
    prompts = [f"Story number {i} begins" for i in range(16)]
    expected = [direct.generate(p, **guest_params(24))[0] for p in prompts]
    assert len(set(expected)) > 1
    barrier = threading.Barrier(16)

    def one(i):
        c = served.client(KEYS["alice"])
        barrier.wait()
        if i % 2:
            stream = c.completions.create(
                model="tiny", prompt=prompts[i], max_tokens=24, temperature=0, stream=True
            )
            return "".join(ch.choices[0].text for ch in stream)
        return (
            c.completions.create(model="tiny", prompt=prompts[i], max_tokens=24, temperature=0)
            .choices[0]
            .text
        )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(one, range(16)))
    seconds = time.perf_counter() - t0
    print(f"16 concurrent clients, 24 tokens each: {seconds:.2f} s")
    assert got == expected
    pool = served.pool("alice", "tiny")
    assert 1 <= pool.created <= 16 and pool.counts() == (pool.created, 0)
    assert (
        served.metric("realm_serve_requests_total", endpoint="/v1/completions", tenant="alice", status="200")
        == 16
    )
    assert served.metric("realm_serve_completion_tokens_total", tenant="alice", model="tiny") == 16 * 24


def test_over_the_concurrency_limit_is_429_with_retry_after(start_server, tiny_chat, hostile_wasm):
    served = start_server(
        {"tiny": tiny_chat},
        [TenantConfig("eve", KEYS["eve"], max_concurrent=1, time_limit=1.5, wasm=hostile_wasm)],
    )
    tenant = served.state.tenants[0]
    body = {"model": "tiny", "prompt": "spin", "max_tokens": 4}
    with ThreadPoolExecutor(1) as ex:
        slow = ex.submit(served.post, "/v1/completions", body, KEYS["eve"])  # spins to its time limit
        _wait(lambda: tenant.in_flight == 1, what="the first request to start")
        r = served.post("/v1/completions", {**body, "prompt": "fine"}, key=KEYS["eve"])
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        e = r.json()["error"]
        assert (e["type"], e["code"]) == ("requests", "rate_limit_exceeded") and "1 concurrent" in e[
            "message"
        ]
        spun = slow.result()
    assert spun.status_code == 500 and spun.json()["error"]["code"] == "guest_limit"
    assert "time" in spun.json()["error"]["message"]
    r = served.post("/v1/completions", {**body, "prompt": "fine"}, key=KEYS["eve"])
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"
    assert (
        served.metric("realm_serve_requests_total", endpoint="/v1/completions", tenant="eve", status="429")
        == 1
    )


def test_over_the_tokens_per_minute_is_429_with_retry_after(start_server, tiny_chat, direct):
    served = start_server(
        {"tiny": tiny_chat}, [TenantConfig("alice", KEYS["alice"], tokens_per_minute=30, max_concurrent=2)]
    )
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}
    r1 = served.post("/v1/completions", body, key=KEYS["alice"])
    u = r1.json()["usage"]
    assert r1.status_code == 200 and u["total_tokens"] == direct.prompt_tokens(body["prompt"]) + 10 < 30
    r2 = served.post("/v1/completions", body, key=KEYS["alice"])  # still under: admitted
    assert r2.status_code == 200
    r3 = served.post("/v1/completions", body, key=KEYS["alice"])
    assert r3.status_code == 429
    e = r3.json()["error"]
    assert (e["type"], e["code"]) == ("tokens", "rate_limit_exceeded") and "30 tokens per minute" in e[
        "message"
    ]
    assert 1 <= int(r3.headers["retry-after"]) <= 60
    assert served.state.tenants[0].tokens.used() == 2 * u["total_tokens"]


def test_a_hostile_tenant_beside_a_well_behaved_one(start_server, tiny_chat, hostile_wasm, direct):
    served = start_server(
        {"tiny": tiny_chat},
        [
            TenantConfig("alice", KEYS["alice"], max_concurrent=8),
            TenantConfig("eve", KEYS["eve"], max_concurrent=5, time_limit=1.0, wasm=hostile_wasm),
        ],
    )
    prompts = [f"A quiet morning {i}" for i in range(8)]
    expected = [direct.generate(p, **guest_params(16)) for p in prompts]

    def good(p):
        r = served.post(
            "/v1/completions",
            {"model": "tiny", "prompt": p, "max_tokens": 16, "temperature": 0},
            KEYS["alice"],
        )
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"], r.json()["usage"]["completion_tokens"]

    def evil(prompt, stream=False):
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 8, "stream": stream}
        return served.post("/v1/completions", body, KEYS["eve"])

    with ThreadPoolExecutor(8) as ex:
        spinners = [ex.submit(evil, "spin") for _ in range(2)]
        pointers = [ex.submit(evil, "pointers") for _ in range(2)]
        streamed_spin = ex.submit(evil, "spin", True)
        got = list(ex.map(good, prompts))
        spins = [f.result() for f in spinners]
        bad = [f.result() for f in pointers]
        streamed = streamed_spin.result()
    assert got == expected
    for r in spins:
        e = r.json()["error"]
        assert r.status_code == 500 and e["code"] == "guest_limit" and e["type"] == "server_error"
    for r in bad:
        e = r.json()["error"]
        assert r.status_code == 500 and e["code"] == "guest_error"
        assert "realm_generate failed: pointer or length outside guest memory (-2)" in e["message"]
    # streamed: the first piece went out, then the time limit ends the stream with an error event
    assert streamed.status_code == 200
    events = [line for line in streamed.text.splitlines() if line]
    assert '"text":"hostile"' in events[0] and events[-1] == "data: [DONE]"
    assert '"code":"guest_limit"' in events[-2]
    # the server is unharmed: eve's next request and alice's still answer exactly
    assert evil("hello").json()["choices"][0]["text"] == "ok"
    assert good(prompts[0]) == expected[0]
    assert served.get("/health").json()["status"] == "ok"
    assert served.pool("eve", "tiny").replaced == 5
    assert served.pool("alice", "tiny").replaced == 0


def test_a_client_leaving_mid_stream_stops_the_guest_and_frees_its_ring(start_server, tiny_chat):
    served = start_server({"tiny": tiny_chat}, [TenantConfig("alice", KEYS["alice"], max_concurrent=1)])
    c = served.client(KEYS["alice"])
    max_tokens = 200_000  # minutes of generation, were it not stopped
    for kind in ("chat", "completion"):
        if kind == "chat":
            stream = c.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "Talk"}],
                max_tokens=max_tokens,
                temperature=0,  # the greedy text never ends early on this model
                stream=True,
            )
        else:
            stream = c.completions.create(
                model="tiny", prompt="Talk", max_tokens=max_tokens, temperature=0, stream=True
            )
        pieces = [next(stream) for _ in range(5)]
        assert len(pieces) == 5
        t_left = time.monotonic()
        stream.close()  # the connection goes
        tenant = served.state.tenants[0]
        _wait(
            lambda: served.pool("alice", "tiny").counts() == (1, 0) and tenant.in_flight == 0,  # noqa: B023
            what="the guest back in its pool",
        )
        pool = served.pool("alice", "tiny")
        stopped_in = time.monotonic() - t_left
        pg = pool.guests()[0]
        s = pg.guest.last_stats
        # stopped within a token or a chunk of an import (then realm_generate returns -8,
        # cancelled, and counts 0 tokens): well before its minutes of work
        assert s.seconds < 5 and stopped_in < 5
        assert pg.guest.state.kv == {}  # the ring is freed
        assert pg.history is None and pg.guest._chat is None  # the conversation is gone
        assert pool.replaced == 0
    assert (
        served.metric(
            "realm_serve_requests_total", endpoint="/v1/chat/completions", tenant="alice", status="499"
        )
        == 1
    )
    assert (
        served.metric("realm_serve_requests_total", endpoint="/v1/completions", tenant="alice", status="499")
        == 1
    )
    # the same guest serves the next request
    r = c.completions.create(model="tiny", prompt="Talk", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and served.pool("alice", "tiny").created == 1


def test_a_slow_reader_is_bounded_by_the_time_limit(start_server, tiny_chat):
    """A client that stops reading: the guest waits in realm_emit (back-pressure) or runs
    into its own time limit; either way the tenant's time limit ends the request and
    frees its slot and guest."""
    served = start_server(
        {"tiny": tiny_chat}, [TenantConfig("alice", KEYS["alice"], max_concurrent=1, time_limit=1.0)]
    )
    body = {"model": "tiny", "prompt": "Talk", "max_tokens": 200_000, "temperature": 0, "stream": True}
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            served.url + "/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEYS['alice']}"},
        ) as r,
    ):
        t0 = time.monotonic()
        assert r.status_code == 200
        tenant = served.state.tenants[0]
        _wait(lambda: tenant.in_flight == 0, timeout=20, what="the time limit to end the request")
        assert time.monotonic() - t0 < 1.0 + 3
        assert served.pool("alice", "tiny").counts()[1] == 0
    r = served.post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2}, KEYS["alice"])
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_a_client_leaving_a_non_streamed_request_stops_the_guest(start_server, tiny_chat):
    served = start_server({"tiny": tiny_chat}, [TenantConfig("alice", KEYS["alice"], max_concurrent=1)])
    body = {"model": "tiny", "prompt": "Talk", "max_tokens": 200_000, "temperature": 0}
    t0 = time.monotonic()
    try:
        served.post("/v1/completions", body, KEYS["alice"], timeout=0.5)
        raise AssertionError("the request should have timed out")
    except httpx.TimeoutException:
        pass
    tenant = served.state.tenants[0]
    _wait(lambda: tenant.in_flight == 0, what="the guest to stop")
    assert time.monotonic() - t0 < 5
    pool = served.pool("alice", "tiny")
    assert pool.counts() == (1, 0) and pool.replaced == 0
    assert (
        served.metric("realm_serve_requests_total", endpoint="/v1/completions", tenant="alice", status="499")
        == 1
    )


def test_a_tenants_own_guest_without_chat_and_tokenizer(start_server, tiny_chat, hostile_wasm):
    served = start_server({"tiny": tiny_chat}, [TenantConfig("eve", KEYS["eve"], wasm=hostile_wasm)])
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    r = served.post("/v1/chat/completions", chat, KEYS["eve"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_by_guest"
    r = served.post("/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 4}, KEYS["eve"])
    assert r.json()["usage"] == {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1}
    assert served.pool("eve", "tiny").replaced == 0  # refusing chat did not cost the guest


def test_a_memory_limit_the_guest_cannot_start_in(start_server, tiny_chat, direct):
    served = start_server(
        {"tiny": tiny_chat},
        [
            TenantConfig("alice", KEYS["alice"]),
            TenantConfig("bob", KEYS["bob"], memory_limit=64 << 10),  # one wasm page: too small
        ],
    )
    r = served.post("/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 4}, KEYS["bob"])
    e = r.json()["error"]
    assert r.status_code == 500 and e["code"] in ("guest_limit", "guest_error") and "memory" in e["message"]
    r = served.post(
        "/v1/completions",
        {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0},
        KEYS["alice"],
    )
    assert r.json()["choices"][0]["text"] == direct.generate("hello", **guest_params(4))[0]
