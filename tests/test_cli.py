"""The realm-ext command: make-model, quantize, inspect (text and --json), errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from realm_ext.cli import main


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


def test_make_quantize_inspect(tmp_path: Path) -> None:
    f32, q = tmp_path / "m.gguf", tmp_path / "q.gguf"
    code, out = run("make-model", str(f32), "--preset", "tiny", "--seed", "4", "-q")
    assert code == 0, out
    code, out = run("quantize", str(f32), str(q), "--type", "q4_k_m", "-q")
    assert code == 0, out
    code, out = run("inspect", str(q))
    assert code == 0, out
    assert "n_layer          2" in out and "blk.1.ffn_down.weight" in out and "Q6_K" in out
    assert "llama vocabulary of 1024 tokens" in out
    code, out = run("inspect", str(q), "--json")
    info = json.loads(out)
    assert info["config"]["n_embd"] == 256 and info["file_type"] == 15
    assert info["tokenizer"]["bos_id"] == 1 and info["tokenizer"]["n_tokens"] == 1024
    by_name = {t["name"]: t for t in info["tensors"]}
    assert by_name["blk.0.attn_q.weight"] == {
        "name": "blk.0.attn_q.weight",
        "shape": [256, 256],
        "type": "Q4_K",
        "bytes": 256 * 144,
    }
    assert info["tensor_bytes"] == sum(t["bytes"] for t in info["tensors"]) < info["file_bytes"]


def test_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    code, out = run("inspect", str(bad))
    assert code == 1 and "Error:" in out and "not a GGUF file" in out and "Traceback" not in out
    code, out = run("make-model", str(tmp_path / "x.gguf"), "--type", "Q7_K")
    assert code == 2 and "Q7_K" in out


def test_console_script_entry_point(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "realm_ext.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("make-model", "quantize", "inspect"):
        assert cmd in out


def test_generate_and_tokenize(model_path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from realm_ext import Host

    path = model_path("Q8_0")
    r = CliRunner().invoke(
        main, ["generate", "--model", str(path), "-p", "the king", "-n", "12", "--temperature", "0"]
    )
    assert r.exit_code == 0, r.output
    with Host(device="cpu") as host, host.guest(models=[host.load(path)]) as g:
        want = "".join(g.generate("the king", max_tokens=12, temperature=0.0))
        ids = g.tokenize("the king")
    assert r.stdout == want + "\n"
    assert "tokens/s" in r.stderr
    # the weights copied into memory: the same tokens
    r = CliRunner().invoke(
        main,
        [
            "generate",
            "--model",
            str(path),
            "-p",
            "the king",
            "-n",
            "12",
            "--temperature",
            "0",
            "--weights",
            "load",
        ],
    )
    assert r.exit_code == 0 and r.stdout == want + "\n", r.output
    r = CliRunner().invoke(main, ["tokenize", "--model", str(path), "the king", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ids"] == ids
    # no --model: the built-in default, made on first use into the cache directory
    monkeypatch.setenv("REALM_EXT_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(main, ["generate", "-p", "Once upon a time", "-n", "4", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "cache").glob("default-*.gguf"))
    r = CliRunner().invoke(main, ["generate", "-p", "x", "--engine", "nope"])
    assert r.exit_code != 0 and "nope" in r.output
