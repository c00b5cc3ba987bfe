"""The CUDA kernels' per-format formulas (csrc/cuda/quants.cuh), checked on the CPU.

quants.cuh is compiled for the host by g++ with its few CUDA intrinsics emulated
(cuda_host_harness.cpp), so every dot product (against the activation blocks the CPU
backend rounds to: tests/backends/act_ref.py) and every decoder the kernels use is
checked here against the CPU backend and gguf's decoders, with no GPU; whole kernels are run on the CPU by
test_cuda_emulated.py and on a GPU by test_cuda_kernels.py.
"""

from __future__ import annotations

import ctypes
import re

import gguf
import numpy as np
import pytest
from act_ref import device_acts
from cuda_emulator import Emulator

from realm_ext import kernels, quant
from realm_ext.backends.cuda import source as cuda_source

T = quant.GGMLType
QUANTIZED = [t for t in quant.SUPPORTED_TYPES if t not in (T.F32, T.F16, T.BF16)]


@pytest.fixture
def harness(emulator: Emulator) -> ctypes.CDLL:
    return emulator.lib


def weights(rng: np.random.Generator, t: T, n_rows: int, n_cols: int, encoded: bool) -> np.ndarray:
    """Raw blocks: encoded from Gaussian values, or random bits with valid scales (every
    quant and scale pattern, as the encoder may not produce them all)."""
    if encoded:
        return quant.quantize(rng.standard_normal((n_rows, n_cols), dtype=np.float32), t)
    return quant.random_blocks(rng, t, (n_rows, n_cols), scale=0.05)


def ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


@pytest.mark.parametrize("encoded", [True, False], ids=["encoded", "random-bits"])
@pytest.mark.parametrize("t", quant.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_decode_is_bit_exact(harness: ctypes.CDLL, rng: np.random.Generator, t: T, encoded: bool) -> None:
    n_rows, n_cols = 3, 512
    raw = weights(rng, t, n_rows, n_cols, encoded)
    out = np.empty((n_rows, n_cols), dtype=np.float32)
    assert harness.harness_decode_rows(int(t), ptr(raw), n_rows, n_cols, ptr(out)) == 0
    ref = gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols).astype(np.float32)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("encoded", [True, False], ids=["encoded", "random-bits"])
@pytest.mark.parametrize("t", QUANTIZED, ids=lambda t: t.name)
def test_dot_products(harness: ctypes.CDLL, rng: np.random.Generator, t: T, encoded: bool) -> None:
    """Each format's dot product over every block and part, against the activations
    the CPU rounds to, equals the CPU backend's matmul to float32 summation order."""
    n_rows, n_cols = 7, 1024
    raw = weights(rng, t, n_rows, n_cols, encoded)
    x = rng.standard_normal((1, n_cols)).astype(np.float32)
    y = device_acts(t, x)
    out = np.empty(n_rows, dtype=np.float32)
    assert harness.harness_dot_rows(int(t), ptr(raw), ptr(y), n_rows, n_cols, ptr(out)) == 0
    cpu = kernels.matmul(raw.reshape(n_rows, -1), int(t), x)[0]
    w = gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols).astype(np.float64)
    # float32 sums of n_cols products: error well under 1e-5 of sum |w| |x|
    scale = np.abs(w) @ np.abs(x[0]).astype(np.float64)
    assert np.all(np.abs(out - cpu) <= 1e-5 * scale), (out - cpu) / scale


def test_every_kernel_cuda_matmul_launches_is_defined() -> None:
    """The names realm_ext.backends.cuda.matmul fetches are entry points of matmul.cu
    (checked in NVRTC's PTX, no GPU needed)."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as e:
        pytest.skip(f"NVRTC is not available here ({type(e).__name__}: {e})")
    from realm_ext.backends.cuda import matmul as cuda_matmul

    prog = nvrtc.createProgram(cuda_source.source_text("matmul"), "matmul.cu", (), ())
    try:
        nvrtc.compileProgram(prog, (*cuda_source.options(None), "-arch=compute_90"))
        ptx = nvrtc.getPTX(prog).decode()
    finally:
        nvrtc.destroyProgram(prog)
    entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx))
    wanted = {k for t in quant.SUPPORTED_TYPES for k in cuda_matmul.kernel_names(t)}
    assert wanted <= entries, sorted(wanted - entries)
    # per format: matvec t1 t2 t4 t8, matmul, get_rows; quantize_q8_1 and quantize_q8_K
    assert len(wanted) == 10 * 6 + 3 * 3 + 2


def test_upload_rejects_bad_weights(rng: np.random.Generator) -> None:
    pytest.importorskip("cupy")
    from realm_ext.backends.cuda.matmul import DeviceWeight, activation_scratch_bytes

    raw = quant.quantize(rng.standard_normal((4, 256), dtype=np.float32), "Q4_K")
    with pytest.raises(ValueError, match="needs 576 bytes"):
        DeviceWeight.upload(raw[:3], T.Q4_K, 4, 256)
    with pytest.raises(ValueError, match="multiple of 256"):
        DeviceWeight.upload(raw, T.Q4_K, 8, 128)
    with pytest.raises(ValueError, match="not supported"):
        DeviceWeight.upload(raw, T.Q8_K, 4, 256)
    with pytest.raises(ValueError, match="positive"):
        DeviceWeight.upload(raw, T.Q4_K, 0, 256)
    assert activation_scratch_bytes(3, 2048, T.Q4_0) == 3 * 64 * 36
    assert activation_scratch_bytes(3, 2048, T.Q4_K) == 3 * 8 * 292
    assert activation_scratch_bytes(3, 2048, T.F16) == 0
    assert activation_scratch_bytes(3, 2048) == 3 * 8 * 292  # any type
