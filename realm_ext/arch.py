"""What a model family is: the one table the loader, the CPU layer and the CUDA layer read.

A family is llama's layer (RMSNorm, Q/K/V, RoPE, attention, output projection, residual,
RMSNorm, gated feed-forward, residual) plus a few switches, each checked against
llama.cpp's graph for that family (src/models/<name>.cpp) and its hyper-parameter
loader. Adding the next family means a row here and the kernels its switches need.

Every family may carry Q/K/V biases (llama.cpp loads `attn_{q,k,v}.bias` wherever they
are present); Qwen2's files always do.
"""

from __future__ import annotations

from dataclasses import dataclass

SILU, GELU = "silu", "gelu"  # the feed-forward's gate: silu(g) * u (SwiGLU) or gelu(g) * u (GeGLU)


@dataclass(frozen=True)
class Architecture:
    """A family: llama's layer (the defaults) and what it changes."""

    name: str  # general.architecture, and the prefix of its hyper-parameter keys
    rope_neox: bool = False  # RoPE rotates pairs (i, i + rope_dim/2) (ggml's NEOX mode), else adjacent pairs
    ffn_act: str = SILU  # SILU or GELU (tanh form)
    embd_scale: bool = False  # embedding rows times sqrt(n_embd)
    qk_norm: bool = False  # each head of Q and K RMS-normalised (attn_q_norm, attn_k_norm) before RoPE
    post_norms: bool = False  # post_attention_norm, post_ffw_norm: a block's output normed before its add
    q_scale: bool = False  # Q times 1/sqrt(head_dim) before attention, scores unscaled (llama: scores scaled)
    swa_period: int = 0  # with a sliding window, layer i slides unless i % period == period - 1; 0: no window
    # the per-layer tensors (names without `blk.N.` and `.weight`) beyond llama's nine
    extra_layer_tensors: tuple[str, ...] = ()


LLAMA = Architecture("llama")
QWEN2 = Architecture("qwen2", rope_neox=True)

# Gemma 3: the GGUF converter stores its norms as 1 + w already, so they are used as is.
# Sliding layers take RoPE base `gemma3.rope.freq_base_swa` (llama.cpp's default 10000)
# and scale 1; global layers the file's base and its linear scaling.
GEMMA3 = Architecture(
    "gemma3",
    rope_neox=True,
    ffn_act=GELU,
    embd_scale=True,
    qk_norm=True,
    post_norms=True,
    q_scale=True,
    swa_period=6,
    extra_layer_tensors=("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"),
)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (LLAMA, QWEN2, GEMMA3)}

# The Q/K/V biases any family may carry (1-D, f32 in every file we know of).
BIASES = ("attn_q", "attn_k", "attn_v")

# The RoPE base of sliding layers where the file names none (llama.cpp's default).
ROPE_FREQ_BASE_SWA_DEFAULT = 10000.0


def lookup(name: str) -> Architecture | None:
    return ARCHITECTURES.get(name)
