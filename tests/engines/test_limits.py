"""Engine limits and failures: a guest over its budget gets an error naming the limit,
its KV rings are released, and the host (and the guest) stay usable."""

from __future__ import annotations

import ctypes
import gc
import threading
import time
import weakref

import pytest
from support.wasm_support import wat

from realm_ext import Host, abi
from realm_ext.engines import GuestError, GuestLimitError
from realm_ext.model import load_gguf

PAGE = 65536


@pytest.fixture(scope="module")
def tiny(model_path):
    return load_gguf(model_path("Q4_0"))


@pytest.fixture
def host(tiny):
    with Host(device="cpu") as h:
        h.load(tiny)
        yield h


def test_time_limit_stops_a_runaway_guest(host, tiny, engine) -> None:
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


def test_fuel_limit(host, tiny, engine) -> None:
    if engine == "wasmer":
        pytest.skip("fuel is a wasmtime feature")
    g = host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), fuel=100_000)
    with pytest.raises(GuestLimitError, match="fuel") as err:
        g.call("spin")
    assert err.value.limit == "fuel"
    assert g.call("vocab_size", g.model_id()) > 0


def test_memory_cap_fails_the_grow_not_the_host(host, tiny, engine) -> None:
    g = host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), memory_limit=6 * PAGE)
    assert g.memory_pages == 4
    assert g.call("grow", 1) == 4
    assert g.call("grow", 2) == -1  # 7 pages > 6
    assert g.call("grow", 1) == 5
    assert g.call("grow", 1) == -1
    assert g.memory_pages == 6


def test_memory_cap_below_the_guests_minimum(host, tiny, engine) -> None:
    with pytest.raises(GuestLimitError, match="memory limit") as err:
        host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), memory_limit=3 * PAGE)
    assert err.value.limit == "memory"


def test_trap_releases_kv_and_resets(host, tiny, engine) -> None:
    g = host.guest(models=[tiny], engine=engine, wasm=wat("proxy"))
    g.write(1000, b"kept?")
    assert g.call("kv_create", g.model_id(), 16) == 1
    with pytest.raises(GuestError, match="trapped in crash"):
        g.call("crash")
    assert g.state.kv == {}
    assert g.read(1000, 5) == bytes(5)  # a fresh instance
    assert g.call("kv_create", g.model_id(), 16) == 2  # ids are never reused


def test_unknown_import_and_export(host, tiny, engine) -> None:
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


# ---- a misbehaving guest inside realm_generate (tests/wat/rogue.wat) ----------------------


def test_runaway_inside_generate_is_stopped(host, tiny, engine) -> None:
    """The guest opens two KV rings, runs a forward pass, emits, then loops forever."""
    if engine == "wasmer":
        pytest.skip(
            "documented limitation (SECURITY.md): the wasmer engine cannot bound CPU time, and keeps the "
            "GIL while guest code runs, so a guest that loops forever freezes the process; use wasmtime "
            "for untrusted guests"
        )
    g = host.guest(models=[tiny], engine=engine, wasm=wat("rogue"), time_limit=0.5)
    pieces: list[str] = []
    t0 = time.perf_counter()
    with pytest.raises(GuestLimitError, match=r"time limit of 0.5 s in realm_generate") as err:
        g.generate_to("spin", pieces.append)
    elapsed = time.perf_counter() - t0
    assert err.value.limit == "time"
    assert elapsed < 1.0, elapsed
    assert pieces == ["rogue"]  # it was past its imports, inside realm_generate
    assert g.state.next_kv_id == 3 and g.state.kv == {}  # its two rings were made, then released
    assert g.generate_to("other", pieces.append) == 0  # a fresh instance, usable
    assert sorted(g.state.kv) == [3, 4]


def test_memory_grow_past_the_cap_inside_generate(host, tiny, engine) -> None:
    """Grows a page at a time until refused, then asks for 4 GiB and 0xFFFFFFFF pages:
    every grow past the cap fails in the guest (-1), the host is untouched."""
    g = host.guest(models=[tiny], engine=engine, wasm=wat("rogue"), memory_limit="8MiB")
    assert g.generate_to("grow", lambda s: True) == 128  # 8 MiB: and no more
    assert g.memory_pages == 128
    assert g.read(128 * PAGE - 1, 1) == b"Z"
    assert g.call("realm_alloc", 16) > 0  # still running


def test_trap_mid_generation_releases_rings_and_spares_a_neighbour(host, tiny, engine) -> None:
    """A guest that traps in realm_generate holding two 4 MiB KV rings: the rings are
    freed (host memory back to its baseline within 1 MiB after gc, three times over),
    while a second guest, generating in another thread across the traps, produces
    exactly the tokens it produces alone."""
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    params = abi.GenerateParams(max_tokens=24, temperature=0.9, top_k=40, top_p=0.95, seed=11, n_ctx=64)
    prompt = "Once upon a time there was"
    with host.guest(models=[tiny], engine=engine) as alone:
        want: list[str] = []
        want_n = alone.generate_to(prompt, want.append, params=params)
    assert want_n == 24 and len(want) >= 8

    rogue = host.guest(models=[tiny], engine=engine, wasm=wat("rogue"))
    neighbour = host.guest(models=[tiny], engine=engine)
    assert neighbour.generate_to(prompt, lambda s: True, params=params) == want_n  # warm: its memory grown

    def trap_round() -> tuple[int, list]:
        """Run the rogue once: at its emit, fill its rings (so their pages are resident)
        and note the RSS; it then traps."""
        seen: dict = {}

        def on_emit(piece: str) -> bool:
            arrays = [a for e in rogue.state.kv.values() for a in (e.ring.k.base, e.ring.v.base)]
            for a in arrays:
                a.fill(1.0)
            seen["refs"] = [weakref.ref(a) for a in arrays]
            seen["bytes"] = sum(a.nbytes for a in arrays)
            seen["rss"] = proc.memory_info().rss
            return True

        with pytest.raises(GuestError, match="trapped in realm_generate"):
            rogue.generate_to("trap", on_emit)
        assert rogue.state.kv == {}
        return seen["rss"], seen["refs"], seen["bytes"]

    def rss_after_gc() -> int:
        """RSS once garbage is collected and the C allocator has handed free pages back."""
        gc.collect()
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
        return proc.memory_info().rss

    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt"):
        # glibc raises its mmap threshold after the first big free, so later rings would
        # come from (and go back to) a thread's heap, whose top it never returns to the OS:
        # RSS, not a leak. A fixed threshold maps every big block and unmaps it on free.
        assert libc.mallopt(-3, 2**20) == 1  # M_MMAP_THRESHOLD: blocks of 1 MiB and more
    trap_round()  # warm: the model's attention scratch grows once for a 4096-position ring
    baseline = rss_after_gc()

    started, trapped = threading.Event(), threading.Event()
    got: list[str] = []
    result: dict = {}

    def on_piece(piece: str) -> bool:
        got.append(piece)
        if len(got) == 1:
            started.set()
        if len(got) == 3:  # hold here, mid-generation, until the rogue has trapped
            assert trapped.wait(60)
        return True

    def run_neighbour() -> None:
        try:
            result["n"] = neighbour.generate_to(prompt, on_piece, params=params)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=run_neighbour)
    thread.start()
    try:
        assert started.wait(60)
        for _ in range(3):
            rss_mid, refs, nbytes = trap_round()
            assert nbytes == 2 * 4 * 2**20  # two rings of 4 MiB, K and V
            assert rss_mid - baseline > nbytes * 3 // 4  # the measure sees them
            gc.collect()
            assert all(r() is None for r in refs)  # the ring storage is gone
            assert rss_after_gc() - baseline < 2**20
    finally:
        trapped.set()
        thread.join(60)
    assert "error" not in result, result.get("error")
    assert len(got) > 3  # it was still generating while the rogue trapped
    assert (result["n"], got) == (want_n, want)
    assert rss_after_gc() - baseline < 2**20


# ---- what a module can ask for at instantiation, and outside its linear memory ------------


def test_runaway_start_function_is_stopped(host, tiny, engine) -> None:
    """Regression: the start function ran inside instantiation with no deadline, so a
    guest whose start function loops hung Host.guest (even with a time limit)."""
    import wasmtime

    spin = bytes(
        wasmtime.wat2wasm(
            '(module (import "env" "memory" (memory 1)) (func $s (loop $l (br $l))) (start $s))'
        )
    )
    if engine == "wasmer":
        pytest.skip("documented limitation (SECURITY.md): the wasmer engine cannot bound CPU time")
    t0 = time.perf_counter()
    with pytest.raises(GuestLimitError, match="time limit of 0.2 s in its start function") as err:
        host.guest(models=[tiny], engine=engine, wasm=spin, time_limit=0.2)
    assert err.value.limit == "time" and time.perf_counter() - t0 < 1.0
    with pytest.raises(GuestLimitError, match="fuel"):
        host.guest(models=[tiny], engine=engine, wasm=spin, fuel=10_000)
    trap = bytes(
        wasmtime.wat2wasm('(module (import "env" "memory" (memory 1)) (func $t unreachable) (start $t))')
    )
    with pytest.raises(GuestError, match="trapped in its start function"):
        host.guest(models=[tiny], engine=engine, wasm=trap)


def test_tables_and_memories_are_capped(host, tiny, engine) -> None:
    """Regression: tables live in host memory outside the linear-memory cap, and were
    not capped: a ten-line guest could table.grow the host by gigabytes (100M elements
    took 770 MiB of RSS), and a guest could define memories of its own besides the
    imported one, each as large as the cap. Now at most 8 tables of 65536 elements, and
    one memory in all."""
    import wasmtime

    if engine == "wasmer":
        pytest.skip(
            "documented limitation (SECURITY.md): wasmer's Python bindings have no store limits, so its "
            "tables are not capped"
        )
    from realm_ext.engines.wasmtime_engine import MAX_TABLE_ELEMENTS, MAX_TABLES

    def module(body: str) -> bytes:
        return bytes(wasmtime.wat2wasm(f'(module (import "env" "memory" (memory 1)) {body})'))

    grow = module(
        "(table $t 0 funcref)"
        '(func (export "grow") (param i32) (result i32) (table.grow $t (ref.null func) (local.get 0)))'
    )
    g = host.guest(models=[tiny], engine=engine, wasm=grow)
    assert g.call("grow", 100_000_000) == -1  # refused, nothing allocated
    assert g.call("grow", 2**31) == -1
    assert g.call("grow", MAX_TABLE_ELEMENTS) == 0  # up to the cap: fine
    assert g.call("grow", 1) == -1
    with pytest.raises(GuestError, match="table"):
        host.guest(models=[tiny], engine=engine, wasm=module(f"(table {MAX_TABLE_ELEMENTS + 1} funcref)"))
    tables = "".join(f"(table {i} funcref)" for i in range(MAX_TABLES + 1))
    with pytest.raises(GuestError, match="table"):
        host.guest(models=[tiny], engine=engine, wasm=module(tables))
    # one memory in all: a guest that imports env.memory may not define another
    with pytest.raises(GuestError, match="memor"):
        host.guest(models=[tiny], engine=engine, wasm=module("(memory 1)"))
    own = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1) (memory 1))'))
    with pytest.raises(GuestError, match="memor"):
        host.guest(models=[tiny], engine=engine, wasm=own)
    exported = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 2))'))
    assert host.guest(models=[tiny], engine=engine, wasm=exported).memory_pages == 2  # its one memory: fine


def test_limits_out_of_range_are_refused_up_front(host, tiny) -> None:
    with pytest.raises(ValueError, match="over 4 GiB"):
        host.guest(models=[tiny], memory_limit="5GiB")
    with pytest.raises(ValueError, match="time limit 0 s must be positive"):
        host.guest(models=[tiny], time_limit=0)
    with pytest.raises(ValueError, match="fuel 0 must be positive"):
        host.guest(models=[tiny], fuel=0)
    with pytest.raises(ValueError, match="n_threads must be 1..1024"):
        Host(device="cpu", n_threads=100_000)
