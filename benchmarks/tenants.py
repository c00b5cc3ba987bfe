"""Many tenants on one model: what batching guests' decode steps together gives.

    python -m benchmarks.tenants [--model PATH ...] [--concurrency 1,2,4,8,16] [--tokens 32]
                                 [--long-prompt 2048] [--no-server] [--threads N] [--json OUT]
                                 [--plot OUT.png]

For each model (default: the built-in SmolLM2 and the TinyLlama-shape Q4_K_M file of
benchmarks.cpu) and each concurrency N: N shipped guests (wasmtime, made before the
clock starts) each generate --tokens tokens greedily from their own prompt, all at once
in N threads. Reported per N: aggregate tok/s (every guest's tokens over the wall time
from the start to the last guest's end, prompts included) and its ratio to N = 1 in the
same run; aggregate decode tok/s, the pieces streamed while all N guests decode (from
the last guest's first piece to the first guest's last) over that span, and its ratio
to N = 1; each request's time to first piece (TTFT) and inter-piece latency (ITL)
p50/p99; and the mean number of calls per step the model's step queue ran
(csrc/cpu/llama_steps.h).

The same through `realm-ext serve` (unless --no-server): the server on 127.0.0.1 with one
tenant allowed N requests at once, N official `openai` clients streaming completions of
--tokens tokens (greedy), each chunk's arrival timed as a piece's.

Then the neighbour case: one guest decodes 64 tokens alone (its ITL p50/p99), and again
while another guest evaluates a --long-prompt-token prompt; the ratio of the two p99s.
Writes JSON (default benchmarks/results/tenants-DATE.json) with the machine's facts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.cpu import model_file
from benchmarks.machine import machine_facts
from realm_ext import Host
from realm_ext.default_model import default_model_path

PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "In the beginning there was",
    "My favourite food is",
    "The weather today is",
    "1, 2, 3, 4,",
    "Dear friend, I am writing to",
]


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    return {"p50_ms": 1e3 * float(np.percentile(xs, 50)), "p99_ms": 1e3 * float(np.percentile(xs, 99))}


def timed_generate(guest, prompt: str, tokens: int, **kw) -> tuple[int, list[float]]:
    """(tokens generated, the time of each piece out, perf_counter seconds)."""
    stamps: list[float] = []

    def emit(_piece: str) -> bool:
        stamps.append(time.perf_counter())
        return True

    n = guest.generate_to(prompt, emit, max_tokens=tokens, temperature=0.0, stop_at_eos=False, **kw)
    return n, stamps


def concurrent(host: Host, model, n: int, tokens: int) -> dict:
    guests = [host.guest(models=[model], memory_limit="512MiB") for _ in range(n)]
    try:
        for g in guests:  # warm: instance, tokenizer, first calls
            timed_generate(g, "Hello", 2)
        rt = host.backend.prepare(model)
        before = rt.step_stats
        results: list = [None] * n
        barrier = threading.Barrier(n + 1)

        def body(i: int) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            count, stamps = timed_generate(guests[i], PROMPTS[i % len(PROMPTS)] + f" ({i})", tokens)
            results[i] = (t0, count, stamps)

        threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        barrier.wait()
        t_start = time.perf_counter()
        for t in threads:
            t.join()
        after = rt.step_stats
    finally:
        for g in guests:
            g.close()
    return summarize(n, t_start, results, before, after)


def summarize(n: int, t_start: float, results: list, before: dict, after: dict) -> dict:
    """results: per request (t0, tokens, piece stamps)."""
    t_end = max(r[2][-1] for r in results)
    total = sum(r[1] for r in results)
    ttft = [r[2][0] - r[0] for r in results]
    itl = [b - a for r in results for a, b in zip(r[2], r[2][1:], strict=False)]
    steps = after["steps"] - before["steps"]
    return {
        "guests": n,
        "tokens": total,
        "aggregate_tok_s": total / (t_end - t_start),
        "decode_tok_s": decode_rate([r[2] for r in results]),
        "ttft": percentiles(ttft),
        "itl": percentiles(itl),
        "calls_per_step": (after["jobs"] - before["jobs"]) / steps if steps else 0.0,
    }


def decode_rate(stamps: list[list[float]]) -> float:
    """Pieces per second while every request is decoding: those out after the last
    request's first piece, up to the first request's last, over that span (0.0 where
    the requests' decoding never overlapped)."""
    t0, t1 = max(s[0] for s in stamps), min(s[-1] for s in stamps)
    pieces = sum(1 for s in stamps for t in s if t0 < t <= t1)
    return pieces / (t1 - t0) if t1 > t0 and pieces else 0.0


def with_ratios(rows: list[dict]) -> None:
    """Each row's aggregate and decode tok/s as ratios to the first row's (one guest)."""
    for r in rows:
        r["ratio_to_one"] = r["aggregate_tok_s"] / rows[0]["aggregate_tok_s"]
        base = rows[0]["decode_tok_s"]
        r["decode_ratio_to_one"] = r["decode_tok_s"] / base if base else 0.0


def through_server(path: Path, concurrency: list[int], tokens: int, threads: int | None) -> list[dict]:
    """concurrent()'s measurement, each request a streamed completion from the server."""
    import openai

    from realm_ext.serve import ServeConfig, ServerState, TenantConfig, parse_model_spec
    from realm_ext.serve.server import BackgroundServer

    tenant = TenantConfig("bench", "sk-bench", max_concurrent=max(concurrency))
    config = ServeConfig(models=[parse_model_spec(f"m={path}")], tenants=[tenant], threads=threads)
    rows = []
    with BackgroundServer(ServerState(config)) as server:
        rt = server.state.host.backend.prepare(server.state.models["m"])
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-bench", max_retries=0)

        def one(i: int) -> tuple[float, int, list[float]]:
            t0, stamps, n = time.perf_counter(), [], 0
            stream = client.completions.create(
                model="m", prompt=PROMPTS[i % len(PROMPTS)] + f" ({i})", max_tokens=tokens, temperature=0,
                stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    stamps.append(time.perf_counter())
                if chunk.usage:
                    n = chunk.usage.completion_tokens
            return t0, n, stamps

        for n in concurrency:
            with ThreadPoolExecutor(n) as ex:  # warm: the tenant's pool makes its n guests
                list(ex.map(one, range(n)))
            before = rt.step_stats
            t_start = time.perf_counter()
            with ThreadPoolExecutor(n) as ex:
                results = list(ex.map(one, range(n)))
            rows.append(summarize(n, t_start, results, before, rt.step_stats))
            with_ratios(rows)
            print(f"{path.name} through the server: {line(rows[-1])}", flush=True)
    return rows


def line(r: dict) -> str:
    return (
        f"{r['guests']:2d} guests {r['aggregate_tok_s']:7.1f} tok/s ({r['ratio_to_one']:.2f}x), "
        f"decode {r['decode_tok_s']:7.1f} tok/s ({r['decode_ratio_to_one']:.2f}x), "
        f"TTFT p50 {r['ttft']['p50_ms']:.0f} ms, "
        f"ITL p50/p99 {r['itl']['p50_ms']:.1f}/{r['itl']['p99_ms']:.1f} ms, "
        f"{r['calls_per_step']:.2f} calls/step"
    )


def neighbour(host: Host, model, long_prompt: int) -> dict:
    """A guest's ITL decoding alone, and beside another guest's long prompt."""
    tok = host.guest(models=[model], memory_limit="512MiB")
    text = "the sea and the sky " * long_prompt
    ids = tok.tokenize(text)[:long_prompt]
    text = tok.detokenize(ids)
    tok.close()
    n_ctx = long_prompt + 64
    quiet = host.guest(models=[model], memory_limit="512MiB")
    loud = host.guest(models=[model], memory_limit="1GiB")
    try:
        timed_generate(quiet, "Hello", 2)
        _, alone = timed_generate(quiet, PROMPTS[0], 64)
        done = threading.Event()
        prefill: dict = {}

        def long_call() -> None:
            t0 = time.perf_counter()
            timed_generate(loud, text, 1, n_ctx=n_ctx)
            prefill["seconds"] = time.perf_counter() - t0
            done.set()

        t = threading.Thread(target=long_call)
        t.start()
        time.sleep(0.2)  # its prefill is under way
        _, beside = timed_generate(quiet, PROMPTS[0], 64)
        overlapped = not done.is_set()
        t.join()
    finally:
        quiet.close()
        loud.close()
    a = percentiles([y - x for x, y in zip(alone, alone[1:], strict=False)])
    b = percentiles([y - x for x, y in zip(beside, beside[1:], strict=False)])
    return {
        "long_prompt_tokens": len(ids),
        "long_prompt_s": prefill["seconds"],
        "overlapped": overlapped,
        "itl_alone": a,
        "itl_beside": b,
        "p99_ratio": b["p99_ms"] / a["p99_ms"],
    }


def run(
    models: list[Path],
    concurrency: list[int],
    tokens: int,
    long_prompt: int,
    threads: int | None,
    server: bool,
) -> dict:
    out: dict = {"machine": machine_facts(), "tokens": tokens, "models": {}}
    with Host(device="cpu", n_threads=threads) as host:
        out["threads"] = host.backend.n_threads
        for path in models:
            model = host.load(path)
            rows = []
            for n in concurrency:
                rows.append(concurrent(host, model, n, tokens))
                with_ratios(rows)
                print(f"{path.name}: {line(rows[-1])}", flush=True)
            nb = neighbour(host, model, long_prompt) if long_prompt else None
            if nb:
                print(
                    f"{path.name}: neighbour ITL p99 {nb['itl_alone']['p99_ms']:.1f} ms alone, "
                    f"{nb['itl_beside']['p99_ms']:.1f} ms beside a {nb['long_prompt_tokens']}-token prompt "
                    f"({nb['p99_ratio']:.2f}x; overlapped: {nb['overlapped']})",
                    flush=True,
                )
            out["models"][path.name] = {"concurrency": rows, "neighbour": nb}
            host.unload(model)
    if server:
        for path in models:
            out["models"][path.name]["server"] = through_server(path, concurrency, tokens, threads)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in result["models"].items():
        for key, how in (("concurrency", "guests"), ("server", "through the server")):
            if m.get(key):
                xs = [r["guests"] for r in m[key]]
                ax.plot(xs, [r["aggregate_tok_s"] for r in m[key]], marker="o", label=f"{name}, {how}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent guests")
    ax.set_ylabel("aggregate decode tok/s")
    cpu = result["machine"]["cpu"]
    ax.set_title(f"Guests on one model\n{cpu.get('model', '?')}, {result['threads']} threads")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, action="append", help="a GGUF (repeatable)")
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--long-prompt", type=int, default=2048, help="0: skip the neighbour case")
    ap.add_argument("--no-server", action="store_true", help="skip the runs through realm-ext serve")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--models-dir", type=Path, default=Path.home() / ".cache" / "realm-ext" / "benchmarks")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    models = args.model or [default_model_path(), model_file(args.models_dir, "Q4_K_M")]
    concurrency = [int(x) for x in args.concurrency.split(",")]
    result = run(models, concurrency, args.tokens, args.long_prompt, args.threads, not args.no_server)
    out = args.json or Path("benchmarks/results") / f"tenants-{datetime.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
