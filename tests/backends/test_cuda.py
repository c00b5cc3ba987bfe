"""realm_ext.backends.cuda: the CUDA backend against the CPU backend.

Without a GPU: device selection, the KV ring's bookkeeping (RingBook, against the
CPU's KVRing), the NVRTC compilation of the backend's own kernel files, and every
backend test below over the numpy stand-in for the GPU (the `cuda` fixture's
"emulated" half, tests/backends/cuda_emulation.py: it checks the backend's Python and
the kernels' algorithms, not their CUDA code). The "gpu" half needs a GPU and skips
with the reason otherwise; it runs on a lent GPU machine through
benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cuda_emulation
import numpy as np
import pytest
from backend_checks import check_bad_calls_raise
from cuda_emulation import emulated_cuda
from support.greedy import backend_greedy, piece_bytes, prompt_ids
from support.prompts import assert_within_flips

from realm_ext import Host, kernels
from realm_ext.backends import cuda_unavailable_reason, make_backend
from realm_ext.backends.cpu import CpuBackend
from realm_ext.backends.cuda.source import ARCHS_CHECKED, nvrtc_compile
from realm_ext.backends.kv_book import RingBook
from realm_ext.model import load_gguf
from realm_ext.model_maker import PRESETS, make_model
from realm_ext.quantizer import RECIPES
from realm_ext.reference import ReferenceLlama

NO_GPU = cuda_unavailable_reason()


# The most a "flip" may move logits: equal roundings everywhere but one 8-bit or f16
# activation rounding that lands on the other side of its step (a last-bit difference in a
# float sum decides it) moves these tiny random models' logits by 2e-3 .. 1.4e-2
# (measured); 3e-2 is also the CPU backend's own bound against the float64 reference. A
# real fault (a wrong position, head, slot or scale) moves them by O(1).
FLIP = 3e-2


def rel(a: np.ndarray, b: np.ndarray) -> float:
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def prompt(rng: np.random.Generator, n: int, n_vocab: int) -> list[int]:
    return [1] + [int(t) for t in rng.integers(3, n_vocab, n - 1)]


# ---- without a GPU ------------------------------------------------------------------------


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present: 'auto' picks it")
def test_auto_is_the_cpu_without_a_gpu() -> None:
    with Host(device="auto") as h:
        assert h.device == "cpu"
    assert isinstance(make_backend("auto"), CpuBackend)


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="device 'cuda' is not available: .*(cupy|GPU|CUDA)"):
        Host(device="cuda")


def test_unknown_device() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Host(device="tpu")


@pytest.mark.parametrize("arch", ARCHS_CHECKED)
@pytest.mark.parametrize("name", ["ops", "attention"])
def test_backend_kernels_compile(name: str, arch: str) -> None:
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    assert len(nvrtc_compile(name, arch)) > 1000


def ring_ops(rng: np.random.Generator, capacity: int, n_ops: int) -> list[tuple]:
    """Random appends (mostly at the next position, some elsewhere) and truncates."""
    ops, n = [], 0
    for _ in range(n_ops):
        r = rng.random()
        if r < 0.6:
            pos = n if rng.random() < 0.85 else int(rng.integers(0, n + 3))
            count = int(rng.integers(1, capacity + 2))  # capacity + 1: too many
            ops.append(("append", int(rng.integers(0, 3)), pos, count))
            n = max(n, pos + count)
        else:
            ops.append(("truncate", int(rng.integers(0, n + 2))))
    return ops


def outcome(fn, args: tuple) -> type | None:
    """None when fn(*args) returns, else the type of what it raised."""
    try:
        fn(*args)
    except (IndexError, ValueError) as e:
        return type(e)
    return None


def test_ring_bookkeeping_equals_the_cpu_ring(rng) -> None:
    """RingBook (the DeviceKVRing's bookkeeping) accepts and refuses exactly what the
    CPU's KVRing does, with the same exception types and the same n_pos / held_from,
    over random appends and truncates, wraps included."""
    for capacity in (1, 3, 4, 8):
        book, ring = RingBook(2, capacity, 1, 2), kernels.KVRing(2, capacity, 1, 2)
        for op in ring_ops(rng, capacity, 300):
            if op[0] == "append":
                _, layer, pos, count = op
                rows = np.zeros((count, 2), np.float32)
                calls = [(book.reserve, (layer, pos, count)), (ring.append, (layer, pos, rows, rows))]
            else:
                calls = [(book.truncate, op[1:]), (ring.truncate, op[1:])]
            outcomes = [outcome(fn, args) for fn, args in calls]
            assert outcomes[0] == outcomes[1], (capacity, op, ring.n_pos, ring.held_from)
            assert book.n_pos == ring.n_pos and book.held_from == ring.held_from, (capacity, op)
        for p in (0, capacity - 1, capacity, 5 * capacity + 1):
            assert book.window_start(p) == ring.window_start(p) and book.slot(p) == ring.slot(p)


def test_ring_bookkeeping_refuses_bad_shapes() -> None:
    for args in ((0, 4, 1, 2), (1, 0, 1, 2), (1, 4, 0, 2), (1, (1 << 24) + 1, 1, 2)):
        with pytest.raises(ValueError):
            RingBook(*args)
        with pytest.raises(ValueError):
            kernels.KVRing(*args)
    book = RingBook(2, 4, 1, 2)
    with pytest.raises(ValueError):
        book.truncate(-1)
    with pytest.raises(IndexError):
        book.reserve(2, 0, 1)


# ---- on a GPU -------------------------------------------------------------------------------


@pytest.fixture(params=["gpu", "emulated"])
def cuda(request: pytest.FixtureRequest):
    """A CudaBackend on the GPU (skipped without one), and one over the numpy stand-in
    for the GPU (tests/backends/cuda_emulation.py), which runs everywhere."""
    if request.param == "gpu":
        if NO_GPU is not None:
            pytest.skip(f"needs a CUDA GPU: {NO_GPU}")
        from realm_ext.backends.cuda import CudaBackend

        yield CudaBackend()
    else:
        with emulated_cuda() as mod:
            yield mod.CudaBackend()


@pytest.fixture(scope="module")
def cpu() -> CpuBackend:
    return CpuBackend()


def test_auto_picks_cuda(cuda) -> None:
    with Host(device="auto") as h:
        assert h.device == "cuda"


@pytest.mark.parametrize("recipe", RECIPES)
def test_logits_match_the_cpu_backend(model_path, cuda, cpu: CpuBackend, rng, recipe: str) -> None:
    """A 2-layer model of every type: 12-token prompts in one batch. The logits equal the
    CPU backend's to ~1e-7 (F32 ~1e-5, F16 ~3e-4), except on a prompt where a last-bit
    difference (float order; the attention's softmax) flips one 8-bit or f16 activation
    rounding, which these tiny random models turn into 2e-3 .. 1.4e-2 (measured). So: the
    issue's 1e-2 on at least one of 4 prompts (in fact 1e-3), and every prompt within the
    CPU backend's own bound against the float64 reference, 3e-2."""
    errs = []
    with load_gguf(model_path(recipe, seed=3)) as m:
        for _ in range(4):
            toks = prompt(rng, 12, m.config.n_vocab)
            ours = cuda.logits(m, toks)
            assert np.isfinite(ours).all()
            errs.append(rel(ours, cpu.logits(m, toks)))
            assert rel(ours, ReferenceLlama(m).logits(toks)) < 3e-2  # the CPU backend's own bound
    print(f"{recipe}: relative L2 vs the CPU backend per prompt {[f'{e:.1e}' for e in errs]}")
    assert min(errs) <= 1e-3 and max(errs) <= 3e-2, errs


# ~25 s a recipe on 2 cores: CI runs three (Q8_1, Q8_K and a mix of K-quant activations;
# test_cuda_emulated.py runs every format's kernels); REALM_CUDA_EMU_ALL=1 runs them all
THROUGH_KERNELS = RECIPES if os.environ.get("REALM_CUDA_EMU_ALL") else ("Q4_1", "Q5_K", "Q4_K_M")


@pytest.mark.parametrize("recipe", THROUGH_KERNELS)
def test_logits_through_the_kernels_match_the_cpu_backend(
    model_path, emulator, cpu: CpuBackend, rng, recipe: str
) -> None:
    """The backend with every matmul done by csrc/cuda/matmul.cu's own kernels, run on the
    CPU (tests/backends/cuda_emulator.py: the launches cuda_matmul makes on a GPU), on a
    2-layer model of every type: a 12-token prompt (the prefill kernel), then a decode
    step (the decode kernels).

    Each matmul is checked on the spot (cuda_emulation._check_against_cpu): its activation
    bytes are the CPU backend's for the same x, its output the CPU backend's up to float
    summation order (<= 1e-5 of |x| @ |W|). End to end the logits then differ from the CPU
    backend's by ~1e-7 (F32: ~1e-5), except when a last-bit difference (the matmuls' float
    order, or the attention's: with the CPU's own matmul, the stand-in's attention output
    differs from kernels.attention in one head of one token, by ~5e-5, on 2 of 8 Q8_0
    prompts measured) flips one 8-bit or f16 activation rounding: these
    random tiny models turn one flip into 2e-3 .. 1.4e-2 at the logits (measured), and
    later steps inherit it through the KV ring. So the end-to-end bound here is the CPU
    backend's own against the float64 reference, 3e-2; the matmul checks are exact."""
    with load_gguf(model_path(recipe, seed=3)) as m, emulated_cuda(emulator) as mod:
        cuda = mod.CudaBackend()
        toks = prompt(rng, 13, m.config.n_vocab)
        kv_gpu, kv_cpu = cuda.new_kv(m, 16), cpu.new_kv(m, 16)
        prefill = rel(cuda.logits(m, toks[:12], kv_gpu), cpu.logits(m, toks[:12], kv_cpu))
        step = rel(cuda.logits(m, toks[12:], kv_gpu, 12), cpu.logits(m, toks[12:], kv_cpu, 12))
        n_matmuls, worst = len(cuda_emulation.kernel_errors), max(cuda_emulation.kernel_errors)
    print(f"{recipe}: logits rel L2 prefill {prefill:.1e}, decode {step:.1e}; matmuls <= {worst:.0e}")
    assert n_matmuls >= 2 * (4 * m.config.n_layer + 1)  # qkv, wo, gate_up, down per layer; lm head
    assert prefill <= 3e-2 and step <= 3e-2, (prefill, step)


@pytest.mark.parametrize("recipe", ["F16", "Q8_0", "Q4_K_M", "Q6_K"])
def test_small_model(model_path, cuda, cpu: CpuBackend, rng, recipe: str) -> None:
    with load_gguf(model_path(recipe, preset="small")) as m:
        toks = prompt(rng, 9, m.config.n_vocab)
        assert rel(cuda.logits(m, toks), cpu.logits(m, toks)) <= FLIP


def decode_logits(backend, m, toks: list[int], n_ctx: int, per_layer: bool = False) -> np.ndarray:
    """Logits of each token fed one at a time (forward_layers, or one call per layer)."""
    c = m.config
    kv = backend.new_kv(m, n_ctx)
    x = np.empty((1, c.n_embd), np.float32)
    out = np.empty((len(toks), c.n_vocab), np.float32)
    for p, t in enumerate(toks):
        backend.forward_embedding(m, np.array([t], np.int32), x)
        if per_layer:
            for i in range(c.n_layer):
                backend.forward_layer(m, i, x, p, kv, x)
        else:
            backend.forward_layers(m, 0, c.n_layer, x, p, kv, x)
        backend.forward_lm_head(m, x, out[p : p + 1])
    return out


@pytest.mark.parametrize("recipe", ["F32", "Q8_0", "Q4_K_M"])
def test_decode_equals_prefill(model_path, cuda, rng, recipe: str) -> None:
    with load_gguf(model_path(recipe)) as m:
        toks = prompt(rng, 10, m.config.n_vocab)
        batch = cuda.logits(m, toks)
        step = decode_logits(cuda, m, toks, 32)
        # matvec vs matmul kernels: the float order differs
        assert_within_flips([rel(step[p], batch[p]) for p in range(len(toks))])


@pytest.mark.parametrize("recipe", ["Q4_K_M", "Q8_0"])
def test_forward_layers_equals_per_layer_calls(model_path, cuda, rng, recipe: str) -> None:
    with load_gguf(model_path(recipe, preset="small")) as m:
        toks = prompt(rng, 12, m.config.n_vocab)
        a = decode_logits(cuda, m, toks, 32)
        b = decode_logits(cuda, m, toks, 32, per_layer=True)
        for p in range(len(toks)):
            assert rel(a[p], b[p]) < 1e-6, p


@pytest.mark.parametrize("recipe", ["Q4_K_M", "F16"])
def test_graph_replay_equals_eager(model_path, cuda, rng, recipe: str) -> None:
    from realm_ext.backends.cuda import CudaBackend

    with load_gguf(model_path(recipe)) as m:
        toks = prompt(rng, 16, m.config.n_vocab)
        graphs, eager = CudaBackend(use_graphs=True), CudaBackend(use_graphs=False)
        a, b = decode_logits(graphs, m, toks, 64), decode_logits(eager, m, toks, 64)
        for p in range(len(toks)):
            assert rel(a[p], b[p]) < 1e-6, p
        kv = graphs.new_kv(m, 64)
        graphs.logits(m, toks[:1], kv=kv)
        x = np.zeros((1, m.config.n_embd), np.float32)
        for p in range(1, 4):  # eager, then capture, then replay
            graphs.forward_layers(m, 0, m.config.n_layer, x, p, kv, x)
        assert graphs.prepare(m).graphs[(0, m.config.n_layer, 64)] is not None, "no graph was captured"


@pytest.mark.parametrize("n_ctx", [16, 5])
def test_sliding_window_matches_the_cpu(model_path, cuda, cpu: CpuBackend, rng, n_ctx: int) -> None:
    """A ring smaller than the text: a 12-token prompt (chunked at the wrap), then
    decode past several wraps, against the CPU backend on a ring of the same size."""
    with load_gguf(model_path("Q8_0")) as m:
        c = m.config
        toks = prompt(rng, 12, c.n_vocab)
        more = [int(t) for t in rng.integers(3, c.n_vocab, 3 * n_ctx)]
        results = []
        for backend in (cuda, cpu):
            kv = backend.new_kv(m, n_ctx)
            first = backend.logits(m, toks, kv=kv)
            results.append((first, decode_from(backend, m, kv, more, len(toks)), kv.n_pos, kv.held_from))
        (a0, a1, a_pos, a_held), (b0, b1, b_pos, b_held) = results
        assert a_pos == b_pos and a_held == b_held
        assert rel(a0, b0) <= FLIP
        steps = [rel(a1[i], b1[i]) for i in range(len(more))]
        # the same function, bar rounding flips: an f16 or 8-bit rounding that lands on
        # the other side of its step (the order of a float sum differs) moves a row of
        # these tiny random models by ~1e-2, and the rows after it through the ring
        assert np.median(steps) <= FLIP and max(steps) <= 5e-2, steps


def decode_from(backend, m, kv, toks: list[int], pos: int) -> np.ndarray:
    c = m.config
    x = np.empty((1, c.n_embd), np.float32)
    out = np.empty((len(toks), c.n_vocab), np.float32)
    for i, t in enumerate(toks):
        backend.forward_embedding(m, np.array([t], np.int32), x)
        backend.forward_layers(m, 0, c.n_layer, x, pos + i, kv, x)
        backend.forward_lm_head(m, x, out[i : i + 1])
    return out


def test_truncate_and_rewrite_matches_the_cpu(model_path, cuda, cpu: CpuBackend, rng) -> None:
    with load_gguf(model_path("Q4_K_M")) as m:
        c = m.config
        toks = prompt(rng, 10, c.n_vocab)
        other = [int(t) for t in rng.integers(3, c.n_vocab, 6)]
        results = []
        for backend in (cuda, cpu):
            kv = backend.new_kv(m, 32)
            backend.logits(m, toks, kv=kv)
            kv.truncate(6)
            results.append(decode_from(backend, m, kv, other, 6))
            with pytest.raises(IndexError):
                backend.forward_layers(
                    m,
                    0,
                    c.n_layer,
                    np.zeros((1, c.n_embd), np.float32),
                    3,
                    kv,
                    np.zeros((1, c.n_embd), np.float32),
                )
        assert rel(results[0], results[1]) <= FLIP


def test_kv_ring_contents_match_the_cpu(model_path, cuda, cpu: CpuBackend, rng) -> None:
    """RoPE and the append: the device ring's K and V after a prompt are the CPU
    ring's (both f16; they differ by the matmuls' activation roundings)."""
    with load_gguf(model_path("Q8_0")) as m:
        toks = prompt(rng, 9, m.config.n_vocab)
        kg, kc = cuda.new_kv(m, 12), cpu.new_kv(m, 12)
        cuda.logits(m, toks, kv=kg)
        cpu.logits(m, toks, kv=kc)
        for dev, host in ((kg.k, kc.k), (kg.v, kc.v)):
            dev = dev.get().astype(np.float64)
            assert rel(dev[:, : len(toks)], host[:, : len(toks)]) < FLIP
            assert not dev[:, len(toks) :].any()  # untouched slots stay zero


def gqa8_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny's shape with 16 query heads of 16 over 2 KV heads: TinyLlama's group of 8."""
    cfg = replace(PRESETS["tiny"].config, n_head=16, n_head_kv=2, head_dim=16, rope_dim=16)
    return make_model(tmp_path_factory.mktemp("gqa8") / "gqa8.gguf", cfg, "F16", seed=5)


def test_gqa8_model_matches_the_cpu(tmp_path_factory, cuda, cpu: CpuBackend, rng) -> None:
    with load_gguf(gqa8_path(tmp_path_factory)) as m:
        toks = prompt(rng, 11, m.config.n_vocab)
        assert rel(cuda.logits(m, toks), cpu.logits(m, toks)) <= FLIP
        assert rel(decode_logits(cuda, m, toks, 8), decode_logits(cpu, m, toks, 8)) <= FLIP  # wraps


@pytest.mark.parametrize("rope", [{"rope_freqs": (2.0,) * 32}, {"rope_scale_linear": 4.0}])
def test_rope_scaling_is_refused(tmp_path, cuda, rope: dict) -> None:
    """The CUDA kernels apply neither rope_freqs nor linear scaling: such a model is
    refused when prepared, naming what is missing, rather than run with wrong angles."""
    path = make_model(tmp_path / "rope.gguf", "tiny", "Q8_0", **rope)
    with load_gguf(path) as m, pytest.raises(ValueError, match="rope_freqs tensor.*linear RoPE scaling"):
        cuda.prepare(m)


@pytest.mark.parametrize("capacity", [64, 200, 5000])
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_attention_kernels_match_the_cpu(model_path, cuda, rng, preset: str, capacity: int) -> None:
    """attention_max, attention_weigh and attention_combine against kernels.attention on the
    same random ring contents: decode at window lengths from 1 to past a wrap (one to
    many chunks), and a causal batch."""
    import cupy

    from realm_ext.backends.cuda import DeviceKVRing

    with load_gguf(model_path("F32", preset=preset)) as m:
        rt = cuda.prepare(m)
        c = m.config
    H, Hkv, D = c.n_head, c.n_head_kv, c.head_dim
    dev, host = DeviceKVRing(1, capacity, Hkv, D), kernels.KVRing(1, capacity, Hkv, D)

    def check(pos: int, n: int) -> None:
        q = rng.standard_normal((n, H, D)).astype(np.float32)
        want = kernels.attention(host, 0, pos, q).reshape(n, H * D)
        with rt.stream:
            got = cupy.full((n, H * D), np.nan, cupy.float32)
            rt.bind(dev, pos)
            rt.attention(capacity, 0, (cupy.asarray(q.reshape(n, H * D)), np.int32(H * D)), n, got)
            assert rel(got.get(), want) < 2e-3, (pos, n)

    def append(pos: int, n: int) -> None:
        k, v = rng.standard_normal((2, n, Hkv * D)).astype(np.float32)
        with rt.stream:
            dev.append(0, pos, k, v)
        host.append(0, pos, k, v)

    append(0, 6)
    check(0, 6)  # a causal batch
    pos = 6
    for n_new in (1, 150, max(1, capacity - 160), 3, 1, 1):  # then one at a time past the wrap
        for _ in range(n_new if pos + n_new > capacity else 1):
            step = 1 if pos + n_new > capacity else n_new
            append(pos, step)
            pos += step
        check(pos - 1, 1)


def test_ops_kernels_match_the_cpu(model_path, cuda, rng) -> None:
    """rmsnorm, add + rmsnorm and SwiGLU on random rows against realm_ext.kernels."""
    import cupy

    with load_gguf(model_path("F32")) as m:
        k = cuda.prepare(m).k
    n, d, eps = 5, 777, np.float32(1e-5)
    x = rng.standard_normal((n, d)).astype(np.float32)
    b = rng.standard_normal((n, d)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    xd, bd, wd = cupy.asarray(x), cupy.asarray(b), cupy.asarray(w)
    out = cupy.full((n, d), np.nan, cupy.float32)
    k.rmsnorm((n,), (256,), (xd, wd, out, np.int32(d), eps))
    assert rel(out.get(), kernels.rmsnorm(x, w, float(eps))) < 1e-6
    k.add_rmsnorm((n,), (256,), (xd, bd, xd, wd, out, np.int32(d), eps))  # sum in place into x
    assert np.array_equal(xd.get(), x + b)
    assert rel(out.get(), kernels.rmsnorm(x + b, w, float(eps))) < 1e-6
    gate = rng.standard_normal((n, 2 * d)).astype(np.float32)  # gate and up side by side
    act = cupy.full((n, d), np.nan, cupy.float32)
    gd = cupy.asarray(gate)
    k.swiglu((-(-d // 256), n), (256,), (gd, np.int32(2 * d), gd[:, d:], np.int32(2 * d), act, np.int32(d)))
    want = np.stack([kernels.swiglu(gate[t, :d].copy(), gate[t, d:].copy()) for t in range(n)])
    assert rel(act.get(), want) < 1e-6


@pytest.mark.parametrize("per_layer", [False, True])
def test_greedy_through_the_guest_equals_the_cpu(model_path, cuda, rng, per_layer: bool) -> None:
    """The CPU backend's greedy tokens (driven directly), as text, up to its first step
    with a top-2 margin of at most GREEDY_MARGIN, are a prefix of what a guest on the
    CUDA backend streams."""
    words = "the king queen cat dog ran walked happy night light tree water sun moon".split()
    checked = 0
    with load_gguf(model_path("Q4_K_M", seed=11)) as m, Host(device="cuda") as host:
        host.load(m)
        cpu = CpuBackend()
        with host.guest(models=[m]) as g:
            for _ in range(16):
                text = " ".join(rng.choice(words, 4))
                ids = prompt_ids(g, m, text)
                want = clear_margin_prefix(cpu, m, ids, 24)
                ours = "".join(
                    g.generate(text, max_tokens=24, temperature=0.0, n_ctx=64, per_layer=per_layer)
                )
                prefix = b"".join(piece_bytes(m, t) for t in want).decode("utf-8", "replace")
                assert ours.startswith(prefix), (text, ours, prefix)
                checked += len(want)
    assert checked >= 12, f"only {checked} steps had a clear margin"


# The backends' float orders differ (attention's sums, the activations' quantization
# blocks): one activation rounded to the other side of its int8 step moves the tiny
# models' logits (range ~1) by up to ~2e-2 at once, so a top-2 margin below ~2x that
# may flip the argmax on one backend and not the other.
GREEDY_MARGIN = 3e-2


def clear_margin_prefix(backend: CpuBackend, m, ids: list[int], n: int) -> list[int]:
    """Greedy tokens up to (not including) the first step whose top-2 margin is <= GREEDY_MARGIN."""
    full = backend_greedy(backend, m, ids, n, 64)
    logits = backend.logits(m, ids + full) if full else backend.logits(m, ids)
    out = []
    for i, t in enumerate(full):
        top2 = np.sort(logits[len(ids) - 1 + i].astype(np.float64))[-2:]
        if top2[1] - top2[0] <= GREEDY_MARGIN:
            break
        out.append(t)
    return out


def test_decode_allocates_no_device_memory_per_token(model_path, cuda) -> None:
    import cupy

    with load_gguf(model_path("Q4_K_M")) as m:
        c = m.config
        kv = cuda.new_kv(m, 64)
        x = np.zeros((1, c.n_embd), np.float32)
        logits = np.empty((1, c.n_vocab), np.float32)

        def step(p: int) -> None:
            cuda.forward_embedding(m, np.array([5], np.int32), x)
            cuda.forward_layers(m, 0, c.n_layer, x, p, kv, x)
            cuda.forward_lm_head(m, x, logits)

        for p in range(3):  # eager, capture, replay
            step(p)
        pool = cupy.get_default_memory_pool()
        used = pool.used_bytes()
        for p in range(3, 20):
            step(p)
        assert pool.used_bytes() == used


def test_bad_calls_raise(model_path, cuda, cpu: CpuBackend) -> None:
    with load_gguf(model_path()) as m:
        c = m.config
        kv = cuda.new_kv(m, 8)
        x = np.zeros((2, c.n_embd), np.float32)
        check_bad_calls_raise(cuda, m, kv)
        with pytest.raises(TypeError):
            cuda.forward_layer(m, 0, x, 0, cpu.new_kv(m, 8), x)
        assert kv.n_pos == (0,) * c.n_layer  # nothing was reserved by the failed calls


def test_gpu_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """benchmarks.gpu, every measurement and the table, on the tiny preset over the
    numpy stand-in (its numbers mean nothing: this checks the benchmark's code, which
    must work the first time it meets a GPU)."""
    from benchmarks import gpu

    (tmp_path / "kernels.json").write_text('{"copy_gbs": 3000.0}')
    with emulated_cuda():
        res = gpu.run(True, tmp_path / "kernels.json", tmp_path, preset="tiny", n_decode=4, n_prefill=16)
    for key in (
        "decode_direct_tok_s",
        "decode_guest_layers_tok_s",
        "decode_guest_per_layer_tok_s",
        "prefill_tok_s",
    ):
        assert res[key] > 0, key
    with load_gguf(res["model"]["path"]) as m:  # every layer matrix and the LM head, once
        want = sum(t.nbytes for t in m.tensors.values() if t.name.startswith("blk.") and len(t.shape) == 2)
        assert res["weight_bytes_per_token"] == want + m.tensor("output.weight").nbytes
    assert res["llama_cpp_reference"]["measured_in_this_run"] is False
    table = gpu.table(res)
    assert "numpy stand-in" in table and "NOT measured here" in table


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present")
def test_cli_device_cuda_without_a_gpu(model_path) -> None:
    from click.testing import CliRunner

    from realm_ext.cli import main

    r = CliRunner().invoke(main, ["generate", "--model", str(model_path()), "-p", "x", "--device", "cuda"])
    assert r.exit_code == 1 and "device 'cuda' is not available" in r.output, r.output
