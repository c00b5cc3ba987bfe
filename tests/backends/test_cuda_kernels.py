"""csrc/cuda/matmul.cu through realm_ext.backends.cuda.matmul, on a GPU.

Every format's matmul (decode kernels for n_tokens <= 8, the tiled prefill kernel
above) against float64 references built from gguf's decoders of the same blocks, on
fresh random data; get_rows bit-exact; shape errors; graph capture.

Tolerances: the kernels round the activations exactly as the CPU backend does (Q8_0,
Q8_1 or Q8_K blocks, f16 / bf16 for F16 / BF16 weights; the emulated tests check the
bytes), so
- against the CPU backend's matmul (realm_ext.kernels.matmul) the error is float32
  summation order only: |out - cpu| <= 1e-5 * (|W| @ |x|) element by element;
- against W @ x (x as given), the 8-bit rounding adds ~0.5% relative (a step of
  max|x| / 127 per block): relative L2 error <= 2e-2.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

try:
    import cupy
except ImportError:
    pytest.skip("cupy is not installed: the CUDA kernel tests need it and a GPU", allow_module_level=True)
if not cupy.cuda.is_available():
    pytest.skip(
        "no CUDA GPU (cupy.cuda.is_available() is False): CUDA kernel tests skipped", allow_module_level=True
    )

from realm_ext import kernels as cpu_kernels  # noqa: E402
from realm_ext import quant  # noqa: E402
from realm_ext.backends.cuda.matmul import (  # noqa: E402
    DeviceWeight,
    activation_scratch_bytes,
    get_rows,
    kernels,
    matmul,
)

T = quant.GGMLType
TYPES = quant.SUPPORTED_TYPES
N_TOKENS = (1, 2, 7, 64, 130)


def n_cols_for(t: T) -> int:
    """Rows long enough for several loop iterations in every kernel, and not whole prefill
    chunks of 256 for the 32-element formats (89 blocks), nor of 128 columns for floats."""
    return {32: 2848, 256: 2816, 1: 1001}[quant.block_size(t)[0]]


def make_weight(rng: np.random.Generator, t: T, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw blocks encoded from Gaussian values, gguf's decoding of them as float64)"""
    raw = quant.quantize(rng.standard_normal((n_rows, n_cols), dtype=np.float32), t)
    return raw, gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols).astype(np.float64)


def run_matmul(w: DeviceWeight, x: np.ndarray) -> np.ndarray:
    xd = cupy.asarray(x)
    out = cupy.full((x.shape[0], w.n_rows), np.nan, dtype=cupy.float32)
    scratch = cupy.empty(activation_scratch_bytes(*x.shape, w.ggml_type), dtype=cupy.uint8)
    matmul(w, xd, out, scratch)
    np.testing.assert_array_equal(cupy.asnumpy(xd), x)  # x is read only
    return cupy.asnumpy(out)


@pytest.mark.parametrize("n_rows", [65, 257])
@pytest.mark.parametrize("n_tokens", N_TOKENS)
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_matmul_against_float64(rng: np.random.Generator, t: T, n_tokens: int, n_rows: int) -> None:
    n_cols = n_cols_for(t)
    raw, w64 = make_weight(rng, t, n_rows, n_cols)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    out = run_matmul(DeviceWeight.upload(raw, t, n_rows, n_cols), x)
    assert np.all(np.isfinite(out))
    x64 = x.astype(np.float64)
    true = x64 @ w64.T
    rel_l2 = np.linalg.norm(out - true) / np.linalg.norm(true)
    assert rel_l2 <= (1e-5 if t == T.F32 else 2e-2), rel_l2
    cpu = cpu_kernels.matmul(raw.reshape(n_rows, -1), int(t), x)
    err = np.abs(out - cpu) / (np.abs(x64) @ np.abs(w64).T)
    assert err.max() <= 1e-5, (err.max(), np.unravel_index(err.argmax(), err.shape))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_get_rows_bit_exact(rng: np.random.Generator, t: T) -> None:
    n_rows, n_cols = 37, n_cols_for(t)
    raw, w64 = make_weight(rng, t, n_rows, n_cols)
    w = DeviceWeight.upload(raw, t, n_rows, n_cols)
    ids = rng.integers(0, n_rows, 9).astype(np.int32)
    ids[3] = ids[5]  # a repeated id
    ids[7] = n_rows  # out of range: a row of NaN
    ids[8] = -1
    out = cupy.zeros((ids.size, n_cols), dtype=cupy.float32)
    get_rows(w, cupy.asarray(ids), out)
    got = cupy.asnumpy(out)
    ref = gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols).astype(np.float32)
    np.testing.assert_array_equal(got[:7], ref[ids[:7]])
    assert np.all(np.isnan(got[7:]))


def test_bad_shapes_raise(rng: np.random.Generator) -> None:
    n_rows, n_cols = 8, 256
    raw, _ = make_weight(rng, T.Q4_K, n_rows, n_cols)
    w = DeviceWeight.upload(raw, T.Q4_K, n_rows, n_cols)
    x = cupy.zeros((3, n_cols), dtype=cupy.float32)
    out = cupy.zeros((3, n_rows), dtype=cupy.float32)
    scratch = cupy.zeros(activation_scratch_bytes(3, n_cols, T.Q4_K), dtype=cupy.uint8)
    cases = [
        ((w, x[:, :128], out, scratch), "shape"),
        ((w, x.astype(cupy.float64), out, scratch), "float32"),
        ((w, x.get(), out, scratch), "cupy array"),
        ((w, cupy.zeros((n_cols, 3), cupy.float32).T, out, scratch), "C-contiguous"),
        ((w, x, out[:2], scratch), "shape"),
        ((w, x, out.astype(cupy.float16), scratch), "float32"),
        ((w, x, out, scratch[:-1]), "bytes"),
        ((w, x, out, scratch.view(cupy.int8)), "uint8"),
        ((w, x, out, cupy.zeros(scratch.size + 1, cupy.uint8)[1:]), "aligned"),
        ((w, x, cupy.zeros((3, n_cols), cupy.float32)[:, :n_rows], scratch), "C-contiguous"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            matmul(*args)
    both = cupy.zeros(3 * n_cols, dtype=cupy.float32)
    with pytest.raises(ValueError, match="overlap"):
        matmul(w, both.reshape(3, n_cols), both[: 3 * n_rows].reshape(3, n_rows), scratch)
    with pytest.raises(ValueError, match="overlap"):
        matmul(w, x, out, x.view(cupy.uint8).reshape(-1))
    with pytest.raises(ValueError, match="aligned"):
        DeviceWeight(cupy.zeros(w.nbytes + 4, cupy.uint8)[4:], T.Q4_K, n_rows, n_cols)
    with pytest.raises(ValueError, match="bytes"):
        DeviceWeight(w.data[:-1], T.Q4_K, n_rows, n_cols)
    ids = cupy.zeros(2, dtype=cupy.int32)
    with pytest.raises(ValueError, match="int32"):
        get_rows(w, ids.astype(cupy.int64), cupy.zeros((2, n_cols), cupy.float32))
    with pytest.raises(ValueError, match="shape"):
        get_rows(w, ids, cupy.zeros((3, n_cols), cupy.float32))
    with pytest.raises(ValueError, match="1-D"):
        get_rows(w, ids.reshape(1, 2), cupy.zeros((2, n_cols), cupy.float32))
    cupy.cuda.get_current_stream().synchronize()
    assert float(cupy.abs(out).max()) == 0.0  # nothing was launched


@pytest.mark.parametrize("n_tokens", [1, 5, 40])
@pytest.mark.parametrize("t", [T.Q4_K, T.Q6_K, T.Q4_0, T.F16], ids=lambda t: t.name)
def test_matmul_captures_into_a_graph(rng: np.random.Generator, t: T, n_tokens: int) -> None:
    """matmul launches only kernels on the given stream: it captures into a CUDA graph
    whose replay, on new inputs written into the same buffers, matches a direct call."""
    n_rows, n_cols = 300, 512
    raw, _ = make_weight(rng, t, n_rows, n_cols)
    w = DeviceWeight.upload(raw, t, n_rows, n_cols)
    kernels(w.ggml_type)  # compile and load before capturing
    x = cupy.asarray(rng.standard_normal((n_tokens, n_cols)).astype(np.float32))
    out = cupy.zeros((n_tokens, n_rows), dtype=cupy.float32)
    scratch = cupy.zeros(activation_scratch_bytes(n_tokens, n_cols, t), dtype=cupy.uint8)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        matmul(w, x, out, scratch, stream=stream)
        graph = stream.end_capture()
    stream.synchronize()
    assert float(cupy.abs(out).max()) == 0.0  # capturing ran nothing

    x[...] = cupy.asarray(rng.standard_normal((n_tokens, n_cols)).astype(np.float32))
    direct = cupy.empty_like(out)
    matmul(w, x, direct, cupy.empty_like(scratch))
    cupy.cuda.get_current_stream().synchronize()
    graph.launch(stream)
    stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(out), cupy.asnumpy(direct))
    assert float(cupy.abs(direct).max()) > 0.0
