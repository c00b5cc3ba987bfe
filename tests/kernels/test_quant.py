"""realm_ext.quant: C decoders against gguf.quants.dequantize, encoders' error bounds."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from realm_ext import _kernels, quant

T = gguf.GGMLQuantizationType

# Byte offsets of the f16 scale fields inside one block, per format (ggml's layouts).
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}

# The sizes, as ggml lays the blocks out: (elements, bytes) per block.
GGML_SIZES = {
    T.F32: (1, 4),
    T.F16: (1, 2),
    T.BF16: (1, 2),
    T.Q4_0: (32, 18),
    T.Q4_1: (32, 20),
    T.Q5_0: (32, 22),
    T.Q5_1: (32, 24),
    T.Q8_0: (32, 34),
    T.Q2_K: (256, 84),
    T.Q3_K: (256, 110),
    T.Q4_K: (256, 144),
    T.Q5_K: (256, 176),
    T.Q6_K: (256, 210),
}


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random f16 bit patterns covering subnormals, normals and both signs, never inf/nan."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    inf_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_nan] &= np.uint16(0xBFFF)  # clear the top exponent bit: finite
    return bits


def random_raw(rng: np.random.Generator, t: T, n_rows: int, n_cols: int) -> np.ndarray:
    """Random bytes for a (n_rows, n_cols) tensor of type t, with finite scales."""
    qk, bb = GGML_SIZES[t]
    if t == T.F32:
        x = rng.standard_normal((n_rows, n_cols), dtype=np.float32) * np.float32(10.0) ** rng.integers(
            -30, 30, (n_rows, n_cols)
        ).astype(np.float32)
        return x.view(np.uint8)
    if t == T.F16:
        return finite_f16_bits(rng, n_rows * n_cols).reshape(n_rows, n_cols).view(np.uint8)
    if t == T.BF16:
        bits = rng.integers(0, 1 << 16, (n_rows, n_cols), dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= np.uint16(0xFF7F)
        return bits.view(np.uint8)
    nb = n_rows * n_cols // qk
    blocks = rng.integers(0, 256, (nb, bb), dtype=np.uint16).astype(np.uint8)
    for off in F16_FIELDS[t]:
        blocks[:, off : off + 2] = finite_f16_bits(rng, nb).view(np.uint8).reshape(nb, 2)
    return blocks.reshape(n_rows, n_cols // qk * bb)


def test_block_sizes_match_ggml() -> None:
    assert set(quant.SUPPORTED_TYPES) == set(GGML_SIZES)
    for t, size in GGML_SIZES.items():
        assert quant.block_size(t) == size == gguf.GGML_QUANT_SIZES[t], t.name
    # the activation formats are in the header too
    assert _kernels.block_bytes(int(T.Q8_1)) == 36
    assert _kernels.block_bytes(int(T.Q8_K)) == 292
    assert _kernels.block_bytes(int(T.IQ4_NL)) == 0


@pytest.mark.parametrize("t", quant.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_decode_is_bit_exact_with_gguf(t: T, rng: np.random.Generator) -> None:
    n_rows, n_cols = 7, 3 * 256
    raw = random_raw(rng, t, n_rows, n_cols)
    ours = quant.dequantize(raw, t, (n_rows, n_cols))
    ref = gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == (n_rows, n_cols)
    assert np.isfinite(ours).all()
    mismatch = ours.view(np.uint32) != ref.view(np.uint32)
    assert not mismatch.any(), (
        f"{mismatch.sum()} of {mismatch.size} values differ, first at {np.argwhere(mismatch)[0]}"
    )


def test_decode_f16_specials() -> None:
    bits = np.array(
        [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x3C00],
        dtype=np.uint16,
    )
    ours = quant.dequantize(bits.view(np.uint8), "F16", bits.shape)
    np.testing.assert_array_equal(
        ours.view(np.uint32), bits.view(np.float16).astype(np.float32).view(np.uint32)
    )


def test_decode_accepts_any_leading_shape_and_bytes(rng: np.random.Generator) -> None:
    raw = random_raw(rng, T.Q4_0, 6, 64)
    a = quant.dequantize(raw, "q4_0", (2, 3, 64))
    b = quant.dequantize(raw.tobytes(), T.Q4_0, (6, 64))
    np.testing.assert_array_equal(a.reshape(6, 64), b)
    assert quant.dequantize(raw[:1], 2, (64,)).shape == (64,)


def test_decode_rejects_bad_input(rng: np.random.Generator) -> None:
    raw = random_raw(rng, T.Q4_K, 2, 256)
    with pytest.raises(ValueError, match="needs 288 bytes, got 144"):
        quant.dequantize(raw[:1], T.Q4_K, (2, 256))
    with pytest.raises(ValueError, match="multiple of 256"):
        quant.dequantize(raw, T.Q4_K, (3, 192))
    with pytest.raises(ValueError, match="not supported"):
        quant.dequantize(raw, T.IQ4_NL, (2, 256))
    with pytest.raises(ValueError, match="unknown tensor type"):
        quant.dequantize(raw, "Q9_9", (2, 256))
    # the Cython layer checks shapes itself, before any pointer reaches C
    out = np.empty((2, 256), np.float32)
    with pytest.raises(ValueError, match="expected 2x144"):
        _kernels.dequantize_rows(np.zeros((2, 100), np.uint8), int(T.Q4_K), out)
    with pytest.raises(ValueError):
        _kernels.dequantize_rows(raw, int(T.Q4_K), np.empty((2, 256), np.float64))
    with pytest.raises(ValueError):
        _kernels.dequantize_rows(np.zeros((2, 288), np.uint8)[:, ::2], int(T.Q4_K), out)  # strided


# Relative L2 error of llama.cpp's quantizer on N(0, 0.02) weights (from the issue), and
# for the formats it gives no figure for, the error of ggml's reference algorithm as
# measured here. Our encoders must be within 1.25x.
LLAMA_CPP_ERROR = {
    T.F16: 2.1e-4,
    T.BF16: 1.7e-3,
    T.Q8_0: 0.005,
    T.Q6_K: 0.018,
    T.Q5_K: 0.036,
    T.Q4_K: 0.071,
    T.Q4_0: 0.086,
    T.Q4_1: 0.079,
    T.Q5_0: 0.043,
    T.Q5_1: 0.039,
    T.Q3_K: 0.153,
    T.Q2_K: 0.297,
}


@pytest.mark.parametrize("t", list(LLAMA_CPP_ERROR), ids=lambda t: t.name)
def test_quantize_error_within_bound(t: T, rng: np.random.Generator) -> None:
    x = rng.normal(0.0, 0.02, (128, 2048)).astype(np.float32)
    raw = quant.quantize(x, t)
    assert raw.dtype == np.uint8 and raw.shape == (128, quant.row_bytes(t, 2048))
    back = gguf.quants.dequantize(raw, t).reshape(x.shape)  # independent decoder
    rel = float(np.linalg.norm(back - x) / np.linalg.norm(x))
    print(f"{t.name} relative L2 {rel:.5f}")
    assert rel <= 1.25 * LLAMA_CPP_ERROR[t], f"{t.name}: relative L2 {rel:.5f}"
    assert rel > 0.5 * LLAMA_CPP_ERROR[t], f"{t.name}: suspiciously exact ({rel:.5f}): is it really {t.name}?"


def test_quantize_f32_is_lossless(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(quant.dequantize(quant.quantize(x, "F32"), "F32", x.shape), x)


@pytest.mark.parametrize("t", quant.K_QUANTS, ids=lambda t: t.name)
def test_k_quant_edge_rows(t: T) -> None:
    rows = np.stack(
        [
            np.zeros(256, np.float32),
            np.full(256, 0.5, np.float32),
            np.full(256, -3.0, np.float32),
            np.linspace(-1e-20, 1e-20, 256, dtype=np.float32),
            np.linspace(-1000, 1000, 256, dtype=np.float32),
            np.where(np.arange(256) == 17, 1.0, 0.0).astype(np.float32),
        ]
    )
    back = gguf.quants.dequantize(quant.quantize(rows, t), t).reshape(rows.shape)
    assert np.isfinite(back).all()
    np.testing.assert_array_equal(back[0], 0.0)
    for i in (1, 2, 4, 5):  # large rows come back close (the spike within its scale step)
        rel = np.linalg.norm(back[i] - rows[i]) / np.linalg.norm(rows[i])
        assert rel < {T.Q2_K: 0.35, T.Q3_K: 0.2}.get(t, 0.1), (i, rel)


def test_k_quant_threads_do_not_change_bytes(rng: np.random.Generator) -> None:
    x = rng.normal(0, 0.02, (300, 512)).astype(np.float32)
    np.testing.assert_array_equal(
        quant.quantize(x, "Q4_K", n_threads=1), quant.quantize(x, "Q4_K", n_threads=4)
    )


def test_quantize_rejects_bad_rows() -> None:
    with pytest.raises(ValueError, match="Q4_K row must be a multiple of 256 elements, got 320"):
        quant.quantize(np.zeros((4, 320), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="Q8_0 row must be a multiple of 32 elements, got 33"):
        quant.quantize(np.zeros((4, 33), np.float32), "Q8_0")
    with pytest.raises(ValueError, match="scalar"):
        quant.quantize(np.float32(1.0), "F16")


@pytest.mark.parametrize("t", quant.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_random_blocks_are_valid(t: T) -> None:
    a = quant.random_blocks(np.random.default_rng(1), t, (8, 512))
    b = quant.random_blocks(np.random.default_rng(1), t, (8, 512))
    assert a.dtype == np.uint8 and a.shape == (8, quant.row_bytes(t, 512))
    np.testing.assert_array_equal(a, b)
    x = gguf.quants.dequantize(a, t).reshape(8, 512)
    assert np.isfinite(x).all() and 0 < np.abs(x).max() < 1.0
