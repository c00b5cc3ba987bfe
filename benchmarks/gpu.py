"""CUDA backend benchmark: the tinyllama preset at Q4_K_M, end to end, on the current GPU.

    python -m benchmarks.gpu [--quick] [--json OUT] [--kernels-json FILE] [--models-dir models]

Measured in one run:
- decode tok/s, 128 greedy tokens after a short prompt: driven directly from Python
  (forward_embedding, forward_layers, forward_lm_head, argmax: one graph replay per
  token), the same with CUDA graphs off, and through the shipped WebAssembly guest
  with realm_forward_layers (the guest's default) and with per-layer calls (its
  PER_LAYER flag). Through the guest: (time of 1 + 128 tokens) - (time of 1 token),
  so the prompt is not counted;
- prefill tok/s of a 512-token prompt (embedding, every layer, the LM head of its last
  row), driven directly;
- weight bytes read per decode token, the bandwidth roofline (copy bandwidth / those
  bytes) and the weight-streaming rate of one decode step: weight bytes / time of one
  replay of the step's graph (CUDA events), as a fraction of the copy bandwidth;
- llama.cpp on the same file when llama_cpp imports with GPU offload here; else null,
  with the issue's figures from an H200 quoted as a reference, not measured here.

The copy bandwidth (device-to-device, read + write) comes from --kernels-json (the
output of benchmarks.gpu_kernels) when given, else from benchmarks.gpu_kernels.run.
The model is made with random valid blocks (`make-model --random-blocks`) and cached
in --models-dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import gpu_kernels
from benchmarks.cpu import prompt_tokens
from realm_ext import Host
from realm_ext.abi import GenerateParams
from realm_ext.model import Model, load_gguf
from realm_ext.model_maker import make_model

TYPE = "Q4_K_M"
DECODE, PREFILL = 128, 512
PROMPT_TEXT = "Once upon a time"
# llama.cpp (CUDA build, sm_90, llama-cpp-python) on an H200 of this workplace, the same
# TinyLlama-shape Q4_K_M file: issue 5's figures, 2026-11-26
LLAMA_CPP_REFERENCE = {
    "decode_tok_s": 705,
    "prefill_tok_s": 36500,
    "card": "NVIDIA H200",
    "measured_in_this_run": False,
    "source": "issue 5 (quoted, not measured here)",
}


def model_file(models_dir: Path, preset: str, t: str) -> Path:
    """The preset at type t with random valid blocks, made once into models_dir."""
    path = models_dir / f"{preset}-{t}-random-blocks.gguf"
    if not path.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        make_model(path, preset, t, seed=0, random_blocks=True)
    return path


def decode_direct(backend, model: Model, prompt: list[int], n: int):
    """Seconds for n greedy tokens after the prompt, the backend driven directly; and
    the ring (its decode graph stays captured in it)."""
    c = model.config
    kv = backend.new_kv(model, c.n_ctx_train)
    x = np.empty((len(prompt), c.n_embd), np.float32)
    logits = np.empty((1, c.n_vocab), np.float32)
    backend.forward_embedding(model, np.array(prompt, np.int32), x)
    backend.forward_layers(model, 0, c.n_layer, x, 0, kv, x)
    backend.forward_lm_head(model, x[-1:], logits)
    x1, ids = x[:1], np.empty(1, np.int32)
    pos, t0 = len(prompt), 0.0
    for i in range(n + 2):  # two untimed steps: the eager one and the graph capture
        if i == 2:
            t0 = time.perf_counter()
        ids[0] = int(np.argmax(logits[0]))
        backend.forward_embedding(model, ids, x1)
        backend.forward_layers(model, 0, c.n_layer, x1, pos, kv, x1)
        backend.forward_lm_head(model, x1, logits)
        pos += 1
    return time.perf_counter() - t0, kv


def prefill_seconds(backend, model: Model, tokens: list[int], repeat: int) -> float:
    c = model.config
    kv = backend.new_kv(model, c.n_ctx_train)
    x = np.empty((len(tokens), c.n_embd), np.float32)
    logits = np.empty((1, c.n_vocab), np.float32)
    ids = np.array(tokens, np.int32)
    times = []
    for _ in range(repeat + 1):  # the first run compiles the prefill kernels
        kv.truncate(0)
        t0 = time.perf_counter()
        backend.forward_embedding(model, ids, x)
        backend.forward_layers(model, 0, c.n_layer, x, 0, kv, x)
        backend.forward_lm_head(model, x[-1:], logits)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def decode_guest(host: Host, model: Model, per_layer: bool, n: int, repeat: int) -> float:
    """tok/s of n greedy tokens through the guest, the prompt's time taken out."""
    with host.guest(models=[model], memory_limit="256MiB") as g:

        def seconds(n: int) -> float:
            params = dict(max_tokens=n, temperature=0.0, stop_at_eos=False, per_layer=per_layer)
            assert g.generate_to(PROMPT_TEXT, lambda piece: True, model, GenerateParams(**params)) == n
            return g.last_stats.seconds

        seconds(2)  # warm-up: kernels, graphs
        full = statistics.median(seconds(n + 1) for _ in range(repeat))
        one = statistics.median(seconds(1) for _ in range(repeat))
    return n / (full - one)


def llama_cpp_figures(path: Path, prompt: list[int]) -> dict | None:
    """llama.cpp on the GPU (every layer offloaded), when llama_cpp imports here with GPU
    offload; else None."""
    try:
        import llama_cpp
    except ImportError:
        return None
    if not llama_cpp.llama_supports_gpu_offload():
        return None
    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_batch=PREFILL, n_gpu_layers=-1, verbose=False)
    toks = prompt_tokens(llm.n_vocab(), PREFILL)
    llm.eval(toks)  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(toks)
    prefill = time.perf_counter() - t0
    llm.reset()
    llm.eval(prompt)
    t0 = time.perf_counter()
    for _ in range(DECODE):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode = time.perf_counter() - t0
    return {"decode_tok_s": DECODE / decode, "prefill_tok_s": PREFILL / prefill, "measured_in_this_run": True}


def run(
    quick: bool = False,
    kernels_json: Path | None = None,
    models_dir: Path = Path("models"),
    preset: str = "tinyllama",
    n_decode: int = DECODE,
    n_prefill: int = PREFILL,
) -> dict:
    """All the measurements above, as a JSON-ready dict (preset, n_decode, n_prefill:
    smaller runs for tests)."""
    import cupy

    from realm_ext.backends.cuda import CudaBackend

    repeat = 3 if quick else 7
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    if kernels_json is not None and kernels_json.is_file():
        copy = json.loads(kernels_json.read_text())["copy_gbs"]
    else:
        copy = gpu_kernels.run(quick=True)["copy_gbs"]

    t0 = time.perf_counter()
    path = model_file(models_dir, preset, TYPE)
    res: dict = {"device": name, "model": {"preset": preset, "type": TYPE, "path": str(path)}}
    res["model"]["make_or_load_s"] = time.perf_counter() - t0
    res["decode_tokens"], res["prefill_tokens"], res["copy_gbs"] = n_decode, n_prefill, copy

    with load_gguf(path) as model:
        c = model.config
        prompt = prompt_tokens(c.n_vocab, 8)
        graphs, eager = CudaBackend(use_graphs=True), CudaBackend(use_graphs=False)
        t0 = time.perf_counter()
        rt = graphs.prepare(model)
        res["model"]["upload_s"] = time.perf_counter() - t0
        wb = rt.weight_bytes_per_token
        res["weight_bytes_per_token"] = wb
        res["roofline_tok_s"] = copy * 1e9 / wb

        sec, kv = decode_direct(graphs, model, prompt, n_decode)
        res["decode_direct_tok_s"] = n_decode / sec
        res["decode_direct_no_graph_tok_s"] = n_decode / decode_direct(eager, model, prompt, n_decode)[0]
        res["graph_speedup"] = res["decode_direct_tok_s"] / res["decode_direct_no_graph_tok_s"]

        graph = rt.graphs[(0, c.n_layer, kv.capacity)]
        step = gpu_kernels.events_time(lambda: graph.launch(rt.stream), rt.stream, 20)
        res["graph_replay_us"] = step * 1e6
        res["weight_streaming_gbs"] = wb / step / 1e9
        res["weight_streaming_frac_copy"] = wb / step / 1e9 / copy
        del kv, eager

        prefill = prompt_tokens(c.n_vocab, n_prefill)
        res["prefill_tok_s"] = n_prefill / prefill_seconds(graphs, model, prefill, repeat)

        with Host(device="cuda") as host:
            host.load(model)
            res["decode_guest_layers_tok_s"] = decode_guest(host, model, False, n_decode, repeat)
            res["decode_guest_per_layer_tok_s"] = decode_guest(host, model, True, n_decode, repeat)
    res["llama_cpp"] = llama_cpp_figures(path, prompt)
    res["llama_cpp_reference"] = LLAMA_CPP_REFERENCE
    return res


def table(res: dict) -> str:
    """A short markdown table of run()'s result."""
    ref = res["llama_cpp"] or res["llama_cpp_reference"]
    ref_note = (
        "measured here" if res["llama_cpp"] else f"{ref['card']}, quoted from issue 5, NOT measured here"
    )
    rows = [
        (
            "decode, guest, realm_forward_layers (tok/s)",
            res["decode_guest_layers_tok_s"],
            ref["decode_tok_s"],
        ),
        ("decode, guest, per-layer calls (tok/s)", res["decode_guest_per_layer_tok_s"], None),
        ("decode, direct, CUDA graph (tok/s)", res["decode_direct_tok_s"], None),
        ("decode, direct, no graph (tok/s)", res["decode_direct_no_graph_tok_s"], None),
        (
            f"prefill, {res['prefill_tokens']}-token prompt (tok/s)",
            res["prefill_tok_s"],
            ref["prefill_tok_s"],
        ),
        ("bandwidth roofline (tok/s)", res["roofline_tok_s"], None),
        ("one decode step's graph (µs)", res["graph_replay_us"], None),
        ("weight streaming in that step (GB/s)", res["weight_streaming_gbs"], None),
    ]
    lines = [
        f"{res['device']}, {res['model']['preset']} preset {res['model']['type']} (random blocks), "
        f"{res['decode_tokens']} decode tokens; copy bandwidth "
        f"{res['copy_gbs']:.0f} GB/s (read+write); {res['weight_bytes_per_token'] / 1e6:.0f} MB of weights "
        f"per token; weight streaming {res['weight_streaming_frac_copy']:.0%} of copy; graph speedup "
        f"{res['graph_speedup']:.2f}x",
        "",
        f"| measure | ours | llama.cpp ({ref_note}) |",
        "|---|---:|---:|",
    ]
    for label, ours, theirs in rows:
        lines.append(f"| {label} | {ours:,.1f} | {'' if theirs is None else f'{theirs:,.0f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--kernels-json", type=Path, help="benchmarks.gpu_kernels' JSON (for the copy bandwidth)")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    args = ap.parse_args()
    res = run(quick=args.quick, kernels_json=args.kernels_json, models_dir=args.models_dir)
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
