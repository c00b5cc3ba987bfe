"""realm_ext.model_maker: presets, determinism, vocabulary, weight statistics, streaming,
Qwen2 files (their biases)."""

from __future__ import annotations

import hashlib
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from realm_ext import arch
from realm_ext.model import load_gguf
from realm_ext.model_maker import PRESETS, SPACE, make_model, make_vocab, read_tokenizer_keys
from realm_ext.quantizer import RECIPES


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_presets_shapes() -> None:
    tiny, small, tl = (PRESETS[k].config for k in ("tiny", "small", "tinyllama"))
    assert (tiny.n_layer, tiny.n_embd, tiny.n_ff, tiny.n_head, tiny.n_head_kv) == (2, 256, 768, 4, 2)
    assert (small.n_layer, small.n_embd, small.n_ff, small.n_head, small.n_head_kv) == (4, 512, 1536, 8, 4)
    # TinyLlama-1.1B exactly
    assert (tl.n_layer, tl.n_embd, tl.n_ff, tl.n_head, tl.n_head_kv, tl.n_vocab, tl.n_ctx_train) == (
        22,
        2048,
        5632,
        32,
        4,
        32000,
        2048,
    )
    assert tl.head_dim == 64 and tl.rope_dim == 64
    for cfg in (tiny, small):  # every row a multiple of 256: the K-quants apply everywhere
        assert cfg.n_embd % 256 == 0 and cfg.n_ff % 256 == 0


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a.gguf", "tiny", "Q4_K_M", seed=7)
    b = make_model(tmp_path / "b.gguf", "tiny", "Q4_K_M", seed=7)
    c = make_model(tmp_path / "c.gguf", "tiny", "Q4_K_M", seed=8)
    assert sha(a) == sha(b)
    assert sha(a) != sha(c)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_every_preset_and_type_loads(tmp_path: Path, preset: str, recipe: str) -> None:
    p = make_model(tmp_path / "m.gguf", preset, recipe, seed=1)
    with load_gguf(p) as m:
        assert m.config.n_layer == PRESETS[preset].config.n_layer
        t = m.layer(0, "attn_q")
        assert t.type.name == (recipe if "_M" not in recipe else recipe[:4])
        # the stored matrix is N(0, 0.02) up to quantization error, the norms ~1
        w = t.dequantize()
        assert abs(float(w.std()) - 0.02) < 0.004 and abs(float(w.mean())) < 0.002
        n = m.layer(1, "ffn_norm").dequantize()
        assert abs(float(n.mean()) - 1.0) < 0.05 and 0.05 < float(n.std()) < 0.15


def test_vocabulary() -> None:
    tokens, scores, types = make_vocab(2000, seed=3)
    assert len(tokens) == len(scores) == len(types) == 2000
    assert len(set(tokens)) == 2000
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and types[:3] == [2, 3, 3]
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)] and set(types[3:259]) == {6}
    pieces = tokens[259:]
    assert set(types[259:]) == {1}
    assert pieces[0] == SPACE
    assert all(np.diff(scores[259:]) < 0), "scores must rank the pieces"
    # every multi-character piece is reachable by merges: its prefix is in the vocab, ranked higher
    rank = {p: i for i, p in enumerate(pieces)}
    for p in pieces:
        if len(p) > 1:
            assert p[:-1] in rank and rank[p[:-1]] < rank[p], p
    assert sum(p.startswith(SPACE) for p in pieces) > len(pieces) // 2
    with pytest.raises(ValueError, match="n_vocab must be at least"):
        make_vocab(300)


def test_tinyllama_writer_streams(tmp_path: Path) -> None:
    """A deep model at Q4_K_M is written holding about one tensor at a time, not the whole
    F32 model (tinyllama itself is exercised by the CLI in .ci/run's smoke step)."""
    cfg = replace(PRESETS["small"].config, n_layer=24, n_vocab=1024)
    f32_bytes = 4 * (
        2 * cfg.n_vocab * cfg.n_embd
        + cfg.n_layer
        * (2 * cfg.n_embd * cfg.n_embd + 2 * cfg.n_embd * cfg.n_embd // 2 + 3 * cfg.n_embd * cfg.n_ff)
    )
    largest = 4 * cfg.n_ff * cfg.n_embd
    tracemalloc.start()
    try:
        make_model(tmp_path / "deep.gguf", cfg, "Q4_K_M", seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"peak {peak / 2**20:.1f} MiB, F32 model {f32_bytes / 2**20:.1f} MiB, "
        f"largest tensor {largest / 2**20:.1f} MiB"
    )
    assert peak < 6 * largest < f32_bytes / 4


def test_progress_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_model(tmp_path / "p.gguf", "tiny", "Q8_0", progress=True)
    err = capsys.readouterr().err
    assert "p.gguf" in err and "100%" in err


def test_random_blocks_model(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a.gguf", "small", "Q4_K_M", seed=2, random_blocks=True)
    b = make_model(tmp_path / "b.gguf", "small", "Q4_K_M", seed=2, random_blocks=True)
    assert sha(a) == sha(b)
    with load_gguf(a) as m:
        assert m.layer(3, "ffn_down").type.name == "Q6_K"
        assert np.isfinite(m.layer(0, "attn_q").dequantize()).all()
        n = m.layer(0, "attn_norm").dequantize()  # norms stay 1 + N(0, 0.1)
        assert abs(float(n.mean()) - 1.0) < 0.05


def test_llama3_rope_freqs_follow_the_converter() -> None:
    """Llama 3.1's factors for head_dim 64, base 500000: 1 for short wavelengths, 8 for
    long ones, 1 / ((1 - s) / 8 + s) between (s from the wavelength), float32 values."""
    import math

    from realm_ext.model_maker import llama3_rope_freqs

    f = llama3_rope_freqs(64, 500000.0)
    assert len(f) == 32 and f[0] == 1.0 and f[-1] == 8.0
    assert all(1.0 <= a <= b <= 8.0 for a, b in zip(f, f[1:], strict=False))
    for i, v in enumerate(f):
        wavelen = 2 * math.pi * 500000.0 ** (2 * i / 64)
        if 2048 * 1.01 < wavelen < 8192 * 0.99:
            s = (8192 / wavelen - 1) / 3
            assert v == pytest.approx(1 / ((1 - s) / 8 + s), rel=1e-5)


# ---- Qwen2 ---------------------------------------------------------------------------


def test_qwen2_preset_is_tiny_with_the_qwen2_family() -> None:
    assert PRESETS["qwen2-tiny"].config == replace(PRESETS["tiny"].config, family=arch.QWEN2)
    assert PRESETS["qwen2-small"].config == replace(PRESETS["small"].config, family=arch.QWEN2)


@pytest.mark.parametrize("recipe", ["F32", "Q4_K_M"])
def test_qwen2_file_carries_its_biases(tmp_path: Path, recipe: str) -> None:
    """general.architecture qwen2, the hyper-parameters under qwen2.*, and each layer's
    Q/K/V biases F32 in every recipe, N(0, 0.1) from the tensor's own generator (not the
    norms' 1 + N(0, 0.1)); every other tensor is byte for byte the llama file's."""
    seed = 5
    q = make_model(tmp_path / "q.gguf", "qwen2-tiny", recipe, seed=seed)
    ll = make_model(tmp_path / "l.gguf", "tiny", recipe, seed=seed)
    with load_gguf(q) as m, load_gguf(ll) as lm:
        assert m.metadata["general.architecture"] == "qwen2" and m.config.family is arch.QWEN2
        assert m.metadata["qwen2.embedding_length"] == 256
        assert m.metadata["qwen2.attention.head_count_kv"] == 2
        assert not any(k.startswith("llama.") for k in m.metadata)
        assert m.config == replace(lm.config, family=arch.QWEN2)
        biases = {n: t for n, t in m.tensors.items() if n.endswith(".bias")}
        assert sorted(biases) == sorted(f"blk.{i}.attn_{x}.bias" for i in range(2) for x in ("q", "k", "v"))
        for name, t in biases.items():
            n = 256 if ".attn_q." in name else 128  # n_head_kv * head_dim = 2 * 64
            assert t.type.name == "F32" and t.shape == (n,)
            drawn = np.random.default_rng([seed, zlib.crc32(name.encode())]).standard_normal(n, np.float32)
            np.testing.assert_array_equal(t.dequantize(), drawn * np.float32(0.1), err_msg=name)
        values = np.concatenate([t.dequantize() for t in biases.values()])
        assert abs(float(values.mean())) < 0.01 and 0.09 < float(values.std()) < 0.11
        assert set(m.tensors) - set(biases) == set(lm.tensors)
        for name, t in lm.tensors.items():
            assert m.tensors[name].type == t.type
            np.testing.assert_array_equal(m.tensors[name].raw, t.raw, err_msg=name)


def test_llama_files_have_no_biases(tmp_path: Path) -> None:
    with load_gguf(make_model(tmp_path / "l.gguf", "tiny", "Q8_0", seed=5)) as m:
        assert m.metadata["general.architecture"] == "llama" and m.config.family is arch.LLAMA
        assert not any(k.startswith("qwen2.") for k in m.metadata)
        assert all(m.bias(i, b) is None for i in range(2) for b in arch.BIASES)


def test_qwen2_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a.gguf", "qwen2-tiny", "Q8_0", seed=7)
    b = make_model(tmp_path / "b.gguf", "qwen2-tiny", "Q8_0", seed=7)
    c = make_model(tmp_path / "c.gguf", "qwen2-tiny", "Q8_0", seed=8)
    assert sha(a) == sha(b) != sha(c)


def test_families_the_maker_cannot_write_are_refused(tmp_path: Path) -> None:
    from realm_ext.model_maker import llama3_rope_freqs

    with pytest.raises(ValueError, match="cannot write a gemma3 model"):
        make_model(tmp_path / "g.gguf", replace(PRESETS["tiny"].config, family=arch.GEMMA3))
    with pytest.raises(ValueError, match="rope_freqs is llama's"):
        make_model(tmp_path / "r.gguf", "qwen2-tiny", rope_freqs=llama3_rope_freqs(64, 10000.0))
    assert not list(tmp_path.iterdir())


def test_qwen2_model_with_the_qwen2_vocabulary(tmp_path: Path) -> None:
    """vocab_from llama.cpp's ggml-vocab-qwen2.gguf: Qwen2's byte-level BPE (gpt2, pre
    qwen2) whole, n_vocab its token count, on a qwen2 model with its biases."""
    from support import real_files

    src, _, _ = real_files.llama_vocab("qwen2")
    keys = {k: v for k, v, *_ in read_tokenizer_keys(src)}
    out = make_model(tmp_path / "q.gguf", "qwen2-tiny", "Q4_0", tied=True, random_blocks=True, vocab_from=src)
    with load_gguf(out) as m:
        tok = m.tokenizer
        assert m.config.family is arch.QWEN2
        assert m.config.n_vocab == len(keys["tokenizer.ggml.tokens"]) == 151936
        assert (tok.model, tok.pre_name) == ("gpt2", "qwen2")
        assert tok.tokens == keys["tokenizer.ggml.tokens"] and tok.merges == keys["tokenizer.ggml.merges"]
        assert m.bias(1, "attn_v") is not None and m.bias(1, "attn_v").type.name == "F32"
