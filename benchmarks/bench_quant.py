"""Block-format throughput: our C row decoders and K-quant encoders.

Baseline, measured in the same run on the same data: the gguf package's numpy
decoders (the reference every test compares against) for decoding, and the gguf
package's numpy encoder for the 32-element formats it has.

    python -m benchmarks.bench_quant [--rows 1024] [--cols 4096] [--repeat 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import gguf
import numpy as np

from realm_ext import quant


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(rows: int, cols: int, repeat: int) -> list[dict]:
    x = np.random.default_rng(0).normal(0, 0.02, (rows, cols)).astype(np.float32)
    n = x.size
    results = []
    for t in quant.SUPPORTED_TYPES:
        raw = quant.quantize(x, t)
        ours = median_seconds(lambda raw=raw, t=t: quant.dequantize(raw, t, x.shape), repeat)
        ref = median_seconds(lambda raw=raw, t=t: gguf.quants.dequantize(raw, t), repeat)
        row = {
            "type": t.name,
            "decode_melem_s": n / ours / 1e6,
            "decode_vs_gguf_numpy": ref / ours,
        }
        if t in quant.K_QUANTS:
            enc = median_seconds(lambda t=t: quant.quantize(x, t), max(1, repeat // 2))
            row["encode_melem_s"] = n / enc / 1e6
        results.append(row)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = run(args.rows, args.cols, args.repeat)
    print(f"{args.rows} x {args.cols} float32 N(0, 0.02), median of {args.repeat}, {platform.processor()}")
    print(f"{'type':<6} {'decode Melem/s':>15} {'vs gguf numpy':>14} {'encode Melem/s':>15}")
    for r in results:
        enc = f"{r['encode_melem_s']:15.1f}" if "encode_melem_s" in r else f"{'':>15}"
        print(f"{r['type']:<6} {r['decode_melem_s']:15.1f} {r['decode_vs_gguf_numpy']:13.1f}x {enc}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"rows": args.rows, "cols": args.cols, "repeat": args.repeat, "results": results}, f, indent=2
            )


if __name__ == "__main__":
    main()
