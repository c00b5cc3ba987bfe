"""Chat benchmark: what keeping the conversation in the guest saves.

    python -m benchmarks.chat [--model PATH] [--chat-template chatml|FILE] [--turns 16]
                              [--repeat 3] [--max-tokens 32] [--threads N] [--json OUT]

One scripted conversation of --turns user messages, each answered greedily with
--max-tokens tokens. Time to first token (TTFT: from the call to the first piece out)
at turns 1, 4 and 16 (those within --turns), two ways, in the same run and interleaved:

- reuse: one guest keeps the conversation (Guest.chat): turn t evaluates only the new
  user message and the template's markers around it;
- fresh: a second guest starts a new conversation for every turn (Guest.reset_chat, so
  the ring is new and nothing is reused; the instance and its tokenizer stay warm) and
  evaluates the whole history, as a server without prompt reuse would.

The replies of both must be the same text (reported, not asserted: the K-quant kernels
round a batched position differently in the last bit from one evaluated alone). Each
figure is the median over --repeat runs of the conversation. The model: the `small`
preset at Q4_K_M with a ChatML template (made here) by default, or --model with its own
tokenizer.chat_template (or --chat-template). Writes JSON (default
benchmarks/results/chat-DATE.json) with the machine's facts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.machine import machine_facts
from realm_ext import Host
from realm_ext.model_maker import make_model

USERS = [
    "Hello! Who are you?",
    "Tell me a story about a king and a queen.",
    "What did the king see in the morning?",
    "And the queen?",
    "Where did they go after that?",
    "Was the house big or small?",
    "Who lived there with them?",
    "Tell me about the dog.",
    "Did the cat and the dog play?",
    "What happened at night?",
    "Was the moon out?",
    "Why was the boy sad?",
    "How did his friends help him?",
    "What did they find under the tree?",
    "How does the story end?",
    "Thank you! Tell me one more thing about the king.",
]
MARK_TURNS = (1, 4, 16)


def _turn(guest, messages: list[dict], template: str | None, kw: dict, fresh: bool) -> tuple[str, dict]:
    if fresh:
        guest.reset_chat()
    reply = "".join(guest.chat(messages, chat_template=template, **kw))
    s = guest.last_stats
    return reply, {
        "ttft_s": s.first_token_s if s.first_token_s is not None else s.seconds,
        "prompt_tokens": s.prompt_tokens,
        "cached_tokens": s.cached_tokens,
        "evaluated_tokens": s.evaluated_tokens,
        "tokens": s.tokens,
        "decode_tok_s": s.decode_tokens_per_s,
        "restarted": s.restarted,
    }


def conversation(host: Host, model, turns: int, template: str | None, kw: dict) -> list[dict]:
    """One run: per turn, the reuse and fresh figures and whether their replies agree."""
    rows = []
    with host.guest(models=[model]) as reuse, host.guest(models=[model]) as fresh:
        messages: list[dict] = []
        for t in range(1, turns + 1):
            messages.append({"role": "user", "content": USERS[(t - 1) % len(USERS)]})
            fresh_reply, f = _turn(fresh, messages, template, kw, fresh=True)
            reply, r = _turn(reuse, messages, template, kw, fresh=False)
            rows.append({"turn": t, "reuse": r, "fresh": f, "same_text": reply == fresh_reply})
            messages.append({"role": "assistant", "content": reply})
    return rows


def run(model_path: Path | None, template: str | None, turns: int, repeat: int, max_tokens: int,
        n_ctx: int, threads: int | None) -> dict:  # fmt: skip
    kw = dict(max_tokens=max_tokens, temperature=0.0, n_ctx=n_ctx)
    with tempfile.TemporaryDirectory() as tmp, Host(device="cpu", n_threads=threads) as host:
        if model_path is None:
            model_path = make_model(Path(tmp) / "small.gguf", "small", "Q4_K_M", chat_template="chatml")
            name = "small Q4_K_M (ChatML)"
        else:
            name = str(model_path)
        model = host.load(model_path)
        with host.guest(models=[model]) as g:  # warm up: the kernels' first calls
            list(
                g.chat([{"role": "user", "content": "hi"}], chat_template=template, **dict(kw, max_tokens=2))
            )
        runs = [conversation(host, model, turns, template, kw) for _ in range(repeat)]
    per_turn = []
    for i in range(turns):
        rows = [r[i] for r in runs]
        med = {
            side: {k: statistics.median(float(row[side][k]) for row in rows) for k in rows[0][side]}
            for side in ("reuse", "fresh")
        }
        med["turn"] = i + 1
        med["same_text"] = all(row["same_text"] for row in rows)
        med["speedup"] = med["fresh"]["ttft_s"] / med["reuse"]["ttft_s"]
        per_turn.append(med)
    return {
        "model": name,
        "turns": turns,
        "repeat": repeat,
        "max_tokens": max_tokens,
        "n_ctx": n_ctx,
        "per_turn": per_turn,
        "marks": [p for p in per_turn if p["turn"] in MARK_TURNS],
    }


def table(res: dict) -> str:
    lines = [
        f"model {res['model']}, {res['max_tokens']} tokens per reply, median of {res['repeat']}",
        f"{'turn':>4} {'prompt':>7} {'reused':>7} {'TTFT reuse':>11} {'TTFT fresh':>11} {'speedup':>8} "
        f"{'decode tok/s':>13} {'same text':>9}",
    ]
    for p in res["marks"]:
        r, f = p["reuse"], p["fresh"]
        lines.append(
            f"{p['turn']:>4} {r['prompt_tokens']:>7.0f} {r['cached_tokens']:>7.0f} "
            f"{r['ttft_s'] * 1e3:>8.1f} ms {f['ttft_s'] * 1e3:>8.1f} ms {p['speedup']:>7.2f}x "
            f"{r['decode_tok_s']:>13.1f} "
            f"{'yes' if p['same_text'] else 'no':>9}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a GGUF (default: the small preset, made here)")
    ap.add_argument(
        "--chat-template", default=None, help="'chatml' or a template file (default: the model's)"
    )
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--n-ctx", type=int, default=2048, help="the conversation's ring (it must hold all turns)"
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/chat-DATE.json")
    args = ap.parse_args()
    template = args.chat_template
    if template is not None and template != "chatml":
        template = Path(template).read_text(encoding="utf-8")
    res = run(args.model, template, args.turns, args.repeat, args.max_tokens, args.n_ctx, args.threads)
    print(table(res))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.json or Path("benchmarks/results") / f"chat-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_facts(), **res}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
