"""Llama 3 style RoPE on the CPU backend: rope_freqs and linear scaling against llama.cpp
and the float64 reference, at positions past the original context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.ggml_emulation import GgmlEmulation
from support.llama_cpp_info import bit_for_bit, sums_in_our_order
from support.prompts import assert_within_flips, llama_cpp_prompts, prompt, rel

from realm_ext.backends.cpu import CpuBackend
from realm_ext.model import load_gguf
from realm_ext.model_maker import llama3_rope_freqs, make_model
from realm_ext.reference import ReferenceLlama

RECIPE = "Q8_0"  # activations and weights round the same way in both programs
ORIGINAL_CONTEXT = 32  # the tests' "original context": the prompts run past it
N_PROMPT = 48
# Llama 3.1's factors (8, 1, 4) for an original context of 32: most pairs of head_dim 64
# are divided by 8, some by a smooth mix, the fastest keep 1
ROPES = {
    "rope_freqs": {"rope_freqs": llama3_rope_freqs(64, 10000.0, original_context=ORIGINAL_CONTEXT)},
    "linear": {"rope_scale_linear": 4.0},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same weights (seed 11) with each RoPE variant, and with none ("plain")."""
    root = tmp_path_factory.mktemp("rope")
    out = {"plain": make_model(root / "plain.gguf", "tiny", RECIPE, seed=11)}
    for name, kw in ROPES.items():
        out[name] = make_model(root / f"{name}.gguf", "tiny", RECIPE, seed=11, **kw)
    return out


def test_the_models_carry_the_scaling(models: dict[str, Path]) -> None:
    with load_gguf(models["rope_freqs"]) as m:
        assert m.config.rope_freq_factors == ROPES["rope_freqs"]["rope_freqs"]
        assert m.config.rope_freq_scale == 1.0
    with load_gguf(models["linear"]) as m:
        assert m.config.rope_freq_factors is None
        assert (m.config.rope_scale_linear, m.config.rope_freq_scale) == (4.0, 0.25)


@pytest.mark.parametrize("rope", list(ROPES))
def test_prompt_logits_match_llama_cpp(
    llama_cpp, models: dict[str, Path], backend: CpuBackend, rope: str, record_property
) -> None:
    """As test_cpu.py's parity test asserts for Q8_0, on 4 prompts of 48 tokens; and
    the same weights without the scaling are far from llama.cpp's logits, so a kernel
    that ignored the factors would fail here."""
    path = models[rope]
    errs, ignored, rows = [], [], []
    with load_gguf(path) as m, load_gguf(models["plain"]) as plain:
        for toks, ref in llama_cpp_prompts(llama_cpp, path, N_PROMPT):
            ours = backend.logits(m, toks).astype(np.float64)
            errs.append(rel(ours, ref))
            ignored.append(rel(backend.logits(plain, toks), ref))
            rows.append(np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1))
    rows_all = np.concatenate(rows)
    exact = float(np.mean(rows_all <= 1e-5))
    record_property("rel_l2", errs)
    record_property("rel_l2_without_scaling", ignored)
    print(
        f"{rope} {RECIPE}: relative L2 vs llama.cpp per prompt [{', '.join(f'{e:.1e}' for e in errs)}]; "
        f"rows within 1e-5: {exact:.0%}; without the scaling [{', '.join(f'{e:.1e}' for e in ignored)}]"
    )
    assert min(ignored) > 1e-2
    assert rows_all.max() < 5e-2
    if sums_in_our_order(RECIPE):
        if bit_for_bit(RECIPE):
            assert rows_all.max() == 0.0
        assert max(errs) <= 1e-3
    else:
        assert min(errs) <= 1e-3
        assert exact >= 0.5


@pytest.mark.parametrize("rope", list(ROPES))
def test_logits_match_float64_reference(models: dict[str, Path], backend: CpuBackend, rng, rope: str) -> None:
    with load_gguf(models[rope]) as m, load_gguf(models["plain"]) as plain:
        toks = prompt(rng, N_PROMPT, m.config.n_vocab)
        ours = backend.logits(m, toks)
        oracle = ReferenceLlama(m).logits(toks)
        assert rel(ours, oracle) < 3e-2
        assert rel(ours, GgmlEmulation(m).logits(toks)) < 2e-2
        # the oracle itself applies the scaling: without it, it is far away
        assert rel(ReferenceLlama(plain).logits(toks), oracle) > 3e-2


@pytest.mark.parametrize("rope", list(ROPES))
def test_decode_past_the_original_context_equals_prefill(
    models: dict[str, Path], backend: CpuBackend, rng, rope: str, float_order
) -> None:
    """One token at a time from position 40 on (the factors apply per position): equal to
    the prefill's rows up to rounding flips (test_cpu.py's decode test says why)."""
    float_order("avx512")
    with load_gguf(models[rope]) as m:
        c = m.config
        toks = np.asarray(prompt(rng, N_PROMPT, c.n_vocab), np.int32)
        batch = backend.logits(m, toks)
        kv = backend.new_kv(m, 64)
        start = 40
        backend.logits(m, toks[:start], kv=kv)
        x = np.empty((1, c.n_embd), np.float32)
        out = np.empty((1, c.n_vocab), np.float32)
        errs = []
        for p in range(start, len(toks)):
            backend.forward_embedding(m, toks[p : p + 1], x)
            backend.forward_layers(m, 0, c.n_layer, x, p, kv, x)
            backend.forward_lm_head(m, x, out)
            errs.append(rel(out[0], batch[p].astype(np.float64)))
        assert_within_flips(errs)
