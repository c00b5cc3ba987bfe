"""A numpy model of the CUDA kernels' activation quantization (quantize_q8_1 in
csrc/cuda/matmul.cu): the same float32 operations, so the same blocks bit for bit."""

from __future__ import annotations

import numpy as np

from realm_ext import quant

T = quant.GGMLType

Q8_1_BYTES = 36  # f16 d, f16 s = d * sum(q), 32 int8 q


def quantize_q8_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x float (n_tokens, n_cols), n_cols % 32 == 0 -> (raw blocks uint8 (n_tokens,
    n_cols / 32 * 36), the values they stand for as float64 (n_tokens, n_cols))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_tokens, n_cols = x.shape
    if n_cols % 32:
        raise ValueError(f"n_cols must be a multiple of 32, got {n_cols}")
    xb = x.reshape(n_tokens, n_cols // 32, 32)
    amax = np.abs(xb).max(axis=-1)
    d = amax / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    v = (xb * inv[..., None]).astype(np.float64)
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)  # roundf: half away from zero
    s = d * q.astype(np.float32).sum(axis=-1)
    d16, s16 = d.astype(np.float16), s.astype(np.float16)
    raw = np.empty((n_tokens, n_cols // 32, Q8_1_BYTES), dtype=np.uint8)
    raw[..., 0:2] = d16.view(np.uint8).reshape(n_tokens, -1, 2)
    raw[..., 2:4] = s16.view(np.uint8).reshape(n_tokens, -1, 2)
    raw[..., 4:] = q.view(np.uint8)
    values = d16.astype(np.float64)[..., None] * q
    return raw.reshape(n_tokens, -1), values.reshape(n_tokens, n_cols)


def s_rounding(t: T, raw: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n_tokens, n_rows): what the kernels' use of q8_1's s (rounded to f16) in place of
    d * sum(q) adds to the dot products of the weight `raw` (n_rows, row bytes) with the
    q8_1 rows y. Only the 32-element formats with an offset use s: their offset term
    (Q4_0: -8 d, Q5_0: -16 d, Q4_1 and Q5_1: m) times (s - d * sum(q)), per block."""
    n_rows = raw.shape[0]
    n_tokens = y.shape[0]
    coef = {T.Q4_0: (0, -8.0), T.Q5_0: (0, -16.0), T.Q4_1: (2, 1.0), T.Q5_1: (2, 1.0)}
    if t not in coef:
        return np.zeros((n_tokens, n_rows))
    off, k = coef[t]
    blocks = raw.reshape(n_rows, -1, quant.block_size(t)[1])
    c = k * blocks[..., off : off + 2].copy().view(np.float16)[..., 0].astype(np.float64)
    yb = y.reshape(n_tokens, -1, Q8_1_BYTES)
    d = yb[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    s = yb[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    q = yb[..., 4:].copy().view(np.int8).astype(np.float64).sum(-1)
    return (s - d * q) @ c.T
