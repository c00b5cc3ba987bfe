"""Batched steps of the CPU backend, without guests: what n sequences decoding at once cost.

    python -m benchmarks.batched_steps [--model PATH] [--seqs 1,2,4,8] [--steps 16] [--threads 2]

n threads, each with its own KV ring, call `backend.forward_layers` for one token at a
time (every layer, positions 0..steps-1); the model's step queue batches their calls
(csrc/cpu/llama_steps.h). Reported per n: ms per step (the slowest thread's time over
the steps), aggregate tok/s, its ratio to n = 1 in the same run, and the calls per step
the queue ran. The default model is the TinyLlama-shape Q4_K_M file of benchmarks.cpu.
The guests' own work (tokenizer, sampling, the ABI) is left out: benchmarks.tenants
measures that path.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.cpu import model_file
from realm_ext.backends.cpu import CpuBackend
from realm_ext.model import load_gguf


def measure(backend: CpuBackend, model, n: int, steps: int) -> dict:
    c = model.config
    rings = [backend.new_kv(model, steps + 8) for _ in range(n)]
    times: list[float] = []
    barrier = threading.Barrier(n)

    def decode(kv) -> None:
        x = np.random.default_rng(len(times)).normal(0, 1, (1, c.n_embd)).astype(np.float32)
        barrier.wait()
        t0 = time.perf_counter()
        for p in range(steps):
            backend.forward_layers(model, 0, c.n_layer, x, p, kv, x)
        times.append(time.perf_counter() - t0)

    before = backend.prepare(model).step_stats
    threads = [threading.Thread(target=decode, args=(kv,)) for kv in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = backend.prepare(model).step_stats
    wall = max(times)
    n_steps = after["steps"] - before["steps"]
    return {
        "seqs": n,
        "ms_per_step": 1e3 * wall / steps,
        "tok_s": n * steps / wall,
        "calls_per_step": (after["jobs"] - before["jobs"]) / n_steps if n_steps else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--seqs", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    args = ap.parse_args()
    path = args.model or model_file(args.models_dir, "Q4_K_M")
    model = load_gguf(path)
    backend = CpuBackend(n_threads=args.threads)
    measure(backend, model, 1, 2)  # untimed: the file's pages into this process
    base = None
    for n in (int(s) for s in args.seqs.split(",")):
        r = measure(backend, model, n, args.steps)
        base = base or r["tok_s"]
        print(
            f"{path.name}: {n:2d} sequences {r['ms_per_step']:7.1f} ms/step {r['tok_s']:7.1f} tok/s "
            f"({r['tok_s'] / base:.2f}x), {r['calls_per_step']:.2f} calls/step",
            flush=True,
        )
    model.close()


if __name__ == "__main__":
    main()
