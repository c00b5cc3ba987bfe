"""Decode attention: one token's attention over every layer's window, per token.

A KV ring of the TinyLlama shape (22 layers, 32 query heads on 4 KV heads of 64) filled
to --position; per layer, a read of --flush-mb of memory first (a layer's matmuls stream
their weights through the caches before attention runs), then one `_kernels.attention`
call at that position, timed alone. Reports ms per token (all layers) and the KV bytes
the window holds read per second; baseline, measured in the same run: memory-copy GB/s
(bench_matvec.copy_gbs), so kv GB/s / copy is how close attention comes to streaming the
window from memory.

    python -m benchmarks.bench_attention [--position 160] [--repeat 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.bench_matvec import copy_gbs
from realm_ext import _kernels

N_LAYER, N_HEAD, N_HEAD_KV, HEAD_DIM = 22, 32, 4, 64


def run(position: int = 160, repeat: int = 30, threads: int = 2, flush_mb: int = 48) -> dict:
    rng = np.random.default_rng(0)
    kv = _kernels.KVRing(N_LAYER, position + 1, N_HEAD_KV, HEAD_DIM)
    rows = (position + 1, N_HEAD_KV * HEAD_DIM)
    for layer in range(N_LAYER):
        k, v = (rng.normal(0, 1, rows).astype(np.float32) for _ in range(2))
        kv.append(layer, 0, k, v)
    q = rng.normal(0, 1, (1, N_HEAD, HEAD_DIM)).astype(np.float32)
    out = np.empty_like(q)
    flush = np.ones(flush_mb << 20, np.uint8)
    per_token = []
    for _ in range(repeat):
        total = 0.0
        for layer in range(N_LAYER):
            flush.max()
            t0 = time.perf_counter()
            _kernels.attention(kv, layer, position, q, out, n_threads=threads)
            total += time.perf_counter() - t0
        per_token.append(total)
    sec = statistics.median(per_token)
    kv_bytes = 2 * N_LAYER * (position + 1) * N_HEAD_KV * HEAD_DIM * 2  # K and V, f16
    copy = copy_gbs(5)
    return {
        "position": position,
        "threads": threads,
        "ms_per_token": sec * 1e3,
        "kv_gbs": kv_bytes / sec / 1e9,
        "copy_gbs": copy,
        "kv_vs_copy": kv_bytes / sec / 1e9 / copy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--position", type=int, default=160)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flush-mb", type=int, default=48)
    args = ap.parse_args()
    r = run(args.position, args.repeat, args.threads, args.flush_mb)
    print(
        f"attention at position {r['position']}, {N_LAYER} layers, {r['threads']} threads: "
        f"{r['ms_per_token']:.3f} ms per token, KV {r['kv_gbs']:.2f} GB/s "
        f"({r['kv_vs_copy']:.2f}x a {r['copy_gbs']:.2f} GB/s memory copy)"
    )


if __name__ == "__main__":
    main()
