"""CPU backend benchmark: kernels and whole-model speed, against llama.cpp in the same run.

    python -m benchmarks.cpu [--quick] [--threads 2] [--json OUT] [--models-dir models]

1. matvec GB/s per weight format on the TinyLlama shapes, against memory-copy GB/s
   measured in the same run (benchmarks.bench_matvec).
2. decode tok/s (64 tokens after the prompt) and prefill tok/s (a 128-token prompt) on
   the tinyllama preset at Q4_K_M, Q8_0 and Q4_0, with `--threads` threads, for this
   backend and for llama.cpp (llama-cpp-python, same files, same thread count). The
   models are made with random valid blocks (`make-model --random-blocks`), cached in
   --models-dir. The ratios ours / llama.cpp are the figures that matter: absolute
   times drift with the machine's load. Ours runs twice: with the default
   weights="mmap" (the file's page cache) and with weights="load" (one copy in
   anonymous memory, as llama.cpp holds the weights it repacks); the ratio load / mmap
   says what the copy would buy on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import bench_matvec
from benchmarks.machine import machine_facts
from realm_ext.backends.cpu import CpuBackend
from realm_ext.model import load_gguf
from realm_ext.model_maker import make_model

TYPES = ("Q4_K_M", "Q8_0", "Q4_0")
PROMPT, DECODE = 128, 64


def model_file(models_dir: Path, t: str) -> Path:
    path = models_dir / f"tinyllama-{t}-random-blocks.gguf"
    if not path.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")  # a cache: never leave half a file under the name
        try:
            make_model(tmp, "tinyllama", t, seed=0, random_blocks=True)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def prompt_tokens(n_vocab: int, n: int = PROMPT, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + [int(t) for t in rng.integers(3, n_vocab, n - 1)]


def decode_tokens(n_vocab: int) -> list[int]:
    """The tokens fed one at a time after the prompt (the same for both programs: the
    speed of a step does not depend on which token it is)."""
    return prompt_tokens(n_vocab, DECODE, seed=1)


class Ours:
    """Prefill and decode runs of the CPU backend on one model file."""

    def __init__(self, path: Path, threads: int, weights: str = "mmap"):
        self.model = load_gguf(path)
        self.backend = CpuBackend(n_threads=threads, max_batch=PROMPT, weights=weights)
        # Untimed, as llama.cpp's load is (which maps its file with MAP_POPULATE and copies
        # what it repacks): the runtime with its weights' copy, and one token through the
        # model, which faults the file's pages into this process.
        self.backend.logits(self.model, np.asarray([1], np.int32))

    def run(self) -> tuple[float, float]:
        """Seconds of one prefill and of DECODE decode steps after it."""
        m, be, c = self.model, self.backend, self.model.config
        toks = np.asarray(prompt_tokens(c.n_vocab), np.int32)
        steps = np.asarray(decode_tokens(c.n_vocab), np.int32).reshape(-1, 1)
        x1 = np.empty((1, c.n_embd), np.float32)
        out1 = np.empty((1, c.n_vocab), np.float32)
        kv = be.new_kv(m, PROMPT + DECODE + 8)
        t0 = time.perf_counter()
        # a prompt as a generation loop runs it: every layer for every token, the LM
        # head for the last one only (llama.cpp's eval without logits_all does the same)
        xp = np.empty((PROMPT, c.n_embd), np.float32)
        be.forward_embedding(m, toks, xp)
        be.forward_layers(m, 0, c.n_layer, xp, 0, kv, xp)
        be.forward_lm_head(m, xp[-1:], out1)
        t1 = time.perf_counter()
        for i, p in enumerate(range(PROMPT, PROMPT + DECODE)):
            be.forward_embedding(m, steps[i], x1)
            be.forward_layers(m, 0, c.n_layer, x1, p, kv, x1)
            be.forward_lm_head(m, x1, out1)
        return t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        self.model.close()


class LlamaCpp:
    """The same runs through llama-cpp-python (same file, same thread count)."""

    def __init__(self, path: Path, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(
            str(path),
            n_ctx=PROMPT + DECODE + 8,
            n_batch=PROMPT,
            n_ubatch=PROMPT,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def run(self) -> tuple[float, float]:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt_tokens(llm.n_vocab()))
        t1 = time.perf_counter()
        for t in decode_tokens(llm.n_vocab()):
            llm.eval([t])
        return t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        del self.llm


def measure(path: Path, threads: int, repeat: int) -> dict:
    """Ours and llama.cpp alternately, `repeat` times each (load drifts: interleaving
    keeps the two under the same conditions); medians in tok/s."""
    runners = {"ours": Ours(path, threads), "ours_load": Ours(path, threads, weights="load")}
    with contextlib.suppress(ImportError):  # llama-cpp-python is optional
        runners["llama_cpp"] = LlamaCpp(path, threads)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    for _ in range(repeat):
        for name, r in runners.items():
            times[name].append(r.run())
    for r in runners.values():
        r.close()
    return {
        name: {
            "prefill_tok_s": PROMPT / statistics.median(t[0] for t in ts),
            "decode_tok_s": DECODE / statistics.median(t[1] for t in ts),
        }
        for name, ts in times.items()
    }


MATVEC_TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q4_0")


def run_models(types: tuple[str, ...] | list[str], threads: int, repeat: int, models_dir: Path) -> list[dict]:
    """`measure` on each of `types` (models made in `models_dir` when missing); rows carry
    the ours / llama.cpp ratios when llama-cpp-python imports."""
    rows = []
    for t in types:
        res = measure(model_file(models_dir, t), threads, repeat)
        a, b = res["ours"], res.get("llama_cpp")
        row = {"type": t, "ours": a, "ours_load": res["ours_load"], "llama_cpp": b}
        for phase in ("prefill", "decode"):
            row[f"{phase}_load_vs_mmap"] = res["ours_load"][f"{phase}_tok_s"] / a[f"{phase}_tok_s"]
        if b:
            row["prefill_ratio"] = a["prefill_tok_s"] / b["prefill_tok_s"]
            row["decode_ratio"] = a["decode_tok_s"] / b["decode_tok_s"]
        rows.append(row)
    return rows


def run(
    types: tuple[str, ...] | list[str],
    matvec_types: tuple[str, ...] | list[str],
    matvec_repeat: int,
    repeat: int,
    threads: int,
    models_dir: Path,
) -> dict:
    """Both parts: bench_matvec.run on `matvec_types`, then run_models on `types`."""
    mv = bench_matvec.run(list(matvec_types), matvec_repeat)
    rows = run_models(types, threads, repeat, models_dir)
    return {
        "threads": threads,
        "repeat": repeat,
        "prompt": PROMPT,
        "decode": DECODE,
        "matvec": mv,
        "models": rows,
    }


def report(res: dict) -> None:
    mv = res["matvec"]
    best = mv["isas"][-1]
    print(f"matvec, 1 token, {bench_matvec.THREADS} threads, {best}; memory copy {mv['copy_gbs']:.2f} GB/s")
    for r in mv["matvec"]:
        shape = f"{r['rows']}x{r['cols']}"
        print(f"  {r['type']:<5} {shape:>10} {r[f'{best}_gbs']:6.2f} GB/s  {r['best_vs_copy']:.2f}x copy")
    print(
        f"\ntinyllama, {res['threads']} threads, prompt {PROMPT}, decode {DECODE}, "
        f"median of {res['repeat']} (tok/s)"
    )
    head = f"{'prefill':>8} {'llama.cpp':>10} {'ratio':>6}"
    print(f"{'type':<7} {head}   {head.replace('prefill', ' decode')}")
    for row in res["models"]:
        t, a, b = row["type"], row["ours"], row["llama_cpp"]
        if b:
            print(
                f"{t:<7} {a['prefill_tok_s']:8.1f} {b['prefill_tok_s']:10.1f} {row['prefill_ratio']:6.2f}   "
                f"{a['decode_tok_s']:7.1f} {b['decode_tok_s']:10.1f} {row['decode_ratio']:6.2f}"
            )
        else:
            print(f"{t:<7} {a['prefill_tok_s']:8.1f} {'-':>10} {'-':>6}   {a['decode_tok_s']:7.1f}")
    print("weights='load' (a copy in memory) instead of the default 'mmap' (tok/s, load / mmap):")
    for row in res["models"]:
        m = row["ours_load"]
        print(
            f"{row['type']:<7} prefill {m['prefill_tok_s']:6.1f} ({row['prefill_load_vs_mmap']:.2f}x)  "
            f"decode {m['decode_tok_s']:5.1f} ({row['decode_load_vs_mmap']:.2f}x)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="runs per model (median)")
    ap.add_argument("--quick", action="store_true", help="one run, Q4_K_M only, two matvec formats")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    res = run(
        TYPES[:1] if args.quick else TYPES,
        MATVEC_TYPES[:2] if args.quick else MATVEC_TYPES,
        3 if args.quick else 7,
        1 if args.quick else args.repeat,
        args.threads,
        args.models_dir,
    )
    report(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_facts(), **res}, f, indent=2)


if __name__ == "__main__":
    main()
