"""Matrix-vector (decode) throughput of the dot kernels, per weight format and ISA.

For each format and each TinyLlama matrix shape, one token's activations times the
weight matrix with 2 threads (--threads): GB/s of weight bytes read, for the scalar,
AVX2 and AVX-512 kernels (those the CPU has), and, for the formats the CPU backend
repacks at load (csrc/cpu/repack.h), for the repacked copy through the best ISA's
kernel. Baseline, measured in the same run: memory-copy GB/s (numpy copy of a ~256 MB
buffer, bytes copied per second, median of repeats); decode is memory-bound, so
matvec/copy is how close a kernel comes to the memory.
Weights are cycled through enough copies (>= 128 MB together) that they come from
DRAM, not from the last-level cache, as they do in a model.

Also a prefill line: 128 tokens x a 2048 x 5632 Q4_K matrix, GFLOP/s (2 flops per
weight per token).

    python -m benchmarks.bench_matvec [--types Q4_K,Q8_0] [--repeat 9] [--stat min] [--threads 2] [--json OUT]

--stat min reports the fastest repeat instead of the median (for a machine shared with
other jobs, where a starved thread stalls a whole call).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from realm_ext import _kernels, quant

SHAPES = ((2048, 2048), (5632, 2048), (2048, 5632), (32000, 2048))  # (rows, cols)
TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q5_K", "Q3_K", "Q2_K", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "F32")
ISAS = ("scalar", "avx2", "avx512")
THREADS = 2
STATS = {"median": statistics.median, "min": min}
CACHE_FLUSH_BYTES = 128 << 20
PREFILL = (128, 2048, 5632, "Q4_K")  # tokens, rows, cols, type


def available_isas() -> list[str]:
    best = _kernels.cpu_isa()
    return list(ISAS[: ISAS.index(best) + 1])


def copy_gbs(repeat: int, stat=statistics.median, nbytes: int = 256 << 20) -> float:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return nbytes / stat(times[1:]) / 1e9


def make_weights(t: str, rows: int, cols: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Copies of a (rows, row_bytes) raw matrix, together >= CACHE_FLUSH_BYTES. The
    matrix is a quantized random block of up to 512 rows tiled to `rows` (quantizing
    32000 rows with numpy encoders would dominate the run; the bytes read are the same)."""
    base = quant.quantize(rng.normal(0, 0.02, (min(rows, 512), cols)).astype(np.float32), t)
    base = base.reshape(base.shape[0], -1)
    one = np.ascontiguousarray(np.tile(base, (-(-rows // base.shape[0]), 1))[:rows])
    n_copies = max(1, -(-CACHE_FLUSH_BYTES // one.nbytes))
    return [one] + [one.copy() for _ in range(n_copies - 1)]


def time_matmul(
    ws: list[np.ndarray],
    t: str | int,
    x: np.ndarray,
    repeat: int,
    stat=statistics.median,
    threads: int = THREADS,
) -> float:
    """Median (or `stat`) seconds of one matmul, each call on the next copy of the weights
    (t: a format name, or a type id such as a repacked one)."""
    gt = t if isinstance(t, int) else int(quant.parse_type(t))
    out = np.empty((x.shape[0], ws[0].shape[0]), dtype=np.float32)
    for w in ws[:2]:
        _kernels.matmul(w, gt, x, out=out, n_threads=threads)  # warm up
    times = []
    for i in range(repeat * len(ws) if len(ws) > 1 else repeat):
        w = ws[i % len(ws)]
        t0 = time.perf_counter()
        _kernels.matmul(w, gt, x, out=out, n_threads=threads)
        times.append(time.perf_counter() - t0)
    return stat(times)


def repacked(ws: list[np.ndarray], t: str, n_cols: int) -> tuple[list[np.ndarray], int] | None:
    """The copies ws repacked as the CPU backend's default holds them at the active ISA
    (csrc/cpu/repack.h), with their type id; None for a format it keeps as in the file."""
    gt = int(quant.parse_type(t))
    pt = _kernels.repack_type(gt, ws[0].shape[0], n_cols)
    return ([_kernels.repack(w, gt, pt) for w in ws], pt) if pt >= 0 else None


def run(
    types: list[str],
    repeat: int,
    stat_name: str = "median",
    isas: list[str] | None = None,
    threads: int = THREADS,
) -> dict:
    """`isas`: the kernels to time (default: every one this CPU has, scalar first)."""
    stat = STATS[stat_name]
    rng = np.random.default_rng(0)
    isas = isas or available_isas()
    copy = copy_gbs(repeat, stat)
    rows = []
    try:
        for t in types:
            for n_rows, n_cols in SHAPES:
                ws = make_weights(t, n_rows, n_cols, rng)
                x = rng.normal(0, 1, (1, n_cols)).astype(np.float32)
                row = {"type": t, "rows": n_rows, "cols": n_cols, "weight_bytes": ws[0].nbytes}
                for isa in isas:
                    _kernels.set_isa(isa)
                    sec = time_matmul(ws, t, x, repeat, stat, threads)
                    row[f"{isa}_gbs"] = ws[0].nbytes / sec / 1e9
                best = max(row[f"{isa}_gbs"] for isa in isas)
                row["best_vs_copy"] = best / copy
                _kernels.set_isa(None)
                if packed := repacked(ws, t, n_cols):
                    row["repacked_gbs"] = ws[0].nbytes / time_matmul(*packed, x, repeat, stat, threads) / 1e9
                rows.append(row)
                del ws
        n_tok, n_rows, n_cols, t = PREFILL
        ws = make_weights(t, n_rows, n_cols, rng)[:1]
        x = rng.normal(0, 1, (n_tok, n_cols)).astype(np.float32)
        prefill = {"type": t, "tokens": n_tok, "rows": n_rows, "cols": n_cols}
        for isa in isas:
            _kernels.set_isa(isa)
            sec = time_matmul(ws, t, x, max(3, repeat // 3), stat, threads)
            prefill[f"{isa}_gflops"] = 2.0 * n_tok * n_rows * n_cols / sec / 1e9
        _kernels.set_isa(None)
        if packed := repacked(ws, t, n_cols):
            sec = time_matmul(*packed, x, max(3, repeat // 3), stat, threads)
            prefill["repacked_gflops"] = 2.0 * n_tok * n_rows * n_cols / sec / 1e9
    finally:
        _kernels.set_isa(None)
    return {
        "threads": threads,
        "stat": stat_name,
        "copy_gbs": copy,
        "isas": isas,
        "matvec": rows,
        "prefill": prefill,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated formats")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--stat", choices=sorted(STATS), default="median", help="statistic over repeats")
    ap.add_argument("--threads", type=int, default=THREADS, help="kernel threads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    res = run(types, args.repeat, args.stat, threads=args.threads)
    isas = res["isas"]
    print(f"matvec, 1 token, {res['threads']} threads, {res['stat']} of {args.repeat}, {platform.machine()}")
    print(f"memory copy (numpy, 256 MB, 1 thread): {res['copy_gbs']:.2f} GB/s")
    head = f"{'type':<5} {'rows x cols':>12} {'MB':>7} " + " ".join(f"{i + ' GB/s':>12}" for i in isas)
    print(head + f" {'best/copy':>10} {'repacked GB/s':>14}")
    for r in res["matvec"]:
        cells = " ".join(f"{r[f'{i}_gbs']:12.2f}" for i in isas)
        shape = f"{r['rows']}x{r['cols']}"
        packed = f"{r['repacked_gbs']:14.2f}" if "repacked_gbs" in r else f"{'-':>14}"
        mb = r["weight_bytes"] / 1e6
        print(f"{r['type']:<5} {shape:>12} {mb:7.1f} {cells} {r['best_vs_copy']:10.2f} {packed}")
    p = res["prefill"]
    cells = ", ".join(f"{i} {p[f'{i}_gflops']:.1f}" for i in [*isas, "repacked"] if f"{i}_gflops" in p)
    print(f"prefill {p['tokens']} tokens x {p['rows']}x{p['cols']} {p['type']}: GFLOP/s {cells}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
