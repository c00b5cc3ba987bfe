"""The real SmolLM2-135M-Instruct (Q4_1, byte-level BPE, pre "smollm") through the shipped
guest against llama.cpp (llama-cpp-python) on the same file: the prompt's tokens, and the
greedy tokens over 48 steps, plain and chat-formatted prompts, compared up to the first
step where llama.cpp's top-2 margin is below 0.05 (past it, a float-order difference
between the two programs may legitimately pick the other token)."""

from __future__ import annotations

import numpy as np
import pytest
import real_files

from realm_ext import Host

STEPS = 48
MARGIN = 0.05
SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)


def chat(user: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "1, 2, 3, 4,",
    "Water boils at",
    chat("What is the capital of France?"),
    chat("Write a Python function that reverses a string."),
    chat("Give me three tips for sleeping better."),
    chat("Translate 'good morning' into Spanish."),
]


@pytest.fixture(scope="module")
def llm():
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp, llama_cpp.Llama(
        str(real_files.smollm2()), n_ctx=512, logits_all=True, n_threads=2, seed=0, verbose=False
    )


@pytest.fixture(scope="module")
def guest():
    with Host(device="cpu") as host:
        model = host.load(real_files.smollm2())
        with host.guest(models=[model], memory_limit="256MiB") as g:
            yield g


def llama_cpp_greedy(llm, tokens: list[int]) -> tuple[list[int], int]:
    """llama.cpp's greedy tokens after `tokens` (at most STEPS, ending at an end of
    generation) and how many lead the first step whose top-2 margin is below MARGIN."""
    llama_cpp, model = llm
    model.reset()
    model.eval(tokens)
    out: list[int] = []
    cut = None
    for step in range(STEPS):
        logits = np.asarray(model.scores[model.n_tokens - 1], np.float64)
        top2 = np.sort(logits)[-2:]
        if cut is None and top2[1] - top2[0] < MARGIN:
            cut = step
        token = int(np.argmax(logits))
        out.append(token)
        if llama_cpp.llama_vocab_is_eog(model._model.vocab, token):
            break
        model.eval([token])
    return out, len(out) if cut is None else cut


def test_greedy_equals_llama_cpp(llm, guest, record_property) -> None:
    compared = []
    for text in PROMPTS:
        tokens = llm[1].tokenize(text.encode(), add_bos=False, special=True)
        assert guest.tokenize(text, special=True) == tokens, text
        ref, cut = llama_cpp_greedy(llm, tokens)
        want = llm[1].detokenize(ref[:cut]).decode("utf-8", "replace")
        got = "".join(guest.generate(text, max_tokens=cut, temperature=0.0)) if cut else ""
        assert got == want, (text, cut)
        compared.append(cut)
    record_property("greedy_steps_compared", compared)
    print(f"greedy steps equal to llama.cpp's per prompt (of {STEPS}, up to a margin < {MARGIN}): {compared}")
    # the comparison has teeth: most prompts run far before a near tie
    assert sum(compared) >= 8 * len(PROMPTS), compared
