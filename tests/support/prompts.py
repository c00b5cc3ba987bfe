"""Seeded prompts, llama.cpp's logits for them, and the relative error the CPU backend's
tests compare logits by (tests/backends/test_cpu.py, tests/backends/test_cpu_rope.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Plain-text prompts of the real-model greedy tests (tests/model)
PLAIN_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,",
                 "Water boils at"]  # fmt: skip


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def assert_within_flips(errs: list[float]) -> None:
    """Per-row relative errors of the same rows of a sequence computed in two float
    orders (one token at a time against a batch): float precision, but a rounding that
    lands on the other side of its step moves its row and the rows after it (through
    the KV ring) by up to ~1e-2 on the tiny models, at any row; a structural error (a
    wrong position, layer or factor) lands near 1."""
    assert max(errs) < 5e-2, errs


def prompt(rng: np.random.Generator, n: int, n_vocab: int) -> list[int]:
    return [1] + [int(t) for t in rng.integers(3, n_vocab, n - 1)]


def llama_cpp_logits(llama_cpp, path: Path, toks: list[int]):
    llm = llama_cpp.Llama(
        str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2, seed=0, flash_attn=False
    )
    llm.eval(toks)
    return llm, np.array(llm.scores[: len(toks)], np.float64)


def llama_cpp_prompts(llama_cpp, path: Path, n_tokens: int, n_prompts: int = 4):
    """n_prompts seeded prompts of n_tokens, each with llama.cpp's logits (float64) for
    it: [(tokens, logits)], from one llama.cpp context reset between prompts."""
    out, llm = [], None
    for seed in range(n_prompts):
        toks = prompt(np.random.default_rng(2024 + seed), n_tokens, 1024)
        if llm is None:
            llm, ref = llama_cpp_logits(llama_cpp, path, toks)
        else:
            llm.reset()
            llm.eval(toks)
            ref = np.array(llm.scores[: len(toks)], np.float64)
        out.append((toks, ref))
    return out
