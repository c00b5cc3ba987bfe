"""Build a custom guest in C (perplexity.c) and run it in a Host.

What it shows: writing a guest of your own against guest/include/realm.h, one that
calls the host's forward imports itself instead of the shipped generation loop. This
one scores a text: the mean negative log-likelihood of each token given the ones before
it, and the perplexity exp(nll). The text is tokenized by the shipped guest
(`Guest.tokenize`), the ids are written into the custom guest's memory, and its export
`ppl_nll` returns the score. The same number is then computed through the Python API
(the backend's forward steps, in the same batches, and a float64 log-softmax in numpy),
so you can see the guest got it right.

Run it from the repository root (needs the ziglang package, as guest/build.sh does:
`pip install ziglang==0.17.0`, part of the test extra):

    python examples/custom_guest/run.py                        # the tiny preset, made now
    python examples/custom_guest/run.py --model model.gguf --text "The cat sat on the mat."
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from realm_ext import Host
from realm_ext.model import Model
from realm_ext.model_maker import make_model

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parents[1] / "guest" / "include"  # realm.h
ERRORS = HERE.parents[1] / "csrc"  # realm_errors.h, which realm.h includes


def build(out: Path) -> Path:
    """Compile perplexity.c to a wasm32 module with zig's clang (as guest/build.sh does).
    --import-memory: the host creates the memory, capped at the guest's memory_limit."""
    cmd = [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-freestanding", "-mcpu=mvp", "-O2",
           "-nostdlib", "-ffreestanding", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", f"-I{ERRORS}",
           "-Wl,--no-entry", "-Wl,--import-memory", "-Wl,-z,stack-size=65536",
           "-Wl,--export=ppl_tokens", "-Wl,--export=ppl_nll",
           "-o", str(out), str(HERE / "perplexity.c")]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


def python_nll(host: Host, model: Model, ids: list[int], n_batch: int) -> float:
    """The guest's computation through the Python API: the backend's forward steps on
    the same batches, then log-softmax in float64."""
    be, c, n = host.backend, model.config, len(ids)
    kv = be.new_kv(model, n)
    rows = []
    for p in range(0, n, n_batch):
        chunk = np.asarray(ids[p : p + n_batch], np.int32)
        x = np.empty((len(chunk), c.n_embd), np.float32)
        be.forward_embedding(model, chunk, x)
        be.forward_layers(model, 0, c.n_layer, x, p, kv, x)  # in place, positions p..
        logits = np.empty((len(chunk), c.n_vocab), np.float32)
        be.forward_lm_head(model, x, logits)
        rows.append(logits)
    logits = np.concatenate(rows)[:-1].astype(np.float64)  # row i predicts token i + 1
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(n - 1), ids[1:]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a llama GGUF (default: the tiny preset, made now)")
    ap.add_argument("--text", default="Once upon a time there was a king and a queen who lived in a house.")
    ap.add_argument("--n-batch", type=int, default=8, help="tokens per forward call (0: all at once)")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wasm = build(Path(tmp) / "perplexity.wasm")
        print(f"built {wasm.name} ({wasm.stat().st_size} bytes)")
        path = args.model or make_model(Path(tmp) / "tiny.gguf", "tiny", "Q4_K_M")
        with Host(device=args.device) as host:
            model = host.load(path)
            with host.guest(models=[model]) as shipped:  # the shipped guest, for its tokenizer
                ids = shipped.tokenize(args.text)
            bos = model.tokenizer.bos_id
            if bos is not None and model.tokenizer.add_bos:
                ids = [bos, *ids]
            n_batch = args.n_batch if 0 < args.n_batch < len(ids) else len(ids)
            print(f"{len(ids)} tokens, {n_batch} per forward call")

            with host.guest(models=[model], wasm=wasm, memory_limit="256MiB") as guest:
                ptr = guest.call("ppl_tokens", len(ids))
                if ptr == 0:
                    raise SystemExit("the guest has no memory for the tokens")
                guest.write(ptr, np.asarray(ids, "<u4").tobytes())
                nll = guest.call("ppl_nll", guest.model_id(), len(ids), n_batch)
                if nll < 0:
                    raise SystemExit(f"ppl_nll failed with code {nll:.0f} (see the log)")
                pages = guest.memory_pages

            ref = python_nll(host, model, ids, n_batch)
            for who, v in (("guest (perplexity.wasm)", nll), ("python (backend forward steps)", ref)):
                print(f"{who:30s}: mean NLL {v:.10f} nats, perplexity {np.exp(v):.4f}")
            print(f"difference {abs(nll - ref):.3e}; the guest's memory: {pages} pages of 64 KiB")


if __name__ == "__main__":
    main()
