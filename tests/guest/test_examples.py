"""The README's custom guest (guest/examples/first_logit.c) builds and gives the
backend's logit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from realm_ext import Host
from realm_ext.model import load_gguf

ROOT = Path(__file__).resolve().parents[2]


def test_first_logit_example(model_path, tmp_path: Path, rng) -> None:
    pytest.importorskip("ziglang", reason="ziglang (the guest toolchain) is not installed")
    out = tmp_path / "first_logit.wasm"
    cmd = [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-freestanding", "-O2", "-nostdlib",
           f"-I{ROOT / 'guest/include'}", f"-I{ROOT / 'csrc'}",
           "-Wl,--no-entry", "-Wl,--import-memory", "-Wl,--export=first_logit",
           "-o", str(out), str(ROOT / "guest/examples/first_logit.c")]  # fmt: skip
    subprocess.run(cmd, check=True)
    model = load_gguf(model_path("Q6_K"))
    with Host(device="cpu") as host:
        host.load(model)
        with host.guest(models=[model], wasm=out) as g:
            for token in rng.integers(0, model.config.n_vocab, 3):
                got = g.call("first_logit", g.model_id(), int(token))
                want = host.backend.logits(model, [int(token)])[0, 0]
                assert got == pytest.approx(float(want), abs=0)  # the f32 the guest returns, exactly
