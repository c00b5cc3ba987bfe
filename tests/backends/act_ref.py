"""The activations as the CUDA matmul stores them (csrc/cuda/matmul.cu's quantize kernels),
built from the CPU backend's own bytes (realm_ext._kernels.quantize_acts): the kernels
must produce exactly these.

Device layouts per weight type (cuda_matmul's module docstring):
  Q4_0 Q5_0 Q8_0   the CPU's Q8_0 blocks (f16 d, 32 int8) stored as 36-byte block_q8_1:
                   d, then 2 bytes the kernels do not read (s), then the 32 int8
  Q4_1 Q5_1        the CPU's Q8_1 blocks as they are (f16 d, f16 s, 32 int8)
  K-quants         the CPU's Q8_K blocks as they are (float d, 256 int8, 16 int16 bsums)
"""

from __future__ import annotations

import numpy as np

from realm_ext import _kernels, quant

T = quant.GGMLType
FLOAT_TYPES = (T.F32, T.F16, T.BF16)  # as cuda_matmul's (not imported: emulated_cuda fakes that module)
Q8_0_ROUNDED = (T.Q4_0, T.Q5_0, T.Q8_0)


def cpu_acts(t: T, x: np.ndarray) -> np.ndarray:
    """The CPU backend's activation bytes for weights of type t: (n_tokens, row bytes)."""
    return _kernels.quantize_acts(int(t), np.ascontiguousarray(x, dtype=np.float32))


def device_acts(t: T, x: np.ndarray) -> np.ndarray:
    """What the CUDA matmul's quantize kernel must write for x (n_tokens, n_cols) against
    weights of type t, as uint8 (n_tokens, row bytes); the 2 unread bytes of a Q8_0
    block (see above) are returned as zero."""
    if t in FLOAT_TYPES:
        raise ValueError(f"{t.name} weights take float activations, no quantized rows")
    raw = cpu_acts(t, x)
    if t not in Q8_0_ROUNDED:
        return raw
    n = raw.shape[0]
    blocks = raw.reshape(n, -1, 34)
    out = np.zeros((n, blocks.shape[1], 36), np.uint8)
    out[..., 0:2], out[..., 4:] = blocks[..., 0:2], blocks[..., 2:]
    return out.reshape(n, -1)


def unread_mask(t: T, n_bytes: int) -> np.ndarray:
    """True where device_acts' bytes are compared: all but the Q8_0 blocks' s field."""
    keep = np.ones(n_bytes, bool)
    if t in Q8_0_ROUNDED:
        keep.reshape(-1, 36)[:, 2:4] = False
    return keep
