"""Every script in examples/ runs on the tiny preset and prints the right numbers.

Each runs as a user would run it (a subprocess, from the repository root, with this
checkout's realm_ext first on the path), and its output is checked against the same
computation done here through the Python API.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from realm_ext import Host
from realm_ext.model import load_gguf
from realm_ext.model_maker import make_model

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # each example takes seconds; this only stops a hang
# the model an example makes when given no --model
DEFAULT_MODEL = {"preset": "tiny", "type": "Q4_K_M"}


def run_example(script: str, *args: object) -> str:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, str(ROOT / "examples" / script), *map(str, args)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_is_tested_and_in_the_readme() -> None:
    scripts = {p.relative_to(ROOT / "examples").as_posix() for p in (ROOT / "examples").rglob("*.py")}
    tested = set(re.findall(r'run_example\(\s*"([\w/]+\.py)"', Path(__file__).read_text()))
    listed = set(re.findall(r"`python examples/([\w/]+\.py)`", (ROOT / "README.md").read_text()))
    assert scripts == tested == listed


def test_stream_generate_prints_what_generate_returns(tmp_path: Path, rng: np.random.Generator) -> None:
    seed, n = int(rng.integers(0, 2**31)), int(rng.integers(8, 33))
    prompt = "The king and the queen"
    out = run_example("stream_generate.py", "--prompt", prompt, "-n", n, "--seed", seed, "--device", "cpu")
    text, sep, stats = out.rpartition("\n--- ")
    assert sep, out

    # the same generation through the API, on the model the example makes by default
    path = make_model(tmp_path / "default.gguf", DEFAULT_MODEL["preset"], DEFAULT_MODEL["type"])
    with Host(device="cpu") as host:
        model = host.load(path)
        with host.guest(models=[model]) as guest:
            want = "".join(guest.generate(prompt, max_tokens=n, temperature=0.8, seed=seed))
            tokens = guest.last_stats.tokens
    assert text == prompt + want
    assert stats.startswith(f"{tokens} tokens in ")
    assert 0 < tokens <= n


def test_many_tenants_memory_per_guest(model_path, rng: np.random.Generator) -> None:
    path = model_path(DEFAULT_MODEL["type"])
    n_guests, n_ctx = int(rng.integers(3, 7)), int(rng.integers(16, 600))
    out = run_example(
        "many_tenants.py", "--model", path, "--guests", n_guests, "--n-ctx", n_ctx, "-n", 8, "--device", "cpu"
    )
    with load_gguf(path) as model:
        c = model.config
        weights = sum(t.nbytes for t in model.tensors.values())
    kv_bytes = 2 * 2 * c.n_layer * n_ctx * c.n_head_kv * c.head_dim  # K and V, f16

    rows = re.findall(
        r"guest +(\d+): RSS +([\d.]+) MiB \| linear memory (\d+) KiB \((\d+) pages\), heap (\d+) KiB "
        r"\| KV ring while generating (\d+) B",
        out,
    )
    assert [int(r[0]) for r in rows] == list(range(1, n_guests + 1)), out
    for _, _, kib, pages, heap_kib, kv in rows:
        assert int(kib) == 64 * int(pages) and int(heap_kib) < int(kib)
        assert int(kv) == kv_bytes  # the ring's storage, measured while the guest generated
    assert f"({weights / 1024:.0f} KiB) are shared by all {n_guests} guests" in out
    per_guest = float(re.search(r"per extra guest: RSS \+(-?\d+) KiB", out).group(1)) * 1024
    # weights copied into each guest would cost at least their size per guest
    assert per_guest < weights, out


def _mean_nll(logits: np.ndarray, ids: list[int]) -> float:
    x = logits[:-1].astype(np.float64)
    top = x.max(axis=1)
    lse = top + np.log(np.exp(x - top[:, None]).sum(axis=1))
    return float(np.mean(lse - x[np.arange(len(ids) - 1), ids[1:]]))


def test_custom_guest_scores_text_as_the_backend_does(model_path, rng: np.random.Generator) -> None:
    pytest.importorskip("ziglang", reason="ziglang (the guest toolchain) is not installed")
    path = model_path(DEFAULT_MODEL["type"])
    words = "the king queen cat dog ran home little story night moon".split()
    text = " ".join(rng.choice(words, int(rng.integers(4, 20))))
    n_batch = int(rng.integers(1, 9))
    out = run_example(
        "custom_guest/run.py", "--model", path, "--text", text, "--n-batch", n_batch, "--device", "cpu"
    )
    guest_nll = float(re.search(r"guest \(perplexity\.wasm\) *: mean NLL ([\d.]+) nats", out).group(1))
    python_nll = float(re.search(r"python \(backend forward steps\): mean NLL ([\d.]+) nats", out).group(1))
    assert guest_nll == pytest.approx(python_nll, rel=1e-9, abs=0)

    # and against logits computed here, the whole text in one batch
    model = load_gguf(path)
    with Host(device="cpu") as host:
        host.load(model)
        with host.guest(models=[model]) as guest:
            ids = [model.tokenizer.bos_id, *guest.tokenize(text)]
        want = _mean_nll(host.backend.logits(model, ids), ids)
    assert f"{len(ids)} tokens, {min(n_batch, len(ids))} per forward call" in out
    assert guest_nll == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("wtype", [None, "Q8_0", "Q5_1"])
def test_kernels_on_gguf_errors_are_small(wtype: str | None, model_path) -> None:
    path = model_path(wtype or DEFAULT_MODEL["type"])
    out = run_example("kernels_on_gguf.py", *(["--model", path] if wtype else []), "--seed", 7)
    rows = re.findall(
        r"^(\S+) +(\w+) +\(\d+, \d+\) +decode==gguf (\w+) +acts->(\w+) +\| matvec err (\S+) \| "
        r"matmul err (\S+) \| vs rounded acts (\S+)$",
        out,
        re.M,
    )
    with load_gguf(path) as model:
        types = {t.type.name for t in model.tensors.values() if len(t.shape) == 2 and t.type.name != "F32"}
    assert {r[1] for r in rows} == types and len(rows) == len(types), out
    for _, typ, same, acts, vec_err, mat_err, rounded_err in rows:
        assert same == "True"
        assert acts == {"Q8_0": "Q8_0", "Q5_1": "Q8_1"}.get(typ, "Q8_K")
        # 8-bit activations: about 0.5% off the exact product
        assert 1e-4 < float(vec_err) < 1.5e-2 and 1e-4 < float(mat_err) < 1.5e-2
        # on the rounded activations only the float order differs (Q8_1: its f16 sums)
        assert float(rounded_err) < (2e-3 if acts == "Q8_1" else 1e-6)
