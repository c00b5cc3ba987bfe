"""Q4_0 and Q4_K repacked to Q4_0_X16 and Q4_K_X16 (csrc/cpu/repack.h): the same blocks
interleaved 16 rows at a time, multiplied bit for bit as the file's rows on every ISA and
token count (Q4_K in both of its float orders: a call of 4 tokens or more sums in
llama.cpp's batched one)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from realm_ext import _kernels, quant

Q4_0 = int(quant.parse_type("Q4_0"))
X16 = _kernels.TYPE_Q4_0_X16
Q4_K = int(quant.parse_type("Q4_K"))
Q4_K_X16 = _kernels.TYPE_Q4_K_X16
ALL_ISAS = ("scalar", "avx2", "avx512")
ISAS = ALL_ISAS[: ALL_ISAS.index(_kernels.cpu_isa()) + 1]
N_TOKENS = (1, 2, 5, 8, 9, 16, 17, 40)  # decode, a batched decode step, prefill passes


def quantized(
    rng: np.random.Generator, n_rows: int, n_cols: int, t: str = "Q4_0"
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 weights, their raw rows of type t); rows of very different scales side by side."""
    w = rng.normal(0, 0.02, (n_rows, n_cols)).astype(np.float32)
    w[3] *= 1e-3
    w[-1] = 0.0
    return w, quant.quantize(w, t).reshape(n_rows, -1)


def q4_0(rng: np.random.Generator, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    return quantized(rng, n_rows, n_cols, "Q4_0")


def packed_by_numpy(raw: np.ndarray) -> np.ndarray:
    """ggml_blocks.h's block_q4_0_x16, written out with numpy: per group of 16 rows and
    block i, the 16 rows' d, then qs[k][r] = row r's qs bytes 4k..4k+3."""
    n_rows = raw.shape[0]
    blocks = raw.reshape(n_rows // 16, 16, -1, 18).transpose(0, 2, 1, 3)  # group, block, row, byte
    d = blocks[..., :2].reshape(*blocks.shape[:2], 32)
    qs = (
        blocks[..., 2:]
        .reshape(*blocks.shape[:3], 4, 4)
        .transpose(0, 1, 3, 2, 4)
        .reshape(*blocks.shape[:2], 256)
    )
    return np.concatenate([d, qs], axis=-1).reshape(n_rows, -1)


def q4_K_packed_by_numpy(raw: np.ndarray) -> np.ndarray:
    """ggml_blocks.h's block_q4_K_x16 with numpy: per group of 16 rows and block i,
    w[k][r] = row r's 32-bit word k."""
    n_rows = raw.shape[0]
    words = raw.reshape(n_rows // 16, 16, -1, 36, 4)  # group, row, block, word, byte
    return words.transpose(0, 2, 3, 1, 4).reshape(n_rows, -1)


@pytest.mark.parametrize("n_rows,n_cols", [(16, 32), (48, 256), (80, 1280)])
def test_the_repack_is_the_documented_interleave(rng, n_rows: int, n_cols: int) -> None:
    _, raw = q4_0(rng, n_rows, n_cols)
    packed = _kernels.repack(raw, Q4_0, X16)
    assert packed.shape == raw.shape
    np.testing.assert_array_equal(packed, packed_by_numpy(raw))


@pytest.mark.parametrize("n_rows,n_cols", [(16, 256), (48, 1280)])
def test_the_q4_K_repack_is_the_documented_interleave(rng, n_rows: int, n_cols: int) -> None:
    _, raw = quantized(rng, n_rows, n_cols, "Q4_K")
    packed = _kernels.repack(raw, Q4_K, Q4_K_X16)
    np.testing.assert_array_equal(packed, q4_K_packed_by_numpy(raw))
    assert not np.array_equal(packed, raw)


# (format, its repacked type, n_cols, row counts): Q4_0's 40 blocks are more than one chunk
# of its chunked prefill kernel; Q4_K's token counts cross 4, where its batched order starts
CASES = [("Q4_0", X16, 1280, 16), ("Q4_0", X16, 1280, 64), ("Q4_0", X16, 1280, 144)]
CASES += [("Q4_K", Q4_K_X16, 1536, 16), ("Q4_K", Q4_K_X16, 1536, 48)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t,packed_type,n_cols,n_rows", CASES)
def test_repacked_matmul_is_the_file_types_matmul_bit_for_bit(
    rng, isa: str, t: str, packed_type: int, n_cols: int, n_rows: int
) -> None:
    file_type = int(quant.parse_type(t))
    _, raw = quantized(rng, n_rows, n_cols, t)
    packed = _kernels.repack(raw, file_type, packed_type)
    x_all = rng.normal(0, 1, (max(N_TOKENS), n_cols)).astype(np.float32)
    x_all[2, 7] = 3e4  # an outlier
    assert _kernels.set_isa(isa) == isa
    try:
        for n_tokens in (*N_TOKENS, 3, 4, 7):
            x = np.ascontiguousarray(x_all[:n_tokens])
            for threads in (1, 3):
                want = _kernels.matmul(raw, file_type, x, n_threads=threads)
                np.testing.assert_array_equal(
                    _kernels.matmul(packed, packed_type, x, n_threads=threads), want
                )
    finally:
        _kernels.set_isa(None)
    # and what both compute is W x, to the activations' rounding (8 bits per 32 or per
    # 256 elements: about 1% of a 16-row product at worst, a layout error is ~100%)
    x = x_all[4:5]
    w64 = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[t]).astype(np.float64)
    ref = w64 @ x[0].astype(np.float64)
    got = _kernels.matmul(packed, packed_type, np.ascontiguousarray(x))[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 3e-2


def test_repack_type_offers_the_interleave_only_where_it_reads_faster() -> None:
    for t in ("Q6_K", "Q8_0", "Q4_1", "F16"):
        assert _kernels.repack_type(int(quant.parse_type(t)), 64, 256) == -1, t
    assert _kernels.repack_type(Q4_0, 40, 256) == -1  # not whole groups of 16 rows
    assert _kernels.repack_type(Q4_K, 64, 32) == -1  # not whole Q4_K blocks
    assert _kernels.set_isa("scalar") == "scalar"
    try:
        for t in (Q4_0, Q4_K):  # the scalar kernels read the file's layout faster
            assert _kernels.repack_type(t, 64, 256) == -1
    finally:
        _kernels.set_isa(None)
    avx512 = _kernels.cpu_isa() == "avx512"
    assert _kernels.repack_type(Q4_0, 64, 256) == (X16 if avx512 else -1)
    assert _kernels.repack_type(Q4_K, 64, 256) == (Q4_K_X16 if avx512 else -1)


def test_shapes_the_interleave_cannot_hold_are_refused(rng) -> None:
    _, raw = q4_0(rng, 48, 256)
    with pytest.raises(ValueError, match="cannot repack a 40 x 256 matrix"):
        _kernels.repack(raw[:40].copy(), Q4_0, X16)
    with pytest.raises(ValueError, match="cannot repack"):
        _kernels.repack(raw, int(quant.parse_type("F32")), X16)
    with pytest.raises(ValueError, match="cannot repack"):  # a pair of types that do not go together
        _kernels.repack(raw, Q4_0, Q4_K_X16)
    with pytest.raises(ValueError, match="out overlaps w"):
        _kernels.repack(raw, Q4_0, X16, out=raw)
    with pytest.raises(ValueError, match="out is 16x144"):
        _kernels.repack(raw, Q4_0, X16, out=np.empty((16, 144), np.uint8))
    packed = _kernels.repack(raw, Q4_0, X16)
    with pytest.raises(ValueError, match="matmul failed"):  # a partial group of rows
        _kernels.matmul(packed[:40].copy(), X16, np.ones((1, 256), np.float32))
