"""attention() over a KVRing against float64 references written here (csrc/cpu/attention.c).

Two references, both from the K/V rows as appended (not from the ring's storage):
- `emulated`: ggml's CPU steps (q, K, V and the probabilities rounded to f16, f32
  scores, ggml's expf, sums of 16 (8 in the AVX2 float order) in float then in
  double). With q and K on a 1/16
  grid the f32 dot products are exact in any order, so the kernel must agree to f32
  rounding of its output sums. The exponentials come from the kernels' own expf_ggml,
  which test_expf_ggml checks against float64 on its own.
- `plain`: softmax attention in float64 with no rounding at all: the kernel is an f16
  computation, so it agrees to about 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest

from realm_ext import kernels
from realm_ext._kernels import KVRing, attention, expf_ggml


def grid(rng: np.random.Generator, shape) -> np.ndarray:
    """Multiples of 1/16 in [-2, 2], nudged by < 2^-13 relative (f16 rounding undoes it)."""
    g = rng.integers(-32, 33, size=shape) / 16
    return (g * (1 + rng.uniform(-1, 1, size=shape) * 2**-13)).astype(np.float32)


def normal(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def sum_by_lanes(e: np.ndarray, first: int, lanes: int | None = None) -> float:
    """ggml's softmax sum: e[j] sits in cache cell first + j; per `lanes` cells (16, or 8
    in the AVX2 float order; aligned at multiples of lanes, empty cells 0) a horizontal
    float reduction, those added in double."""
    if lanes is None:
        lanes = 8 if kernels.float_order() == "avx2" else 16
    cells = np.zeros(-(-(first + e.size) // lanes) * lanes, np.float32)
    cells[first : first + e.size] = e
    total = 0.0
    for v in cells.reshape(-1, lanes)[first // lanes :]:
        t8 = v[8:] + v[:8] if lanes == 16 else v
        t4 = t8[4:] + t8[:4]
        total += float((t4[0] + t4[2]) + (t4[1] + t4[3]))
    return total


def reference(q, k_hist, v_hist, pos, capacity, *, emulate):
    """q (n_tokens, n_head, hd) at positions pos..; k_hist, v_hist (n_pos, n_head_kv, hd) f32."""
    n_tokens, n_head, hd = q.shape
    group = n_head // k_hist.shape[1]
    if emulate:
        q, k_hist, v_hist = (x.astype(np.float16) for x in (q, k_hist, v_hist))
    scale = np.float32(1) / np.sqrt(np.float32(hd))
    out = np.zeros((n_tokens, n_head, hd))
    for t in range(n_tokens):
        p = pos + t
        window = slice(max(0, p - capacity + 1), p + 1)
        for h in range(n_head):
            k = k_hist[window, h // group].astype(np.float64)
            v = v_hist[window, h // group].astype(np.float64)
            s = k @ q[t, h].astype(np.float64)
            if emulate:  # the f32 steps of ggml's softmax; s is exact here (grid inputs)
                s = s.astype(np.float32) * scale
                e = expf_ggml(np.ascontiguousarray(s - s.max(), np.float32))
                prob = (e * np.float32(1.0 / sum_by_lanes(e, window.start))).astype(np.float16)
            else:
                e = np.exp(s / np.sqrt(hd) - (s / np.sqrt(hd)).max())
                prob = e / e.sum()
            out[t, h] = prob.astype(np.float64) @ v
    return out


def run(rng, make, *, n_head, n_head_kv, head_dim, chunks, capacity=128, n_threads=2):
    """Append the chunks' K/V to layer 1 of a fresh ring and attend each chunk.

    Returns [(pos, q, out)] per chunk and the appended K and V histories."""
    kv = KVRing(2, capacity, n_head_kv, head_dim)
    k_hist, v_hist, results = [], [], []
    pos = 0
    for n in chunks:
        k_hist.append(make(rng, (n, n_head_kv, head_dim)))
        v_hist.append(normal(rng, (n, n_head_kv, head_dim)))
        kv.append(1, pos, k_hist[-1].reshape(n, -1), v_hist[-1].reshape(n, -1))
        q = make(rng, (n, n_head, head_dim))
        results.append((pos, q, attention(kv, 1, pos, q, n_threads=n_threads)))
        pos += n
    return kv, results, np.concatenate(k_hist), np.concatenate(v_hist)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


SHAPES = [(4, 1, 64), (4, 2, 48), (4, 4, 64), (8, 2, 64), (8, 1, 48), (8, 4, 48)]
CHUNKS = [[1], [7], [64], [10, 1, 1], [5, 7, 64]]  # prefills, decode steps after a prefill


@pytest.mark.parametrize("n_head,n_head_kv,head_dim", SHAPES)
@pytest.mark.parametrize("chunks", CHUNKS, ids=str)
def test_matches_ggml_emulation(rng, n_head, n_head_kv, head_dim, chunks):
    kv, results, k_hist, v_hist = run(
        rng, grid, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, chunks=chunks
    )
    for pos, q, out in results:
        want = reference(q, k_hist, v_hist, pos, kv.capacity, emulate=True)
        assert rel_err(out, want) < 1e-6, f"chunk at {pos}"


@pytest.mark.parametrize("n_head,n_head_kv,head_dim", SHAPES)
@pytest.mark.parametrize("chunks", CHUNKS, ids=str)
def test_near_plain_float64(rng, n_head, n_head_kv, head_dim, chunks):
    kv, results, k_hist, v_hist = run(
        rng, normal, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, chunks=chunks
    )
    for pos, q, out in results:
        want = reference(q, k_hist, v_hist, pos, kv.capacity, emulate=False)
        assert rel_err(out, want) < 1e-2, f"chunk at {pos}"
        rel_l2 = np.linalg.norm(out - want) / np.linalg.norm(want)
        assert rel_l2 < 3e-3, f"chunk at {pos}"


@pytest.mark.parametrize("make", [grid, normal])
def test_wrapped_ring(rng, make):
    # capacity 16: a prefill of 10, one of 6 (just fills the ring), then 40 decode steps
    capacity = 16
    kv, results, k_hist, v_hist = run(
        rng, make, n_head=8, n_head_kv=2, head_dim=48, chunks=[10, 6] + [1] * 40, capacity=capacity
    )
    assert kv.n_pos[1] == 56 and kv.held_from[1] == 40
    for pos, q, out in results:
        if make is grid:  # (normal q and K: the emulation is exact only to f32 sums of scores)
            emulated = reference(q, k_hist, v_hist, pos, capacity, emulate=True)
            assert rel_err(out, emulated) < 1e-6, f"token at {pos}"
        plain = reference(q, k_hist, v_hist, pos, capacity, emulate=False)
        assert rel_err(out, plain) < 1e-2, f"token at {pos}"


def test_batch_across_the_wrap_is_refused(rng):
    kv = KVRing(1, 8, 1, 16)
    kv.append(0, 0, normal(rng, (6, 16)), normal(rng, (6, 16)))
    kv.append(0, 6, normal(rng, (3, 16)), normal(rng, (3, 16)))  # 8 overwrote 0
    q = normal(rng, (3, 2, 16))
    # position 6 needs 0..6, but position 8 overwrote slot 0; 8 alone (window 1..8) is fine
    with pytest.raises(IndexError, match="holds positions 1 .. 8"):
        attention(kv, 0, 6, q)
    attention(kv, 0, 8, q[2:])


@pytest.mark.parametrize("make", [grid, normal])
def test_thread_counts_agree(rng, make):
    kv, results, _, _ = run(rng, make, n_head=8, n_head_kv=2, head_dim=64, chunks=[64])
    _, q, out2 = results[0]
    for n_threads in (1, 3, 0):
        assert np.array_equal(attention(kv, 1, 0, q, n_threads=n_threads), out2)


def test_out_argument(rng):
    kv, results, _, _ = run(rng, normal, n_head=4, n_head_kv=2, head_dim=48, chunks=[5])
    _, q, want = results[0]
    out = np.full_like(q, np.nan)
    assert attention(kv, 1, 0, q, out=out) is out
    assert np.array_equal(out, want)


def test_bad_inputs_raise(rng):
    kv = KVRing(2, 8, 2, 16)
    kv.append(0, 0, normal(rng, (3, 32)), normal(rng, (3, 32)))
    q = normal(rng, (3, 4, 16))
    attention(kv, 0, 0, q)  # the good call
    with pytest.raises(TypeError):
        attention(kv, 0, 0, q.astype(np.float64))
    with pytest.raises(TypeError):
        attention(kv, 0, 0, q.tolist())
    with pytest.raises(TypeError):
        attention(None, 0, 0, q)
    with pytest.raises(ValueError):
        attention(kv, 0, 0, normal(rng, (3, 4, 32))[:, :, ::2])  # not contiguous
    with pytest.raises(ValueError):
        attention(kv, 0, 0, q[:, :, :8].copy())  # head_dim
    with pytest.raises(ValueError):
        attention(kv, 0, 0, q[:, :3].copy())  # 3 heads over 2 KV heads
    with pytest.raises(ValueError):
        attention(kv, 0, 0, q[:0])  # no tokens
    with pytest.raises(ValueError):
        attention(kv, 0, 0, q.reshape(3, 64))
    with pytest.raises(ValueError):
        attention(kv, 0, 0, q, out=np.empty((3, 4, 15), np.float32))
    with pytest.raises(TypeError):
        attention(kv, 0, 0, q, out=np.empty((3, 4, 16), np.float64))
    with pytest.raises(ValueError, match="overlap"):
        attention(kv, 0, 0, q, out=q)
    with pytest.raises(ValueError, match="overlap"):
        attention(kv, 0, 0, q, out=kv.k.view(np.float32).reshape(-1)[:192].reshape(3, 4, 16))
    read_only = np.empty_like(q)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        attention(kv, 0, 0, q, out=read_only)
    with pytest.raises(ValueError):
        attention(kv, 0, 0, q, n_threads=-1)
    with pytest.raises(IndexError, match="layer 2"):
        attention(kv, 2, 0, q)
    with pytest.raises(IndexError, match="layer -1"):
        attention(kv, -1, 0, q)
    with pytest.raises(IndexError, match="not all appended"):
        attention(kv, 1, 0, q)  # nothing in layer 1
    with pytest.raises(IndexError, match="not all appended"):
        attention(kv, 0, 1, q)  # positions 1..3, n_pos 3
    with pytest.raises(IndexError, match="not all appended"):
        attention(kv, 0, -1, q[:1])


def test_expf_ggml(rng) -> None:
    """ggml's expf (the kernels' softmax and SiLU use it): within 3 ulp of e^x over the
    range a softmax and a SiLU see, 0 far below it, infinity above."""
    x = np.concatenate([rng.uniform(-87, 88, 100_000), rng.uniform(-1, 1, 10_000), [0.0, -0.0]]).astype(
        np.float32
    )
    got = expf_ggml(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= 3.0  # measured: 2.2
    assert expf_ggml(np.array([0.0], np.float32))[0] == 1.0
    assert expf_ggml(np.array([-200.0, -np.inf], np.float32)).tolist() == [0.0, 0.0]
    assert expf_ggml(np.array([200.0, np.inf], np.float32)).tolist() == [np.inf, np.inf]


def test_vectorized_expf_ggml_is_the_scalar_one(rng) -> None:
    """SwiGLU runs ggml's expf 8 lanes at a time (and the scalar one for lanes whose
    2^n is not a normal float): bit for bit the scalar function, over the whole range."""
    from realm_ext._kernels import swiglu

    gate = np.concatenate([rng.uniform(-100, 100, 4000), rng.normal(0, 3, 4000)]).astype(np.float32)
    gate[rng.integers(0, gate.size, 50)] = rng.choice([0.0, -0.0, 87.5, -88.7, 150.0], 50)
    up = rng.normal(0, 1, gate.size).astype(np.float32)
    want = gate / (np.float32(1) + expf_ggml(np.float32(0) - gate)) * up
    np.testing.assert_array_equal(swiglu(gate, up), want)


@pytest.mark.parametrize("order", ["avx512", "avx2"])
@pytest.mark.parametrize("head_dim", [64, 48, 20])
def test_every_isa_gives_the_same_bits(rng, head_dim, order, float_order):
    """attend_group is compiled per ISA and float order (csrc/cpu/attention.c): the
    portable build, forced through set_isa, must give the SIMD builds' bits in each order,
    across a wrap, for a batch and for one token, and with head_dim tails that are not
    whole vectors."""
    float_order(order)
    kv = KVRing(1, 24, 2, head_dim)
    outs = {}
    for pos, n in [(0, 17), (17, 7), (24, 1), (25, 1), (26, 1)]:
        k, v = normal(rng, (n, 2 * head_dim)), normal(rng, (n, 2 * head_dim))
        kv.append(0, pos, k * 4, v)  # * 4: scores spread enough that the softmax rounds
        q = normal(rng, (n, 8, head_dim))
        for isa in ("scalar", "avx2", "avx512"):
            try:
                if kernels.set_isa(isa) != isa:
                    continue  # this CPU has no such ISA
                outs[isa] = attention(kv, 0, pos, q, n_threads=2)
            finally:
                kernels.set_isa(None)
        assert len(outs) >= 1
        for isa, out in outs.items():
            assert np.array_equal(out, outs["scalar"]), f"{isa} at position {pos}"
        want = reference(q, *_history(kv, pos + n), pos, kv.capacity, emulate=False)
        assert rel_err(outs["scalar"], want) < 1e-2
        outs.clear()


def _history(kv: KVRing, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """K and V of positions 0 .. n_pos-1 as f32 (n_pos, n_head_kv, hd), from the ring's
    storage where still held (older positions are zeros: outside every window asked)."""
    k = np.zeros((n_pos, kv.n_head_kv, kv.head_dim), np.float32)
    v = np.zeros_like(k)
    for p in range(max(0, n_pos - kv.capacity), n_pos):
        k[p] = kv.k[0, kv.slot(p)].astype(np.float32)
        v[p] = kv.v[0, kv.slot(p)].astype(np.float32)
    return k, v
