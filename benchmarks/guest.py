"""Guest/ABI benchmark: what running through a WebAssembly guest costs.

    python -m benchmarks.guest [--quick] [--engines wasmtime,wasmer] [--json OUT]

1. µs per host call, per engine: a guest loop calling a cheap Python import
   (realm_last_error with an empty buffer) many times, so only the crossing is timed;
   and the cost a native (C) import adds: a loop of 1-token realm_forward_embedding
   calls against the same embedding called directly (wasmtime + CPU backend only).
2. greedy decode tok/s through the shipped guest (realm_generate streaming through
   realm_emit) against the CPU backend driven directly from Python doing the same steps
   (embedding, all layers, LM head, argmax) in the same run, on the tiny and small
   presets; the ratio guest / direct is the ABI's cost, and its share of decode time.
3. guest memory: pages after a run and the guest allocator's bytes in use, on the
   presets above and on a TinyLlama-shaped model cut to one layer (vocabulary 32000,
   n_embd 2048: what sizes the guest's tables and buffers), against the size of the
   tokenizer blob it builds its tables from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_facts
from realm_ext import Host
from realm_ext.abi import vocab_blob
from realm_ext.engines import available
from realm_ext.model import Model
from realm_ext.model_maker import PRESETS, make_model

CALL_LOOP_WAT = """
(module
  (import "env" "memory" (memory 4))
  (import "env" "realm_last_error" (func $last_error (param i32 i32) (result i32)))
  (import "env" "realm_forward_embedding" (func $embedding (param i32 i32 i32 i32) (result i32)))
  (func (export "loop") (param $n i32)
    (loop $again
      (drop (call $last_error (i32.const 0) (i32.const 0)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $again (i32.gt_s (local.get $n) (i32.const 0)))))
  ;; n embeddings of the token id at address 0 into address 4096
  (func (export "embed") (param $n i32) (param $model i32)
    (loop $again
      (drop (call $embedding (local.get $model) (i32.const 0) (i32.const 1) (i32.const 4096)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $again (i32.gt_s (local.get $n) (i32.const 0))))))
"""

PROMPT = "Once upon a time the king"


def host_call_us(host: Host, model: Model, engine: str, n: int, repeat: int) -> dict[str, float]:
    """Median µs per crossing into a Python import, and (wasmtime) the µs a native
    import adds over calling the same kernel directly."""
    import wasmtime

    wasm = bytes(wasmtime.wat2wasm(CALL_LOOP_WAT))
    out: dict[str, float] = {}
    with host.guest(models=[model], engine=engine, wasm=wasm) as g:
        g.write(0, np.array([5], "<u4"))
        g.call("loop", 10)
        loop = [_per_call(lambda: g.call("loop", n), n) for _ in range(repeat)]
        out["python_import_us"] = statistics.median(loop)
        if g.state.native is not None:
            mid = g.model_id()
            x = np.empty((1, model.config.n_embd), np.float32)
            ids = np.array([5], np.int32)

            def direct() -> None:
                for _ in range(n):
                    host.backend.forward_embedding(model, ids, x)

            embed = lambda: g.call("embed", n, mid)  # noqa: E731
            extra = [_per_call(embed, n) - _per_call(direct, n) for _ in range(repeat)]
            out["native_import_extra_us"] = statistics.median(extra)
    return out


def _per_call(f, n: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) / n * 1e6


def direct_decode_s(host: Host, model: Model, ids: list[int], steps: int) -> float:
    """Seconds per greedy decode step with the backend driven from Python."""
    be, c = host.backend, model.config
    kv = be.new_kv(model, len(ids) + steps + 1)
    x = np.empty((len(ids), c.n_embd), np.float32)
    logits = np.empty((1, c.n_vocab), np.float32)
    be.forward_embedding(model, np.array(ids, np.int32), x)
    be.forward_layers(model, 0, c.n_layer, x, 0, kv, x)
    be.forward_lm_head(model, x[-1:], logits)
    x1, tok = x[:1], np.empty(1, np.int32)
    t0 = time.perf_counter()
    for pos in range(len(ids), len(ids) + steps):
        tok[0] = int(np.argmax(logits[0]))
        be.forward_embedding(model, tok, x1)
        be.forward_layers(model, 0, c.n_layer, x1, pos, kv, x1)
        be.forward_lm_head(model, x1, logits)
    return (time.perf_counter() - t0) / steps


def guest_decode_s(host: Host, model: Model, engine: str, steps: int) -> tuple[float, dict]:
    """Seconds per greedy decode step through the guest (prefill timed apart)."""
    with host.guest(models=[model], engine=engine) as g:
        kw = dict(temperature=0.0, stop_at_eos=False, n_ctx=len(PROMPT) + steps + 8)
        list(g.generate(PROMPT, max_tokens=1, **kw))  # warm up: the guest builds its tokenizer
        list(g.generate(PROMPT, max_tokens=1, **kw))  # the prefill alone, warm like the run below
        t_prefill = g.last_stats.seconds
        list(g.generate(PROMPT, max_tokens=steps + 1, **kw))
        s = g.last_stats
        per_step = (s.seconds - t_prefill) / steps
        return per_step, {
            "memory_pages": s.memory_pages,
            "heap_bytes": s.heap_bytes,
            "host_calls": s.host_calls,
        }


def tinyllama_memory(host: Host, tmp: Path, engine: str) -> dict:
    cfg = dataclasses.replace(PRESETS["tinyllama"].config, n_layer=1)
    model = host.load(make_model(tmp / "tinyllama-1layer.gguf", cfg, "Q4_K_M", random_blocks=True))
    with host.guest(models=[model], engine=engine) as g:
        list(g.generate(PROMPT, max_tokens=32, temperature=0.8, seed=1))
        s = g.last_stats
    blob = len(vocab_blob(model))
    pages, heap = s.memory_pages, s.heap_bytes
    return {"engine": engine, "memory_pages": pages, "heap_bytes": heap, "vocab_blob_bytes": blob}


def run(quick: bool, engines: list[str], threads: int | None, repeat: int | None = None) -> dict:
    """Every part above on each of `engines`; `repeat` runs per figure (median; default
    3 with `quick`, else 5)."""
    steps = 128  # a tiny-preset step is ~0.3 ms: fewer steps drown in scheduling noise
    repeat = repeat or (3 if quick else 5)
    out: dict = {
        "steps": steps,
        "repeat": repeat,
        "host_call_us": {},
        "decode": [],
    }
    with tempfile.TemporaryDirectory() as tmp, Host(device="cpu", n_threads=threads) as host:
        for engine in engines:
            tiny = host.load(make_model(Path(tmp) / "tiny.gguf", "tiny", "Q4_K_M"))
            cost = host_call_us(host, tiny, engine, 20000 if quick else 100000, repeat)
            out["host_call_us"][engine] = cost
            print(f"{engine}: " + ", ".join(f"{k} {v:.2f}" for k, v in cost.items()))
        for preset in ("tiny", "small"):
            model = host.load(make_model(Path(tmp) / f"{preset}.gguf", preset, "Q4_K_M"))
            with host.guest(models=[model]) as g:
                ids = [model.tokenizer.bos_id] + g.tokenize(PROMPT)
            for engine in engines:
                direct, guest = [], []
                for _ in range(repeat):  # interleaved, so drift hits both alike
                    direct.append(direct_decode_s(host, model, ids, steps))
                    g_s, mem = guest_decode_s(host, model, engine, steps)
                    guest.append(g_s)
                d, gs = statistics.median(direct), statistics.median(guest)
                row = {
                    "preset": preset,
                    "engine": engine,
                    "direct_tok_s": 1 / d,
                    "guest_tok_s": 1 / gs,
                    "ratio": d / gs,
                    "abi_share": max(0.0, (gs - d) / gs),
                    **mem,
                }
                out["decode"].append(row)
                print(
                    f"{preset:5s} {engine:8s} decode: direct {1 / d:8.1f} tok/s, guest {1 / gs:8.1f} tok/s, "
                    f"ratio {d / gs:.3f} (ABI share {row['abi_share']:.1%}); guest memory "
                    f"{mem['memory_pages']} pages, heap {mem['heap_bytes'] / 2**20:.2f} MiB"
                )
        out["tinyllama_memory"] = [tinyllama_memory(host, Path(tmp), e) for e in engines]
        for m in out["tinyllama_memory"]:
            print(
                f"tinyllama-shaped ({m['engine']}): guest memory {m['memory_pages']} pages "
                f"({m['memory_pages'] / 16:.2f} MiB), heap {m['heap_bytes'] / 2**20:.2f} MiB, "
                f"tokenizer blob {m['vocab_blob_bytes'] / 2**20:.2f} MiB"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engines", default=",".join(e for e in ("wasmtime", "wasmer") if available(e)))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.quick, [e for e in args.engines.split(",") if e], args.threads)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), **result}, indent=2))


if __name__ == "__main__":
    main()
