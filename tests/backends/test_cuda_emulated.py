"""csrc/cuda/matmul.cu's kernels run on the CPU, as cuda_matmul launches them on a GPU.

The kernels are compiled for the host with every CUDA thread a fiber (cuda_host_harness
.cpp, cuda_emulator.py); each call runs exactly the launches of cuda_matmul.matmul_plan
/ get_rows_plan (kernel, grid, block, arguments). Every buffer ends at an inaccessible
page, so a read or write past its end crashes the test. This checks the kernels' thread
layouts, shared-memory tiles, reductions and tails (rows and tokens not multiples of a
tile, rows not whole prefill chunks) with no GPU; test_cuda_kernels.py checks the same
on a GPU at larger sizes.

Tolerances as test_cuda_kernels.py: against W @ q8_1(x), float32 summation only
(<= 1e-5 of |W| @ |q8_1(x)| per element); the float formats against W @ x.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from cuda_emulator import Emulator
from q8_1_ref import quantize_q8_1, s_rounding

from realm_ext import quant
from realm_ext.backends.cuda_matmul import FLOAT_TYPES

T = quant.GGMLType


def n_cols_for(t: T) -> int:
    """Small rows that still take several loop iterations in the decode kernels, and
    end in a partial prefill chunk for the 32-element formats (11 blocks = 8 + 3)."""
    return {32: 352, 256: 768, 1: 291}[quant.block_size(t)[0]]


def make_weight(rng: np.random.Generator, t: T, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    raw = quant.quantize(rng.standard_normal((n_rows, n_cols), dtype=np.float32), t)
    return raw, gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols).astype(np.float64)


# 1, 2, 4, 8-token decode kernels (3 and 7 with clamped tails), prefill with a token tail
@pytest.mark.parametrize("n_tokens", [1, 2, 3, 7, 8, 9, 17])
@pytest.mark.parametrize("t", quant.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_matmul_on_cpu(emulator: Emulator, rng: np.random.Generator, t: T, n_tokens: int) -> None:
    n_rows, n_cols = 65, n_cols_for(t)  # 65: a tail in every row tiling (1, 2, 32 rows)
    raw, w64 = make_weight(rng, t, n_rows, n_cols)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    out = emulator.matmul(int(t), raw, x, n_rows)
    if t in FLOAT_TYPES:
        seen = x.astype(np.float64)
        ref = seen @ w64.T
    else:
        y, seen = quantize_q8_1(x)
        ref = seen @ w64.T + s_rounding(t, raw, y)
    err = np.abs(out - ref) / (np.abs(seen) @ np.abs(w64).T)
    assert err.max() <= 1e-5, (err.max(), np.unravel_index(err.argmax(), err.shape))


def test_quantize_q8_1_on_cpu(emulator: Emulator, rng: np.random.Generator) -> None:
    """The kernel's q8_1 blocks equal the numpy model's bit for bit."""
    from realm_ext.backends.cuda_matmul import Launch, activation_scratch_bytes

    x = (rng.standard_normal((3, 256)) * rng.uniform(1e-3, 1e3)).astype(np.float32)
    x[1, 64:96] = 0.0
    scratch = np.zeros(activation_scratch_bytes(*x.shape), dtype=np.uint8)
    emulator.run(
        [Launch("quantize_q8_1", (3,), (256,), ("x", "scratch", np.int64(x.size)))],
        {"x": x, "scratch": scratch},
    )
    np.testing.assert_array_equal(scratch.reshape(3, -1), quantize_q8_1(x)[0])


@pytest.mark.parametrize("t", quant.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_get_rows_on_cpu(emulator: Emulator, rng: np.random.Generator, t: T) -> None:
    n_rows, n_cols = 37, n_cols_for(t)
    raw, _ = make_weight(rng, t, n_rows, n_cols)
    ids = rng.integers(0, n_rows, 8).astype(np.int32)
    ids[2] = ids[4]
    ids[6], ids[7] = n_rows, -1  # out of range: rows of NaN
    got = emulator.get_rows(int(t), raw, n_rows, n_cols, ids)
    ref = gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols).astype(np.float32)
    np.testing.assert_array_equal(got[:6], ref[ids[:6]])
    assert np.all(np.isnan(got[6:]))
