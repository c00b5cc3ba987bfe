"""Engine limits and failures: a guest over its budget gets an error naming the limit,
its KV rings are released, and the host (and the guest) stay usable."""

from __future__ import annotations

import time

import pytest
from wasm_support import wat

from realm_ext import Host, abi
from realm_ext.engines import GuestError, GuestLimitError
from realm_ext.model import load_gguf

PAGE = 65536


@pytest.fixture(scope="module")
def tiny(model_path):  # noqa: ANN001, ANN201
    return load_gguf(model_path("Q4_0"))


@pytest.fixture
def host(tiny):  # noqa: ANN001, ANN201
    with Host(device="cpu") as h:
        h.load(tiny)
        yield h


def test_time_limit_stops_a_runaway_guest(host, tiny, engine) -> None:  # noqa: ANN001
    if engine == "wasmer":
        with pytest.raises(GuestError, match="cannot bound CPU time"):
            host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), time_limit=0.2)
        pytest.skip(
            "documented: the wasmer engine cannot bound CPU time (no fuel or interruption in its bindings)"
        )
    g = host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), time_limit=0.2)
    kv = g.call("kv_create", g.model_id(), 16)
    t0 = time.perf_counter()
    with pytest.raises(GuestLimitError, match="time limit of 0.2 s") as err:
        g.call("spin")
    assert err.value.limit == "time"
    assert time.perf_counter() - t0 < 1.0
    assert g.state.kv == {}  # released
    assert g.call("kv_free", kv) == abi.ERR_KV
    assert g.call("model_info", g.model_id(), 0, 48) == 48  # usable again


def test_fuel_limit(host, tiny, engine) -> None:  # noqa: ANN001
    if engine == "wasmer":
        pytest.skip("fuel is a wasmtime feature")
    g = host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), fuel=100_000)
    with pytest.raises(GuestLimitError, match="fuel") as err:
        g.call("spin")
    assert err.value.limit == "fuel"
    assert g.call("vocab_size", g.model_id()) > 0


def test_memory_cap_fails_the_grow_not_the_host(host, tiny, engine) -> None:  # noqa: ANN001
    g = host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), memory_limit=6 * PAGE)
    assert g.memory_pages == 4
    assert g.call("grow", 1) == 4
    assert g.call("grow", 2) == -1  # 7 pages > 6
    assert g.call("grow", 1) == 5
    assert g.call("grow", 1) == -1
    assert g.memory_pages == 6


def test_memory_cap_below_the_guests_minimum(host, tiny, engine) -> None:  # noqa: ANN001
    with pytest.raises(GuestLimitError, match="memory limit") as err:
        host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), memory_limit=3 * PAGE)
    assert err.value.limit == "memory"


def test_trap_releases_kv_and_resets(host, tiny, engine) -> None:  # noqa: ANN001
    g = host.guest(models=[tiny], engine=engine, wasm=wat("proxy"))
    g.write(1000, b"kept?")
    assert g.call("kv_create", g.model_id(), 16) == 1
    with pytest.raises(GuestError, match="trapped in crash"):
        g.call("crash")
    assert g.state.kv == {}
    assert g.read(1000, 5) == bytes(5)  # a fresh instance
    assert g.call("kv_create", g.model_id(), 16) == 2  # ids are never reused


def test_unknown_import_and_export(host, tiny, engine) -> None:  # noqa: ANN001
    import wasmtime

    bad = bytes(wasmtime.wat2wasm('(module (import "env" "realm_nope" (func (param i32) (result i32))))'))
    with pytest.raises(GuestError, match="realm_nope"):
        host.guest(models=[tiny], engine=engine, wasm=bad)
    wrong = bytes(wasmtime.wat2wasm('(module (import "env" "realm_emit" (func (param i64) (result i32))))'))
    with pytest.raises(GuestError, match="wrong signature"):
        host.guest(models=[tiny], engine=engine, wasm=wrong)
    g = host.guest(models=[tiny], engine=engine, wasm=wat("proxy"))
    with pytest.raises(GuestError, match="no function"):
        g.call("realm_nothing")
