"""Greedy decoding with a backend driven directly from Python, and the text it gives
(tests/host/test_api.py, tests/backends/test_cuda.py)."""

from __future__ import annotations

import numpy as np

from realm_ext.backends.cpu import CpuBackend
from realm_ext.model import Model


def piece_bytes(model: Model, t: int) -> bytes:
    """A token's bytes as llama's SPM detokenizer writes them (plain Python)."""
    tok = model.tokenizer
    kind = int(tok.token_types[t])
    if kind == 6:  # <0xNN>
        return bytes([int(tok.tokens[t][3:5], 16)])
    if kind in (1, 4):
        return tok.tokens[t].replace("\u2581", " ").encode()
    return b""


def backend_greedy(backend: CpuBackend, model: Model, ids: list[int], n: int, n_ctx: int) -> list[int]:
    """Greedy decoding with the backend driven directly: the prompt in one batch, the
    logits of its last row, then one token at a time (what the guest does)."""
    c = model.config
    kv = backend.new_kv(model, n_ctx)
    x = np.empty((len(ids), c.n_embd), np.float32)
    logits = np.empty((1, c.n_vocab), np.float32)
    backend.forward_embedding(model, np.array(ids, np.int32), x)
    backend.forward_layers(model, 0, c.n_layer, x, 0, kv, x)
    backend.forward_lm_head(model, x[-1:], logits)
    out, pos = [], len(ids)
    for _ in range(n):
        t = int(np.argmax(logits[0]))
        if t == model.tokenizer.eos_id:
            break
        out.append(t)
        x1 = x[:1]
        backend.forward_embedding(model, np.array([t], np.int32), x1)
        backend.forward_layers(model, 0, c.n_layer, x1, pos, kv, x1)
        backend.forward_lm_head(model, x1, logits)
        pos += 1
    return out


def prompt_ids(guest, model: Model, text: str) -> list[int]:
    bos = [model.tokenizer.bos_id] if model.tokenizer.add_bos else []
    return bos + guest.tokenize(text)


def llama_cpp_greedy(llm, tokens: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy tokens after `tokens` (at most `steps`, the last one an end of
    generation if it stopped early) and its logits (float64) before each of them."""
    import llama_cpp

    llm.reset()
    llm.eval(tokens)
    out, rows = [], []
    for _ in range(steps):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], np.float64)
        rows.append(logits)
        out.append(int(np.argmax(logits)))
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, out[-1]):
            break
        llm.eval([out[-1]])
    return out, np.array(rows)


def along_llama_cpps_path(llm, backend: CpuBackend, model: Model, tokens: list[int], steps: int, n_ctx: int):
    """Greedy decoding teacher-forced by llama.cpp: the prompt in one batch, then one
    token at a time, both programs fed llama.cpp's argmax. Yields (ours, theirs): the two
    logits rows (float32, float64) before each of `steps` steps. `llm` has evaluated
    exactly `tokens`."""
    c = model.config
    kv = backend.new_kv(model, n_ctx)
    ours = backend.logits(model, np.asarray(tokens), kv=kv)[-1]
    x = np.empty((1, c.n_embd), np.float32)
    out = np.empty((1, c.n_vocab), np.float32)
    for pos in range(len(tokens), len(tokens) + steps):
        theirs = np.array(llm.scores[llm.n_tokens - 1], np.float64)
        yield ours, theirs
        nxt = int(np.argmax(theirs))
        llm.eval([nxt])
        backend.forward_embedding(model, np.array([nxt], np.int32), x)
        backend.forward_layers(model, 0, c.n_layer, x, pos, kv, x)
        backend.forward_lm_head(model, x, out)
        ours = out[0]


def clear_steps_agree(llm, backend: CpuBackend, model: Model, tokens: list[int], steps: int, n_ctx: int,
                      margin: float) -> int:  # fmt: skip
    """Along llama.cpp's greedy path (along_llama_cpps_path): at every step where its top-2
    margin exceeds `margin`, asserts our argmax is its token; returns how many such steps."""
    checked = 0
    for step, (ours, theirs) in enumerate(along_llama_cpps_path(llm, backend, model, tokens, steps, n_ctx)):
        top2 = np.sort(theirs)[-2:]
        if top2[1] - top2[0] > margin:
            nxt = int(np.argmax(theirs))
            assert int(np.argmax(ours)) == nxt, f"step {step}: ours {int(np.argmax(ours))}, llama.cpp {nxt}"
            checked += 1
    return checked
