"""The real SmolLM2-135M-Instruct (Q4_1, byte-level BPE, pre "smollm") through the shipped
guest against llama.cpp (llama-cpp-python) on the same file: the prompt's tokens, and the
greedy tokens over 48 steps on plain and chat-formatted prompts.

How close two programs' greedy tokens stay depends on whether they sum in the same float
order. This model is sensitive: a flipped rounding anywhere moves its logits by a few
percent. llama.cpp's own two paths (its batched prefill and its token-by-token decode, on
the same tokens) differ here by up to 1.6 in a logit and pick another argmax at margins
up to 0.23 on these prompts with an AVX2 build. So: where llama.cpp's build sums in our
order (llama_cpp_info.sums_in_our_order), the greedy tokens through the guest equal
llama.cpp's up to the first step whose top-2 margin is below 0.05; elsewhere, along
llama.cpp's greedy path, our argmax equals llama.cpp's at every step whose margin is at
least WIDE_MARGIN. Either way the guest's own greedy tokens equal the backend's exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import real_files
from support.greedy import llama_cpp_greedy
from support.llama_cpp_info import sums_in_our_order
from support.prompts import PLAIN_PROMPTS

from realm_ext import Host

STEPS = 48
MARGIN = 0.05  # where the float orders agree
WIDE_MARGIN = 0.5  # where they do not: above llama.cpp's own flips (0.23) with room
SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)


def chat(user: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [
    *PLAIN_PROMPTS,
    chat("What is the capital of France?"),
    chat("Write a Python function that reverses a string."),
    chat("Give me three tips for sleeping better."),
    chat("Translate 'good morning' into Spanish."),
]


@pytest.fixture(scope="module")
def llm():
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(
        str(real_files.smollm2()), n_ctx=512, n_batch=512, logits_all=True, n_threads=2, seed=0, verbose=False
    )
    return llama_cpp, model


@pytest.fixture(scope="module")
def host_model():
    with Host(device="cpu") as host:
        yield host, host.load(real_files.smollm2())


@pytest.fixture(scope="module")
def guest(host_model):
    host, model = host_model
    with host.guest(models=[model], memory_limit="256MiB") as g:
        yield g


def margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def backend_greedy(host: Host, model, tokens: list[int], steps: int) -> list[int]:
    """Greedy tokens from the CPU backend driven from Python (no guest), stopping at EOS
    as the guest does."""
    be, c = host.backend, model.config
    kv = be.new_kv(model, len(tokens) + steps + 1)
    x = np.empty((len(tokens), c.n_embd), np.float32)
    logits = np.empty((1, c.n_vocab), np.float32)
    be.forward_embedding(model, np.array(tokens, np.int32), x)
    be.forward_layers(model, 0, c.n_layer, x, 0, kv, x)
    be.forward_lm_head(model, x[-1:], logits)
    out: list[int] = []
    eog = set(model.tokenizer.eog_ids)
    for pos in range(len(tokens), len(tokens) + steps):
        out.append(int(np.argmax(logits[0])))
        if out[-1] in eog:
            break
        x1 = x[:1]
        be.forward_embedding(model, np.array(out[-1:], np.int32), x1)
        be.forward_layers(model, 0, c.n_layer, x1, pos, kv, x1)
        be.forward_lm_head(model, x1, logits)
    be.free_kv(model, kv)
    return out


def test_prompt_tokens_equal_llama_cpp(llm, guest) -> None:
    for text in PROMPTS:
        want = llm[1].tokenize(text.encode(), add_bos=False, special=True)
        assert guest.tokenize(text, special=True) == want, text


def test_guest_greedy_equals_the_backend(host_model, guest) -> None:
    """The guest's greedy text is the backend's greedy tokens, exactly (48 steps)."""
    host, model = host_model
    for text in PROMPTS:
        ids = backend_greedy(host, model, guest.tokenize(text, special=True), STEPS)
        eog = set(model.tokenizer.eog_ids)
        want = guest.detokenize([t for t in ids if t not in eog])
        assert "".join(guest.generate(text, max_tokens=STEPS, temperature=0.0)) == want, text


def test_greedy_equals_llama_cpp(llm, host_model, guest, record_property) -> None:
    host, model = host_model
    same_order = sums_in_our_order("Q4_1") and sums_in_our_order("Q8_0")
    compared = []
    for text in PROMPTS:
        tokens = llm[1].tokenize(text.encode(), add_bos=False, special=True)
        ref, ref_logits = llama_cpp_greedy(llm[1], tokens, STEPS)
        m = margins(ref_logits)
        if same_order:  # the rule: free-running, up to the first near tie
            cut = int(np.argmax(m < MARGIN)) if (m < MARGIN).any() else len(ref)
            want = llm[1].detokenize(ref[:cut]).decode("utf-8", "replace")
            got = "".join(guest.generate(text, max_tokens=cut, temperature=0.0)) if cut else ""
            assert got == want, (text, cut)
            compared.append(cut)
        else:  # along llama.cpp's path (teacher forced): every step that is no near tie
            seq = tokens + ref[:-1]
            ours = host.backend.logits(model, seq)[len(tokens) - 1 :]
            clear = m >= WIDE_MARGIN
            assert np.array_equal(np.argmax(ours, axis=1)[clear], np.array(ref)[clear]), text
            compared.append(int(clear.sum()))
    record_property("greedy_steps_compared", compared)
    rule = f"free-running up to a margin < {MARGIN}" if same_order else f"steps with margin >= {WIDE_MARGIN}"
    print(f"greedy tokens equal to llama.cpp's per prompt ({rule}): {compared} of {STEPS}")
    assert sum(compared) >= 8 * len(PROMPTS), compared  # the comparison has teeth
