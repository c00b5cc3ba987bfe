"""GPU matmul kernels (csrc/cuda/matmul.cu): weight-streaming bandwidth and prefill rate.

Measured in one run, on the current CUDA device, all times from CUDA events:
- copy bandwidth: a device-to-device copy of a 1 GiB buffer, read + write bytes per
  second (median of repeats): the practical ceiling for streaming weights;
- per format and TinyLlama shape, decode at one token: weight bytes / time, for the
  matvec kernel alone (activations already quantized) and for a whole `matmul` call
  (quantize_q8_1 or _q8_K + matvec), and their fraction of the copy bandwidth. The calls are
  captured in a CUDA graph and replayed, so Python's launch cost is not timed, and
  cycle through copies of the weight (>= 256 MB together) so that the weight comes
  from device memory, not from the 50 MB L2 cache, as it does in a model;
- prefill: a 512-token `matmul` on 2048x2048 and 5632x2048, GFLOP/s (2 flops per
  weight per token).

    python -m benchmarks.gpu_kernels [--quick] [--json OUT]

--quick: Q4_K, Q6_K, Q8_0 and Q4_0 only (all thirteen formats otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import numpy as np

from realm_ext import quant

SHAPES = ((2048, 2048), (5632, 2048), (2048, 5632), (32000, 2048))  # (rows, cols)
PREFILL_SHAPES = ((2048, 2048), (5632, 2048))
PREFILL_TOKENS = 512
QUICK_TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q4_0")
ALL_TYPES = QUICK_TYPES + ("Q5_K", "Q3_K", "Q2_K", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "F32")
CYCLE_BYTES = 256 << 20
COPY_BYTES = 1 << 30


def events_time(run: Callable[[], None], stream, repeat: int) -> float:
    """Median seconds of run() on `stream`, by CUDA events, after one warm-up."""
    import cupy

    run()
    times = []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        run()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return statistics.median(times)


def _graph_time(launch_all: Callable[[], None], n_calls: int, stream, repeat: int) -> float:
    """Median seconds per call of launch_all() (n_calls calls), captured as one graph."""
    launch_all()  # compiles and loads the kernels outside the capture
    stream.synchronize()
    with stream:
        stream.begin_capture()
        launch_all()
        graph = stream.end_capture()
    return events_time(lambda: graph.launch(stream), stream, repeat) / n_calls


def copy_gbs(stream, repeat: int) -> float:
    import cupy

    src = cupy.ones(COPY_BYTES, dtype=cupy.uint8)
    dst = cupy.empty_like(src)

    def run() -> None:
        dst.data.copy_from_device_async(src.data, COPY_BYTES, stream)

    return 2 * COPY_BYTES / events_time(run, stream, repeat) / 1e9


def _weights(rng: np.random.Generator, t: str, rows: int, cols: int, min_bytes: int):
    """Copies on the device of one random valid weight, together >= min_bytes."""
    import cupy

    from realm_ext.backends.cuda.matmul import DeviceWeight

    first = DeviceWeight.upload(quant.random_blocks(rng, t, (rows, cols)), quant.parse_type(t), rows, cols)
    n = max(1, -(-min_bytes // first.nbytes))
    return [first] + [DeviceWeight(cupy.copy(first.data), first.ggml_type, rows, cols) for _ in range(n - 1)]


def matvec_row(
    rng: np.random.Generator, t: str, rows: int, cols: int, stream, repeat: int, copy: float
) -> dict:
    import cupy

    from realm_ext.backends.cuda import matmul as cm

    ws = _weights(rng, t, rows, cols, CYCLE_BYTES)
    x = cupy.asarray(rng.standard_normal((1, cols), dtype=np.float32))
    out = cupy.empty((1, rows), dtype=cupy.float32)
    scratch = cupy.empty(cm.activation_scratch_bytes(1, cols), dtype=cupy.uint8)

    def matmuls() -> None:
        for w in ws:
            cm.matmul(w, x, out, scratch, stream=stream)

    call = _graph_time(matmuls, len(ws), stream, repeat)
    gt = quant.parse_type(t)
    if gt in cm.FLOAT_TYPES:
        kernel = call  # no quantization step: the call is the kernel
    else:
        lc = cm.matmul_plan(gt, rows, cols, 1)[-1]  # the matvec launch, after the quantize one
        mv = cm.kernels(gt)[lc.kernel]
        bufs = {"scratch": scratch, "out": out}
        args = [
            tuple(w.data if a == "W" else bufs[a] if isinstance(a, str) else a for a in lc.args) for w in ws
        ]

        def matvecs() -> None:
            with stream:
                for a in args:
                    mv(lc.grid, lc.block, a)

        kernel = _graph_time(matvecs, len(ws), stream, repeat)
    nbytes = ws[0].nbytes
    return {
        "type": t,
        "rows": rows,
        "cols": cols,
        "weight_bytes": nbytes,
        "matvec_us": kernel * 1e6,
        "matvec_gbs": nbytes / kernel / 1e9,
        "matvec_frac_copy": nbytes / kernel / 1e9 / copy,
        "call_us": call * 1e6,
        "call_gbs": nbytes / call / 1e9,
        "call_frac_copy": nbytes / call / 1e9 / copy,
    }


def prefill_row(rng: np.random.Generator, t: str, rows: int, cols: int, stream, repeat: int) -> dict:
    import cupy

    from realm_ext.backends.cuda import matmul as cm

    (w,) = _weights(rng, t, rows, cols, 0)
    x = cupy.asarray(rng.standard_normal((PREFILL_TOKENS, cols), dtype=np.float32))
    out = cupy.empty((PREFILL_TOKENS, rows), dtype=cupy.float32)
    scratch = cupy.empty(cm.activation_scratch_bytes(PREFILL_TOKENS, cols), dtype=cupy.uint8)
    sec = _graph_time(lambda: cm.matmul(w, x, out, scratch, stream=stream), 1, stream, repeat)
    return {
        "type": t,
        "rows": rows,
        "cols": cols,
        "tokens": PREFILL_TOKENS,
        "ms": sec * 1e3,
        "gflops": 2.0 * rows * cols * PREFILL_TOKENS / sec / 1e9,
    }


def run(quick: bool = False) -> dict:
    """All the measurements above, as a JSON-ready dict."""
    import cupy

    rng = np.random.default_rng(0)
    repeat = 5 if quick else 11
    types = QUICK_TYPES if quick else ALL_TYPES
    stream = cupy.cuda.Stream(non_blocking=True)
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    copy = copy_gbs(stream, repeat)
    matvec = [matvec_row(rng, t, r, c, stream, repeat, copy) for t in types for r, c in SHAPES]
    prefill = [prefill_row(rng, t, r, c, stream, repeat) for t in types for r, c in PREFILL_SHAPES]
    return {
        "device": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
        "copy_gbs": copy,
        "matvec": matvec,
        "prefill": prefill,
    }


def table(res: dict) -> str:
    lines = [f"device: {res['device']}; copy bandwidth (read+write): {res['copy_gbs']:.0f} GB/s", ""]
    lines.append(
        f"{'type':6} {'shape':>11} {'matvec us':>10} {'GB/s':>7} {'of copy':>8} {'call us':>8} {'of copy':>8}"
    )
    for m in res["matvec"]:
        lines.append(
            f"{m['type']:6} {m['rows']:>5}x{m['cols']:<5} {m['matvec_us']:10.1f} {m['matvec_gbs']:7.0f} "
            f"{m['matvec_frac_copy']:8.0%} {m['call_us']:8.1f} {m['call_frac_copy']:8.0%}"
        )
    lines += ["", f"{'type':6} {'shape':>11} {'tokens':>6} {'ms':>8} {'GFLOP/s':>9}"]
    for p in res["prefill"]:
        lines.append(
            f"{p['type']:6} {p['rows']:>5}x{p['cols']:<5} {p['tokens']:6} {p['ms']:8.3f} {p['gflops']:9.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="four formats only")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    res = run(quick=args.quick)
    print(table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
