"""The `realm-ext` command: generate, chat, tokenize, serve, make-model, quantize, inspect, pull."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from realm_ext import abi
from realm_ext import pull as pull_mod
from realm_ext._kernels import MAX_THREADS
from realm_ext.api import Guest, Host, RealmError
from realm_ext.backends.cpu import DEFAULT_WEIGHTS, WEIGHTS
from realm_ext.engines.base import MAX_MEMORY, GuestError, GuestLimitError, parse_size
from realm_ext.host import log as guest_log
from realm_ext.model import GGUFError, Model, load_gguf
from realm_ext.model_maker import PRESETS, llama3_rope_freqs, make_model
from realm_ext.quantizer import RECIPES, quantize_model

_F = TypeVar("_F", bound=Callable[..., Any])  # a command, decorated with options

_TYPE_CHOICE = click.Choice(RECIPES, case_sensitive=False)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def _warn(msg: str) -> None:
    click.echo(f"note: {msg}", err=True)


def _output_path(ctx: click.Context, param: click.Parameter, path: Path) -> Path:
    """An output file's directory must exist (a usage error otherwise, as for inputs)."""
    if not path.parent.is_dir():
        raise click.BadParameter(f"the directory {str(path.parent)!r} does not exist", ctx, param)
    return path


_OUT = click.Path(dir_okay=False, path_type=Path)


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """An OSError while writing `out` (permissions, a full disk) as one line."""
    try:
        yield
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e.strerror or e}") from None


def _read_chat_template(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--chat-template: a built-in template's name as it is, else the text of that file."""
    from realm_ext.chat_template import BUILTIN

    if value is None or value in BUILTIN:
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as e:
        raise click.BadParameter(f"cannot read {value}: {e.strerror or e}", ctx, param) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="realm-ext")
def main() -> None:
    """Run GGUF-quantized llama models for sandboxed WebAssembly guests."""


@main.command("make-model")
@click.argument("out", type=_OUT, callback=_output_path)
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option(
    "--type",
    "type_",
    type=_TYPE_CHOICE,
    default="F32",
    show_default=True,
    help="Tensor type or mixed recipe.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--tied", is_flag=True, help="No output.weight: the LM head reuses token_embd.")
@click.option(
    "--random-blocks",
    is_flag=True,
    help="Random valid quantized blocks instead of encoded values (fast; for speed tests).",
)
@click.option(
    "--rope-freqs",
    type=click.Choice(["llama3"]),
    help="Write a rope_freqs tensor: Llama 3.1's (factor 8, low 1, high 4).",
)
@click.option(
    "--rope-orig-ctx",
    type=click.IntRange(min=1),
    default=8192,
    show_default=True,
    help="The original context --rope-freqs llama3 assumes.",
)
@click.option(
    "--rope-scale-linear",
    type=click.FloatRange(min=0, min_open=True),
    help="Linear RoPE scaling: every angle divided by this factor.",
)
@click.option(
    "--vocab-from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Carry this GGUF's whole tokenizer (tokens, merges, pre, special ids, chat template); "
    "n_vocab is its token count.",
)
@click.option(
    "--chat-template",
    "chat_template",
    default=None,
    callback=_read_chat_template,
    help="Write a tokenizer.chat_template: a Jinja2 template file, or 'chatml'.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def make_model_cmd(
    out: Path,
    preset: str,
    type_: str,
    seed: int,
    tied: bool,
    random_blocks: bool,
    rope_freqs: str | None,
    rope_orig_ctx: int,
    rope_scale_linear: float | None,
    vocab_from: Path | None,
    chat_template: str | None,
    quiet: bool,
) -> None:
    """Write a GGUF of the preset's family (llama, or qwen2 for the qwen2-* presets) with
    deterministic random weights and an SPM vocabulary (or the tokenizer of --vocab-from)."""
    from realm_ext.chat_template import ChatTemplateError

    freqs = None
    if rope_freqs == "llama3":
        c = PRESETS[preset].config
        if c.arch != "llama":
            raise click.BadParameter(f"a {c.arch} model cannot carry rope_freqs", param_hint="--rope-freqs")
        freqs = llama3_rope_freqs(c.rope_dim, c.rope_freq_base, original_context=rope_orig_ctx)
    try:
        with _writing(out):
            path = make_model(
                out,
                preset,
                type_.upper(),
                seed=seed,
                tied=tied,
                progress=not quiet,
                log=_warn,
                random_blocks=random_blocks,
                rope_freqs=freqs,
                rope_scale_linear=rope_scale_linear,
                vocab_from=vocab_from,
                chat_template=chat_template,
            )
    except (GGUFError, ChatTemplateError) as e:
        raise click.ClickException(str(e)) from None
    if not quiet:
        click.echo(f"wrote {path} ({_human_bytes(path.stat().st_size)})")


@main.command("quantize")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=_OUT, callback=_output_path)
@click.option("--type", "type_", type=_TYPE_CHOICE, required=True, help="Tensor type or mixed recipe.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def quantize_cmd(src: Path, out: Path, type_: str, quiet: bool) -> None:
    """Convert an F32/F16 GGUF to another type, keeping all metadata."""
    try:
        with _writing(out):
            path = quantize_model(src, out, type_.upper(), progress=not quiet, log=_warn)
    except GGUFError as e:
        raise click.ClickException(str(e)) from None
    if not quiet:
        click.echo(f"wrote {path} ({_human_bytes(path.stat().st_size)})")


def describe(model: Model) -> dict[str, Any]:
    """Everything `inspect` shows, as plain data."""
    tok = model.tokenizer
    tensors = [
        {"name": t.name, "shape": list(t.shape), "type": t.type.name, "bytes": t.nbytes}
        for t in model.tensors.values()
    ]
    return {
        "path": str(model.path),
        "file_bytes": model.file_size,
        "tensor_bytes": sum(t["bytes"] for t in tensors),
        "n_params": sum(t.n_elements for t in model.tensors.values()),
        "file_type": model.metadata.get("general.file_type"),
        "tied_output": model.tied_output,
        "config": {**vars(model.config), "family": model.config.arch},
        "tokenizer": {
            "model": tok.model,
            "n_tokens": len(tok.tokens),
            "n_merges": len(tok.merges),
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "unk_id": tok.unk_id,
            "pad_id": tok.pad_id,
            "add_bos": tok.add_bos,
            "add_eos": tok.add_eos,
            "add_space_prefix": tok.add_space_prefix,
            "token_types": {str(k): int(v) for k, v in zip(*_counts(tok.token_types), strict=True)},
        },
        "tensors": tensors,
    }


def _counts(a: Any) -> tuple[list[int], list[int]]:
    import numpy as np

    keys, counts = np.unique(a, return_counts=True)
    return keys.tolist(), counts.tolist()


@main.command("inspect")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(model_path: Path, as_json: bool) -> None:
    """Show a GGUF's config, tokenizer summary and tensor table."""
    try:
        model = load_gguf(model_path)
    except GGUFError as e:
        raise click.ClickException(str(e)) from None
    with model:
        info = describe(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(
        f"{info['path']}: {info['config']['family']}, {info['n_params'] / 1e6:.2f} M parameters, "
        f"{_human_bytes(info['file_bytes'])}"
    )
    click.echo("\nconfig")
    for k, v in info["config"].items():
        click.echo(f"  {k:<16} {v}")
    click.echo(f"  {'tied_output':<16} {info['tied_output']}")
    t = info["tokenizer"]
    click.echo("\ntokenizer")
    click.echo(
        f"  {t['model']} vocabulary of {t['n_tokens']} tokens, {t['n_merges']} merges; "
        f"types {t['token_types']} (1 normal, 2 unknown, 3 control, 6 byte)"
    )
    click.echo(
        f"  bos {t['bos_id']}  eos {t['eos_id']}  unk {t['unk_id']}  pad {t['pad_id']}  "
        f"add_bos {t['add_bos']}  add_eos {t['add_eos']}  add_space_prefix {t['add_space_prefix']}"
    )
    click.echo(f"\ntensors ({len(info['tensors'])})")
    width = max(len(x["name"]) for x in info["tensors"])
    for x in info["tensors"]:
        shape = " x ".join(map(str, x["shape"]))
        click.echo(f"  {x['name']:<{width}}  {shape:>13}  {x['type']:<5} {_human_bytes(x['bytes']):>11}")
    click.echo(
        f"\ntotal tensor data {_human_bytes(info['tensor_bytes'])}, file {_human_bytes(info['file_bytes'])}"
    )


@main.command("pull")
@click.argument("name", type=click.Choice(list(pull_mod.MODELS)), default=pull_mod.DEFAULT)
@click.option("--list", "list_", is_flag=True, help="List the models it can fetch and exit.")
@click.option("--verify", is_flag=True, help="Check a cached file's sha256 too (else its size).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def pull_cmd(name: str, list_: bool, verify: bool, quiet: bool) -> None:
    """Fetch a real GGUF model (default: smollm2) into the user cache; print its path."""
    if list_:
        for m in pull_mod.MODELS.values():
            cached = "  (cached)" if pull_mod.model_path(m.name) else ""
            click.echo(f"{m.name:<12} {_human_bytes(m.size):>10}  {m.license:<18}  {m.title}{cached}")
        return
    try:
        path = pull_mod.pull(name, progress=not quiet, verify=verify, log=_warn)
    except pull_mod.PullError as e:
        raise click.ClickException(str(e)) from None
    click.echo(path)


# ---- running guests -------------------------------------------------------------------

_ENGINES = click.Choice(["auto", "wasmtime", "wasmer"])
_DEVICES = click.Choice(["auto", "cpu", "cuda"])
_U32_MAX, _U64_MAX, _I32_MIN, _I32_MAX = 2**32 - 1, 2**64 - 1, -(2**31), 2**31 - 1
_DEFAULT_MEMORY = "256MiB"


class _Size(click.ParamType):
    """Bytes from a size such as 64MiB, 512KiB or 65536, up to a wasm32 memory's 4 GiB."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            n = parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if n > MAX_MEMORY:
            self.fail(f"{value} is over 4GiB, the most a wasm32 guest's memory can hold", param, ctx)
        return n


class _F32(click.ParamType):
    """A float an f32 holds (the sampling parameters travel to the guest as f32): not NaN,
    which passes every range test, nor past f32's range; and above `above` when given."""

    name = "float"

    def __init__(self, above: float | None = None) -> None:
        self.above = above

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        x = click.FLOAT.convert(value, param, ctx)
        if math.isnan(x) or abs(x) > abi.F32_MAX:
            self.fail(f"{x} is not a finite 32-bit float", param, ctx)
        if self.above is not None and not x > self.above:
            self.fail(f"{x} is not in the range x>{self.above:g}.", param, ctx)
        return x


def _model_path(model: Path | None) -> Path:
    if model is not None:
        return model
    from realm_ext.default_model import default_model_path

    _warn(f"no --model: using the built-in default model ({pull_mod.MODELS[pull_mod.DEFAULT].title})")
    try:
        return default_model_path(progress=True, log=_warn)
    except pull_mod.PullError as e:
        raise click.ClickException(str(e)) from None


# a guest log line, "guest: <what failed> (<code>)", without the prefix and the code
_GUEST_LINE = re.compile(r"^guest: | \(-?\d+\)$")


class _GuestLog(logging.Handler):
    """Collects the guest's log lines (realm_log) while it runs, so that the error the
    command prints can name the guest's reason instead of logging printing it apart."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _guest_errors(call: str, memory_limit: int, guest: Guest | None = None) -> Iterator[None]:
    """A guest's failure inside the block as one line (click's "Error: ...", exit 1).

    The ABI's -7 means "out of host or device memory" when a host import returns it,
    but the shipped guest returns -7 too when an allocation in its own linear memory
    fails (guest/src: realm_alloc gives 0 once memory.grow would pass the cap). The
    host sets the guest's last error on every failed import, so a -7 with no last error
    is the guest's own memory running out: the message then names --memory-limit."""
    log = _GuestLog()
    guest_log.addHandler(log)
    try:
        yield
    except GuestLimitError as e:  # at start (memory) or during a call (time, fuel)
        option = {"memory": "--memory-limit", "time": "--time-limit"}.get(e.limit)
        raise click.ClickException(f"{e}; raise it with {option}" if option else str(e)) from None
    except (RealmError, MemoryError, GuestError) as e:
        host_said = guest is not None and bool(guest.state.last_error)
        reason = str(e) if isinstance(e, MemoryError) else (log.lines[-1] if log.lines else "")
        reason = _GUEST_LINE.sub("", reason)
        if isinstance(e, MemoryError) or (
            isinstance(e, RealmError) and e.code == abi.ERR_NOMEM and not host_said
        ):
            msg = (
                f"{call} failed: the guest ran out of its memory limit of {_human_bytes(memory_limit)}"
                f"{f' ({reason})' if reason else ''}; raise it with --memory-limit "
                f"(default {_DEFAULT_MEMORY}, at most 4GiB)"
            )
        else:
            # the host's own message is in e already; otherwise the guest's log line says why
            msg = str(e) if host_said or not reason else f"{e}: {reason}"
        raise click.ClickException(msg) from None
    finally:
        guest_log.removeHandler(log)


def _open_guest(
    model_path: Path | None,
    engine: str,
    device: str,
    threads: int | None,
    weights: str,
    memory_limit: int,
    time_limit: float | None = None,
) -> tuple[Host, Guest]:
    path = _model_path(model_path)
    try:
        host = Host(device=device, n_threads=threads, weights=weights)
    except (RuntimeError, ValueError) as e:  # e.g. --device cuda without a GPU
        raise click.ClickException(str(e)) from None
    try:
        model = host.load(path)
    except GGUFError as e:
        host.close()
        raise click.ClickException(str(e)) from None
    try:
        with _guest_errors("starting the guest", memory_limit):
            guest = host.guest(
                models=[model], engine=engine, memory_limit=memory_limit, time_limit=time_limit
            )
    except (ImportError, ValueError) as e:  # e.g. --engine wasmer where it is not installed
        host.close()
        raise click.ClickException(str(e)) from None
    except click.ClickException:
        host.close()
        raise
    return host, guest


def _engine_options(f: _F) -> _F:
    f = click.option(
        "--memory-limit",
        type=_Size(),
        default=_DEFAULT_MEMORY,
        show_default=True,
        help="Guest linear memory cap (e.g. 64MiB; at most 4GiB).",
    )(f)
    f = click.option(
        "--threads",
        type=click.IntRange(1, MAX_THREADS),
        default=None,
        help="CPU threads (default: all).",
    )(f)
    f = click.option(
        "--weights",
        type=click.Choice(list(WEIGHTS)),
        default=DEFAULT_WEIGHTS,
        show_default=True,
        help="CPU: the file's map with repacked copies of the matrices that read faster so; "
        "the file's map only; or a copy of everything in memory.",
    )(f)
    f = click.option("--device", type=_DEVICES, default="auto", show_default=True)(f)
    f = click.option("--engine", type=_ENGINES, default="auto", show_default=True)(f)
    f = click.option(
        "--model",
        "model_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="A GGUF (default: SmolLM2-135M-Instruct, fetched on first use: realm-ext pull).",
    )(f)
    return f


def _sampling_options(f: _F) -> _F:
    """-n and the sampling, context and time options of generate and chat."""
    options = [
        click.option("-n", "--max-tokens", type=click.IntRange(1, _U32_MAX), default=64, show_default=True),
        click.option("--temperature", type=_F32(), default=0.8, show_default=True, help="<= 0: greedy."),
        click.option(
            "--top-k",
            type=click.IntRange(_I32_MIN, _I32_MAX, clamp=True),
            default=40,
            show_default=True,
            help="<= 0: off.",
        ),
        click.option("--top-p", type=_F32(), default=0.95, show_default=True, help=">= 1: off."),
        click.option("--min-p", type=_F32(), default=0.05, show_default=True, help="<= 0: off."),
        click.option(
            "--repeat-penalty", type=_F32(above=0), default=1.0, show_default=True, help="> 0; 1: off."
        ),
        click.option("--repeat-last-n", type=click.IntRange(0, _U32_MAX), default=64, show_default=True),
        click.option("--seed", type=click.IntRange(0, _U64_MAX), default=0, show_default=True),
        click.option(
            "--n-ctx",
            type=click.IntRange(0, _U32_MAX),
            default=0,
            help="KV ring positions (default: the model's).",
        ),
        click.option(
            "--time-limit", type=_F32(above=0), default=None, help="Seconds per guest call (wasmtime); > 0."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command("generate")
@_engine_options
@click.option("--prompt", "-p", required=True, help="The prompt text.")
@_sampling_options
def generate_cmd(
    model_path: Path | None,
    engine: str,
    device: str,
    threads: int | None,
    weights: str,
    memory_limit: int,
    prompt: str,
    max_tokens: int,
    time_limit: float | None,
    **params: Any,
) -> None:
    """Generate text from PROMPT through the WebAssembly guest, streaming to stdout."""
    import time

    host, guest = _open_guest(model_path, engine, device, threads, weights, memory_limit, time_limit)
    with host, guest:
        t0 = time.perf_counter()
        printed = False
        try:
            with _guest_errors("realm_generate", memory_limit, guest):
                gp = abi.GenerateParams(max_tokens=max_tokens, **params)
                for piece in guest.generate(prompt, params=gp):
                    click.echo(piece, nl=False)
                    printed = True
        except click.ClickException:
            if printed:
                click.echo()  # end the streamed text's line before the error's
            raise
        click.echo()
        s = guest.last_stats
        if s is not None:
            click.echo(
                f"{s.tokens} tokens in {time.perf_counter() - t0:.2f} s: {s.tokens_per_s:.1f} tokens/s "
                f"({guest.engine}, {host.device}; guest memory {s.memory_pages} pages)",
                err=True,
            )


@main.command("chat")
@_engine_options
@click.option("--system", default=None, help="A system message that opens the conversation.")
@click.option(
    "--chat-template",
    "template",
    default=None,
    callback=_read_chat_template,
    help="A Jinja2 chat template file, or 'chatml' (default: the model's tokenizer.chat_template).",
)
@_sampling_options
@click.option("--stats", is_flag=True, help="Per-turn statistics on stderr.")
def chat_cmd(
    model_path: Path | None,
    engine: str,
    device: str,
    threads: int | None,
    weights: str,
    memory_limit: int,
    system: str | None,
    template: str | None,
    max_tokens: int,
    time_limit: float | None,
    stats: bool,
    **params: Any,
) -> None:
    """Chat with the model: one user message per line of stdin, each reply streamed to
    stdout. The guest keeps the conversation, so a turn evaluates only the new message.
    /reset starts over; /quit or end of input ends."""
    from realm_ext.chat_template import ChatTemplateError

    host, guest = _open_guest(model_path, engine, device, threads, weights, memory_limit, time_limit)
    with host, guest:
        try:
            guest.chat_template(source=template)
        except ChatTemplateError as e:
            raise click.ClickException(str(e)) from None
        opening = [{"role": "system", "content": system}] if system else []
        messages = list(opening)
        stdin = sys.stdin
        interactive = stdin.isatty()
        while True:
            if interactive:
                click.echo("> ", nl=False, err=True)
            line = stdin.readline()
            if not line:
                break
            text = line.rstrip("\r\n")
            command = text.strip()
            if command == "/quit":
                break
            if command == "/reset":
                messages = list(opening)
                guest.reset_chat()
                click.echo("(conversation reset)", err=True)
                continue
            if not command:
                continue
            messages.append({"role": "user", "content": text})
            reply: list[str] = []
            try:
                with _guest_errors("realm_chat_generate", memory_limit, guest):
                    gp = abi.GenerateParams(max_tokens=max_tokens, **params)
                    for piece in guest.chat(messages, chat_template=template, params=gp):
                        click.echo(piece, nl=False)
                        reply.append(piece)
            except ChatTemplateError as e:
                click.echo(f"Error: {e}", err=True)
                messages.pop()
                continue
            except click.ClickException as e:
                if reply:
                    click.echo()
                if guest._instance is None:  # the guest could not be restarted
                    raise
                click.echo(f"Error: {e.format_message()}", err=True)
                messages.pop()  # the turn did not happen
                continue
            click.echo()
            messages.append({"role": "assistant", "content": "".join(reply)})
            s = guest.last_stats
            if stats and s is not None:
                ttft = f"{s.first_token_s * 1000:.1f} ms" if s.first_token_s is not None else "-"
                click.echo(
                    f"[{s.prompt_tokens} prompt tokens, {s.cached_tokens} reused, {s.evaluated_tokens} "
                    f"evaluated{', ring restarted' if s.restarted else ''}; first token {ttft}; "
                    f"{s.tokens} tokens at {s.decode_tokens_per_s:.1f} tokens/s]",
                    err=True,
                )


@main.command("tokenize")
@_engine_options
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Ids and pieces as JSON.")
def tokenize_cmd(
    model_path: Path | None,
    engine: str,
    device: str,
    threads: int | None,
    weights: str,
    memory_limit: int,
    text: str,
    as_json: bool,
) -> None:
    """Print the token ids of TEXT (the guest's tokenizer; no BOS)."""
    host, guest = _open_guest(model_path, engine, device, threads, weights, memory_limit)
    with host, guest:
        with _guest_errors("realm_tokenize", memory_limit, guest):
            ids = guest.tokenize(text)
        tokens = guest.state.models[guest.model_id()].model.tokenizer.tokens
        if as_json:
            click.echo(json.dumps({"ids": ids, "pieces": [tokens[i] for i in ids]}))
        else:
            click.echo(" ".join(str(i) for i in ids))
            click.echo(" ".join(repr(tokens[i]) for i in ids), err=True)


@main.command("serve")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="[NAME=]PATH",
    help="A GGUF to serve, named by its file stem or NAME (repeat for more; default: SmolLM2-135M-Instruct).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", default=None, envvar="REALM_EXT_API_KEY", help="One tenant with this key.")
@click.option(
    "--tenants",
    "tenants_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A tenants.toml: keys, granted models, limits, own guests (README: Serving).",
)
@click.option("--device", type=_DEVICES, default="auto", show_default=True)
@click.option(
    "--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="CPU threads (default: all)."
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Without --tenants: concurrent requests (and pooled guests per model).",
)
@click.option("--memory-limit", type=_Size(), default="64MiB", show_default=True, help="Without --tenants.")
@click.option(
    "--time-limit",
    type=_F32(above=0),
    default=60.0,
    show_default=True,
    help="Seconds per request (without --tenants).",
)
@click.option(
    "--tokens-per-minute", type=click.IntRange(min=0), default=0, help="Without --tenants; 0: no limit."
)
@click.option(
    "--n-ctx", type=click.IntRange(1, 1 << 20), default=2048, show_default=True, help="KV ring positions."
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds streams get to finish at shutdown.",
)
def serve_cmd(
    models: tuple[str, ...],
    host: str,
    port: int,
    api_key: str | None,
    tenants_file: Path | None,
    device: str,
    threads: int | None,
    max_concurrent: int,
    memory_limit: int,
    time_limit: float,
    tokens_per_minute: int,
    n_ctx: int,
    drain_timeout: float,
) -> None:
    """An OpenAI-compatible HTTP server (/v1/models, /v1/completions, /v1/chat/completions,
    /health, /metrics); every request runs in a sandboxed guest. Without --api-key or
    --tenants the server is open: anyone who reaches it may use every model."""
    try:
        from realm_ext.serve import ConfigError, ServeConfig, ServerState, TenantConfig, load_tenants
        from realm_ext.serve import parse_model_spec as parse_spec
        from realm_ext.serve.server import run
    except ImportError as e:
        raise click.ClickException(
            f"serve needs its extra: pip install 'realm-ext[serve]' ({e.name or e} is missing)"
        ) from None
    if api_key and tenants_file:
        raise click.UsageError("give --api-key or --tenants, not both")
    try:
        specs = [parse_spec(m) for m in models]
        if not specs:
            specs = [parse_spec(f"{pull_mod.DEFAULT}={_model_path(None)}")]
        for spec in specs:
            if not spec.path.is_file():
                raise click.BadParameter(f"{spec.path} is not a file", param_hint="--model")
        if tenants_file is not None:
            tenants = load_tenants(tenants_file)
        else:
            tenants = [
                TenantConfig(
                    "default" if api_key else "anonymous",
                    api_key or None,
                    max_concurrent=max_concurrent,
                    memory_limit=memory_limit,
                    time_limit=time_limit,
                    tokens_per_minute=tokens_per_minute,
                    n_ctx=n_ctx,
                )
            ]
        config = ServeConfig(specs, tenants, device=device, threads=threads, drain_timeout=drain_timeout)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        state = ServerState(config)
    except (GGUFError, RuntimeError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if config.is_open:
        _warn("no --api-key or --tenants: the server is open to anyone who can reach it")
    names = ", ".join(state.models)
    click.echo(f"serving {names} on http://{host}:{port}/v1 ({state.host.device})", err=True)
    run(state, host, port)


if __name__ == "__main__":
    main()
