"""realm_ext.quantizer: recipes (llama.cpp's Q4_K_M / Q5_K_M), fallbacks, metadata kept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest

from realm_ext.model import GGUFError, load_gguf
from realm_ext.model_maker import PRESETS, make_model
from realm_ext.quantizer import quantize_model, tensor_type_for, use_more_bits

T = gguf.GGMLQuantizationType


def test_use_more_bits_layers() -> None:
    # llama.cpp: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2, written out for two depths
    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(22) if use_more_bits(i, 22)] == [0, 1, 4, 7, 10, 13, 16, 19, 20, 21]
    assert [i for i in range(2) if use_more_bits(i, 2)] == [1]


@pytest.mark.parametrize(("recipe", "base"), [("Q4_K_M", T.Q4_K), ("Q5_K_M", T.Q5_K)])
def test_mixed_recipe_layout(tmp_path: Path, recipe: str, base: T) -> None:
    cfg = replace(PRESETS["tiny"].config, n_layer=16)
    src = make_model(tmp_path / "f16.gguf", cfg, "F16")
    out = quantize_model(src, tmp_path / "q.gguf", recipe)
    more = {0, 1, 4, 7, 10, 13, 14, 15}
    with load_gguf(out) as m:
        assert m.tensor("output.weight").type == T.Q6_K
        assert m.tensor("token_embd.weight").type == base
        assert m.tensor("output_norm.weight").type == T.F32
        for i in range(16):
            want_v = T.Q6_K if i in more else base
            assert m.layer(i, "attn_v").type == want_v, i
            assert m.layer(i, "ffn_down").type == want_v, i
            for name in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
                assert m.layer(i, name).type == base, (i, name)
            assert m.layer(i, "attn_norm").type == m.layer(i, "ffn_norm").type == T.F32


def test_tied_embedding_gets_output_type() -> None:
    assert tensor_type_for("token_embd.weight", (1024, 256), "Q4_K_M", 2, tied=True) == T.Q6_K
    assert tensor_type_for("token_embd.weight", (1024, 256), "Q4_K_M", 2, tied=False) == T.Q4_K


def test_single_types_are_pure() -> None:
    for name in ("output.weight", "blk.0.attn_v.weight", "token_embd.weight"):
        assert tensor_type_for(name, (256, 256), "Q3_K", 2) == T.Q3_K
    assert tensor_type_for("blk.0.attn_norm.weight", (256,), "Q3_K", 2) == T.F32


@pytest.mark.parametrize(
    ("recipe", "n_cols", "want"),
    [
        ("Q4_K", 320, T.Q5_0),
        ("Q5_K", 320, T.Q5_1),
        ("Q6_K", 320, T.Q8_0),
        ("Q2_K", 320, T.Q4_0),
        ("Q3_K", 320, T.Q4_0),
        ("Q4_K", 344, T.F16),
        ("Q8_0", 344, T.F16),
        ("Q4_K_M", 320, T.Q5_0),
    ],
)
def test_fallback_when_rows_do_not_fit(recipe: str, n_cols: int, want: T) -> None:
    said: list[str] = []
    assert tensor_type_for("blk.0.ffn_up.weight", (64, n_cols), recipe, 2, log=said.append) == want
    assert len(said) == 1 and f"rows of {n_cols}" in said[0] and want.name in said[0]


def test_fallback_in_a_file(tmp_path: Path) -> None:
    cfg = replace(PRESETS["tiny"].config, n_ff=320)  # ffn_down rows of 320: not whole 256-blocks
    said: list[str] = []
    src = make_model(tmp_path / "f32.gguf", cfg, "F32")
    out = quantize_model(src, tmp_path / "q.gguf", "Q4_K", log=said.append)
    with load_gguf(out) as m:
        assert m.layer(0, "ffn_down").type == T.Q5_0 and m.layer(0, "ffn_up").type == T.Q4_K
    assert sorted(said) == [
        f"blk.{i}.ffn_down.weight: rows of 320 are not a multiple of the Q4_K block; using Q5_0"
        for i in range(2)
    ]


@pytest.mark.parametrize("preset", ["tiny", "qwen2-tiny"])
def test_quantize_keeps_metadata_and_values(model_path, tmp_path: Path, preset: str) -> None:
    """Every key but the file type, general.architecture included; every tensor (a
    Qwen2 file's biases too) within quantization error."""
    src = model_path("F32", preset=preset, seed=5)
    out = quantize_model(src, tmp_path / "q8.gguf", "Q8_0")
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(out)
    keys_a = {k: f.contents() for k, f in a.fields.items() if not k.startswith("GGUF.")}
    keys_b = {k: f.contents() for k, f in b.fields.items() if not k.startswith("GGUF.")}
    assert keys_b.pop("general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert keys_a.pop("general.file_type") == int(gguf.LlamaFileType.ALL_F32)
    assert keys_a == keys_b
    with load_gguf(src) as ma, load_gguf(out) as mb:
        for name, t in ma.tensors.items():
            x, y = t.dequantize(), mb.tensors[name].dequantize()
            assert np.linalg.norm(x - y) <= 0.01 * np.linalg.norm(x), name


@pytest.mark.parametrize("preset", ["tiny", "qwen2-tiny"])
def test_quantize_equals_making_the_type_directly(model_path, tmp_path: Path, preset: str) -> None:
    """make-model at T and make-model F32 + quantize T encode the same values the same way."""
    out = quantize_model(model_path("F32", preset=preset, seed=3), tmp_path / "q.gguf", "Q4_K_M")
    direct = model_path("Q4_K_M", preset=preset, seed=3)
    with load_gguf(out) as a, load_gguf(direct) as b:
        assert a.config == b.config and set(a.tensors) == set(b.tensors)
        for name, t in a.tensors.items():
            assert t.type == b.tensors[name].type
            np.testing.assert_array_equal(t.raw, b.tensors[name].raw, err_msg=name)


def test_quantize_rejects_quantized_input(model_path, tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="is already Q4_0; quantize needs F32/F16/BF16 input"):
        quantize_model(model_path("Q4_0"), tmp_path / "x.gguf", "Q8_0")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(ValueError, match="unknown type or recipe 'Q7_K'"):
        quantize_model(model_path("F32"), tmp_path / "x.gguf", "Q7_K")
