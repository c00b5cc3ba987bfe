"""Many guests (tenants) on one model: what each extra guest costs in memory.

What it shows: one `Host` loads the model once (memory-mapped), and every guest granted
it reads the same weights through the host imports: weights never enter a guest's
memory. A guest holds only its own linear memory (the tokenizer's tables, a row of
logits, one chunk of activations) and, while it generates, a KV ring on the host:
2 (K and V) x 2 bytes (f16) x n_layer x n_ctx x n_head_kv x head_dim.

For each new guest it prints the process RSS, the guest's linear memory and heap, and
the KV ring bytes it held while generating (read inside the stream callback); then the
average RSS per extra guest, next to the size of the weights they all share.

Run it from the repository root (Linux: RSS comes from /proc):

    python examples/many_tenants.py                     # 8 guests on the tiny preset, made now
    python examples/many_tenants.py --model model.gguf --guests 16 --n-ctx 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from realm_ext import Guest, Host
from realm_ext.abi import GenerateParams
from realm_ext.engines.base import WASM_PAGE
from realm_ext.model_maker import make_model

KIB, MIB = 1024, 1024 * 1024


def rss() -> int:
    """Resident set size of this process, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def generate_once(guest: Guest, prompt: str, params: GenerateParams) -> int:
    """Run one generation; returns the KV ring bytes the guest held while it ran."""
    held = [0]

    def on_emit(piece: str) -> bool:
        # the storage of the rings this guest owns right now (the host's side of the ABI)
        rings = [e.ring for e in guest.state.kv.values()]
        held[0] = max(held[0], sum(r.k.nbytes + r.v.nbytes for r in rings))
        return True  # keep going

    guest.generate_to(prompt, on_emit, params=params)
    return held[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a llama GGUF (default: the tiny preset, made now)")
    ap.add_argument("--guests", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=256, help="KV ring positions per generation")
    ap.add_argument("-n", "--max-tokens", type=int, default=16)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = ap.parse_args()
    params = GenerateParams(max_tokens=args.max_tokens, n_ctx=args.n_ctx, temperature=0.8, seed=1)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_model(Path(tmp) / "tiny.gguf", "tiny", "Q4_K_M")
        with Host(device=args.device) as host:
            model = host.load(path)
            weights = sum(t.nbytes for t in model.tensors.values())
            c = model.config
            print(f"model {Path(path).name}: {weights / MIB:.2f} MiB of weights, loaded once")
            kv_bytes = 2 * 2 * c.n_layer * args.n_ctx * c.n_head_kv * c.head_dim
            print(
                f"a KV ring of {args.n_ctx} positions: 2 x 2 B x {c.n_layer} layers x {args.n_ctx} x "
                f"{c.n_head_kv} KV heads x {c.head_dim} = {kv_bytes} B"
            )
            guests: list[Guest] = []
            rss_after = []
            try:
                for i in range(args.guests):
                    guest = host.guest(models=[model], memory_limit="64MiB")
                    guests.append(guest)
                    kv = generate_once(guest, f"Tenant {i} says", params)
                    rss_after.append(rss())
                    s = guest.last_stats
                    print(
                        f"guest {i + 1:2d}: RSS {rss_after[-1] / MIB:7.1f} MiB | linear memory "
                        f"{s.memory_pages * WASM_PAGE // KIB} KiB ({s.memory_pages} pages), heap "
                        f"{s.heap_bytes // KIB} KiB | KV ring while generating {kv} B"
                    )
            finally:
                for guest in guests:
                    guest.close()
            # the first guest pays one-time costs (compiling the module, the backend's
            # scratch buffers); what an extra guest costs is the rise after it
            if len(rss_after) > 1:
                per_guest = (rss_after[-1] - rss_after[0]) / (len(rss_after) - 1)
                print(
                    f"per extra guest: RSS +{per_guest / KIB:.0f} KiB; the weights "
                    f"({weights / KIB:.0f} KiB) are shared by all {len(guests)} guests"
                )


if __name__ == "__main__":
    main()
