"""Embed a realm-ext guest in a Python app and print its text as it is generated.

What it shows: a `Host` (the loaded models and the backend that runs them), one model
loaded once, a sandboxed guest (the shipped WebAssembly module: tokenizer, sampler and
generation loop) granted that model, and `Guest.generate()`, an iterator over the text
pieces the guest emits, token by token, while it runs in a worker thread.

Run it from the repository root:

    python examples/stream_generate.py                         # the tiny preset, made now
    python examples/stream_generate.py --model model.gguf --prompt "Once upon a time" -n 64

Without --model it makes the `tiny` preset (random weights: word salad) in a temporary
folder, in about a second. The last line gives the token count and speed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from realm_ext import Host
from realm_ext.model_maker import make_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a llama GGUF (default: the tiny preset, made now)")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("-n", "--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--engine", default="auto", help="wasmtime, wasmer or auto")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_model(Path(tmp) / "tiny.gguf", "tiny", "Q4_K_M")
        with Host(device=args.device) as host:
            model = host.load(path)  # memory-mapped once; every guest of this host shares it
            with host.guest(models=[model], engine=args.engine, memory_limit="64MiB") as guest:
                print(args.prompt, end="", flush=True)
                pieces = guest.generate(
                    args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
                )
                for piece in pieces:  # each piece arrives while the guest keeps generating
                    print(piece, end="", flush=True)
                s = guest.last_stats
                print(
                    f"\n--- {s.tokens} tokens in {s.seconds:.3f} s ({s.tokens_per_s:.0f} tok/s) "
                    f"on {host.device}, {guest.engine}; guest memory {s.memory_pages} pages"
                )


if __name__ == "__main__":
    main()
