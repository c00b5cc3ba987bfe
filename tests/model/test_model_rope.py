"""The loader's RoPE scaling: what it reads (rope_freqs, linear scaling keys, as llama.cpp
does) and what it refuses with GGUFError naming the key or tensor and the value."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from support.gguf_edit import rewrite

from realm_ext.model import GGUFError, load_gguf
from realm_ext.model_maker import llama3_rope_freqs

STR, F32 = gguf.GGUFValueType.STRING, gguf.GGUFValueType.FLOAT32
FREQS = "rope_freqs.weight"


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from realm_ext.model_maker import make_model

    return make_model(tmp_path_factory.mktemp("rope") / "src.gguf", "tiny", "Q8_0", seed=1)


def f32_tensor(values: np.ndarray) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    return np.asarray(values, np.float32).view(np.uint8), gguf.GGMLQuantizationType.F32


def edited(src: Path, tmp_path: Path, kv: dict | None = None, freqs: tuple | None = None) -> Path:
    dst = rewrite(src, tmp_path / "edited.gguf", kv=kv)
    if freqs is None:
        return dst
    r = gguf.GGUFReader(dst)  # add the tensor: rewrite only replaces existing ones
    w = gguf.GGUFWriter(tmp_path / "with_freqs.gguf", arch="llama")
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    for t in r.tensors:
        raw = np.asarray(t.data).view(np.uint8)
        raw = raw.reshape(*t.data.shape[:-1], -1) if t.data.ndim > 1 else raw.reshape(-1)
        w.add_tensor(t.name, np.ascontiguousarray(raw), raw_dtype=t.tensor_type)
    raw, qtype = freqs
    w.add_tensor(FREQS, raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp_path / "with_freqs.gguf"


def test_no_scaling_by_default(src: Path) -> None:
    with load_gguf(src) as m:
        assert (m.config.rope_freq_factors, m.config.rope_scale_linear, m.config.rope_freq_scale) == (
            None,
            1.0,
            1.0,
        )


@pytest.mark.parametrize(
    ("kv", "factor"),
    [
        ({"llama.rope.scaling.type": ("linear", STR), "llama.rope.scaling.factor": (4.0, F32)}, 4.0),
        ({"llama.rope.scaling.factor": (2.5, F32)}, 2.5),  # no type: llama.cpp takes "linear"
        ({"llama.rope.scale_linear": (2.0, F32)}, 2.0),  # the older key
        ({"llama.rope.scaling.factor": (3.0, F32), "llama.rope.scale_linear": (5.0, F32)}, 3.0),
        ({"llama.rope.scaling.type": ("none", STR), "llama.rope.scaling.factor": (4.0, F32)}, 1.0),
    ],
)
def test_linear_scaling_is_read_as_llama_cpp_does(src: Path, tmp_path: Path, kv: dict, factor: float) -> None:
    with load_gguf(edited(src, tmp_path, kv)) as m:
        assert m.config.rope_scale_linear == factor
        assert m.config.rope_freq_scale == float(np.float32(1) / np.float32(factor))


def test_rope_freqs_are_read(src: Path, tmp_path: Path) -> None:
    want = llama3_rope_freqs(64, 10000.0)
    with load_gguf(edited(src, tmp_path, freqs=f32_tensor(want))) as m:
        assert m.config.rope_freq_factors == want


@pytest.mark.parametrize(
    ("kv", "match"),
    [
        ({"llama.rope.scaling.type": ("yarn", STR)}, r"'llama.rope.scaling.type' is 'yarn'"),
        ({"llama.rope.scaling.type": ("longrope", STR)}, r"'llama.rope.scaling.type' is 'longrope'"),
        ({"llama.rope.scaling.factor": (0.0, F32)}, r"'llama.rope.scaling.factor' is 0.0"),
        ({"llama.rope.scaling.factor": (-2.0, F32)}, r"'llama.rope.scaling.factor' is -2.0"),
        ({"llama.rope.scale_linear": (-1.0, F32)}, r"'llama.rope.scale_linear' is -1.0"),
        ({"llama.rope.scaling.factor": (float("inf"), F32)}, r"'llama.rope.scaling.factor' is inf"),
        ({"llama.rope.scaling.attn_factor": (2.0, F32)}, r"'llama.rope.scaling.attn_factor' is 2.0"),
        ({"llama.rope.scaling.type": (3.0, F32)}, r"'llama.rope.scaling.type' should be str"),
    ],
)
def test_unsupported_scaling_is_refused(src: Path, tmp_path: Path, kv: dict, match: str) -> None:
    with pytest.raises(GGUFError, match=match):
        load_gguf(edited(src, tmp_path, kv))


@pytest.mark.parametrize(
    ("freqs", "match"),
    [
        (
            f32_tensor(np.ones(16)),
            r"'rope_freqs.weight' is F32 of shape \(16,\), expected F32 of shape \(32,\)",
        ),
        (f32_tensor(np.ones(64)), r"shape \(64,\), expected F32 of shape \(32,\)"),
        (
            (np.ones(32, np.float16).view(np.uint8), gguf.GGMLQuantizationType.F16),
            r"'rope_freqs.weight' is F16 of shape \(32,\), expected F32",
        ),
        (f32_tensor([1.0] * 5 + [0.0] + [1.0] * 26), r"'rope_freqs.weight' has value 0.0 at 5"),
        (f32_tensor([1.0] * 31 + [float("nan")]), r"'rope_freqs.weight' has value nan at 31"),
    ],
)
def test_bad_rope_freqs_are_refused(src: Path, tmp_path: Path, freqs: tuple, match: str) -> None:
    with pytest.raises(GGUFError, match=match):
        load_gguf(edited(src, tmp_path, freqs=freqs))
