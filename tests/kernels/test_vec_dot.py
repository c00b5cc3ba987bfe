"""The SIMD dot kernels (AVX2, AVX-512) against the scalar kernels and against an
independent float64 numpy emulation of what ggml computes (NUMERICS.md).

Every format runs on every ISA the CPU has, forced with _kernels.set_isa. The scalar
kernels are the definition: integer sums per block are exact, so a SIMD kernel may
differ only in the order of its float additions (relative L2 <= 1e-5).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from realm_ext import _kernels, quant

FORMATS = tuple(t.name for t in quant.SUPPORTED_TYPES)  # F32 .. Q6_K
ALL_ISAS = ("scalar", "avx2", "avx512")
ISAS = ALL_ISAS[: ALL_ISAS.index(_kernels.cpu_isa()) + 1]
RTOL = 1e-5
TILED_FORMATS = ("Q3_K", "Q5_K", "Q6_K")  # llama.cpp's ggml-cpu/tiled order for 8+ tokens

# (n_rows, n_cols, n_tokens, n_threads): rows not a multiple of 16 or of the threads
SHAPES = ((33, 256, 7, 3), (257, 512, 1, 2), (40, 2816, 64, 1), (1, 256, 1, 1), (17, 512, 64, 2))


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):
    """Force an ISA for the test; restore the best one afterwards."""
    assert _kernels.set_isa(request.param) == request.param
    request.addfinalizer(lambda: _kernels.set_isa(None))
    return request.param


def gt(fmt: str) -> int:
    return int(quant.parse_type(fmt))


def weights(fmt: str, x: np.ndarray) -> np.ndarray:
    """Raw (n_rows, row_bytes) uint8 of the float matrix x in `fmt`."""
    return quant.quantize(x, fmt).reshape(x.shape[0], -1)


def matmul(raw: np.ndarray, fmt: str, x: np.ndarray, isa_name: str, n_threads: int) -> np.ndarray:
    _kernels.set_isa(isa_name)
    try:
        return _kernels.matmul(raw, gt(fmt), x, n_threads=n_threads)
    finally:
        _kernels.set_isa(None)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb else float(np.linalg.norm(a))


def assert_close(got: np.ndarray, ref: np.ndarray, raw: np.ndarray, fmt: str, x: np.ndarray, what) -> None:
    """Relative L2 <= RTOL, with a floor for cancellation: a sum whose terms nearly cancel
    (one output of a short row) may differ by float reordering relative to the sizes of its
    terms, |W| |x|, not to its own size."""
    w = gguf.quants.dequantize(raw, quant.parse_type(fmt)).reshape(raw.shape[0], -1).astype(np.float64)
    terms = np.linalg.norm(np.abs(x.astype(np.float64)) @ np.abs(w).T)
    err = np.linalg.norm(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
    assert err <= RTOL * np.linalg.norm(np.asarray(ref, np.float64)) + 1e-6 * terms, (what, rel_l2(got, ref))


def fitting_cols(fmt: str, n_cols: int) -> int:
    qk = quant.block_size(fmt)[0]
    return n_cols if n_cols % qk == 0 else n_cols // qk * qk or qk


# ---- an independent emulation of the activation rounding, in numpy ---------------------


def f16(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float64)


def bf16(v: np.ndarray) -> np.ndarray:
    """f32 -> bf16 (round to nearest even) -> float64."""
    u = np.ascontiguousarray(v, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def round_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks of 32: d = amax/127 (f16), q = rint(x * (127/amax)) in f32. Returns
    (q as float64 (rows, blocks, 32), d as float64 after f16, d as f32 before)."""
    b = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        iscale = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint((b * iscale).astype(np.float32))
    d32 = (amax / np.float32(127)).astype(np.float32)
    return q.astype(np.float64), f16(d32), d32


def round_q8_K(x: np.ndarray) -> np.ndarray:
    """Blocks of 256: mx the signed max-magnitude element, iscale = -127/mx,
    q = min(rint(x * iscale), 127), d = 1/iscale (f32). Returns d * q in float64."""
    b = x.astype(np.float32).reshape(x.shape[0], -1, 256)
    idx = np.abs(b).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(b, idx, axis=-1)
    with np.errstate(divide="ignore"):
        iscale = np.where(mx != 0, np.float32(-127) / mx, np.float32(0)).astype(np.float32)
        d = np.where(mx != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(np.rint((b * iscale).astype(np.float32)), 127)
    return (d.astype(np.float64) * q).reshape(x.shape)


def emulate(raw: np.ndarray, fmt: str, w_shape: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """float64 (n_tokens, n_rows): the exact product of the decoded weights with the
    activations rounded to the weight's vec dot type."""
    w = gguf.quants.dequantize(raw, quant.parse_type(fmt)).reshape(w_shape).astype(np.float64)
    if fmt == "F32":
        return x.astype(np.float64) @ w.T
    if fmt == "F16":
        return f16(x) @ w.T
    if fmt == "BF16":
        return bf16(x) @ w.T
    if fmt.endswith("_K"):
        return round_q8_K(x) @ w.T
    q, d, d32 = round_q8_0(x)
    y = (q * d).reshape(x.shape) @ w.T
    if fmt in ("Q4_1", "Q5_1"):
        # ggml meets the weight min m with the activation block's s = f16(d * sum(q)), d
        # before its f16 rounding; the decoded product above used f16(d) * sum(q)
        bb = raw.reshape(w_shape[0], -1, quant.block_size(fmt)[1])
        m = bb[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)  # (rows, blocks)
        sq = q.sum(axis=-1)  # (tokens, blocks)
        s = f16(d32[..., 0] * sq.astype(np.float32))
        y += (s - d[..., 0] * sq) @ m.T
    return y


# ---- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_scalar(fmt: str, isa: str, rng: np.random.Generator) -> None:
    for n_rows, n_cols, n_tokens, n_threads in SHAPES:
        n_cols = fitting_cols(fmt, n_cols)
        raw = weights(fmt, rng.normal(0, 1, (n_rows, n_cols)).astype(np.float32))
        x = rng.normal(0, 1, (n_tokens, n_cols)).astype(np.float32)
        ref = matmul(raw, fmt, x, "scalar", 1)
        got = matmul(raw, fmt, x, isa, n_threads)
        assert got.shape == (n_tokens, n_rows)
        assert_close(got, ref, raw, fmt, x, (fmt, isa, n_rows, n_cols, n_tokens, n_threads))
        # a token alone (decode) gives bit for bit what it gives inside a batch (prefill),
        # whether it sits in a full group of the multi-token kernel or in the remainder;
        # except where the kernels follow llama.cpp's batched order (vec_dot.h): float rows
        # on AVX-512 (its tinyBLAS, 2+ tokens), Q3_K/Q5_K/Q6_K on SIMD (its tiled path, 8+),
        # Q4_K rows in whole groups of 4 tokens on every ISA (its repacked kernel, where the
        # rows are a multiple of 8)
        batched_order = (fmt in ("F32", "F16", "BF16") and isa == "avx512" and n_cols % 16 == 0) or (
            fmt in TILED_FORMATS and isa != "scalar" and n_tokens >= 8
        )
        for t in sorted({0, n_tokens // 2, n_tokens - 1}):
            alone = matmul(raw, fmt, np.ascontiguousarray(x[t : t + 1]), isa, n_threads)
            grouped = fmt == "Q4_K" and n_rows % 8 == 0 and t < n_tokens - n_tokens % 4
            if (batched_order and n_tokens > 1) or grouped:
                np.testing.assert_allclose(alone[0], got[t], rtol=1e-5, atol=1e-5 * np.abs(got[t]).max())
            else:
                np.testing.assert_array_equal(alone[0], got[t])


@pytest.mark.parametrize("fmt", ("F32", "F16", "BF16"))
def test_float_formats_any_length(fmt: str, isa: str, rng: np.random.Generator) -> None:
    """Rows of float formats need not be whole vectors: the tails are handled."""
    for n_cols in (1, 7, 8, 31, 33, 100):
        raw = weights(fmt, rng.normal(0, 1, (19, n_cols)).astype(np.float32))
        x = rng.normal(0, 1, (3, n_cols)).astype(np.float32)
        got, ref = matmul(raw, fmt, x, isa, 2), matmul(raw, fmt, x, "scalar", 1)
        assert_close(got, ref, raw, fmt, x, (fmt, isa, n_cols))


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_float64_emulation(fmt: str, isa: str, rng: np.random.Generator) -> None:
    for n_rows, n_cols, n_tokens in ((33, 2816, 7), (257, 512, 1)):
        n_cols = fitting_cols(fmt, n_cols)
        raw = weights(fmt, rng.normal(0, 1, (n_rows, n_cols)).astype(np.float32))
        x = rng.normal(0, 1, (n_tokens, n_cols)).astype(np.float32)
        got = matmul(raw, fmt, x, isa, 2)
        ref = emulate(raw, fmt, (n_rows, n_cols), x)
        assert_close(got, ref, raw, fmt, x, (fmt, isa, n_rows, n_cols, n_tokens))


@pytest.mark.parametrize("fmt", FORMATS)
def test_large_dynamic_range(fmt: str, isa: str, rng: np.random.Generator) -> None:
    """An activation with one huge outlier, an all-zero token and an all-zero weight row."""
    n_rows, n_cols = 35, 512
    w = rng.normal(0, 1, (n_rows, n_cols)).astype(np.float32)
    w[3] = 0.0
    w[7, :256] *= 1e-3
    raw = weights(fmt, w)
    x = rng.normal(0, 1, (4, n_cols)).astype(np.float32)
    x[0, rng.integers(n_cols)] = 3e4
    x[1] = 0.0
    x[2, :256] *= 1e-4
    got = matmul(raw, fmt, x, isa, 2)
    ref = matmul(raw, fmt, x, "scalar", 1)
    assert np.all(np.isfinite(got))
    for t in range(x.shape[0]):
        assert_close(got[t], ref[t], raw, fmt, x[t : t + 1], (fmt, isa, t))
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_array_equal(got[:, 3], 0.0)
    assert_close(got, emulate(raw, fmt, w.shape, x), raw, fmt, x, (fmt, isa))


def test_invalid_shapes(rng: np.random.Generator) -> None:
    x256 = rng.normal(0, 1, (2, 256)).astype(np.float32)
    raw = weights("Q4_K", rng.normal(0, 1, (4, 256)).astype(np.float32))
    with pytest.raises(ValueError):  # K-quant rows are whole super-blocks of 256
        _kernels.matmul(np.zeros((4, 144), np.uint8), gt("Q4_K"), np.zeros((2, 128), np.float32))
    with pytest.raises(ValueError):  # weight row bytes do not match the columns
        _kernels.matmul(raw, gt("Q4_K"), np.zeros((2, 512), np.float32))
    with pytest.raises(ValueError):  # 32-element formats need whole blocks
        _kernels.matmul(np.zeros((4, 18), np.uint8), gt("Q4_0"), np.zeros((2, 48), np.float32))
    with pytest.raises(ValueError):  # activations must be float32
        _kernels.matmul(raw, gt("Q4_K"), x256.astype(np.float64))
    with pytest.raises(ValueError):  # weights must be uint8
        _kernels.matmul(raw.view(np.int8), gt("Q4_K"), x256)
    with pytest.raises(ValueError):  # non-contiguous activations
        _kernels.matmul(raw, gt("Q4_K"), np.repeat(x256, 2, axis=1)[:, ::2])
    with pytest.raises(ValueError):  # non-contiguous weights
        _kernels.matmul(np.repeat(raw, 2, axis=1)[:, ::2], gt("Q4_K"), x256)
    with pytest.raises(ValueError):  # a type without a dot product
        _kernels.matmul(raw, 99, x256)


def test_set_isa_restores() -> None:
    best = _kernels.cpu_isa()
    for name in ISAS:
        assert _kernels.set_isa(name) == name
    assert _kernels.set_isa(None) == best
    assert _kernels.active_isa() == best
