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
