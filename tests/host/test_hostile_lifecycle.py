"""Hostile guests against the host's lifecycle: imports called from a start function
(first instance and after a reset), a reset that fails, a consumer that reads slowly,
and one long call next to a neighbour's decode steps.

The start-function and reset cases run in a subprocess each, so a regression (the host
process dying in wasmtime or in the C imports) shows as a failed test, not a dead run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
from support.wasm_support import require_engine, wat

from realm_ext import Host, abi
from realm_ext.engines.base import GuestLimitError
from realm_ext.host import KV_RING_OVERHEAD, MAX_KV_RINGS
from realm_ext.stream import MAX_BYTES

PAGE = 65536
CONFIGS = [("wasmtime", True), ("wasmtime", False), ("wasmer", False)]
CONFIG_IDS = ["wasmtime-native", "wasmtime-python", "wasmer"]

# A guest whose start function opens a KV ring (ids count up across the guest's
# instances: 1 on the first, 2 after the first reset), stores its id at 0, then calls
# two imports that touch memory, storing their results at 4 and 8. It traps in its start
# function once the ring id passes TRAP_AFTER; its export `trap` always traps.
START_WAT = """
(module
  (import "env" "realm_kv_create" (func $kv (param i32 i32) (result i64)))
  (import "env" "realm_forward_embedding" (func $emb (param i32 i32 i32 i32) (result i32)))
  (import "env" "realm_log" (func $log (param i32 i32 i32) (result i32)))
  MEMORY
  (data (i32.const 16) "boot")
  (func $start (local $kv i32)
    (local.set $kv (i32.wrap_i64 (call $kv (i32.const 1) (i32.const 4))))
    (i32.store (i32.const 0) (local.get $kv))
    (i32.store (i32.const 4) (call $emb (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 1024)))
    (i32.store (i32.const 8) (call $log (i32.const 1) (i32.const 16) (i32.const 4)))
    (if (i32.gt_s (local.get $kv) (i32.const TRAP_AFTER)) (then unreachable)))
  (start $start)
  (func (export "embed") (result i32)
    (call $emb (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 1024)))
  (func (export "trap") unreachable))
"""

CHILD = """
import json, sys
import numpy as np
from realm_ext import Host
from realm_ext.engines.base import GuestError

model_path, engine, native, trap_after = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
if engine == "wasmtime":
    import wasmtime
    memory, wat2wasm = '(memory (export "memory") 2)', wasmtime.wat2wasm
else:
    import wasmer
    memory, wat2wasm = '(import "env" "memory" (memory 2))', wasmer.wat2wasm
wasm = bytes(wat2wasm(sys.stdin.read().replace("MEMORY", memory).replace("TRAP_AFTER", trap_after)))
report = {}
with Host(device="cpu") as host:
    model = host.load(model_path)
    g = host.guest(models=[model], engine=engine, wasm=wasm, native_imports=native)
    report["native"] = g.state.native is not None
    report["first"] = np.frombuffer(g.read(0, 12), "<i4").tolist()
    report["first_error"] = g.state.last_error.decode()
    report["embed"] = g.call("embed")
    try:
        g.call("trap")
    except GuestError as e:
        report["trap"] = str(e)
    try:
        report["second"] = np.frombuffer(g.read(0, 12), "<i4").tolist()
        report["embed_after"] = g.call("embed")
    except GuestError as e:  # the restart failed: every later use says so
        later = {}
        for name, use in [
            ("memory_pages", lambda: g.memory_pages), ("read", lambda: g.read(0, 4)),
            ("write", lambda: g.write(0, b"x")), ("memory", g.memory), ("call", lambda: g.call("embed")),
        ]:
            try:
                use()
                later[name] = "no error"
            except GuestError as e:
                later[name] = str(e)
        report["closed"] = later
print(json.dumps(report))
"""


def run_child(model: str, engine: str, native: bool, trap_after: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, model, engine, "1" if native else "0", str(trap_after)],
        input=START_WAT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"the host process died (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


NOT_SET_UP = "not set up yet"


@pytest.mark.parametrize(("engine_name", "native"), CONFIGS, ids=CONFIG_IDS)
def test_start_function_imports_before_and_after_a_reset(model_path, engine_name, native) -> None:
    require_engine(engine_name)
    r = run_child(str(model_path("Q8_0")), engine_name, native, trap_after=100)
    assert r["native"] == (native and engine_name == "wasmtime")
    # the start function ran: its ring was made; the imports touching memory were refused
    assert r["first"] == [1, -1, -1]
    assert NOT_SET_UP in r["first_error"] and r["first_error"].startswith("realm_log: ")
    assert r["embed"] == 0  # once made, the instance is served
    assert "trapped in trap" in r["trap"] and "restart" not in r["trap"]
    # the fresh instance's start function met the same no-instance state, not the old memory
    assert r["second"] == [2, -1, -1]
    assert r["embed_after"] == 0


@pytest.mark.parametrize(("engine_name", "native"), CONFIGS, ids=CONFIG_IDS)
def test_a_failed_reset_leaves_a_closed_guest(model_path, engine_name, native) -> None:
    require_engine(engine_name)
    r = run_child(str(model_path("Q8_0")), engine_name, native, trap_after=1)
    assert r["first"] == [1, -1, -1] and r["embed"] == 0
    # the error raised is the original trap, and it says the restart failed
    assert r["trap"].startswith("the guest trapped in trap")
    original, restart = r["trap"].split("; the guest could not be restarted (")
    assert "trapped in trap" in original and "start" in restart, r["trap"]
    assert set(r["closed"]) == {"memory_pages", "read", "write", "memory", "call"}
    for name, message in r["closed"].items():
        assert message.startswith("the guest is closed: its restart after an error failed"), (name, message)


# ---- a consumer that reads slowly ------------------------------------------------------


def test_a_slow_consumer_holds_the_guest_in_realm_emit(model_path, engine) -> None:
    piece = sys.getsizeof("\0" * 65536)  # what one of emitter.wat's pieces holds in the host
    fits = MAX_BYTES // piece + 1  # pieces the stream holds at most
    with Host(device="cpu") as host:
        model = host.load(model_path("Q8_0"))
        with host.guest(models=[model], engine=engine, wasm=wat("emitter")) as g:
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                pieces = g.generate("flood")
                taken = 0
                for _ in range(4):
                    assert next(pieces) == "\0" * 65536
                    taken += 1
                    time.sleep(0.25)
                emitted = g.state.calls  # realm_emit is the emitter's only import
                held = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
            pieces.close()  # the guest stops at its next realm_emit
            # every emit but the refused last one counted (the guest returns its count)
            assert g.last_stats is not None and g.last_stats.tokens == g.state.calls - 1
    # Unbounded, the guest emits ~4,000 pieces (250 MiB) a second here. Bounded, it got
    # one stream's worth ahead of the consumer, plus the batch the consumer holds.
    assert emitted <= taken + 2 * fits, emitted
    assert held < 2 * MAX_BYTES + 4 * piece + (1 << 20), held


def test_a_consumer_slower_than_the_time_limit_gets_the_limit(model_path) -> None:
    with Host(device="cpu") as host:
        model = host.load(model_path("Q8_0"))
        with host.guest(models=[model], engine="wasmtime", wasm=wat("emitter"), time_limit=0.5) as g:
            pieces = g.generate("flood")
            next(pieces)
            time.sleep(1.0)  # the guest waits in realm_emit, then its time is up
            with pytest.raises(GuestLimitError, match="did not take the guest's output in its time limit"):
                for _ in pieces:
                    pass
            assert g.call("realm_alloc", 8) > 0  # the guest itself is fine


# ---- one long call next to a neighbour -----------------------------------------------------

LONG = 2048  # tokens of the hostile batch (small preset)


def chunk_plan(rt, ring, n_tokens: int, n_layers: int) -> tuple[list[int], int]:
    """The token-chunk boundaries and the lock grants of a call of n_tokens from
    position 0, by the runtime's chunk rule."""
    bounds, grants, t0 = [], 0, 0
    while t0 < n_tokens:
        tokens, layers = rt.chunk_shape(ring, t0, n_tokens - t0, n_layers)
        grants += -(-n_layers // layers)
        t0 += tokens
        bounds.append(t0)
    return bounds, grants


def start_long_call(host, model, engine_name: str, native: bool, time_limit: float | None = None):
    """A proxy guest with a LONG-token batch in its memory, its call to every layer
    running in a thread; returns (guest, kv id, thread, result list)."""
    c = model.config
    g = host.guest(models=[model], engine=engine_name, wasm=wat("proxy"), native_imports=native,
                   memory_limit="64MiB", time_limit=time_limit)  # fmt: skip
    need = (LONG * c.n_embd * 4 + 0x10000) // PAGE + 1
    assert g.call("grow", need) > 0
    mid = g.model_id()
    kv = g.call("kv_create", mid, LONG)
    g.write(0x10000, np.random.default_rng(0).standard_normal((LONG, c.n_embd)).astype(np.float32) * 0.1)
    result: list = []
    args = (mid, 0, c.n_layer, 0x10000, LONG * c.n_embd, 0, kv, 0x10000)
    thread = threading.Thread(target=lambda: result.append(g.call("layers", *args)))
    rt = host.backend.prepare(model)
    before = rt.lock_grants
    thread.start()
    while rt.lock_grants < before + 2 and thread.is_alive():  # its chunks have begun
        time.sleep(0.001)
    return g, kv, thread, result


@pytest.mark.parametrize(("engine_name", "native"), CONFIGS, ids=CONFIG_IDS)
def test_a_neighbours_step_waits_one_chunk_of_a_long_call(model_path, engine_name, native) -> None:
    require_engine(engine_name)
    with Host(device="cpu") as host:
        model = host.load(model_path("Q8_0", preset="small"))
        c = model.config
        neighbour = host.guest(models=[model], engine=engine_name, wasm=wat("proxy"), native_imports=native)
        nid = neighbour.model_id()
        nkv = neighbour.call("kv_create", nid, 16)
        neighbour.write(0, np.zeros(c.n_embd, np.float32))
        hostile, kv, thread, result = start_long_call(host, model, engine_name, native)
        steps = []
        for pos in range(3):  # three decode steps while the long call runs
            assert neighbour.call("layers", nid, 0, c.n_layer, 0, c.n_embd, pos, nkv, 0) == 0
            steps.append(neighbour.state.control.chunks)
        thread.join()
        assert result == [0]
        long_call = hostile.state.control.chunks
        bounds, grants = chunk_plan(host.backend.prepare(model), hostile.state.kv[kv].ring, LONG, c.n_layer)
    # The long call ran in the chunks of its plan (64 tokens, fewer as its window grows;
    # one layer each) where it was alone, and in shorter chunks through every layer in
    # the steps it shared with a neighbour step (each of those can shift the plan's chunk
    # bounds by one grant, so at least the plan's grants less one per neighbour step); each
    # neighbour step (1 token, every layer) took one step, waited behind at most one
    # step of the long call, and ran in the middle of it.
    assert long_call["grants"] >= grants - len(steps) and grants > 4 * c.n_layer and bounds[0] == 64, (
        long_call,
        bounds,
    )
    for step in steps:
        assert step["grants"] == 1 and step["max_ahead"] <= 1, step
    assert long_call["first"] < steps[0]["first"], (steps, long_call)
    assert steps[-1]["last"] < long_call["last"], (steps, long_call)


@pytest.mark.parametrize(("engine_name", "native"), CONFIGS, ids=CONFIG_IDS)
def test_a_long_call_stops_between_chunks_when_cancelled(model_path, engine_name, native) -> None:
    require_engine(engine_name)
    with Host(device="cpu") as host:
        model = host.load(model_path("Q8_0", preset="small"))
        c = model.config
        g, kv, thread, result = start_long_call(host, model, engine_name, native)
        g.cancel()
        thread.join()
        assert result == [abi.ERR_CANCELLED]
        message = g.state.last_error.decode()
        done = int(message.split("stopped after ")[1].split(" of ")[0])
        assert message.endswith(f"of {LONG} tokens: it was cancelled"), message
        # the ring holds exactly the whole chunks every layer finished, and goes on from there
        bounds, _ = chunk_plan(host.backend.prepare(model), g.state.kv[kv].ring, LONG, c.n_layer)
        assert 0 < done < LONG and done in bounds, (done, bounds)
        assert list(g.state.kv[kv].ring.n_pos) == [done] * c.n_layer
        assert g.call("layers", g.model_id(), 0, c.n_layer, 0x10000, c.n_embd, done, kv, 0x10000) == 0


def test_a_long_call_stops_at_the_time_limit(model_path) -> None:
    with Host(device="cpu") as host:
        model = host.load(model_path("Q8_0", preset="small"))
        g, kv, thread, result = start_long_call(host, model, "wasmtime", True, time_limit=0.05)
        thread.join()
        # the import returned -8 at the first chunk past the deadline (the proxy returns it)
        assert result == [abi.ERR_CANCELLED]
        assert g.state.last_error.decode().endswith("tokens: its time limit passed")


# ---- what a guest can pin ------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_rings_host_bookkeeping_fits_its_allowance(model_path, native) -> None:
    with Host(device="cpu") as host:
        model = host.load(model_path("Q8_0"))
        c = model.config
        g = host.guest(models=[model], engine="wasmtime", wasm=wat("proxy"), native_imports=native)
        mid, n = g.model_id(), 200
        for _ in range(2):  # the tables' first growth is not per ring
            g.call("kv_free", g.call("kv_create", mid, 1))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                assert g.call("kv_create", mid, 1) > 0
            traced = (tracemalloc.get_traced_memory()[0] - before) / n
        finally:
            tracemalloc.stop()
        storage = 2 * 2 * c.n_layer * c.n_head_kv * c.head_dim  # one position of K and V (numpy: traced)
        c_struct = 64 + 2 * 8 * c.n_layer + 3 * 16  # realm_kv_create's mallocs (untraced) and headers
        per_ring = traced - storage + c_struct
        print(f"host bookkeeping per KV ring ({'C' if native else 'Python'} imports): {per_ring:.0f} bytes")
        assert 0 < per_ring <= KV_RING_OVERHEAD
        # the count is capped too (the C path looks a ring up by a scan)
        while len(g.state.kv) < MAX_KV_RINGS:
            assert g.call("kv_create", mid, 1) > 0
        assert g.call("kv_create", mid, 1) == abi.ERR_NOMEM
        assert f"holds {MAX_KV_RINGS} KV rings" in g.state.last_error.decode()


def test_the_attention_scratch_shrinks_when_a_large_ring_closes(model_path) -> None:
    with Host(device="cpu") as host:
        model = host.load(model_path("Q8_0"))
        rt = host.backend.prepare(model)
        g = host.guest(models=[model], engine="wasmtime", wasm=wat("proxy"), kv_limit="1GiB")
        mid = g.model_id()
        small = g.call("kv_create", mid, 64)
        base = rt.scratch_bytes
        n_ctx = 1 << 18  # its attention scratch: 2 MiB a thread
        big = g.call("kv_create", mid, n_ctx)
        assert big > 0, g.state.last_error
        assert rt.scratch_bytes - base >= rt.attention_scratch_bytes(n_ctx, host.backend.n_threads) // 2
        # the guest is charged for what its ring makes the model keep
        assert g.state.kv[big].nbytes == host.backend.kv_bytes(model, n_ctx) + KV_RING_OVERHEAD
        assert g.call("kv_free", big) == 0
        assert rt.scratch_bytes == base
        # and the remaining ring still runs (its scratch was kept)
        c = model.config
        g.write(0, np.zeros(c.n_embd, np.float32))
        assert g.call("layers", mid, 0, c.n_layer, 0, c.n_embd, 0, small, 0) == 0
