"""Neighbour latency: one guest's decode step while another guest sends long batches.

    python -m benchmarks.neighbour [--preset small] [--type Q8_0] [--batch 4096] [--steps 60] [--json OUT]

Two guests share one model (wasmtime, CPU backend, C imports: the default set-up). The
neighbour runs decode steps (one token through every layer and the LM head) and times
each; first alone, then while a hostile guest, in another thread, sends batches of
`--batch` tokens through every layer, one call each, over and over. Reported: the
neighbour's step latency p50/p99 alone and beside the batches (and their ratio), the
hostile calls' duration, and how many chunks each took (the host runs a long call in
chunks and lets other guests' steps in between: csrc/cpu/llama_steps.h).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_facts
from realm_ext import Host
from realm_ext.model_maker import make_model

WAT = """
(module
  (import "env" "memory" (memory 2))
  (import "env" "realm_forward_layers"
    (func $layers (param i32 i32 i32 i32 i32 i32 i64 i32) (result i32)))
  (import "env" "realm_forward_lm_head" (func $lm_head (param i32 i32 i32 i32) (result i32)))
  (import "env" "realm_kv_truncate" (func $truncate (param i64 i32) (result i32)))
  (import "env" "realm_kv_create" (func $kv_create (param i32 i32) (result i64)))
  (import "env" "realm_kv_free" (func $kv_free (param i64) (result i32)))
  (func (export "kv_create") (param i32 i32) (result i64) (call $kv_create (local.get 0) (local.get 1)))
  (func (export "kv_free") (param i64) (result i32) (call $kv_free (local.get 0)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  ;; a decode step: the hidden state at 0 through every layer at pos, then the LM head
  (func (export "step") (param $model i32) (param $n_layer i32) (param $n_embd i32) (param $pos i32)
      (param $kv i64) (result i32)
    (local $r i32)
    (local.set $r (call $layers (local.get $model) (i32.const 0) (local.get $n_layer) (i32.const 0)
      (local.get $n_embd) (local.get $pos) (local.get $kv) (i32.const 0)))
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (local.get $r))))
    (call $lm_head (local.get $model) (i32.const 0) (local.get $n_embd) (i32.const 0x10000)))
  ;; a batch (len floats at 0x100000) through every layer from position 0, then forgotten
  (func (export "batch") (param $model i32) (param $n_layer i32) (param $len i32) (param $kv i64)
      (result i32)
    (local $r i32)
    (local.set $r (call $layers (local.get $model) (i32.const 0) (local.get $n_layer) (i32.const 0x100000)
      (local.get $len) (i32.const 0) (local.get $kv) (i32.const 0x100000)))
    (drop (call $truncate (local.get $kv) (i32.const 0)))
    (local.get $r)))
"""


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def run(preset: str, type_: str, batch: int, steps: int, threads: int | None) -> dict:
    import wasmtime

    wasm = bytes(wasmtime.wat2wasm(WAT))
    with tempfile.TemporaryDirectory() as tmp:
        path = make_model(Path(tmp) / "m.gguf", preset, type_)
        with Host(device="cpu", n_threads=threads) as host:
            model = host.load(path)
            c = model.config
            rt = host.backend.prepare(model)
            rng = np.random.default_rng(0)

            neighbour = host.guest(models=[model], wasm=wasm)
            nid = neighbour.model_id()
            neighbour.write(0, rng.standard_normal(c.n_embd).astype(np.float32) * 0.1)

            def decode(n: int) -> list[float]:
                kv = neighbour.call("kv_create", nid, n)
                out = []
                for pos in range(n):
                    t0 = time.perf_counter()
                    rc = neighbour.call("step", nid, c.n_layer, c.n_embd, pos, kv)
                    out.append((time.perf_counter() - t0) * 1e3)
                    assert rc == 0, (rc, neighbour.state.last_error)
                neighbour.call("kv_free", kv)
                return out

            decode(4)  # warm
            alone = decode(steps)

            hostile = host.guest(models=[model], wasm=wasm)
            hid = hostile.model_id()
            assert hostile.call("grow", (0x100000 + batch * c.n_embd * 4) // 65536) > 0
            hostile.write(0x100000, rng.standard_normal((batch, c.n_embd)).astype(np.float32) * 0.1)
            hkv = hostile.call("kv_create", hid, batch)
            stop, calls = threading.Event(), []

            def flood() -> None:
                while not stop.is_set():
                    g0 = rt.lock_grants if hasattr(rt, "lock_grants") else 0
                    t0 = time.perf_counter()
                    rc = hostile.call("batch", hid, c.n_layer, batch * c.n_embd, hkv)
                    grants = (rt.lock_grants - g0) if hasattr(rt, "lock_grants") else 1
                    calls.append(((time.perf_counter() - t0) * 1e3, grants, rc))

            thread = threading.Thread(target=flood)
            thread.start()
            while not calls and thread.is_alive():  # steady state: one batch done
                time.sleep(0.01)
            beside = decode(steps)
            stop.set()
            thread.join()
    ms = [m for m, _, _ in calls]
    return {
        "machine": machine_facts(),
        "preset": preset,
        "type": type_,
        "batch_tokens": batch,
        "steps": steps,
        "alone": percentiles(alone),
        "beside_batches": percentiles(beside),
        "p99_ratio": percentiles(beside)["p99_ms"] / percentiles(alone)["p99_ms"],
        "batch_calls": len(calls),
        "batch_ms_median": float(np.median(ms)),
        "batch_rcs": sorted({rc for _, _, rc in calls}),
        # lock grants per batch call (the neighbour's own steps counted in too)
        "batch_lock_grants_median": float(np.median([g for _, g, _ in calls])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--type", default="Q8_0")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    r = run(a.preset, a.type, a.batch, a.steps, a.threads)
    print(
        f"{a.preset} {a.type}, hostile batches of {a.batch} tokens ({r['batch_calls']} calls, median "
        f"{r['batch_ms_median']:.0f} ms, {r['batch_lock_grants_median']:.0f} lock grants each)"
    )
    for name in ("alone", "beside_batches"):
        p = r[name]
        print(f"  neighbour step {name:15s} p50 {p['p50_ms']:8.2f} ms   p99 {p['p99_ms']:8.2f} ms")
    print(f"  p99 beside / alone: {r['p99_ratio']:.1f}x")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
