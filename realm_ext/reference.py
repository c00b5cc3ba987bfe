"""The llama forward pass in plain numpy float64: the oracle every backend is checked against,
with what each family adds (realm_ext.arch): Q/K/V biases (Qwen2); NEOX RoPE; Gemma 3's
scaled embedding, per-head Q/K norms, post-block norms, GELU gating, Q scaled before
attention, sliding-window layers and their own RoPE base.

Read it top to bottom, like llama2.c's run.c. Nothing here is fast or clever on purpose:
every weight is dequantized once, with the gguf package's own `gguf.quants.dequantize`
(not `realm_ext.quant`, so the oracle does not share a decoder with the code it checks),
and held as a float64 matrix; every step is a few lines of numpy in float64.

Layouts (numpy order, rows first):

- a weight `W` of shape (n_out, n_in) is applied as `y = W @ x`; for a batch of token
  rows `x` of shape (n_tokens, n_in) that is `x @ W.T`, shape (n_tokens, n_out);
- hidden states are (n_tokens, n_embd), token t at absolute position t;
- Q is (n_tokens, n_head, head_dim), K and V are (n_tokens, n_head_kv, head_dim):
  row block h of attn_q (rows h*head_dim .. (h+1)*head_dim-1) is query head h;
- GGUF's llama tensors need no Q/K un-permutation: RoPE rotates adjacent pairs
  (x[2i], x[2i+1]) of each head by pos * base^(-2i/rope_dim), for i < rope_dim/2,
  divided by rope_freqs[i] when the model has that tensor and by the linear scaling
  factor when it has one; the dims from rope_dim on are not rotated;
- grouped-query attention: query head h reads KV head h // (n_head // n_head_kv).

The whole prompt goes through at once (positions 0..n-1, causal mask); there is no
KV cache here, because the oracle of a cached, incremental forward is the same prefix
run from scratch: row t of `logits(tokens)` is what any backend must produce for
token t, however it got there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gguf
import numpy as np

from realm_ext import arch
from realm_ext.model import LlamaConfig, Model, Tensor

# ---- weights -------------------------------------------------------------------------


def dequantize_f64(tensor: Tensor) -> np.ndarray:
    """A GGUF tensor as a float64 array of its numpy shape, decoded by the gguf package."""
    values = gguf.quants.dequantize(np.asarray(tensor.raw), tensor.type)
    return np.asarray(values, dtype=np.float64).reshape(tensor.shape)


@dataclass
class LayerWeights:
    """One transformer block, float64. Matrices are (n_out, n_in)."""

    attn_norm: np.ndarray  # (n_embd,)
    wq: np.ndarray  # (n_head * head_dim, n_embd)
    wk: np.ndarray  # (n_head_kv * head_dim, n_embd)
    wv: np.ndarray  # (n_head_kv * head_dim, n_embd)
    wo: np.ndarray  # (n_embd, n_head * head_dim)
    ffn_norm: np.ndarray  # (n_embd,)
    w_gate: np.ndarray  # (n_ff, n_embd)
    w_up: np.ndarray  # (n_ff, n_embd)
    w_down: np.ndarray  # (n_embd, n_ff)
    # what a family adds (None where it has none)
    bq: np.ndarray | None = None  # (n_head * head_dim,)
    bk: np.ndarray | None = None  # (n_head_kv * head_dim,)
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None  # (head_dim,)
    k_norm: np.ndarray | None = None
    attn_post_norm: np.ndarray | None = None  # (n_embd,)
    ffn_post_norm: np.ndarray | None = None


@dataclass
class Weights:
    """Every weight of a llama model, float64."""

    token_embd: np.ndarray  # (n_vocab, n_embd): row t is token t's embedding
    layers: list[LayerWeights]
    output_norm: np.ndarray  # (n_embd,)
    output: np.ndarray  # (n_vocab, n_embd): token_embd itself when the model is tied


def load_weights(model: Model) -> Weights:
    """Dequantize every tensor of `model` to float64, once."""
    token_embd = dequantize_f64(model.tensor("token_embd.weight"))
    output = token_embd if model.tied_output else dequantize_f64(model.tensor("output.weight"))
    layers = []
    for i in range(model.config.n_layer):

        def w(name: str, i: int = i) -> np.ndarray:
            return dequantize_f64(model.layer(i, name))

        def opt(name: str, i: int = i) -> np.ndarray | None:
            t = model.tensors.get(f"blk.{i}.{name}")
            return None if t is None else dequantize_f64(t)

        layers.append(
            LayerWeights(
                attn_norm=w("attn_norm"),
                wq=w("attn_q"),
                wk=w("attn_k"),
                wv=w("attn_v"),
                wo=w("attn_output"),
                ffn_norm=w("ffn_norm"),
                w_gate=w("ffn_gate"),
                w_up=w("ffn_up"),
                w_down=w("ffn_down"),
                bq=opt("attn_q.bias"),
                bk=opt("attn_k.bias"),
                bv=opt("attn_v.bias"),
                q_norm=opt("attn_q_norm.weight"),
                k_norm=opt("attn_k_norm.weight"),
                attn_post_norm=opt("post_attention_norm.weight"),
                ffn_post_norm=opt("post_ffw_norm.weight"),
            )
        )
    return Weights(
        token_embd=token_embd,
        layers=layers,
        output_norm=dequantize_f64(model.tensor("output_norm.weight")),
        output=output,
    )


# ---- the building blocks -------------------------------------------------------------


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * weight


def rope(
    x: np.ndarray,
    positions: np.ndarray,
    base: float,
    rope_dim: int,
    freq_scale: float = 1.0,
    freq_factors: tuple[float, ...] | None = None,
    neox: bool = False,
) -> np.ndarray:
    """Rotary position embedding of x (n_tokens, n_heads, head_dim), llama GGUF order.

    Pair i of each head, (x[2i], x[2i+1]) for i < rope_dim/2 (with neox: (x[i],
    x[i + rope_dim/2])), turns by the angle freq_scale * positions[t] * base^(-2i/rope_dim)
    / freq_factors[i]; dims from rope_dim on pass through.
    """
    half = rope_dim // 2
    inv_freq = base ** (-2.0 * np.arange(half, dtype=np.float64) / rope_dim)  # (half,)
    if freq_factors is not None:
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    angle = (
        freq_scale * np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    )  # (n_tokens, half)
    cos = np.cos(angle)[:, None, :]  # broadcast over heads
    sin = np.sin(angle)[:, None, :]
    if neox:
        first, second = slice(0, half), slice(half, rope_dim)
    else:
        first, second = slice(0, rope_dim, 2), slice(1, rope_dim, 2)
    x0, x1 = x[..., first], x[..., second]
    out = x.astype(np.float64, copy=True)
    out[..., first] = x0 * cos - x1 * sin
    out[..., second] = x0 * sin + x1 * cos
    return out


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int | None = None, scale: float | None = None
) -> np.ndarray:
    """Causal grouped-query softmax attention.

    q: (n_tokens, n_head, head_dim); k, v: (n_tokens, n_head_kv, head_dim), with RoPE
    already applied. Token t attends to tokens max(0, t - window + 1)..t (0..t without a
    window); scores times `scale` (1/sqrt(head_dim) when None). Returns (n_tokens, n_head,
    head_dim).
    """
    n_tokens, n_head, head_dim = q.shape
    n_head_kv = k.shape[1]
    group = n_head // n_head_kv
    # query head h reads KV head h // group: repeat each KV head `group` times
    k = np.repeat(k, group, axis=1)  # (n_tokens, n_head, head_dim)
    v = np.repeat(v, group, axis=1)
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    scores = np.einsum("thd,shd->hts", q, k) * scale  # (n_head, query t, key s)
    t, s_ = np.arange(n_tokens)[:, None], np.arange(n_tokens)[None, :]
    masked = (s_ > t) if window is None else (s_ > t) | (s_ <= t - window)
    scores[:, masked] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def ffn(x: np.ndarray, lw: LayerWeights, act: str = arch.SILU) -> np.ndarray:
    """SwiGLU (or GeGLU): down(act(gate x) * (up x)), for token rows x (n_tokens, n_embd)."""
    gate = x @ lw.w_gate.T
    return ((gelu(gate) if act == arch.GELU else silu(gate)) * (x @ lw.w_up.T)) @ lw.w_down.T


def transformer_block(
    x: np.ndarray, lw: LayerWeights, cfg: LlamaConfig, positions: np.ndarray, layer: int = 0
) -> np.ndarray:
    """Layer `layer` (of cfg's family) on hidden states x (n_tokens, n_embd) at `positions`."""
    fam, n_tokens = cfg.family, x.shape[0]

    def maybe(v: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        return v if b is None else v + b

    # attention, pre-norm, with a residual connection
    h = rmsnorm(x, lw.attn_norm, cfg.rms_eps)
    q = maybe(h @ lw.wq.T, lw.bq).reshape(n_tokens, cfg.n_head, cfg.head_dim)
    k = maybe(h @ lw.wk.T, lw.bk).reshape(n_tokens, cfg.n_head_kv, cfg.head_dim)
    v = maybe(h @ lw.wv.T, lw.bv).reshape(n_tokens, cfg.n_head_kv, cfg.head_dim)
    if lw.q_norm is not None and lw.k_norm is not None:  # each head normalised on its own
        q, k = rmsnorm(q, lw.q_norm, cfg.rms_eps), rmsnorm(k, lw.k_norm, cfg.rms_eps)
    base, freq_scale = cfg.layer_rope(layer)
    rot = (base, cfg.rope_dim, freq_scale, cfg.rope_freq_factors, fam.rope_neox)
    q = rope(q, positions, *rot)
    k = rope(k, positions, *rot)
    att = attention(q, k, v, cfg.layer_window(layer)).reshape(n_tokens, cfg.n_head * cfg.head_dim)
    out = att @ lw.wo.T
    if lw.attn_post_norm is not None:
        out = rmsnorm(out, lw.attn_post_norm, cfg.rms_eps)
    x = x + out
    # feed-forward, pre-norm, with a residual connection
    h = rmsnorm(x, lw.ffn_norm, cfg.rms_eps)
    out = ffn(h, lw, fam.ffn_act)
    if lw.ffn_post_norm is not None:
        out = rmsnorm(out, lw.ffn_post_norm, cfg.rms_eps)
    return x + out


# ---- the model -----------------------------------------------------------------------


class ReferenceLlama:
    """The float64 llama forward pass over a loaded model's dequantized weights.

    The weights are decoded once, in the constructor (8 bytes per parameter: meant for
    test-sized models). `logits(tokens)` runs tokens at positions 0..n-1, causally.
    """

    def __init__(self, model: Model):
        self.config: LlamaConfig = model.config
        self.weights: Weights = load_weights(model)

    @classmethod
    def from_weights(cls, config: LlamaConfig, weights: Weights) -> ReferenceLlama:
        """A reference over weights given directly (hand-built cases in tests)."""
        self = cls.__new__(cls)
        self.config = config
        self.weights = weights
        return self

    def check_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        """tokens as an int64 array; ValueError when empty or outside the vocabulary."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"tokens must be a 1-D sequence of ids, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError("tokens is empty")
        if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= self.config.n_vocab)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"token id {int(arr[i])} at index {i} is outside the vocabulary 0..{self.config.n_vocab - 1}"
            )
        return arr

    def embed(self, tokens: Sequence[int]) -> np.ndarray:
        """Embedding rows, (n_tokens, n_embd) (times sqrt(n_embd) where the family scales them)."""
        rows = self.weights.token_embd[self.check_tokens(tokens)]
        return rows * np.sqrt(self.config.n_embd) if self.config.family.embd_scale else rows

    def layer(self, i: int, x: np.ndarray) -> np.ndarray:
        """Layer i on hidden states x (n_tokens, n_embd) at positions 0..n_tokens-1."""
        x = np.asarray(x, dtype=np.float64)
        positions = np.arange(x.shape[0])
        return transformer_block(x, self.weights.layers[i], self.config, positions, i)

    def hidden_states(self, tokens: Sequence[int]) -> list[np.ndarray]:
        """[embeddings, after layer 0, ..., after layer n_layer-1], each (n_tokens, n_embd)."""
        states = [self.embed(tokens)]
        for i in range(self.config.n_layer):
            states.append(self.layer(i, states[-1]))
        return states

    def lm_head(self, x: np.ndarray) -> np.ndarray:
        """Final RMSNorm and output projection: (n_tokens, n_embd) -> (n_tokens, n_vocab)."""
        h = rmsnorm(np.asarray(x, dtype=np.float64), self.weights.output_norm, self.config.rms_eps)
        return h @ self.weights.output.T

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (n_tokens, n_vocab) float64 of tokens at positions 0..n-1, causal."""
        return self.lm_head(self.hidden_states(tokens)[-1])


def reference_logits(model: Model, tokens: Sequence[int]) -> np.ndarray:
    """`ReferenceLlama(model).logits(tokens)`, for a one-off comparison."""
    return ReferenceLlama(model).logits(tokens)
