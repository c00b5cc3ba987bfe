"""Every ```python block of README.md runs as written: each in a fresh interpreter, in
an empty directory where the `realm-ext make-model` commands of the ```bash blocks
before it have run (the README's own way to make the model files a snippet names)."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
MAKE_MODEL = "realm-ext make-model "


@dataclass(frozen=True)
class Snippet:
    line: int  # of its opening fence in README.md
    code: str
    setup: tuple[str, ...]  # the make-model commands of the bash blocks before it


def readme_snippets() -> list[Snippet]:
    text = README.read_text(encoding="utf-8")
    snippets: list[Snippet] = []
    setup: list[str] = []
    for m in FENCE.finditer(text):
        lang, body = m.groups()
        if lang == "bash":
            setup += [ln.split("#")[0].strip() for ln in body.splitlines() if ln.startswith(MAKE_MODEL)]
        elif lang == "python":
            snippets.append(Snippet(text.count("\n", 0, m.start()) + 1, body, tuple(setup)))
    return snippets


SNIPPETS = readme_snippets()


def check_guests(out: str) -> None:
    lines = out.splitlines()
    ids = ast.literal_eval(lines[0])  # guest.tokenize("Hello world")
    assert isinstance(ids, list) and len(ids) >= 2 and all(0 <= i < 4096 for i in ids), ids
    stats = re.fullmatch(r"GenerateStats\(tokens=(\d+), seconds=.*, memory_pages=(\d+), .*\)", lines[-1])
    assert stats, lines[-1]
    assert 1 <= int(stats[1]) <= 32 and 2 <= int(stats[2]) <= 1024, lines[-1]  # 64 MiB: 1024 pages


def check_chat(out: str) -> None:
    turns = [line.split(maxsplit=5) for line in out.splitlines()]
    assert len(turns) == 2, out
    (p1, c1, e1, _, _, r1), (p2, c2, e2, _, _, r2) = turns
    assert int(c1) == 0 and int(e1) == int(p1)  # turn 1: everything is new
    assert int(c2) >= int(p1) and int(e2) == int(p2) - int(c2)  # turn 2: turn 1 reused
    assert "Paris" in r1 and "Rome" in r2, out  # the default model, greedy


def check_quant_and_model(out: str) -> None:
    error, model = out.splitlines()
    assert 0.05 < float(error) < 0.09  # Q4_K's relative error on N(0, 0.02) weights: 0.0714
    assert model.startswith("LlamaConfig(n_vocab=1024, n_ctx_train=512, n_embd=256, n_layer=2,"), model
    assert model.endswith(") Q4_K"), model  # the tensor's type by name


def check_backend(out: str) -> None:
    assert 0 < float(out) < 0.03  # the CPU backend against the float64 reference, Q4_K_M


# what each snippet prints, by a piece of its code
CHECKS: dict[str, Callable[[str], None]] = {
    "host.guest(": check_guests,
    "guest.chat(": check_chat,
    "quant.quantize(": check_quant_and_model,
    "CpuBackend(": check_backend,
}


def run_setup(command: str, cwd: Path) -> None:
    args = shlex.split(command)
    assert args[0] == "realm-ext"
    subprocess.run(
        [sys.executable, "-m", "realm_ext.cli", *args[1:]], cwd=cwd, check=True, capture_output=True
    )


def test_the_readme_has_the_snippets_checked_here() -> None:
    assert len(SNIPPETS) >= len(CHECKS)
    for key in CHECKS:
        assert sum(key in s.code for s in SNIPPETS) == 1, key
    assert all(s.setup for s in SNIPPETS), "each snippet loads a model the README makes before it"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"README.md:{s.line}" for s in SNIPPETS])
def test_readme_python_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    for command in snippet.setup:
        run_setup(command, tmp_path)
    r = subprocess.run(
        [sys.executable, "-c", snippet.code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, f"README.md:{snippet.line} failed:\n{r.stderr}"
    for key, check in CHECKS.items():
        if key in snippet.code:
            check(r.stdout)
