"""The real files scripts/fetch_test_data.py puts in the cache (tests never fetch them).

Missing, a test that needs one skips, except under CI=true, where the set-up must have
fetched it: there it fails."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from fetch_test_data import VOCABS, vocab_dir  # noqa: E402

from realm_ext.pull import model_path  # noqa: E402


def _missing(what: str) -> None:
    msg = f"{what} is not in the cache: run python scripts/fetch_test_data.py (scripts/bootstrap.sh does)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def smollm2() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF."""
    path = model_path("smollm2")
    if path is None:
        _missing("SmolLM2-135M-Instruct")
    assert path is not None
    return path


def llama_vocab(name: str) -> tuple[Path, list[str], list[list[int]]]:
    """llama.cpp's test vocabulary `ggml-vocab-NAME.gguf` with its cases: the texts
    (`.inp`, split on its `__ggml_vocab_test__` lines) and their token ids (`.out`)."""
    assert name in VOCABS, name
    gguf = vocab_dir() / f"ggml-vocab-{name}.gguf"
    inp, out = gguf.with_name(gguf.name + ".inp"), gguf.with_name(gguf.name + ".out")
    if not (gguf.exists() and inp.exists() and out.exists()):
        _missing(f"llama.cpp's {name} test vocabulary")
    # every case is followed by a marker line, so the split leaves one empty string last
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    ids = [[int(t) for t in line.split()] for line in out.read_text(encoding="utf-8").splitlines()]
    return gguf, texts, ids


def gemma3() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF (Gemma's terms apply; the set-up fetches it unless
    REALM_SKIP_GEMMA=1, which CI never sets)."""
    path = model_path("gemma3-270m")
    if path is None:
        _missing("Gemma 3 270M")
    assert path is not None
    return path
