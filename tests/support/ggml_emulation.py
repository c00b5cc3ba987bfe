"""Test helper: a float64 numpy llama forward that applies, in numpy, the roundings
ggml's CPU backend applies (NUMERICS.md): activations to the weight's vec dot type
before every matmul, K/V stored f16, Q and the softmax probabilities rounded to f16,
RoPE angles built in f32. Written from NUMERICS.md, independently of csrc/: it is what
the CPU backend must reproduce to about float precision.
"""

from __future__ import annotations

import gguf
import numpy as np

from realm_ext.model import Model
from realm_ext.reference import Weights, load_weights, rmsnorm, silu

T = gguf.GGMLQuantizationType
Q8_0_USERS = (T.Q4_0, T.Q5_0, T.Q8_0, T.Q4_1, T.Q5_1)  # Q8_1 rounds the values as Q8_0 does
Q8_K_USERS = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)


def round_q8_0(x: np.ndarray) -> np.ndarray:
    """Rows of x (float32) rounded as ggml's x86 quantize_row_q8_0, returned dequantized."""
    b = np.asarray(x, np.float32).reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0).astype(np.float32)
    q = np.rint(b * inv)  # float32 product, ties to even
    return (q * d.astype(np.float16).astype(np.float64)).reshape(np.shape(x))


def round_q8_k(x: np.ndarray) -> np.ndarray:
    """Rows of x (float32) rounded as ggml's quantize_row_q8_K_ref, returned dequantized."""
    b = np.asarray(x, np.float32).reshape(-1, 256)
    idx = np.abs(b).argmax(axis=1)[:, None]
    mx = np.take_along_axis(b, idx, axis=1)
    nz = mx != 0
    iscale = np.divide(np.float32(-127), mx, out=np.zeros_like(mx), where=nz).astype(np.float32)
    q = np.minimum(np.rint(b * iscale), 127)
    d = np.divide(np.float32(1), iscale, out=np.zeros_like(iscale), where=nz).astype(np.float32)
    return (q * d.astype(np.float64)).reshape(np.shape(x))


def round_bf16(x: np.ndarray) -> np.ndarray:
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def round_activations(x: np.ndarray, wtype: T) -> np.ndarray:
    """x as ggml rounds it before a matmul with a `wtype` weight (float64 result)."""
    x32 = np.asarray(x, np.float32)
    if wtype == T.F32:
        return x32.astype(np.float64)
    if wtype == T.F16:
        return x32.astype(np.float16).astype(np.float64)
    if wtype == T.BF16:
        return round_bf16(x32)
    if wtype in Q8_0_USERS:
        return round_q8_0(x32)
    if wtype in Q8_K_USERS:
        return round_q8_k(x32)
    raise ValueError(wtype)


def f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float64)


def rope_f32_angles(
    positions: np.ndarray,
    base: float,
    rope_dim: int,
    freq_scale: float = 1.0,
    freq_factors: tuple[float, ...] | None = None,
) -> np.ndarray:
    """(n_tokens, rope_dim/2) angles built as ggml's rope cache: theta *= theta_scale in f32,
    pair i at freq_scale * (theta / freq_factors[i]), each step rounded to f32."""
    theta_scale = np.float32(np.power(np.float32(base), np.float32(-2.0) / np.float32(rope_dim)))
    ff = np.ones(rope_dim // 2, np.float32) if freq_factors is None else np.asarray(freq_factors, np.float32)
    theta = np.asarray(positions, np.float32).copy()
    out = np.empty((len(positions), rope_dim // 2), np.float32)
    for i in range(rope_dim // 2):
        out[:, i] = np.float32(freq_scale) * (theta / ff[i])
        theta = (theta * theta_scale).astype(np.float32)
    return out


def rope(x: np.ndarray, angles: np.ndarray, rope_dim: int) -> np.ndarray:
    cos = np.cos(angles.astype(np.float32)).astype(np.float64)[:, None, :]
    sin = np.sin(angles.astype(np.float32)).astype(np.float64)[:, None, :]
    out = x.copy()
    x0, x1 = x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]
    out[..., 0:rope_dim:2] = x0 * cos - x1 * sin
    out[..., 1:rope_dim:2] = x0 * sin + x1 * cos
    return out


class GgmlEmulation:
    """logits(tokens) as ggml's CPU backend computes them, in float64 numpy."""

    def __init__(self, model: Model):
        self.cfg = model.config
        self.w: Weights = load_weights(model)
        self.types = {name: t.type for name, t in model.tensors.items()}
        if model.tied_output:
            self.types["output.weight"] = self.types["token_embd.weight"]

    def mm(self, x: np.ndarray, w: np.ndarray, name: str) -> np.ndarray:
        return round_activations(x, self.types[name]) @ w.T

    def logits(self, tokens: list[int]) -> np.ndarray:
        c, w = self.cfg, self.w
        n = len(tokens)
        pos = np.arange(n)
        angles = rope_f32_angles(pos, c.rope_freq_base, c.rope_dim, c.rope_freq_scale, c.rope_freq_factors)
        x = w.token_embd[np.asarray(tokens)]
        group = c.n_head // c.n_head_kv
        causal = np.triu(np.ones((n, n), bool), 1)
        for i, lw in enumerate(w.layers):
            p = f"blk.{i}."
            h = rmsnorm(x, lw.attn_norm, c.rms_eps)
            q = self.mm(h, lw.wq, p + "attn_q.weight").reshape(n, c.n_head, c.head_dim)
            k = self.mm(h, lw.wk, p + "attn_k.weight").reshape(n, c.n_head_kv, c.head_dim)
            v = self.mm(h, lw.wv, p + "attn_v.weight").reshape(n, c.n_head_kv, c.head_dim)
            q = f16(rope(q, angles, c.rope_dim))
            k = f16(rope(k, angles, c.rope_dim))
            v = f16(v)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            s = np.einsum("thd,shd->hts", q, k) * np.float32(1.0 / np.sqrt(np.float32(c.head_dim)))
            s[:, causal] = -np.inf
            e = np.exp(s - s.max(axis=-1, keepdims=True))
            prob = f16(e / e.sum(axis=-1, keepdims=True))
            att = np.einsum("hts,shd->thd", prob, v).reshape(n, -1)
            x = x + self.mm(att, lw.wo, p + "attn_output.weight")
            h = rmsnorm(x, lw.ffn_norm, c.rms_eps)
            g = self.mm(h, lw.w_gate, p + "ffn_gate.weight")
            u = self.mm(h, lw.w_up, p + "ffn_up.weight")
            x = x + self.mm(silu(g) * u, lw.w_down, p + "ffn_down.weight")
        h = rmsnorm(x, w.output_norm, c.rms_eps)
        return self.mm(h, w.output, "output.weight")
