"""Matrix products and row lookups on GGUF weights in device memory (csrc/cuda/matmul.cu).

A weight is uploaded once as its raw GGUF blocks (`DeviceWeight`); no dequantized copy
is ever made. `matmul` quantizes the activations in a caller-owned scratch buffer,
rounded exactly as the CPU backend rounds them for the weight's type (bit for bit the
bytes of realm_ext._kernels.quantize_acts):
  Q4_0 Q5_0 Q8_0   Q8_0 blocks of 32 (f16 d, 32 int8), stored as 36-byte block_q8_1
                   (the s field unused) so that every activation block is 4-byte aligned
  Q4_1 Q5_1        Q8_1 blocks of 32 (f16 d, f16 s = d * sum(q), 32 int8): 36 bytes
  Q2_K .. Q6_K     Q8_K blocks of 256 (float d, 256 int8, 16 int16 sums): 292 bytes
and multiplies with integer dot products, by the decode kernel (n_tokens <= 8) or the
tiled prefill kernel; float weights multiply float activations directly, rounded to
f16 for F16 and to bf16 for BF16 weights as the CPU does. What differs from the CPU
backend's matmul is the order of the float additions only. Every function here only
validates on the host and launches kernels on a stream: no allocation, no
synchronization, no host copy, so a call can be captured into a CUDA graph (after a
first, uncaptured call of the same weight type has compiled and loaded the kernels).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from realm_ext import quant
from realm_ext.backends.cuda import source as cuda_source

if TYPE_CHECKING:
    import cupy

T = quant.GGMLType
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
# kernel-name suffix of each supported type, as in csrc/cuda/matmul.cu
KERNEL_NAMES: dict[T, str] = {t: t.name[:-1].lower() + t.name[-1] for t in quant.SUPPORTED_TYPES}

Q8_1_BLOCK = 32  # activation values per q8_1 block (the 32-element formats)
Q8_1_BYTES = 36  # f16 d, f16 s, 32 int8
Q8_K_BLOCK = 256  # activation values per Q8_K block (the K-quants)
Q8_K_BYTES = 292  # float d, 256 int8, 16 int16 bsums
K_QUANTS = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
MATVEC_MAX_TOKENS = 8  # up to this many tokens take the decode kernels
# launch shapes, as matmul.cu's MV_WARPS, MM_ROWS, MM_TOKENS, MM_THREADS
_MV_BLOCK = (32, 4, 1)
_MM_ROWS, _MM_TOKENS, _MM_THREADS = 32, 16, 256
_MAX_GRID_Y = 65535
_INT32_MAX = 2**31 - 1


class DeviceWeight:
    """A 2-D GGUF weight (n_rows x n_cols, any supported ggml type) uploaded once: its raw
    blocks, unchanged, in device memory (cupy uint8 array). No dequantized copy, ever."""

    __slots__ = ("ggml_type", "n_rows", "n_cols", "data")

    def __init__(self, data: cupy.ndarray, ggml_type: int, n_rows: int, n_cols: int) -> None:
        """Wrap blocks already on the device (e.g. a view into one upload of a whole
        file): C-contiguous uint8, exactly n_rows rows, starting 16-byte aligned (the
        kernels read blocks in 32-bit words; GGUF aligns tensor data to 32 bytes)."""
        need = n_rows * quant.row_bytes(ggml_type, n_cols)
        if getattr(data, "dtype", None) != np.uint8 or data.ndim != 1 or not data.flags.c_contiguous:
            raise ValueError("weight data must be a 1-D C-contiguous cupy uint8 array")
        if data.nbytes != need:
            raise ValueError(f"weight of {n_rows} x {n_cols} needs {need} bytes, got {data.nbytes}")
        if data.data.ptr % 16:
            raise ValueError(f"weight data must start 16-byte aligned (address {data.data.ptr:#x})")
        self.ggml_type = int(ggml_type)
        self.n_rows = n_rows
        self.n_cols = n_cols
        self.data = data

    @classmethod
    def upload(cls, raw: np.ndarray, ggml_type: int, n_rows: int, n_cols: int) -> DeviceWeight:
        """Copy the raw bytes of an n_rows x n_cols tensor of `ggml_type` to the device.
        Raises ValueError for an unsupported type, a row that is not whole blocks, or a
        byte count that does not match the shape."""
        import cupy

        gt = quant.parse_type(ggml_type)
        n_rows, n_cols = int(n_rows), int(n_cols)
        if not (0 < n_rows <= _INT32_MAX and 0 < n_cols <= _INT32_MAX):
            raise ValueError(f"weight shape must be positive and below 2**31, got {n_rows} x {n_cols}")
        rb = quant.row_bytes(gt, n_cols)
        buf = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        if buf.size != n_rows * rb:
            raise ValueError(
                f"{gt.name} weight of {n_rows} x {n_cols} needs {n_rows * rb} bytes, got {buf.size}"
            )
        return cls(cupy.asarray(buf), int(gt), n_rows, n_cols)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def __repr__(self) -> str:
        return f"DeviceWeight({T(self.ggml_type).name}, {self.n_rows} x {self.n_cols})"


def activation_scratch_bytes(n_tokens: int, n_cols: int, ggml_type: int | None = None) -> int:
    """Bytes of device scratch matmul needs for n_tokens activations of n_cols against a
    weight of `ggml_type`: Q8_K rows (292 bytes per 256) for the K-quants, q8_1 rows (36
    bytes per 32) for the other quantized types, none for the float types. Without a
    type: enough for any type (one scratch buffer shared by every weight of a model)."""
    n_tokens, n_cols = int(n_tokens), int(n_cols)
    q8_1 = n_tokens * _cdiv(n_cols, Q8_1_BLOCK) * Q8_1_BYTES
    q8_k = n_tokens * _cdiv(n_cols, Q8_K_BLOCK) * Q8_K_BYTES
    if ggml_type is None:
        return max(q8_1, q8_k)
    gt = T(int(ggml_type))
    return 0 if gt in FLOAT_TYPES else q8_k if gt in K_QUANTS else q8_1


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a plan: matmul.cu's kernel name, grid and block shapes, and its
    arguments: buffer roles ("W", "x", "out", "scratch", "ids") or numpy scalars."""

    kernel: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple[str | np.integer, ...]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def matmul_plan(ggml_type: int, n_rows: int, n_cols: int, n_tokens: int) -> list[Launch]:
    """The launches of one matmul (shapes already checked; n_tokens >= 1): quantization
    of x into scratch (quantize_q8_K for the K-quants, quantize_q8_1 for the other
    quantized types), then the decode kernel for up to
    MATVEC_MAX_TOKENS tokens (the smallest of its 1/2/4/8-token variants that fits) or
    the tiled prefill kernel; float types: the float matvec over token tiles."""
    gt = T(int(ggml_type))
    name = KERNEL_NAMES[gt]
    dims = (np.int32(n_rows), np.int32(n_cols), np.int32(n_tokens))
    if gt in FLOAT_TYPES:
        nt = 1 if n_tokens == 1 else MATVEC_MAX_TOKENS
        grid = (_cdiv(n_rows, 1 if nt == 1 else 2), _cdiv(n_tokens, nt))
        return [Launch(f"matvec_{name}_t{nt}", grid, _MV_BLOCK, ("W", "x", "out", *dims))]
    n = n_tokens * n_cols
    quantize = "quantize_q8_K" if gt in K_QUANTS else "quantize_q8_1"  # 256 elements per block either way
    plan = [Launch(quantize, (_cdiv(n, 256),), (256,), ("x", "scratch", np.int64(n)))]
    args = ("W", "scratch", "out", *dims)
    if n_tokens <= MATVEC_MAX_TOKENS:
        nt = 1 << (n_tokens - 1).bit_length()  # 1, 2, 4 or 8
        plan.append(Launch(f"matvec_{name}_t{nt}", (_cdiv(n_rows, 1 if nt == 1 else 2),), _MV_BLOCK, args))
    else:
        grid = (_cdiv(n_rows, _MM_ROWS), _cdiv(n_tokens, _MM_TOKENS))
        plan.append(Launch(f"matmul_{name}", grid, (_MM_THREADS,), args))
    return plan


def get_rows_plan(ggml_type: int, n_rows: int, n_cols: int, n_ids: int) -> list[Launch]:
    """The launch of one get_rows (n_ids >= 1): a thread per output element."""
    name = KERNEL_NAMES[T(int(ggml_type))]
    args = ("W", "ids", "out", np.int32(n_rows), np.int32(n_cols))
    return [Launch(f"get_rows_{name}", (n_ids, _cdiv(n_cols, 256)), (256,), args)]


@functools.cache
def _kernel(name: str) -> Any:
    return cuda_source.load_module("matmul").get_function(name)


def kernel_names(ggml_type: int) -> list[str]:
    """Every kernel of matmul.cu that the plans of a weight type launch."""
    gt = T(int(ggml_type))
    names = {lc.kernel for nt in (1, 2, 3, 5, 9) for lc in matmul_plan(gt, 1, 256, nt)}
    return sorted(names | {lc.kernel for lc in get_rows_plan(gt, 1, 256, 1)})


@functools.cache
def kernels(ggml_type: int) -> dict[str, Any]:
    """Those kernels by name, compiled and loaded once per process (call it before
    capturing a graph to keep module loading out of the capture)."""
    return {k: _kernel(k) for k in kernel_names(ggml_type)}


def _launch(plan: list[Launch], buffers: dict[str, Any], stream: Any) -> None:
    ks = kernels(buffers["W"].ggml_type)
    with stream if stream is not None else contextlib.nullcontext():
        for lc in plan:
            args = tuple(
                buffers["W"].data if a == "W" else buffers[a] if isinstance(a, str) else a for a in lc.args
            )
            ks[lc.kernel](lc.grid, lc.block, args)


def _check_array(what: str, a: Any, dtype: Any, shape: tuple[int, ...]) -> None:
    import cupy

    if not isinstance(a, cupy.ndarray):
        raise ValueError(f"{what} must be a cupy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{what} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous")


def _overlap(a: Any, b: Any) -> bool:
    return (
        a.nbytes > 0
        and b.nbytes > 0
        and a.data.ptr < b.data.ptr + b.nbytes
        and b.data.ptr < a.data.ptr + a.nbytes
    )


def matmul(w: DeviceWeight, x: Any, out: Any, scratch: Any, stream: Any = None) -> None:
    """out[t, r] = sum_c W[r, c] * x[t, c]. x: cupy float32 (n_tokens, n_cols) C-contiguous,
    out: cupy float32 (n_tokens, n_rows) C-contiguous (may not alias x), scratch: cupy uint8 of
    >= activation_scratch_bytes(n_tokens, n_cols, w.ggml_type). Launches kernels on `stream` (cupy's
    current stream if None) and nothing else: no allocation, no host sync, no host copy,
    so it can be captured into a CUDA graph. Decode (n_tokens small) and prefill paths
    are chosen inside. Raises ValueError on bad shapes/dtypes before launching."""
    import cupy

    if not isinstance(x, cupy.ndarray) or x.ndim != 2:
        raise ValueError(
            f"x must be a 2-D cupy array (n_tokens, {w.n_cols}), got {getattr(x, 'shape', type(x))}"
        )
    n_tokens = int(x.shape[0])
    _check_array("x", x, np.float32, (n_tokens, w.n_cols))
    _check_array("out", out, np.float32, (n_tokens, w.n_rows))
    if _overlap(x, out):
        raise ValueError("out may not overlap x")
    gt = T(w.ggml_type)
    quantized = gt not in FLOAT_TYPES
    if quantized:
        need = activation_scratch_bytes(n_tokens, w.n_cols, w.ggml_type)
        if (
            not isinstance(scratch, cupy.ndarray)
            or scratch.dtype != np.uint8
            or not scratch.flags.c_contiguous
        ):
            raise ValueError("scratch must be a C-contiguous cupy uint8 array")
        if scratch.nbytes < need:
            raise ValueError(
                f"scratch holds {scratch.nbytes} bytes, {need} needed for {n_tokens} x {w.n_cols}"
            )
        if scratch.data.ptr % 4:
            raise ValueError("scratch must start 4-byte aligned (activation blocks are read in 32-bit words)")
        if _overlap(scratch, x) or _overlap(scratch, out):
            raise ValueError("scratch may not overlap x or out")
    if _cdiv(n_tokens, _MM_TOKENS if quantized else MATVEC_MAX_TOKENS) > _MAX_GRID_Y:
        raise ValueError(f"too many tokens for one call: {n_tokens}")
    if n_tokens == 0:
        return
    plan = matmul_plan(w.ggml_type, w.n_rows, w.n_cols, n_tokens)
    _launch(plan, {"W": w, "x": x, "out": out, "scratch": scratch}, stream)


def get_rows(w: DeviceWeight, ids: Any, out: Any, stream: Any = None) -> None:
    """out[i, :] = decoded row ids[i] of w (embedding lookup) for any supported type.
    ids: cupy int32 (n,), out: cupy float32 (n, n_cols). Capture-safe like matmul.
    The ids are not checked on the host (that would need a sync): an id outside
    0 .. n_rows-1 gives a row of NaN, never a read out of bounds."""
    import cupy

    if not isinstance(ids, cupy.ndarray) or ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D cupy array, got {getattr(ids, 'shape', type(ids))}")
    n = int(ids.shape[0])
    _check_array("ids", ids, np.int32, (n,))
    _check_array("out", out, np.float32, (n, w.n_cols))
    if _cdiv(w.n_cols, 256) > _MAX_GRID_Y:
        raise ValueError(f"rows too long for get_rows: {w.n_cols}")
    if n == 0:
        return
    _launch(get_rows_plan(w.ggml_type, w.n_rows, w.n_cols, n), {"W": w, "ids": ids, "out": out}, stream)
