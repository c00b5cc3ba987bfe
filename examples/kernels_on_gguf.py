"""The low-level API on a GGUF file: quantized matvec / matmul, checked against numpy.

What it shows:
- `realm_ext.model.load_gguf`: a model's tensors as raw GGUF bytes, memory-mapped
  ((rows, row_bytes) uint8; nothing is decoded on load);
- `realm_ext.quant.dequantize`: our C block decoders, equal bit for bit to the gguf
  package's `gguf.quants.dequantize`;
- `realm_ext.kernels.matmul`: y = x W^T straight from the quantized bytes. Like
  llama.cpp, it first rounds x to the weight's "vec dot type" (Q8_K for the K-quants,
  Q8_0 or Q8_1 for the 32-blocks; `kernels.vec_dot_type`, `kernels.quantize_acts`),
  then takes integer dot products. So it is compared twice: with the exact float64
  product of the decoded weights (the error is the activations' 8-bit rounding, below
  1e-2 relative), and with the same product on the rounded activations (float sum
  order only, about 1e-7; 1e-3 for Q4_1 and Q5_1, whose dot product takes each block's
  sum from Q8_1's f16 field s rather than from the rounded values).

Run it from the repository root:

    python examples/kernels_on_gguf.py                       # the tiny preset, made now
    python examples/kernels_on_gguf.py --model model.gguf --tensor blk.0.ffn_down.weight
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gguf
import numpy as np

from realm_ext import kernels, quant
from realm_ext.model import Tensor, load_gguf
from realm_ext.model_maker import make_model

T = gguf.GGMLQuantizationType


def decode_acts(raw: np.ndarray, t: T, n_cols: int) -> np.ndarray:
    """Rows of activations rounded by kernels.quantize_acts, back to float64. Q8_K and
    Q8_1 are activation-only formats that gguf does not decode: d * q by hand."""
    if t == T.Q8_K:  # per 256: f32 d, 256 x i8, 16 x i16 sums
        blocks = raw.reshape(-1).view(np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)]))
    elif t == T.Q8_1:  # per 32: f16 d, f16 s (= d * sum q), 32 x i8
        blocks = raw.reshape(-1).view(np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", 32)]))
    else:
        return gguf.quants.dequantize(raw, t).astype(np.float64).reshape(-1, n_cols)
    return (blocks["d"].astype(np.float64)[:, None] * blocks["qs"]).reshape(-1, n_cols)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def check(tensor: Tensor, x: np.ndarray) -> None:
    wtype = tensor.type
    w = gguf.quants.dequantize(tensor.raw, wtype).astype(np.float64)  # (rows, cols)
    same = np.array_equal(quant.dequantize(tensor.raw, wtype, tensor.shape), w.astype(np.float32))
    act_type = T(kernels.vec_dot_type(int(wtype)))
    x_rounded = decode_acts(kernels.quantize_acts(int(wtype), x), act_type, x.shape[1])

    y_vec = kernels.matmul(tensor.raw, int(wtype), x[:1])  # one token: a matvec
    y_mat = kernels.matmul(tensor.raw, int(wtype), x)  # every token at once
    exact = x.astype(np.float64) @ w.T
    on_rounded = x_rounded @ w.T
    print(
        f"{tensor.name:24s} {wtype.name:5s} {str(tensor.shape):12s} decode==gguf {str(same):5s} "
        f"acts->{act_type.name:4s} | matvec err {rel_err(y_vec, exact[:1]):.2e} | matmul err "
        f"{rel_err(y_mat, exact):.2e} | vs rounded acts {rel_err(y_mat, on_rounded):.2e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a llama GGUF (default: the tiny preset, made now)")
    ap.add_argument("--tensor", action="append", help="a tensor name (default: one of each quantized type)")
    ap.add_argument("--tokens", type=int, default=8, help="rows of x for the matmul")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_model(Path(tmp) / "tiny.gguf", "tiny", "Q4_K_M")
        with load_gguf(path) as model:
            names = args.tensor
            if not names:  # the first 2-D tensor of each type that is not plain F32
                first: dict[T, str] = {}
                for t in model.tensors.values():
                    if len(t.shape) == 2 and t.type != T.F32:
                        first.setdefault(t.type, t.name)
                names = list(first.values())
            print(f"{path}: kernels {kernels.active_isa()} (CPU offers {kernels.cpu_isa()})")
            for name in names:
                tensor = model.tensor(name)
                x = rng.standard_normal((args.tokens, tensor.shape[1]), dtype=np.float32)
                check(tensor, x)


if __name__ == "__main__":
    main()
