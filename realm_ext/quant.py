"""Encode and decode GGUF block formats.

A quantized tensor is held as its raw bytes: a uint8 array of shape
(*rows, row_bytes), exactly as the tensor lies in a GGUF file. `dequantize` decodes
with the C row decoders (bit-exact with ggml); `quantize` encodes with the gguf
package's encoders where it has them (F16, BF16, Q4_0 .. Q8_0) and with our C
encoders for the K-quants (Q2_K .. Q6_K).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import gguf
import numpy as np

from realm_ext import _kernels

GGMLType = gguf.GGMLQuantizationType

# The weight formats realm-ext reads, in ggml's order.
SUPPORTED_TYPES: tuple[GGMLType, ...] = (
    GGMLType.F32,
    GGMLType.F16,
    GGMLType.BF16,
    GGMLType.Q4_0,
    GGMLType.Q4_1,
    GGMLType.Q5_0,
    GGMLType.Q5_1,
    GGMLType.Q8_0,
    GGMLType.Q2_K,
    GGMLType.Q3_K,
    GGMLType.Q4_K,
    GGMLType.Q5_K,
    GGMLType.Q6_K,
)
K_QUANTS = (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)

# Byte offsets, inside one block, of each format's f16 scale fields (ggml layouts).
SCALE_FIELDS: dict[GGMLType, tuple[int, ...]] = {
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
}

# Rows of K-quant encoding handed to one worker thread (the C encoder releases the GIL).
_ROWS_PER_TASK = 64


def parse_type(t: str | int | GGMLType) -> GGMLType:
    """A supported GGMLType from its name ('Q4_K', 'q4_k') or id; ValueError otherwise."""
    try:
        gt = GGMLType.__members__[t.upper()] if isinstance(t, str) else GGMLType(int(t))
    except (KeyError, ValueError):
        raise ValueError(f"unknown tensor type {t!r}") from None
    if gt not in SUPPORTED_TYPES:
        names = ", ".join(x.name for x in SUPPORTED_TYPES)
        raise ValueError(f"tensor type {gt.name} is not supported (supported: {names})")
    return gt


def block_size(t: str | int | GGMLType) -> tuple[int, int]:
    """(elements per block, bytes per block) of a supported type."""
    gt = parse_type(t)
    return _kernels.block_elems(int(gt)), _kernels.block_bytes(int(gt))


def row_bytes(t: str | int | GGMLType, n_cols: int) -> int:
    """Bytes of one row of n_cols elements; ValueError when n_cols is not whole blocks."""
    gt = parse_type(t)
    qk, nbytes = block_size(gt)
    if n_cols % qk != 0:
        raise ValueError(f"a {gt.name} row must be a multiple of {qk} elements, got {n_cols}")
    return n_cols // qk * nbytes


def dequantize(raw: np.ndarray | bytes, t: str | int | GGMLType, shape: Sequence[int]) -> np.ndarray:
    """Decode the raw bytes of a tensor of `shape` (elements, row-major) to float32."""
    gt = parse_type(t)
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("shape must have at least one dimension")
    n_cols = shape[-1]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    rb = row_bytes(gt, n_cols)
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    buf = np.ascontiguousarray(buf).view(np.uint8).reshape(-1)
    if buf.size != n_rows * rb:
        raise ValueError(f"{gt.name} tensor of shape {shape} needs {n_rows * rb} bytes, got {buf.size}")
    out = np.empty((n_rows, n_cols), dtype=np.float32)
    _kernels.dequantize_rows(buf.reshape(n_rows, rb), int(gt), out)
    return out.reshape(shape)


def quantize(array: np.ndarray, t: str | int | GGMLType, n_threads: int | None = None) -> np.ndarray:
    """Encode a float array to `t`; returns raw bytes of shape (*array.shape[:-1], row_bytes)."""
    gt = parse_type(t)
    if np.ndim(array) == 0:
        raise ValueError("cannot quantize a scalar")
    x = np.ascontiguousarray(array, dtype=np.float32)
    n_cols = x.shape[-1]
    rb = row_bytes(gt, n_cols)  # validates the row length
    out_shape = (*x.shape[:-1], rb)
    if gt == GGMLType.F32:
        return x.view(np.uint8).reshape(out_shape)
    if gt not in K_QUANTS:
        # gguf's own encoders (ggml's reference algorithms, in numpy)
        return np.ascontiguousarray(gguf.quants.quantize(x, gt)).view(np.uint8).reshape(out_shape)
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    rows = x.reshape(-1, n_cols)
    out = np.empty((rows.shape[0], rb), dtype=np.uint8)
    starts = range(0, rows.shape[0], _ROWS_PER_TASK)
    n_threads = n_threads or os.cpu_count() or 1
    if n_threads == 1 or len(starts) == 1:
        _kernels.quantize_rows_k(rows, int(gt), out)
    else:

        def encode(s: int) -> None:
            e = s + _ROWS_PER_TASK
            _kernels.quantize_rows_k(rows[s:e], int(gt), out[s:e])

        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(encode, starts))
    return out.reshape(out_shape)


def random_blocks(
    rng: np.random.Generator, t: str | int | GGMLType, shape: Sequence[int], scale: float = 1e-4
) -> np.ndarray:
    """Raw bytes of a random, valid tensor of `t`: random quants, f16 scale fields drawn
    from |N(0, scale)|. For speed tests, where encoding real values would take minutes."""
    gt = parse_type(t)
    shape = tuple(int(s) for s in shape)
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    rb = row_bytes(gt, shape[-1])
    if gt in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        return quantize(
            rng.standard_normal((n_rows, shape[-1]), dtype=np.float32) * np.float32(scale * 20), gt
        )
    qk, bb = block_size(gt)
    nb = n_rows * shape[-1] // qk
    blocks = rng.integers(0, 256, (nb, bb), dtype=np.uint8)
    for off in SCALE_FIELDS[gt]:
        d = np.abs(rng.normal(0.0, scale, nb)).astype(np.float16)
        blocks[:, off : off + 2] = d.view(np.uint8).reshape(nb, 2)
    return blocks.reshape(*shape[:-1], rb) if len(shape) > 1 else blocks.reshape(rb)
