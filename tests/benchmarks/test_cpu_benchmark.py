"""benchmarks.cpu's model files: the llama.cpp-quantized ones (made on the tiny preset
here, the benchmark makes them on tinyllama's shape)."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from benchmarks import cpu
from realm_ext.model_maker import PRESETS
from realm_ext.quantizer import recipe_file_type, tensor_type_for


@pytest.mark.parametrize("recipe", ["Q4_K_M", "Q4_0"])
def test_a_llama_quantized_file_is_llama_cpps_quantization_of_the_f16_weights(
    tmp_path: Path, recipe: str
) -> None:
    pytest.importorskip("llama_cpp")
    path = cpu.llama_quantized(tmp_path, recipe, preset="tiny")
    made = path.stat().st_mtime_ns
    assert cpu.llama_quantized(tmp_path, recipe, preset="tiny") == path
    assert path.stat().st_mtime_ns == made  # cached, not made again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "tiny-F16.gguf"])

    quantized = gguf.GGUFReader(path)
    f16 = {t.name: t for t in gguf.GGUFReader(tmp_path / "tiny-F16.gguf").tensors}
    file_type = quantized.fields[gguf.Keys.General.FILE_TYPE]
    assert int(file_type.parts[file_type.data[0]][0]) == int(recipe_file_type(recipe))
    n_layer = PRESETS["tiny"].config.n_layer
    for t in quantized.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # numpy order
        if t.name.startswith("blk."):  # llama.cpp gives output.weight Q6_K under Q4_0 too
            assert t.tensor_type == tensor_type_for(t.name, shape, recipe, n_layer), t.name
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        src = gguf.quants.dequantize(f16[t.name].data, f16[t.name].tensor_type).reshape(shape)
        # every 4-bit block of 32 N(0, 0.02) values rounds within ~1/8 of the row's spread
        err = np.abs(w - src).mean() / np.abs(src).mean()
        assert err < (0.15 if len(shape) > 1 else 1e-6), (t.name, err)


def test_a_llama_quantized_type_without_llama_cpp_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp: ImportError
    assert cpu.model_file(tmp_path, "Q4_0" + cpu.LLAMA_QUANTIZED) is None
    assert list(tmp_path.iterdir()) == []
    rows = cpu.run_models(["Q4_0" + cpu.LLAMA_QUANTIZED], threads=1, repeat=1, models_dir=tmp_path)
    assert rows == []
