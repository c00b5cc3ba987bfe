"""csrc/cuda/matmul.cu's kernels run on the CPU, as cuda_matmul launches them on a GPU.

The kernels are compiled for the host with every CUDA thread a fiber (cuda_host_harness
.cpp, cuda_emulator.py); each call runs exactly the launches of cuda_matmul.matmul_plan
/ get_rows_plan (kernel, grid, block, arguments). Every buffer ends at an inaccessible
page, so a read or write past its end crashes the test. This checks the kernels' thread
layouts, shared-memory tiles, reductions and tails (rows and tokens not multiples of a
tile, rows not whole prefill chunks) with no GPU; test_cuda_kernels.py checks the same
on a GPU at larger sizes.

The kernels round the activations exactly as the CPU backend does (their bytes equal
realm_ext._kernels.quantize_acts', tests/backends/act_ref.py), so a matmul differs from
the CPU backend's (realm_ext.kernels.matmul) by the order of float additions only:
<= 1e-5 of |W| @ |x| per element.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from act_ref import device_acts, unread_mask
from cuda_emulator import Emulator, guarded

from realm_ext import kernels, quant
from realm_ext.backends.cuda.matmul import FLOAT_TYPES, activation_scratch_bytes, matmul_plan

T = quant.GGMLType
QUANTIZED = [t for t in quant.SUPPORTED_TYPES if t not in FLOAT_TYPES]


def n_cols_for(t: T) -> int:
    """Small rows that still take several loop iterations in the decode kernels, and
    end in a partial prefill chunk for the 32-element formats (11 blocks = 8 + 3)."""
    return {32: 352, 256: 768, 1: 291}[quant.block_size(t)[0]]


def make_weight(rng: np.random.Generator, t: T, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    raw = quant.quantize(rng.standard_normal((n_rows, n_cols), dtype=np.float32), t)
    return raw, gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols).astype(np.float64)


def assert_matches_cpu(out: np.ndarray, t: T, raw: np.ndarray, w64: np.ndarray, x: np.ndarray) -> None:
    """out equals the CPU backend's matmul up to float summation order."""
    cpu = kernels.matmul(np.ascontiguousarray(raw).reshape(w64.shape[0], -1), int(t), x)
    err = np.abs(out - cpu) / (np.abs(x).astype(np.float64) @ np.abs(w64).T)
    assert err.max() <= 1e-5, (err.max(), np.unravel_index(err.argmax(), err.shape))


# 1, 2, 4, 8-token decode kernels (3 and 7 with clamped tails), prefill with a token tail
@pytest.mark.parametrize("n_tokens", [1, 2, 3, 7, 8, 9, 17])
@pytest.mark.parametrize("t", quant.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_matmul_on_cpu(emulator: Emulator, rng: np.random.Generator, t: T, n_tokens: int) -> None:
    n_rows, n_cols = 65, n_cols_for(t)  # 65: a tail in every row tiling (1, 2, 32 rows)
    raw, w64 = make_weight(rng, t, n_rows, n_cols)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    assert_matches_cpu(emulator.matmul(int(t), raw, x, n_rows), t, raw, w64, x)


def awkward_acts(rng: np.random.Generator, n_cols: int) -> np.ndarray:
    """Rows that probe the rounding: Gaussian at a random scale; exact ties (every block's
    first element of largest magnitude is -127, so the scale is exactly 1 and k + 0.5
    must round to even), with a later +127 (the first of equal magnitudes gives Q8_K its
    sign); an all-zero block; a block whose largest element is positive; tiny values."""
    x = np.empty((5, n_cols), np.float32)
    x[0] = rng.standard_normal(n_cols) * rng.uniform(1e-3, 1e3)
    x[1] = rng.integers(-126, 126, n_cols) + 0.5
    x[1, ::32], x[1, 5::32] = -127.0, 127.0
    x[2] = rng.standard_normal(n_cols)
    x[2, 32:64] = 0.0
    x[2, :256] = 0.0
    x[3] = np.abs(rng.standard_normal(n_cols))
    x[4] = rng.standard_normal(n_cols) * np.float32(1e-30)
    return x


@pytest.mark.parametrize("t", QUANTIZED, ids=lambda t: t.name)
def test_activations_are_the_cpu_bytes(emulator: Emulator, rng: np.random.Generator, t: T) -> None:
    """The quantize kernel of t's plan writes the CPU backend's activation bytes, bit for bit."""
    x = awkward_acts(rng, 512)
    plan = matmul_plan(t, 4, x.shape[1], x.shape[0])[:1]
    assert plan[0].kernel.startswith("quantize_")
    scratch = guarded(np.zeros(activation_scratch_bytes(*x.shape, t), np.uint8))
    emulator.run(plan, {"x": guarded(x), "scratch": scratch})
    got, want = np.array(scratch).reshape(x.shape[0], -1), device_acts(t, x)
    keep = unread_mask(t, want.shape[1])
    np.testing.assert_array_equal(got[:, keep], want[:, keep])


@pytest.mark.parametrize("t", quant.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_matmul_of_awkward_activations(emulator: Emulator, rng: np.random.Generator, t: T) -> None:
    """Ties, zero blocks, tiny values: still the CPU backend's result (decode and prefill)."""
    n_cols = 512
    raw, w64 = make_weight(rng, t, 33, n_cols)
    x = awkward_acts(rng, n_cols)
    for xs in (x, np.tile(x, (2, 1))):  # 5 tokens: decode kernel; 10: prefill
        assert_matches_cpu(emulator.matmul(int(t), raw, xs, 33), t, raw, w64, xs)


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
