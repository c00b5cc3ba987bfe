"""CPU backend benchmark: kernels and whole-model speed, against llama.cpp in the same run.

    python -m benchmarks.cpu [--quick] [--threads 2] [--json OUT] [--models-dir models]

1. matvec GB/s per weight format on the TinyLlama shapes, against memory-copy GB/s
   measured in the same run (benchmarks.bench_matvec).
2. decode tok/s (64 tokens after a 128-token prompt) and prefill tok/s (a 128-token and
   a 512-token prompt) on the tinyllama preset at Q4_K_M, Q8_0 and Q4_0 and on the real
   SmolLM2-135M-Instruct Q4_1 and Gemma 3 270M Q4_K_M (the files `realm-ext pull` caches;
   skipped with a note where absent), with `--threads` threads, for this backend and for
   llama.cpp (llama-cpp-python, same files, same thread count). The tinyllama models come
   two ways, cached in --models-dir: with random valid blocks (`make-model
   --random-blocks`: "Q4_K_M"), and quantized by llama.cpp's own quantizer
   (`llama_model_quantize`) from the maker's F16 file of N(0, 0.02) weights
   ("Q4_K_M-llamacpp": the scales and the type mix a real quantized file has).
   The ratios ours / llama.cpp are the figures that matter: absolute
   times drift with the machine's load. Ours runs twice: with the default
   weights="repack" (the file's page cache, with a repacked copy of the matrices the
   kernels read faster so: Q4_0 on AVX-512, as llama.cpp repacks) and with
   weights="mmap" (the file's page cache only); the ratio default / mmap says what
   the repacked copies buy.
3. the read roofline: GB/s of a `--threads`-thread read of a 1 GiB buffer (numpy's
   max over one u64 slice per thread, SIMD), and each decode figure as a fraction of the
   tok/s that bandwidth allows: weight bytes a token reads (every tensor but the
   embedding table, which gives one row, unless it is also the LM head) / read GB/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import bench_matvec
from benchmarks.machine import machine_facts
from realm_ext.backends.cpu import DEFAULT_WEIGHTS, CpuBackend
from realm_ext.model import load_gguf
from realm_ext.model_maker import make_model
from realm_ext.pull import model_path
from realm_ext.quantizer import recipe_file_type

# a tinyllama-shape recipe quantized by llama.cpp from the maker's F16 file
LLAMA_QUANTIZED = "-llamacpp"
# tinyllama-shape files of random blocks, the same recipes quantized by llama.cpp, then
# the real model files of REAL_MODELS
RECIPES = ("Q4_K_M", "Q8_0", "Q4_0")
TYPES = (*RECIPES, *(r + LLAMA_QUANTIZED for r in RECIPES), "SmolLM2-Q4_1", "Gemma3-Q4_K_M")
# type name -> realm_ext.pull name
REAL_MODELS = {"SmolLM2-Q4_1": "smollm2", "Gemma3-Q4_K_M": "gemma3-270m"}
PROMPT, LONG_PROMPT, DECODE = 128, 512, 64  # decode follows the PROMPT-token prefill


def _cached(path: Path, make: Callable[[Path], object]) -> Path:
    """path, made by make(tmp) first where it does not exist (a cache: never leave half a
    file under the name)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            make(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def llama_quantized(models_dir: Path, recipe: str, preset: str = "tinyllama") -> Path:
    """The preset's F16 model (seed 0) quantized to `recipe` by llama.cpp's quantizer,
    made once in models_dir (llama-cpp-python must import)."""
    import llama_cpp

    f16 = _cached(models_dir / f"{preset}-F16.gguf", lambda tmp: make_model(tmp, preset, "F16", seed=0))

    def quantize(tmp: Path) -> None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(recipe_file_type(recipe))
        params.nthread = os.cpu_count() or 1
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {f16} to {recipe}")

    return _cached(models_dir / f"{preset}-{recipe}-llamacpp.gguf", quantize)


def model_file(models_dir: Path, t: str) -> Path | None:
    """The file of `t`: a tinyllama-shape model made (once) in models_dir, or a real model
    from the pull cache; None where it cannot be had (never pulled, or a llama.cpp-quantized
    file without llama-cpp-python)."""
    if t in REAL_MODELS:
        return model_path(REAL_MODELS[t])
    if t.endswith(LLAMA_QUANTIZED):
        try:
            return llama_quantized(models_dir, t.removesuffix(LLAMA_QUANTIZED))
        except ImportError:
            return None
    return _cached(
        models_dir / f"tinyllama-{t}-random-blocks.gguf",
        lambda tmp: make_model(tmp, "tinyllama", t, seed=0, random_blocks=True),
    )


READ_BYTES = 1 << 30  # the roofline's buffer


def read_gbs(threads: int, repeat: int = 5) -> float:
    """GB/s of `threads` threads reading disjoint slices of one 1 GiB buffer (the best of
    `repeat`: the figure is a ceiling). np.max is vectorised and releases the GIL."""
    buf = np.ones(READ_BYTES // 8, np.uint64)  # max over u64 read fastest of numpy's reductions here
    parts = np.array_split(buf, threads)
    best = 0.0
    for _ in range(repeat):
        workers = [threading.Thread(target=np.max, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, READ_BYTES / (time.perf_counter() - t0) / 1e9)
    return best


def bytes_per_token(path: Path) -> int:
    """Weight bytes a decode step reads: every tensor, the embedding table only when it is
    also the LM head (a token reads one row of it otherwise)."""
    m = load_gguf(path)
    try:
        embd = m.tensor("token_embd.weight").nbytes
        return sum(t.nbytes for t in m.tensors.values()) - (0 if m.tied_output else embd)
    finally:
        m.close()


def prompt_tokens(n_vocab: int, n: int = PROMPT, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + [int(t) for t in rng.integers(3, n_vocab, n - 1)]


def decode_tokens(n_vocab: int) -> list[int]:
    """The tokens fed one at a time after the prompt (the same for both programs: the
    speed of a step does not depend on which token it is)."""
    return prompt_tokens(n_vocab, DECODE, seed=1)


class Ours:
    """Prefill and decode runs of the CPU backend on one model file."""

    def __init__(self, path: Path, threads: int, weights: str = DEFAULT_WEIGHTS):
        self.model = load_gguf(path)
        self.backend = CpuBackend(n_threads=threads, max_batch=LONG_PROMPT, weights=weights)
        # Untimed, as llama.cpp's load is (which maps its file with MAP_POPULATE and copies
        # what it repacks): the runtime with its weights' copy, and one token through the
        # model, which faults the file's pages into this process.
        self.backend.logits(self.model, np.asarray([1], np.int32))

    def prefill(self, n: int, kv) -> float:
        """Seconds of an n-token prompt as a generation loop runs it: every layer for every
        token, the LM head for the last one only (llama.cpp's eval without logits_all)."""
        m, be, c = self.model, self.backend, self.model.config
        toks = np.asarray(prompt_tokens(c.n_vocab, n), np.int32)
        xp = np.empty((n, c.n_embd), np.float32)
        out1 = np.empty((1, c.n_vocab), np.float32)
        t0 = time.perf_counter()
        be.forward_embedding(m, toks, xp)
        be.forward_layers(m, 0, c.n_layer, xp, 0, kv, xp)
        be.forward_lm_head(m, xp[-1:], out1)
        return time.perf_counter() - t0

    def run(self) -> tuple[float, float, float]:
        """Seconds of a PROMPT-token prefill, of DECODE decode steps after it, and of a
        LONG_PROMPT-token prefill."""
        m, be, c = self.model, self.backend, self.model.config
        steps = np.asarray(decode_tokens(c.n_vocab), np.int32).reshape(-1, 1)
        x1 = np.empty((1, c.n_embd), np.float32)
        out1 = np.empty((1, c.n_vocab), np.float32)
        kv = be.new_kv(m, PROMPT + DECODE + 8)
        t_prefill = self.prefill(PROMPT, kv)
        t1 = time.perf_counter()
        for i, p in enumerate(range(PROMPT, PROMPT + DECODE)):
            be.forward_embedding(m, steps[i], x1)
            be.forward_layers(m, 0, c.n_layer, x1, p, kv, x1)
            be.forward_lm_head(m, x1, out1)
        t_decode = time.perf_counter() - t1
        return t_prefill, t_decode, self.prefill(LONG_PROMPT, be.new_kv(m, LONG_PROMPT + 8))

    def close(self) -> None:
        self.model.close()


class LlamaCpp:
    """The same runs through llama-cpp-python (same file, same thread count)."""

    def __init__(self, path: Path, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(
            str(path),
            n_ctx=LONG_PROMPT + 8,
            n_batch=LONG_PROMPT,
            n_ubatch=LONG_PROMPT,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def run(self) -> tuple[float, float, float]:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt_tokens(llm.n_vocab()))
        t1 = time.perf_counter()
        for t in decode_tokens(llm.n_vocab()):
            llm.eval([t])
        t2 = time.perf_counter()
        llm.reset()
        llm.eval(prompt_tokens(llm.n_vocab(), LONG_PROMPT))
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    def close(self) -> None:
        del self.llm


def measure(path: Path, threads: int, repeat: int) -> dict:
    """Ours and llama.cpp alternately, `repeat` times each (load drifts: interleaving
    keeps the two under the same conditions); medians in tok/s."""
    runners = {"ours": Ours(path, threads), "ours_mmap": Ours(path, threads, weights="mmap")}
    with contextlib.suppress(ImportError):  # llama-cpp-python is optional
        runners["llama_cpp"] = LlamaCpp(path, threads)
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runners}
    for _ in range(repeat):
        for name, r in runners.items():
            times[name].append(r.run())
    for r in runners.values():
        r.close()
    return {
        name: {
            "prefill_tok_s": PROMPT / statistics.median(t[0] for t in ts),
            "decode_tok_s": DECODE / statistics.median(t[1] for t in ts),
            "prefill512_tok_s": LONG_PROMPT / statistics.median(t[2] for t in ts),
        }
        for name, ts in times.items()
    }


MATVEC_TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q4_0")
PHASES = ("prefill", "prefill512", "decode")  # also in benchmarks.plot.TOK_S and benchmarks.report


def run_models(types: tuple[str, ...] | list[str], threads: int, repeat: int, models_dir: Path) -> list[dict]:
    """`measure` on each of `types` (tinyllama models made in `models_dir` when missing, a
    real model not pulled skipped with a note); rows carry the ours / llama.cpp ratios
    when llama-cpp-python imports."""
    rows = []
    for t in types:
        path = model_file(models_dir, t)
        if path is None:
            why = (
                f"not in the pull cache (realm-ext pull {REAL_MODELS[t]})"
                if t in REAL_MODELS
                else "llama-cpp-python (its quantizer) does not import"
            )
            print(f"{t}: skipped, {why}", flush=True)
            continue
        res = measure(path, threads, repeat)
        a, b = res["ours"], res.get("llama_cpp")
        row = {
            "type": t,
            "ours": a,
            "ours_mmap": res["ours_mmap"],
            "llama_cpp": b,
            "bytes_per_token": bytes_per_token(path),
        }
        for phase in PHASES:
            row[f"{phase}_vs_mmap"] = a[f"{phase}_tok_s"] / res["ours_mmap"][f"{phase}_tok_s"]
            if b:
                row[f"{phase}_ratio"] = a[f"{phase}_tok_s"] / b[f"{phase}_tok_s"]
        rows.append(row)
    return rows


def add_roofline(rows: list[dict], threads: int) -> float:
    """Measure the read roofline and put each run's decode as a fraction of it into rows
    (run_models' rows, as "decode_vs_roofline"); returns the read GB/s."""
    read = read_gbs(threads)
    for row in rows:
        for who in ("ours", "ours_mmap", "llama_cpp"):
            if row[who]:
                row[who]["decode_vs_roofline"] = (
                    row[who]["decode_tok_s"] * row["bytes_per_token"] / (read * 1e9)
                )
    return read


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
    read = add_roofline(rows, threads)
    return {
        "read_gbs": read,
        "threads": threads,
        "repeat": repeat,
        "prompt": PROMPT,
        "long_prompt": LONG_PROMPT,
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
        f"\n{res['threads']} threads, prefill of {PROMPT} and {LONG_PROMPT} tokens, decode of {DECODE} "
        f"after the first, median of {res['repeat']} (tok/s: ours, llama.cpp, ratio)"
    )
    print(f"{'type':<15} " + "   ".join(f"{phase:>25}" for phase in PHASES))
    for row in res["models"]:
        a, b = row["ours"], row["llama_cpp"]
        cells = []
        for phase in PHASES:
            ours = a[f"{phase}_tok_s"]
            theirs = f"{b[f'{phase}_tok_s']:8.1f} {row[f'{phase}_ratio']:6.2f}x" if b else f"{'-':>16}"
            cells.append(f"{ours:8.1f} {theirs}")
        print(f"{row['type']:<15} " + "   ".join(f"{c:>25}" for c in cells))
    print(
        f"decode as a fraction of the read roofline ({res['read_gbs']:.1f} GB/s, {res['threads']} threads; "
        "weight bytes per token / read GB/s):"
    )
    for row in res["models"]:
        who = [w for w in ("ours", "ours_mmap", "llama_cpp") if row[w]]
        cells = "  ".join(f"{w} {row[w]['decode_vs_roofline']:.0%}" for w in who)
        print(f"{row['type']:<15} {row['bytes_per_token'] / 2**20:7.1f} MiB/token  {cells}")
    print("weights='mmap' (the file's map only) instead of the default 'repack' (tok/s, default / mmap):")
    for row in res["models"]:
        m = row["ours_mmap"]
        cells = [f"{p} {m[f'{p}_tok_s']:6.1f} ({row[f'{p}_vs_mmap']:.2f}x)" for p in PHASES]
        print(f"{row['type']:<15} " + "  ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="runs per model (median)")
    ap.add_argument("--quick", action="store_true", help="one run, Q4_K_M only, two matvec formats")
    ap.add_argument("--types", nargs="+", choices=TYPES, help="models (default all; Q4_K_M with --quick)")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    res = run(
        args.types or (TYPES[:1] if args.quick else TYPES),
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
