"""The `realm-ext` command: make-model, quantize, inspect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from realm_ext.model import GGUFError, Model, load_gguf
from realm_ext.model_maker import PRESETS, make_model
from realm_ext.quantizer import RECIPES, quantize_model

_TYPE_CHOICE = click.Choice(RECIPES, case_sensitive=False)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def _warn(msg: str) -> None:
    click.echo(f"note: {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="realm-ext")
def main() -> None:
    """Run GGUF-quantized llama models for sandboxed WebAssembly guests."""


@main.command("make-model")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def make_model_cmd(
    out: Path, preset: str, type_: str, seed: int, tied: bool, random_blocks: bool, quiet: bool
) -> None:
    """Write a llama GGUF with deterministic random weights and an SPM vocabulary."""
    path = make_model(
        out,
        preset,
        type_.upper(),
        seed=seed,
        tied=tied,
        progress=not quiet,
        log=_warn,
        random_blocks=random_blocks,
    )
    if not quiet:
        click.echo(f"wrote {path} ({_human_bytes(path.stat().st_size)})")


@main.command("quantize")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--type", "type_", type=_TYPE_CHOICE, required=True, help="Tensor type or mixed recipe.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def quantize_cmd(src: Path, out: Path, type_: str, quiet: bool) -> None:
    """Convert an F32/F16 GGUF to another type, keeping all metadata."""
    try:
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
        "config": vars(model.config).copy(),
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
        f"{info['path']}: llama, {info['n_params'] / 1e6:.2f} M parameters, "
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


if __name__ == "__main__":
    main()
