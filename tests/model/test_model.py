"""realm_ext.model: config, tokenizer and tensor table from GGUF; memory mapping; errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
from support.gguf_edit import DROP, rewrite

from realm_ext import quant
from realm_ext.model import GGUFError, expected_shapes, load_gguf
from realm_ext.model_maker import PRESETS

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


def test_config_and_tokenizer_of_tiny(model_path) -> None:
    with load_gguf(model_path("Q4_K_M")) as m:
        # the file stores eps as f32, as llama.cpp reads it
        assert m.config == replace(PRESETS["tiny"].config, rms_eps=float(np.float32(1e-5)))
        c = m.config
        assert (c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.head_dim) == (2, 256, 768, 4, 2, 64)
        tok = m.tokenizer
        assert tok.model == "llama" and len(tok.tokens) == c.n_vocab
        assert tok.tokens[:3] == ["<unk>", "<s>", "</s>"]
        assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
        assert tok.tokens[3 + 0x41] == "<0x41>" and tok.token_types[3 + 0x41] == 6
        assert tok.add_bos and not tok.add_eos and tok.add_space_prefix
        assert tok.scores.dtype == np.float32 and tok.scores.shape == (c.n_vocab,)
        assert m.metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)


def test_tensor_table(model_path) -> None:
    with load_gguf(model_path("Q4_K_M")) as m:
        shapes = expected_shapes(m.config)
        assert set(m.tensors) == set(shapes)
        for name, t in m.tensors.items():
            assert t.shape == shapes[name]
            assert t.raw.dtype == np.uint8 and t.raw.shape[0] == (t.shape[0] if len(t.shape) == 2 else 1)
        assert m.layer(1, "ffn_down").type == T.Q6_K
        assert m.layer(0, "attn_q").type == T.Q4_K
        assert m.tensor("output_norm.weight").type == T.F32
        assert not m.tied_output and m.tensor("output.weight").name == "output.weight"
        with pytest.raises(GGUFError, match="no tensor 'blk.9.attn_q.weight'"):
            m.layer(9, "attn_q")


def test_tensor_type_prints_its_name(model_path, capsys: pytest.CaptureFixture[str]) -> None:
    with load_gguf(model_path("Q4_K_M")) as m:
        t = m.layer(0, "attn_q").type
        print(t, m.tensor("output_norm.weight").type, m.layer(1, "ffn_down").type)
        assert capsys.readouterr().out == "Q4_K F32 Q6_K\n"
        assert f"{t}|{t:>6}|{t:<5}|" == "Q4_K|  Q4_K|Q4_K |" and t.name == "Q4_K"
        assert repr(t) == "<GGMLType.Q4_K: 12>"
        # still the kernels' id, and the same key as gguf's own member
        assert int(t) == 12 and f"{t:d}|{t:03d}" == "12|012" and t == T.Q4_K
        assert {T.Q4_K: "found"}[t] == "found" and t in quant.SUPPORTED_TYPES
        for x in m.tensors.values():
            assert str(x.type) == T(int(x.type)).name, x.name


def test_tensor_data_is_memory_mapped_not_copied(model_path) -> None:
    with load_gguf(model_path("Q8_0")) as m:
        assert isinstance(m.reader.data, np.memmap)
        for t in m.tensors.values():
            assert np.shares_memory(t.raw, m.reader.data), t.name
            assert not t.raw.flags.owndata
        # and the view is the file's bytes at the recorded offset
        t = m.layer(1, "attn_v")
        with open(m.path, "rb") as f:
            f.seek(t.offset)
            assert f.read(t.nbytes) == t.raw.tobytes()


def test_dequantize_matches_gguf(model_path) -> None:
    with load_gguf(model_path("Q5_K_M")) as m:
        for name in ("token_embd.weight", "blk.0.attn_v.weight", "blk.1.ffn_norm.weight"):
            t = m.tensor(name)
            ref = gguf.quants.dequantize(t.raw, t.type).reshape(t.shape)
            np.testing.assert_array_equal(t.dequantize(), ref)


def test_tied_output_uses_token_embd(model_path) -> None:
    with load_gguf(model_path("F16", tied=True)) as m:
        assert m.tied_output and "output.weight" not in m.tensors
        assert m.tensor("output.weight") is m.tensors["token_embd.weight"]


# ---- errors: one per case, each naming the file and the problem ---------------------------


def err(path: Path) -> str:
    with pytest.raises(GGUFError) as e:
        load_gguf(path)
    msg = str(e.value)
    assert str(path) in msg
    assert isinstance(e.value, ValueError)
    return msg


def test_not_a_gguf(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 this is a zip file")
    assert "not a GGUF file" in err(p)
    p.write_bytes(b"")
    assert "not a GGUF file" in err(p)
    with pytest.raises(GGUFError, match="cannot open"):
        load_gguf(tmp_path / "missing.gguf")


@pytest.mark.parametrize("where", ["header", "kv", "tensor_info", "tensor_data", "last_byte"])
def test_truncated(model_path, tmp_path: Path, where: str) -> None:
    src = model_path("Q4_0")
    data = src.read_bytes()
    r = gguf.GGUFReader(src)
    cut = {
        "header": 12,
        "kv": r.fields["tokenizer.ggml.tokens"].offset + 100,
        "tensor_info": r.tensors[5].field.offset + 3,
        "tensor_data": r.tensors[-1].data_offset + 10,
        "last_byte": len(data) - 1,
    }[where]
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:cut])
    assert "truncated" in err(p)


def test_unsupported_version(model_path, tmp_path: Path) -> None:
    data = bytearray(model_path().read_bytes())
    data[4:8] = (7).to_bytes(4, "little")
    p = tmp_path / "v7.gguf"
    p.write_bytes(bytes(data))
    assert "unsupported GGUF version 7" in err(p)


def test_architecture_other_than_llama(model_path, tmp_path: Path) -> None:
    p = rewrite(model_path(), tmp_path / "a.gguf", arch="gpt2")
    assert "architecture 'gpt2' is not supported" in err(p)


@pytest.mark.parametrize(
    "key",
    [
        "llama.block_count",
        "llama.embedding_length",
        "tokenizer.ggml.tokens",
        "llama.attention.layer_norm_rms_epsilon",
    ],
)
def test_missing_key(model_path, tmp_path: Path, key: str) -> None:
    p = rewrite(model_path(), tmp_path / "k.gguf", kv={key: DROP})
    assert f"missing metadata key {key!r}" in err(p)


def test_key_of_wrong_type(model_path, tmp_path: Path) -> None:
    p = rewrite(model_path(), tmp_path / "k.gguf", kv={"llama.block_count": ("two", V.STRING)})
    assert "'llama.block_count' should be int, found str 'two'" in err(p)


def test_missing_tensor(model_path, tmp_path: Path) -> None:
    p = rewrite(model_path(), tmp_path / "t.gguf", tensors={"blk.1.ffn_up.weight": DROP})
    assert "missing tensor 'blk.1.ffn_up.weight' (expected shape (768, 256))" in err(p)


def test_wrong_shape(model_path, tmp_path: Path) -> None:
    raw = np.zeros((128, 256 * 4), np.uint8)  # a 128 x 256 F32 matrix
    p = rewrite(model_path(), tmp_path / "s.gguf", tensors={"blk.0.attn_q.weight": (raw, T.F32)})
    assert "tensor 'blk.0.attn_q.weight' has shape (128, 256), expected (256, 256)" in err(p)


def test_unsupported_tensor_type(model_path, tmp_path: Path) -> None:
    raw = np.zeros((256, 256 // 32 * 18), np.uint8)  # IQ4_NL: 18 bytes per 32
    p = rewrite(model_path(), tmp_path / "u.gguf", tensors={"blk.0.attn_q.weight": (raw, T.IQ4_NL)})
    assert "tensor 'blk.0.attn_q.weight' has unsupported type IQ4_NL" in err(p)


@pytest.mark.parametrize(
    ("kv", "message"),
    [
        ({"llama.attention.head_count": (3, V.UINT32)}, "n_embd 256 is not divisible by n_head 3"),
        ({"llama.attention.head_count_kv": (3, V.UINT32)}, "n_head 4 is not a multiple of n_head_kv 3"),
        ({"llama.vocab_size": (999, V.UINT32)}, "llama.vocab_size is 999 but the tokenizer has 1024"),
        (
            {"llama.rope.dimension_count": (128, V.UINT32)},
            "rope dimension 128 must be even and <= head_dim 64",
        ),
        ({"llama.block_count": (0, V.UINT32)}, "should be a positive count, found 0"),
        ({"tokenizer.ggml.bos_token_id": (5000, V.UINT32)}, "is 5000, outside the vocabulary of 1024"),
        ({"tokenizer.ggml.scores": ([0.0] * 10, V.ARRAY, V.FLOAT32)}, "has 10 entries, expected 1024"),
    ],
)
def test_inconsistent_config(model_path, tmp_path: Path, kv, message: str) -> None:
    p = rewrite(model_path(), tmp_path / "c.gguf", kv=kv)
    assert message in err(p)


def test_more_layers_declared_than_present(model_path, tmp_path: Path) -> None:
    p = rewrite(model_path(), tmp_path / "l.gguf", kv={"llama.block_count": (3, V.UINT32)})
    assert "missing tensor 'blk.2.attn_norm.weight'" in err(p)
