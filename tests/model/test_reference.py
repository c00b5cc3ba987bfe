"""Tests of the float64 reference forward pass (realm_ext.reference).

Three kinds of evidence, each able to fail on its own:

1. the building blocks against hand-computed values and other formulations (RMSNorm by
   hand, RoPE as complex multiplication, attention of one token = V, softmax weights);
2. the whole model against a naive implementation written here, token by token and head
   by head with the math module, fed with the weights straight from the model maker's
   generator (so neither the GGUF reader nor the gguf decoder is on its path);
3. llama.cpp's prompt logits on the same GGUF files, every weight type (skipped when
   llama-cpp-python is not installed).
"""

from __future__ import annotations

import cmath
import dataclasses
import math

import numpy as np
import pytest

from realm_ext.model import LlamaConfig, expected_shapes, load_gguf
from realm_ext.model_maker import PRESETS, make_model, random_weight
from realm_ext.reference import (
    ReferenceLlama,
    Weights,
    attention,
    reference_logits,
    rmsnorm,
    rope,
)


def as_stored(cfg: LlamaConfig) -> LlamaConfig:
    """The config as a GGUF file holds it: epsilon and rope base are float32 there."""
    return dataclasses.replace(
        cfg, rms_eps=float(np.float32(cfg.rms_eps)), rope_freq_base=float(np.float32(cfg.rope_freq_base))
    )


TINY = as_stored(PRESETS["tiny"].config)

# A small odd-shaped config: GQA group 4, partial RoPE (rope_dim < head_dim), a non-default
# rope base and RMS epsilon, so that every config field has to be read and used.
ODD = as_stored(
    LlamaConfig(
        n_vocab=400,
        n_ctx_train=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_head_kv=1,
        head_dim=16,
        n_ff=96,
        rms_eps=1e-3,
        rope_freq_base=500.0,
        rope_dim=8,
    )
)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def prompt(n: int, n_vocab: int, seed: int = 0) -> list[int]:
    """BOS, then n-1 random ids from the normal and byte tokens (never 0..2)."""
    rng = np.random.default_rng(seed)
    return [1, *(int(t) for t in rng.integers(3, n_vocab, n - 1))]


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory):
    return make_model(tmp_path_factory.mktemp("ref") / "tiny-f32.gguf", "tiny", "F32", seed=3)


@pytest.fixture(scope="module")
def tiny_ref(tiny_path):
    with load_gguf(tiny_path) as model:
        yield ReferenceLlama(model)


# ---- a naive implementation to compare against -----------------------------------------


def maker_weights(cfg: LlamaConfig, seed: int, tied: bool) -> dict[str, np.ndarray]:
    """The model maker's float32 weights by name, as float64, without reading any file."""
    w = {
        name: random_weight(seed, name, shape).astype(np.float64)
        for name, shape in expected_shapes(cfg, tied).items()
    }
    if tied:
        w["output.weight"] = w["token_embd.weight"]
    return w


def naive_rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    mean_sq = math.fsum(float(v) * float(v) for v in x) / len(x)
    scale = 1.0 / math.sqrt(mean_sq + eps)
    return np.array([float(v) * scale * float(g) for v, g in zip(x, w, strict=True)])


def naive_rope(x: np.ndarray, pos: int, base: float, rope_dim: int) -> np.ndarray:
    """RoPE as complex multiplication: (x[2i] + i x[2i+1]) * e^(i pos base^(-2i/rope_dim))."""
    out = [float(v) for v in x]
    for i in range(rope_dim // 2):
        z = complex(out[2 * i], out[2 * i + 1]) * cmath.exp(1j * pos * base ** (-2.0 * i / rope_dim))
        out[2 * i], out[2 * i + 1] = z.real, z.imag
    return np.array(out)


def naive_logits(cfg: LlamaConfig, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """One token at a time with a growing KV cache, one head at a time, scalar softmax."""
    d = cfg.head_dim
    group = cfg.n_head // cfg.n_head_kv
    cache: list[list[tuple[list[np.ndarray], list[np.ndarray]]]] = [[] for _ in range(cfg.n_layer)]
    rows = []
    for pos, tok in enumerate(tokens):
        x = w["token_embd.weight"][tok].copy()
        for layer in range(cfg.n_layer):

            def p(name: str, layer: int = layer) -> np.ndarray:
                return w[f"blk.{layer}.{name}.weight"]

            h = naive_rmsnorm(x, p("attn_norm"), cfg.rms_eps)
            q, k, v = p("attn_q") @ h, p("attn_k") @ h, p("attn_v") @ h
            base, rd = cfg.rope_freq_base, cfg.rope_dim
            qs = [naive_rope(q[i * d : (i + 1) * d], pos, base, rd) for i in range(cfg.n_head)]
            ks = [naive_rope(k[i * d : (i + 1) * d], pos, base, rd) for i in range(cfg.n_head_kv)]
            vs = [v[i * d : (i + 1) * d] for i in range(cfg.n_head_kv)]
            cache[layer].append((ks, vs))
            att = np.zeros(cfg.n_head * d)
            for head in range(cfg.n_head):
                kv = head // group
                scores = [
                    math.fsum(a * b for a, b in zip(qs[head], cache[layer][s][0][kv], strict=True))
                    / math.sqrt(d)
                    for s in range(pos + 1)
                ]
                top = max(scores)
                e = [math.exp(s - top) for s in scores]
                z = math.fsum(e)
                out = np.zeros(d)
                for s in range(pos + 1):
                    out += (e[s] / z) * cache[layer][s][1][kv]
                att[head * d : (head + 1) * d] = out
            x = x + p("attn_output") @ att
            h = naive_rmsnorm(x, p("ffn_norm"), cfg.rms_eps)
            gate, up = p("ffn_gate") @ h, p("ffn_up") @ h
            act = np.array([g / (1.0 + math.exp(-g)) * u for g, u in zip(gate, up, strict=True)])
            x = x + p("ffn_down") @ act
        rows.append(w["output.weight"] @ naive_rmsnorm(x, w["output_norm.weight"], cfg.rms_eps))
    return np.array(rows)


# ---- building blocks -----------------------------------------------------------------


def test_rmsnorm_by_hand():
    x = np.array([[3.0, 4.0], [1.0, -1.0]])
    w = np.array([2.0, 0.5])
    # row 0: mean(x^2) = 12.5; row 1: mean(x^2) = 1
    want = np.array(
        [[3.0 / math.sqrt(12.5 + 0.5) * 2.0, 4.0 / math.sqrt(13.0) * 0.5], [2.0 / 1.5**0.5, -0.5 / 1.5**0.5]]
    )
    np.testing.assert_allclose(rmsnorm(x, w, 0.5), want, rtol=1e-15, atol=0)


def test_rope_position_zero_is_identity():
    x = np.random.default_rng(0).standard_normal((1, 3, 16))
    np.testing.assert_array_equal(rope(x, np.array([0]), 10000.0, 16), x)


def test_rope_matches_complex_rotation_and_keeps_pair_norms():
    rng = np.random.default_rng(1)
    n_tok, n_head, head_dim, rope_dim, base = 7, 3, 16, 12, 777.0
    x = rng.standard_normal((n_tok, n_head, head_dim))
    positions = np.array([0, 1, 2, 5, 31, 100, 511])
    got = rope(x, positions, base, rope_dim)
    for t, pos in enumerate(positions):
        for h in range(n_head):
            np.testing.assert_allclose(
                got[t, h], naive_rope(x[t, h], int(pos), base, rope_dim), rtol=0, atol=1e-13
            )
    # each rotated pair keeps its length; the dims past rope_dim are untouched
    pair_norm = np.hypot(got[..., 0:rope_dim:2], got[..., 1:rope_dim:2])
    np.testing.assert_allclose(pair_norm, np.hypot(x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]), rtol=1e-13)
    np.testing.assert_array_equal(got[..., rope_dim:], x[..., rope_dim:])
    # pair 0 turns by exactly `pos` radians, the last pair by pos * base^(-(rope_dim-2)/rope_dim)
    angle0 = np.arctan2(got[:, :, 1], got[:, :, 0]) - np.arctan2(x[:, :, 1], x[:, :, 0])
    np.testing.assert_allclose(np.angle(np.exp(1j * (angle0 - positions[:, None]))), 0.0, atol=1e-12)


def test_rope_relative_position_property():
    """q·k after RoPE depends only on the position difference."""
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 1, 1, 32))
    dots = []
    for p_q, p_k in [(5, 2), (13, 10), (103, 100)]:
        rq = rope(q, np.array([p_q]), 10000.0, 32)
        rk = rope(k, np.array([p_k]), 10000.0, 32)
        dots.append(float(np.sum(rq * rk)))
    np.testing.assert_allclose(dots, dots[0], rtol=1e-11)
    assert abs(dots[0] - float(np.sum(q * k))) > 1e-3  # and the rotation does matter


def test_attention_of_one_token_is_v():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 6, 8))
    k = rng.standard_normal((1, 2, 8))
    v = rng.standard_normal((1, 2, 8))
    out = attention(q, k, v)
    # query heads 0..2 read KV head 0, heads 3..5 KV head 1; one key: weight exactly 1
    np.testing.assert_allclose(out, np.repeat(v, 3, axis=1), rtol=1e-15, atol=0)


def test_attention_by_hand():
    # one head, head_dim 4: token 1 sees keys 0 and 1 with scores q1·k / 2
    q = np.array([[[1.0, 0, 0, 0]], [[2.0, 0, 0, 2.0]]])
    k = np.array([[[1.0, 1, 0, 0]], [[0.0, 0, 0, 1]]])
    v = np.array([[[1.0, 2, 3, 4]], [[-1.0, 0, 5, 0]]])
    out = attention(q, k, v)
    s0, s1 = 2.0 / 2, 2.0 / 2  # (2*1 + 0) / sqrt(4), (2*1) / sqrt(4)
    p0 = math.exp(s0) / (math.exp(s0) + math.exp(s1))
    np.testing.assert_allclose(out[0, 0], v[0, 0], rtol=1e-15)
    np.testing.assert_allclose(out[1, 0], p0 * v[0, 0] + (1 - p0) * v[1, 0], rtol=1e-14)
    # unequal scores: move k1 so that s1 = 3
    k[1, 0] = [0.0, 0, 0, 3]
    out = attention(q, k, v)
    p0 = math.exp(1.0) / (math.exp(1.0) + math.exp(3.0))
    np.testing.assert_allclose(out[1, 0], p0 * v[0, 0] + (1 - p0) * v[1, 0], rtol=1e-14)


# ---- the whole model ------------------------------------------------------------------


def test_weights_are_the_makers_values(tiny_ref):
    w = maker_weights(TINY, seed=3, tied=False)
    ref_w = tiny_ref.weights
    np.testing.assert_array_equal(ref_w.token_embd, w["token_embd.weight"])
    np.testing.assert_array_equal(ref_w.output, w["output.weight"])
    np.testing.assert_array_equal(ref_w.layers[1].wk, w["blk.1.attn_k.weight"])
    np.testing.assert_array_equal(ref_w.layers[0].w_down, w["blk.0.ffn_down.weight"])
    assert ref_w.layers[0].wq.dtype == np.float64


def test_matches_naive_tiny(tiny_ref):
    tokens = prompt(6, TINY.n_vocab, seed=10)
    want = naive_logits(TINY, maker_weights(TINY, seed=3, tied=False), tokens)
    got = tiny_ref.logits(tokens)
    assert got.shape == (6, TINY.n_vocab) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert np.std(got) > 0.05  # not a degenerate all-equal output


def test_matches_naive_odd_config(tmp_path):
    """GQA group 4, partial RoPE, rope base 500, eps 1e-3: read from the file and used."""
    path = make_model(tmp_path / "odd.gguf", ODD, "F32", seed=5)
    tokens = prompt(9, ODD.n_vocab, seed=11)
    with load_gguf(path) as model:
        assert model.config == ODD
        got = reference_logits(model, tokens)
    want = naive_logits(ODD, maker_weights(ODD, seed=5, tied=False), tokens)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # and the odd fields matter: the tiny defaults give a clearly different answer
    wrong = dataclasses.replace(ODD, rope_freq_base=10000.0, rope_dim=16, rms_eps=1e-5)
    assert rel_l2(naive_logits(wrong, maker_weights(ODD, seed=5, tied=False), tokens), want) > 1e-3


def test_tied_output_uses_token_embd(tmp_path):
    path = make_model(tmp_path / "tied.gguf", "tiny", "F32", seed=4, tied=True)
    tokens = prompt(5, TINY.n_vocab, seed=12)
    with load_gguf(path) as model:
        assert model.tied_output
        ref = ReferenceLlama(model)
    assert ref.weights.output is ref.weights.token_embd
    w = maker_weights(TINY, seed=4, tied=True)
    got = ref.logits(tokens)
    np.testing.assert_allclose(got, naive_logits(TINY, w, tokens), rtol=0, atol=1e-10)
    # logits are the final hidden state, normed, against the embedding table
    h = ref.hidden_states(tokens)[-1]
    normed = np.stack([naive_rmsnorm(row, w["output_norm.weight"], TINY.rms_eps) for row in h])
    np.testing.assert_allclose(got, normed @ w["token_embd.weight"].T, rtol=0, atol=1e-12)


def test_causal(tiny_ref):
    tokens = prompt(12, TINY.n_vocab, seed=13)
    full = tiny_ref.logits(tokens)
    other = tokens[:7] + prompt(6, TINY.n_vocab, seed=99)[1:]
    changed = tiny_ref.logits(other)
    np.testing.assert_allclose(changed[:7], full[:7], rtol=0, atol=1e-12)
    assert rel_l2(changed[7:], full[7:]) > 0.1  # later tokens did change
    np.testing.assert_allclose(tiny_ref.logits(tokens[:4]), full[:4], rtol=0, atol=1e-12)


def test_position_matters(tiny_ref):
    """The same token at another position gives other logits (RoPE and attention in play)."""
    a = tiny_ref.logits([1, 500, 500, 500])
    assert rel_l2(a[2], a[3]) > 1e-3


def test_gqa_equals_duplicated_kv_heads(tiny_ref):
    """n_head_kv=2 equals the MHA model whose 4 KV heads are copies (h -> h // 2)."""
    cfg = tiny_ref.config
    group = cfg.n_head // cfg.n_head_kv

    def dup(w: np.ndarray) -> np.ndarray:
        blocks = w.reshape(cfg.n_head_kv, cfg.head_dim, cfg.n_embd)
        return np.repeat(blocks, group, axis=0).reshape(cfg.n_head * cfg.head_dim, cfg.n_embd)

    layers = [dataclasses.replace(lw, wk=dup(lw.wk), wv=dup(lw.wv)) for lw in tiny_ref.weights.layers]
    mha = ReferenceLlama.from_weights(
        dataclasses.replace(cfg, n_head_kv=cfg.n_head),
        Weights(tiny_ref.weights.token_embd, layers, tiny_ref.weights.output_norm, tiny_ref.weights.output),
    )
    tokens = prompt(8, cfg.n_vocab, seed=14)
    np.testing.assert_allclose(mha.logits(tokens), tiny_ref.logits(tokens), rtol=0, atol=1e-12)

    # the wrong pairing (h -> h % n_head_kv) is detectably different
    def interleave(w: np.ndarray) -> np.ndarray:
        blocks = w.reshape(cfg.n_head_kv, cfg.head_dim, cfg.n_embd)
        return np.tile(blocks, (group, 1, 1)).reshape(cfg.n_head * cfg.head_dim, cfg.n_embd)

    layers = [
        dataclasses.replace(lw, wk=interleave(lw.wk), wv=interleave(lw.wv)) for lw in tiny_ref.weights.layers
    ]
    wrong = ReferenceLlama.from_weights(
        dataclasses.replace(cfg, n_head_kv=cfg.n_head), dataclasses.replace(mha.weights, layers=layers)
    )
    assert rel_l2(wrong.logits(tokens), tiny_ref.logits(tokens)) > 1e-3


def test_hidden_states_and_layers(tiny_ref):
    tokens = prompt(5, TINY.n_vocab, seed=15)
    states = tiny_ref.hidden_states(tokens)
    assert len(states) == TINY.n_layer + 1
    np.testing.assert_array_equal(states[0], tiny_ref.weights.token_embd[tokens])
    np.testing.assert_array_equal(tiny_ref.layer(1, states[1]), states[2])
    np.testing.assert_array_equal(tiny_ref.lm_head(states[-1]), tiny_ref.logits(tokens))
    assert rel_l2(states[1], states[0]) > 1e-2


@pytest.mark.parametrize(
    "tokens",
    [[], [-1], [1, TINY.n_vocab], [1, 2**40], [1.0, 2.0], [[1, 2]], [True]],
    ids=["empty", "negative", "n_vocab", "huge", "float", "2d", "bool"],
)
def test_bad_tokens(tiny_ref, tokens):
    with pytest.raises(ValueError):
        tiny_ref.logits(tokens)


def test_token_ids_accept_numpy_and_edges(tiny_ref):
    a = tiny_ref.logits(np.array([0, TINY.n_vocab - 1], dtype=np.uint16))
    b = tiny_ref.logits([0, TINY.n_vocab - 1])
    np.testing.assert_array_equal(a, b)


# ---- llama.cpp parity ----------------------------------------------------------------

# Relative L2 of the prompt logits against llama.cpp's. F32 weights with an F32 KV cache
# leave llama.cpp only f32 rounding; every other type also rounds the activations to the
# weight's vec-dot type (Q8_0, Q8_1, Q8_K, f16, bf16) before each matmul, which the
# reference does not do.
PARITY_TYPES = [
    ("F32", 1e-5),
    ("F16", 3e-2),
    ("BF16", 3e-2),
    ("Q4_0", 3e-2),
    ("Q4_1", 3e-2),
    ("Q5_0", 3e-2),
    ("Q5_1", 3e-2),
    ("Q8_0", 3e-2),
    ("Q2_K", 3e-2),
    ("Q3_K", 3e-2),
    ("Q4_K", 3e-2),
    ("Q5_K", 3e-2),
    ("Q6_K", 3e-2),
    ("Q4_K_M", 3e-2),
    ("Q5_K_M", 3e-2),
]
GGML_TYPE_F32 = 0
PARITY_TOKENS = prompt(24, TINY.n_vocab, seed=2024)


def llama_cpp_logits(path, tokens: list[int], type_kv: int | None) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    kv = {} if type_kv is None else {"type_k": type_kv, "type_v": type_kv}
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=64,
        n_batch=64,
        n_ubatch=64,
        logits_all=True,
        flash_attn=False,
        verbose=False,
        n_threads=2,
        seed=0,
        **kv,
    )
    try:
        llm.eval(tokens)
        assert llm.n_tokens == len(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def parity_dir(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("llama_cpp")
    return tmp_path_factory.mktemp("parity")


@pytest.mark.parametrize(("type_name", "tol"), PARITY_TYPES, ids=[t for t, _ in PARITY_TYPES])
def test_llama_cpp_parity(parity_dir, type_name, tol, record_property):
    path = make_model(parity_dir / f"tiny-{type_name}.gguf", "tiny", type_name, seed=7)
    with load_gguf(path) as model:
        ref = reference_logits(model, PARITY_TOKENS)
    ours = llama_cpp_logits(path, PARITY_TOKENS, GGML_TYPE_F32)
    err = rel_l2(ref, ours)
    record_property("rel_l2", err)
    print(f"\nllama.cpp parity {type_name:7s} (F32 KV): rel L2 {err:.3e} (tolerance {tol:g})")
    assert err < tol
    # and the measure is sensitive: the same logits one token out of step are far apart
    assert rel_l2(ref[1:], ours[:-1]) > 0.1


def test_llama_cpp_parity_f16_kv(parity_dir, record_property):
    """llama.cpp's default KV cache (f16 K and V) on F32 weights: f16 rounding of Q, K,
    V and the softmax probabilities only."""
    path = make_model(parity_dir / "tiny-F32-kv16.gguf", "tiny", "F32", seed=7)
    with load_gguf(path) as model:
        ref = reference_logits(model, PARITY_TOKENS)
    err = rel_l2(ref, llama_cpp_logits(path, PARITY_TOKENS, None))
    record_property("rel_l2", err)
    print(f"\nllama.cpp parity F32 (F16 KV): rel L2 {err:.3e}")
    assert err < 1e-2
