"""Fetch the real files the tests read (the tests themselves never touch the network).

- SmolLM2-135M-Instruct, the default model, through `realm-ext pull` (realm_ext.pull);
- Gemma 3 270M, the real Gemma 3 the family tests read (tests/model/test_gemma3.py), the
  same way; Gemma's terms of use apply, and pull names them. REALM_SKIP_GEMMA=1 leaves it
  out (those tests then skip);
- llama.cpp's tokenizer test vocabularies with their cases (`ggml-vocab-NAME.gguf`,
  `.gguf.inp`, `.gguf.out`), read out of the llama-cpp-python sdist that pip downloads
  (it is the same release the parity tests build), into `<cache>/llama.cpp-vocab/`.

Run by scripts/bootstrap.sh; a no-op for what is already there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from realm_ext.default_model import cache_dir
from realm_ext.pull import PIP_COMMAND, pull

LLAMA_CPP_VERSION = "0.3.36"
VOCABS = ("llama-spm", "llama-bpe", "qwen2", "gpt-2")
SUFFIXES = (".gguf", ".gguf.inp", ".gguf.out")


def vocab_dir() -> Path:
    return cache_dir() / "llama.cpp-vocab"


def _wanted() -> list[str]:
    return [f"ggml-vocab-{v}{s}" for v in VOCABS for s in SUFFIXES]


def fetch_vocabs() -> None:
    dest = vocab_dir()
    if all((dest / name).exists() for name in _wanted()):
        return
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = f"llama-cpp-python=={LLAMA_CPP_VERSION}"
        cmd = [*PIP_COMMAND, "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp, req]
        print(f"fetching llama.cpp's tokenizer test vocabularies ({req} sdist) through pip", file=sys.stderr)
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/models/"
        with tarfile.open(sdist) as tar:
            for name in _wanted():
                member = tar.getmember(prefix + name)
                src = tar.extractfile(member)
                assert src is not None, member.name
                part = dest / f".{name}.part"
                part.write_bytes(src.read())
                part.replace(dest / name)


def main() -> None:
    pull("smollm2", progress=False)
    if os.environ.get("REALM_SKIP_GEMMA", "0") != "1":
        pull("gemma3-270m", progress=False)
    fetch_vocabs()
    print(f"test data in {cache_dir()}", file=sys.stderr)


if __name__ == "__main__":
    main()
