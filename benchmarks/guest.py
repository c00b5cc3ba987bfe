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
4. a real model (SmolLM2-135M-Instruct from the cache, or --model PATH): prefill and
   greedy decode tok/s through the shipped guest against llama.cpp (llama-cpp-python) on
   the same file with the same threads, interleaved in the same run, and the guest's
   memory with that model's vocabulary.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
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
from realm_ext.pull import model_path as pulled_model_path

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
# the real model's prompt: plain prose, about 128 tokens
REAL_PROMPT = (
    "The history of the city begins with a small fishing village on the river, where traders "
    "stopped on their way to the coast. Over the centuries the village grew into a market town, "
    "then a walled city with a cathedral, a university and a harbour that sent ships across the "
    "sea. Its people built bridges, canals and wide streets lined with trees, and every spring "
    "they held a fair that drew visitors from far away. Today the old town is a quiet place of "
    "museums, cafes and bookshops, while the new districts along the water are busy with offices "
    "and apartments. Visitors who walk from the station to the old market square"
)
REAL_DECODE = 64


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


def _per_call(f, n: int) -> float:
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


def _llama_cpp(path: Path, threads: int, n_prompt: int):
    import llama_cpp

    return llama_cpp.Llama(
        str(path),
        n_ctx=n_prompt + REAL_DECODE + 8,
        n_batch=n_prompt,
        n_ubatch=n_prompt,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def llama_cpp_real_s(llm, tokens: list[int]) -> tuple[float, float]:
    """llama.cpp's seconds for the prompt and for REAL_DECODE greedy steps after it."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens)
    t1 = time.perf_counter()
    n_vocab = llm.n_vocab()
    for _ in range(REAL_DECODE):  # the last row's logits, read in place (no logits_all)
        last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
        llm.eval([int(np.argmax(last))])
    return t1 - t0, (time.perf_counter() - t1) / REAL_DECODE


def guest_real_s(g, n_prompt: int) -> tuple[float, float]:
    """The guest's seconds for the prompt (a 1-token run: tokenize, prefill, one LM head
    and sample) and per greedy decode step (a longer run minus that)."""
    kw = dict(temperature=0.0, stop_at_eos=False, n_ctx=n_prompt + REAL_DECODE + 8)
    list(g.generate(REAL_PROMPT, max_tokens=1, **kw))
    t_prefill = g.last_stats.seconds
    list(g.generate(REAL_PROMPT, max_tokens=REAL_DECODE + 1, **kw))
    return t_prefill, (g.last_stats.seconds - t_prefill) / REAL_DECODE


def real_model(path: Path, engine: str, threads: int, repeat: int) -> dict:
    """Part 4 on the model at `path` (llama.cpp's side only where it is installed)."""
    with Host(device="cpu", n_threads=threads) as host:
        model = host.load(path)
        with host.guest(models=[model], engine=engine, memory_limit="256MiB") as g:
            tokens = g.tokenize(REAL_PROMPT)
            n = len(tokens)
            llm = None
            with contextlib.suppress(ImportError):  # llama-cpp-python is optional
                llm = _llama_cpp(path, threads, n)
            ours, theirs = [], []
            guest_real_s(g, n)  # warm: the guest builds its tokenizer, the weights page in
            for _ in range(repeat):  # interleaved, so drift hits both alike
                ours.append(guest_real_s(g, n))
                if llm is not None:
                    theirs.append(llama_cpp_real_s(llm, tokens))
            s = g.last_stats
    row: dict = {
        "model": path.name,
        "engine": engine,
        "threads": threads,
        "prompt_tokens": n,
        "guest_prefill_tok_s": n / statistics.median(p for p, _ in ours),
        "guest_decode_tok_s": 1 / statistics.median(d for _, d in ours),
        "memory_pages": s.memory_pages,
        "heap_bytes": s.heap_bytes,
    }
    if theirs:
        row["llama_cpp_prefill_tok_s"] = n / statistics.median(p for p, _ in theirs)
        row["llama_cpp_decode_tok_s"] = 1 / statistics.median(d for _, d in theirs)
        row["prefill_ratio"] = row["guest_prefill_tok_s"] / row["llama_cpp_prefill_tok_s"]
        row["decode_ratio"] = row["guest_decode_tok_s"] / row["llama_cpp_decode_tok_s"]
    if theirs:
        vs = (
            f"; llama.cpp prefill {row['llama_cpp_prefill_tok_s']:.0f}, "
            f"decode {row['llama_cpp_decode_tok_s']:.1f} tok/s; "
            f"ratios prefill {row['prefill_ratio']:.2f}, decode {row['decode_ratio']:.2f}"
        )
    else:
        vs = " (llama-cpp-python not installed: no baseline)"
    print(
        f"{path.name} ({engine}, {threads} threads, {n}-token prompt): guest prefill "
        f"{row['guest_prefill_tok_s']:.0f} tok/s, decode {row['guest_decode_tok_s']:.1f} tok/s{vs}; "
        f"guest memory {s.memory_pages} pages, heap {s.heap_bytes / 2**20:.2f} MiB"
    )
    return row


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
    ap.add_argument("--model", type=Path, default=None, help="the real model (default: SmolLM2 when cached)")
    ap.add_argument("--real-only", action="store_true", help="part 4 only")
    args = ap.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    result = {} if args.real_only else run(args.quick, engines, args.threads)
    real = args.model or pulled_model_path("smollm2")
    if real is None:
        print("part 4 skipped: no --model and SmolLM2 is not in the cache (realm-ext pull)")
    else:
        threads = args.threads or len(os.sched_getaffinity(0))
        result["real_model"] = real_model(real, engines[0], threads, 3 if args.quick else 5)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), **result}, indent=2))


if __name__ == "__main__":
    main()
