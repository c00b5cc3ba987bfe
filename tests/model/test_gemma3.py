"""The real Gemma 3 270M (Q4_K_M; Q5_0/Q4_K/Q6_K/Q8_0 tensors, tied Q8_0 output) on the
CPU backend and through the shipped guest, against llama.cpp (llama-cpp-python) on the
same file and against the float64 reference (realm_ext.reference).

Where llama.cpp's build sums every one of the file's formats in our order
(llama_cpp_info.sums_in_our_order) the logits are llama.cpp's bit for bit: a batched
prompt (its repacked Q4_K kernel for 4 tokens at once, its tiled Q6_K, tinyBLAS in the
attention), a prompt past the 512 window and token-by-token decode. Elsewhere a rounding
flip can move a row, and this model amplifies one to a relative error of ~0.1, about
its distance from the float64 pass; so the bounds there are that distance with room,
and a structural error (a wrong norm, window or RoPE base) lands far outside them (~1).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from support import real_files
from support.greedy import along_llama_cpps_path, llama_cpp_greedy
from support.llama_cpp_info import sums_in_our_order
from support.prompts import PLAIN_PROMPTS, rel

from realm_ext import Host
from realm_ext.backends.cpu import CpuBackend
from realm_ext.model import load_gguf
from realm_ext.reference import ReferenceLlama

FORMATS = ("Q5_0", "Q8_0", "Q4_K", "Q6_K")  # the file's matrix types
REL = 0.2  # ours against llama.cpp or the float64 pass, per row, where orders differ
MARGIN = 1.0  # llama.cpp's top-2 margin above which our argmax must be its, there
STEPS = 48
NEAR_TIE = 0.05  # the greedy comparison runs up to llama.cpp's first margin below this
PROMPTS = [*PLAIN_PROMPTS, "The quick brown fox"]
TOKENIZER_TEXTS = [
    "Hello, world! Ça va? Grüße aus Köln, naïve café.",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷🇯🇵",
    "مرحبا بالعالم — שלום עולם — Привет, мир",
    "def f(x):\n\treturn x**2 + 3.14159  # comment\n\n\nif __name__ == '__main__':\n    f(2)",
    "    four spaces,  two,   three; trailing   ",
    "1234567890 3.14159 -42 1e-7 0x1F 2024-12-02 $1,000,000.00",
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "e\u0301 (combining) \u00e9 (precomposed) \ufb01 ligature \u200b zero-width",
]


@pytest.fixture(scope="module")
def model():
    with load_gguf(real_files.gemma3()) as m:
        yield m


@pytest.fixture(scope="module")
def llm(model):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(
        str(model.path), n_ctx=1024, n_batch=1024, logits_all=True, verbose=False, n_threads=2, seed=0,
        flash_attn=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def guest(model):
    with Host(device="cpu") as host:
        m = host.load(model.path)
        with host.guest(models=[m], memory_limit="64MiB") as g:
            yield g


def same_order() -> bool:
    return all(sums_in_our_order(f) for f in FORMATS)


def llama_cpp_logits(llm, toks: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(toks)
    return np.array(llm.scores[: len(toks)], np.float64)


def test_the_file_is_read_as_gemma3(model) -> None:
    c = model.config
    assert (c.arch, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_vocab) == (
        "gemma3",
        18,
        640,
        4,
        1,
        256,
        262144,
    )
    assert c.sliding_window == 512 and model.tied_output
    # every 6th layer is global, with the file's RoPE base; the others slide, with 10000
    assert [i for i in range(18) if not c.slides(i)] == [5, 11, 17]
    assert c.layer_rope(0) == (10000.0, 1.0) and c.layer_rope(5) == (1e6, 1.0)


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    for t in range(len(ref)):
        assert rel(ours[t], ref[t]) < REL, t
        top2 = np.sort(ref[t])[-2:]
        if top2[1] - top2[0] > MARGIN:
            assert int(ours[t].argmax()) == int(ref[t].argmax()), t


def assert_llama_cpps(ours: np.ndarray, lc: np.ndarray) -> None:
    if same_order():
        np.testing.assert_array_equal(ours, lc.astype(np.float32))
    assert_close(ours, lc)


def test_logits_match_llama_cpp_and_the_float64_pass(model, llm) -> None:
    toks = llm.tokenize(b"The capital of France is Paris. def fibonacci(n): return n if n < 2 else")
    ours = CpuBackend(n_threads=2).logits(model, np.array(toks))
    lc = llama_cpp_logits(llm, toks)
    np.testing.assert_array_equal(ours[:2], lc[:2].astype(np.float32))  # before any order can differ
    assert_llama_cpps(ours, lc)
    assert_close(ours, ReferenceLlama(model).logits(toks))


def test_a_prompt_past_the_sliding_window(model, llm) -> None:
    text = " ".join(f"item {i} is {i * 7 % 13}." for i in range(120)).encode()
    toks = llm.tokenize(text)[:700]
    assert len(toks) == 700  # past the 512 window: the sliding layers forget the start
    backend = CpuBackend(n_threads=2)
    ring = backend.new_kv(model, 1024)
    # the sliding layers hold their window and one chunk, the global ones the whole context
    assert ring.slots == tuple(1024 if i in (5, 11, 17) else 512 + backend.max_batch - 1 for i in range(18))
    ours = backend.logits(model, np.array(toks), ring)
    lc = llama_cpp_logits(llm, toks)
    assert_llama_cpps(ours[-16:], lc[-16:])
    # the same model attending over everything everywhere is not llama.cpp's
    model.config, saved = replace(model.config, sliding_window=0, swa_layers=()), model.config
    try:
        wide = CpuBackend(n_threads=2).logits(model, np.array(toks))
    finally:
        model.config = saved
    assert min(rel(wide[t], lc[t]) for t in range(684, 700)) > 0.05
    assert max(rel(wide[t], lc[t]) for t in range(684, 700)) > 2 * max(
        rel(ours[t], lc[t]) for t in range(684, 700)
    )


def test_decode_one_token_at_a_time_is_llama_cpps(model, llm) -> None:
    """Token by token after a prompt (llama.cpp's one-token kernels: ggml_vec_dot_f16 in
    the attention, the repacked Q4_K's gemv): along llama.cpp's greedy path."""
    toks = llm.tokenize(b"Once upon a time")
    llm.reset()
    llm.eval(toks)
    for ours, theirs in along_llama_cpps_path(llm, CpuBackend(n_threads=2), model, toks, 16, 128):
        assert_llama_cpps(ours[None], theirs[None])


def test_the_tokenizer_is_llama_cpps(llm, guest) -> None:
    """The guest's SPM tokenizer on the 262,144-token vocabulary, without and with the
    text of control tokens parsed (Gemma's file adds no space prefix)."""
    for text in TOKENIZER_TEXTS:
        for special in (False, True):
            want = llm.tokenize(text.encode(), add_bos=False, special=special)
            assert guest.tokenize(text, special=special) == want, (text, special)
        assert guest.detokenize(guest.tokenize(text)) == text


def test_the_guest_says_what_llama_cpp_says(llm, guest, record_property) -> None:
    """`realm-ext generate --model gemma-3-270m-q4_k_m.gguf --prompt ... --temperature 0`:
    the shipped guest's greedy text is llama.cpp's over 48 steps, up to llama.cpp's first
    top-2 margin below 0.05 (where the orders agree; else up to the first below 1)."""
    cuts = []
    for text in PROMPTS:
        ref, logits = llama_cpp_greedy(llm, llm.tokenize(text.encode()), STEPS)
        top2 = np.sort(logits, axis=-1)[:, -2:]
        near = (top2[:, 1] - top2[:, 0]) < (NEAR_TIE if same_order() else MARGIN)
        cut = int(np.argmax(near)) if near.any() else len(ref)
        want = llm.detokenize(ref[:cut]).decode("utf-8", "replace")
        got = "".join(guest.generate(text, max_tokens=cut, temperature=0.0)) if cut else ""
        assert got == want, (text, cut)
        cuts.append(cut)
    record_property("greedy_steps_compared", cuts)
    record_property("guest_memory_pages", guest.memory_pages)
    print(f"greedy tokens equal to llama.cpp's per prompt: {cuts} of {STEPS}; guest memory "
          f"{guest.memory_pages} pages of 64 KiB")  # fmt: skip
    if same_order():
        assert sum(cuts) >= 16 * len(PROMPTS), cuts  # the comparison has teeth
    # the guest holds the 1 MiB logits row of the 262k vocabulary, and little else
    assert 16 < guest.memory_pages <= 64 * 16
