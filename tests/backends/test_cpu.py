"""realm_ext.backends.cpu: whole-layer forward against float64 references and llama.cpp."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from backend_checks import check_bad_calls_raise
from support.ggml_emulation import GgmlEmulation
from support.greedy import clear_steps_agree
from support.llama_cpp_info import bit_for_bit, sums_in_our_order
from support.prompts import assert_within_flips, llama_cpp_logits, llama_cpp_prompts, prompt, rel

from realm_ext import _kernels, quant
from realm_ext.backends.cpu import CpuBackend, load_weights, runtime_args
from realm_ext.model import load_gguf
from realm_ext.quantizer import RECIPES
from realm_ext.reference import ReferenceLlama


@pytest.mark.parametrize("recipe", RECIPES)
def test_logits_match_float64_reference(model_path, backend: CpuBackend, rng, recipe: str) -> None:
    with load_gguf(model_path(recipe, seed=3)) as m:
        toks = prompt(rng, 12, m.config.n_vocab)
        ours = backend.logits(m, toks)
        # the plain float64 oracle: differs only by the activation roundings ggml applies
        assert rel(ours, ReferenceLlama(m).logits(toks)) < 3e-2
        # the same roundings applied in numpy: float precision, bar a rare flipped rounding
        assert rel(ours, GgmlEmulation(m).logits(toks)) < 2e-2


@pytest.mark.parametrize("recipe", RECIPES)
def test_small_model(model_path, backend: CpuBackend, rng, recipe: str) -> None:
    with load_gguf(model_path(recipe, preset="small")) as m:
        toks = prompt(rng, 9, m.config.n_vocab)
        assert rel(backend.logits(m, toks), ReferenceLlama(m).logits(toks)) < 3e-2


@pytest.mark.parametrize("recipe", ["F32", "Q8_0", "Q4_K_M"])
def test_decode_one_token_at_a_time_equals_prefill(
    model_path, backend: CpuBackend, rng, recipe: str, float_order
) -> None:
    """Decode through the per-layer calls (out aliasing x) is decode through the whole
    stack bit for bit, and the prompt's batched rows up to rounding flips: llama.cpp (so
    our float order) sums one token's attention as ggml_vec_dot_f16 and a batch's as
    tinyBLAS, and a batch's Q4_K rows in its repacked 4-token order."""
    float_order("avx512")
    with load_gguf(model_path(recipe)) as m:
        c = m.config
        toks = np.asarray(prompt(rng, 10, c.n_vocab), np.int32)
        batch = backend.logits(m, toks)
        kv, kv_stack = backend.new_kv(m, 32), backend.new_kv(m, 32)
        x = np.empty((1, c.n_embd), np.float32)
        logits = np.empty((1, c.n_vocab), np.float32)
        errs = []
        for p in range(len(toks)):
            backend.forward_embedding(m, toks[p : p + 1], x)
            for i in range(c.n_layer):
                backend.forward_layer(m, i, x, p, kv, x)  # out aliases x
            backend.forward_lm_head(m, x, logits)
            stack = backend.logits(m, toks[p : p + 1], kv=kv_stack, position=p)
            np.testing.assert_array_equal(logits[0], stack[0])
            errs.append(rel(logits[0], batch[p].astype(np.float64)))
        assert_within_flips(errs)
        assert kv.n_pos == (len(toks),) * c.n_layer or list(kv.n_pos) == [len(toks)] * c.n_layer


def test_threads_agree_bit_for_bit(model_path, rng) -> None:
    with load_gguf(model_path("Q4_K_M")) as m:
        toks = prompt(rng, 8, m.config.n_vocab)
        np.testing.assert_array_equal(
            CpuBackend(n_threads=1).logits(m, toks), CpuBackend(n_threads=3).logits(m, toks)
        )


@pytest.mark.parametrize("mode", ["load", "repack"])
@pytest.mark.parametrize("wtype,tied", [("Q4_K_M", True), ("Q4_K", False), ("Q4_0", False), ("Q4_0", True)])
def test_loaded_and_mapped_weights_agree_bit_for_bit(
    model_path, rng, mode: str, wtype: str, tied: bool
) -> None:
    """Q4_0 and Q4_K load repacked where the kernels have the interleave (AVX-512): prefill
    and decode steps then read Q4_0_X16 / Q4_K_X16, bit for bit as the file's rows."""
    with load_gguf(model_path(wtype, tied=tied)) as m:
        toks = prompt(rng, 20, m.config.n_vocab)
        loaded, mapped = CpuBackend(n_threads=2, weights=mode), CpuBackend(n_threads=2, weights="mmap")
        np.testing.assert_array_equal(loaded.logits(m, toks), mapped.logits(m, toks))
        kvs = [be.new_kv(m, 32) for be in (loaded, mapped)]
        for p, t in enumerate(toks[:4]):
            one = np.asarray([t], np.int32)
            np.testing.assert_array_equal(
                loaded.logits(m, one, kv=kvs[0], position=p), mapped.logits(m, one, kv=kvs[1], position=p)
            )


@pytest.mark.parametrize("copy_all", [True, False])
@pytest.mark.parametrize("t", ["Q4_0", "Q4_K"])
def test_load_weights_repacks_q4_0_and_q4_K_matrices_but_not_the_embedding(
    model_path, copy_all: bool, t: str
) -> None:
    """copy_all=False (weights="repack") copies the repacked matrices only: the embedding
    stays in the file's map."""
    with load_gguf(model_path(t, tied=True)) as m:
        tensors = runtime_args(m)[2]
        loaded = load_weights(tensors, copy_all=copy_all)
        file_type = int(quant.parse_type(t))
        x16 = _kernels.repack_type(file_type, 64, 256)
        x16 = file_type if x16 < 0 else x16
        for name, (raw, wtype, n_rows, _n_cols) in loaded.items():
            src, src_type, *_ = tensors[name]
            assert src_type == file_type
            if name in ("token_embd.weight", "output.weight"):  # looked up by row (tied: the same array)
                assert wtype == file_type and (raw is src) == (not copy_all)
                np.testing.assert_array_equal(raw, src)
            else:
                assert wtype == (x16 if n_rows % 16 == 0 else file_type), name
                want = _kernels.repack(src, file_type, x16) if wtype == x16 != file_type else src
                np.testing.assert_array_equal(raw, want)
                assert not np.shares_memory(raw, src) or (wtype == file_type and not copy_all)
        assert (
            sum(wtype == x16 for _, wtype, *_ in loaded.values()) >= 7 * m.config.n_layer
        )  # every layer matrix


def test_load_weights_copies_each_array_once_outside_the_map(model_path) -> None:
    with load_gguf(model_path("Q8_0", tied=True)) as m:
        tensors = runtime_args(m)[2]
        loaded = load_weights(tensors)
        assert loaded.keys() == tensors.keys()
        assert tensors["output.weight"][0] is tensors["token_embd.weight"][0]  # tied
        assert loaded["output.weight"][0] is loaded["token_embd.weight"][0]  # one copy
        for name, (raw, *rest) in loaded.items():
            src, *src_rest = tensors[name]
            assert rest == src_rest and raw.dtype == src.dtype and raw.shape == src.shape
            np.testing.assert_array_equal(raw, src)
            assert not np.shares_memory(raw, src) and raw.ctypes.data % 64 == 0
        first = min(raw.ctypes.data for raw, *_ in loaded.values())
        assert first % (2 << 20) == 0  # the buffer starts on a huge page


def test_a_model_with_nothing_to_repack_stays_in_the_map(model_path) -> None:
    with load_gguf(model_path("Q8_0", tied=True)) as m:
        tensors = runtime_args(m)[2]
        assert all(
            raw is tensors[name][0] for name, (raw, *_) in load_weights(tensors, copy_all=False).items()
        )


def test_weights_argument_is_checked() -> None:
    assert CpuBackend().weights == "repack"
    with pytest.raises(ValueError, match="weights must be one of repack, load, mmap"):
        CpuBackend(weights="copy")


def scalar_and_simd_logits(m, toks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    simd = CpuBackend(n_threads=2).logits(m, toks)
    try:
        _kernels.set_isa("scalar")
        scalar = CpuBackend(n_threads=2).logits(m, toks)
    finally:
        _kernels.set_isa(None)
    return scalar, simd


@pytest.mark.parametrize("recipe", ["Q4_0", "Q4_K", "Q2_K"])
def test_scalar_and_simd_agree_bit_for_bit(model_path, rng, recipe: str) -> None:
    """These formats' SIMD kernels keep the scalar kernel's float order exactly."""
    with load_gguf(model_path(recipe)) as m:
        scalar, simd = scalar_and_simd_logits(m, prompt(rng, 8, m.config.n_vocab))
        np.testing.assert_array_equal(scalar, simd)


@pytest.mark.parametrize("recipe", ["Q4_K_M", "Q8_0", "Q6_K", "F16"])
def test_scalar_and_simd_agree(model_path, rng, recipe: str) -> None:
    """Other formats sum in SIMD lanes: the same value to float precision, bar the
    rounding flips that move a row (see test_prompt_logits_match_llama_cpp)."""
    with load_gguf(model_path(recipe)) as m:
        scalar, simd = scalar_and_simd_logits(m, prompt(rng, 8, m.config.n_vocab))
        rows = np.linalg.norm(simd - scalar, axis=1) / np.linalg.norm(scalar, axis=1)
        # a flip early in the prompt moves every later row through the KV cache, so only
        # the bound holds for every prompt; the kernels' own agreement (<= 1e-5 per
        # matmul, every format and ISA) is tested in tests/kernels/test_vec_dot.py
        assert rows.max() < 5e-2, rows


def test_decode_allocates_nothing_per_token(model_path, backend: CpuBackend) -> None:
    with load_gguf(model_path("Q4_K_M")) as m:
        c = m.config
        kv = backend.new_kv(m, 64)
        x = np.zeros((1, c.n_embd), np.float32)
        ids = np.array([5], np.int32)
        logits = np.empty((1, c.n_vocab), np.float32)

        def step(p: int) -> None:
            backend.forward_embedding(m, ids, x)
            backend.forward_layers(m, 0, c.n_layer, x, p, kv, x)
            backend.forward_lm_head(m, x, logits)

        step(0)  # builds the runtime and its scratch
        tracemalloc.start()
        try:
            for p in range(1, 20):
                step(p)
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 * 1024, f"decode allocated {peak} bytes over 19 tokens"


def test_bad_calls_raise(model_path, backend: CpuBackend) -> None:
    with load_gguf(model_path()) as m:
        check_bad_calls_raise(backend, m, backend.new_kv(m, 8))


# ---- llama.cpp parity ----------------------------------------------------------------------

N_PROMPT = 16


@pytest.mark.parametrize("recipe", RECIPES)
def test_prompt_logits_match_llama_cpp(
    llama_cpp, model_path, backend: CpuBackend, recipe: str, record_property
) -> None:
    """Row by row, the logits equal llama.cpp's to float precision: the activation
    roundings are the same, and where sums_in_our_order holds (AVX-512, or AVX2 with our
    AVX2 float order) the dot products sum in llama.cpp's order too (its vec_dot,
    tinyBLAS, repacked and tiled paths), so every prompt is within the
    issue's 1e-3 and most are bit for bit. Elsewhere a row (and, through its K/V, the rows
    after it) can move by up to ~1e-2 when one of the thousands of Q8/f16 roundings lands
    on the other side of its step because the two programs sum in a different order; the
    tiny random models amplify that. So there: 1e-3 on at least one of 4 prompts, exact
    agreement on most rows, and a bound on every row (sums_in_our_order decides which)."""
    path = model_path(recipe, seed=11)
    errs, rows = [], []
    with load_gguf(path) as m:
        for toks, ref in llama_cpp_prompts(llama_cpp, path, N_PROMPT):
            ours = backend.logits(m, toks).astype(np.float64)
            errs.append(rel(ours, ref))
            rows.append(np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1))
    rows_all = np.concatenate(rows)
    exact = float(np.mean(rows_all <= 1e-5))
    record_property("rel_l2", errs)
    record_property("rows_within_1e-5", exact)
    per_prompt = ", ".join(f"{e:.1e}" for e in errs)
    print(f"{recipe}: relative L2 vs llama.cpp per prompt [{per_prompt}]; rows within 1e-5: {exact:.0%}")
    assert rows_all.max() < 5e-2
    same_order = sums_in_our_order(recipe)
    if same_order:
        # our kernels follow this llama.cpp build's float order (vec_dot.h, ops.h: its
        # expf, attention.c), so these agree bit for bit or to ~1e-5, every prompt
        if bit_for_bit(recipe):
            assert rows_all.max() == 0.0
        assert max(errs) <= 1e-3
    if recipe == "BF16" and not same_order:
        # bf16 activations keep 8 bits, so in another order a prompt is exact or a flipped
        # rounding moves it by ~1e-3. Measured (an AVX2 llama.cpp against our AVX2 and
        # scalar orders, 14 models x 4 prompts): worst prompt 2.3e-3, worst row 3.2e-3,
        # best of 4 prompts <= 2.3e-4; the median of 4 exceeded 1e-3 on 3 of the 28
        assert max(errs) <= 5e-3 and min(errs) <= 1e-3
    elif recipe in ("F32", "F16", "BF16"):
        # no Q8 step to amplify a flip, but many small ones (f16 probabilities, 11-bit
        # activations): few rows are exact, every prompt is close
        assert np.median(errs) <= 1e-3
    else:
        assert min(errs) <= 1e-3
        assert exact >= 0.5


@pytest.mark.parametrize("recipe", RECIPES)
def test_greedy_tokens_match_llama_cpp(llama_cpp, model_path, backend: CpuBackend, recipe: str) -> None:
    """32 greedy steps: wherever llama.cpp's top-2 margin exceeds 1e-2, the same token."""
    path = model_path(recipe, seed=11)
    toks = prompt(np.random.default_rng(7), 8, 1024)
    llm, _ = llama_cpp_logits(llama_cpp, path, toks)
    with load_gguf(path) as m:
        checked = clear_steps_agree(llm, backend, m, toks, 32, 64, 1e-2)
        assert checked >= 8, f"only {checked} steps had a clear margin"
