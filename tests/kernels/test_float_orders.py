"""The kernels' two float orders (ops.h): the AVX-512 llama.cpp build's and the AVX2
build's, each in portable C and SIMD with the same bits, against an emulation of what
that build computes (ggml's AVX2 expf, its softmax sums per 16 or 8 cells, tinyBLAS<16>
or <8> for a batch's K·Q and P·V, ggml_vec_dot_f16 for one token's, RoPE with its
compiler's fused multiply-adds), written here from ggml's source with libm's fmaf.
tests/model/test_smollm2.py, tests/model/test_gemma3.py and tests/backends/test_cpu.py
compare with llama.cpp itself."""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest

from realm_ext import kernels
from realm_ext._kernels import KVRing, attention, expf_ggml

f32 = np.float32
ORDERS = ["avx512", "avx2"]

_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
for _name, _n in (("fmaf", 3), ("expf", 1), ("cosf", 1), ("sinf", 1), ("powf", 2)):
    getattr(_libm, _name).restype = ctypes.c_float
    getattr(_libm, _name).argtypes = [ctypes.c_float] * _n


def fmaf(a, b, c) -> np.float32:
    return f32(_libm.fmaf(float(a), float(b), float(c)))


def bits(x) -> int:
    return int(np.asarray(x, f32).view(np.uint32))


def from_bits(u: int) -> np.float32:
    return np.array([u & 0xFFFFFFFF], np.uint32).view(f32)[0]


def expf_avx2_build(x: float) -> np.float32:
    """ggml_v_expf of an AVX2 build (vec.h), one lane."""
    x = f32(x)
    z = fmaf(x, float.fromhex("0x1.715476p+0"), float.fromhex("0x1.8p23"))
    n = f32(z - f32(float.fromhex("0x1.8p23")))
    b = fmaf(-n, float.fromhex("0x1.7f7d1cp-20"), fmaf(-n, float.fromhex("0x1.62e4p-1"), x))
    e = (bits(z) << 23) & 0xFFFFFFFF
    k = from_bits(e + 0x3F800000)
    u = f32(b * b)
    hi = fmaf(
        fmaf(float.fromhex("0x1.0e4020p-7"), b, float.fromhex("0x1.573e2ep-5")),
        u,
        fmaf(float.fromhex("0x1.555e66p-3"), b, float.fromhex("0x1.fffdb6p-2")),
    )
    j = fmaf(hi, u, f32(f32(float.fromhex("0x1.ffffecp-1")) * b))
    if not abs(n) > 126:
        return fmaf(j, k, k)
    g = 0x82000000 if n <= 0 else 0
    s1, s2 = from_bits(g + 0x7F000000), from_bits(e - g)
    with np.errstate(over="ignore", under="ignore"):
        if abs(n) > 192:
            return f32(s1 * s1)
        return f32(fmaf(s2, j, s2) * s1)


def each_isa(fn):
    """fn() under every ISA this CPU has, portable first: {isa: result}."""
    out = {}
    for isa in ("scalar", "avx2", "avx512"):
        try:
            if kernels.set_isa(isa) == isa:
                out[isa] = fn()
        finally:
            kernels.set_isa(None)
    return out


def test_the_cpu_picks_the_order(float_order) -> None:
    mine = "avx2" if kernels.cpu_isa() == "avx2" else "avx512"
    assert kernels.float_order() == mine
    for name in ORDERS:
        assert float_order(name) == name == kernels.float_order()
    assert float_order(None) == mine
    with pytest.raises(ValueError, match="unknown float order"):
        kernels.set_float_order("neon")


def special_inputs(rng) -> np.ndarray:
    """the softmax's and SiLU's range, the slow lanes (2^n not normal: subnormal results,
    overflow), and infinities / NaN, in shuffled order so every vector mixes them"""
    x = np.concatenate(
        [
            rng.uniform(-87, 88, 20_000),
            rng.uniform(-110, -86, 2_000),
            rng.uniform(87, 95, 500),
            [0.0, -0.0, -np.inf, np.inf, np.nan, -200.0, 200.0, -87.33655, -103.97, 88.72284],
        ]
    ).astype(f32)
    return rng.permutation(x)


@pytest.mark.parametrize("order", ORDERS)
def test_expf_scalar_and_simd_agree(rng, float_order, order: str) -> None:
    float_order(order)
    x = special_inputs(rng)
    outs = each_isa(lambda: expf_ggml(x))
    for isa, out in outs.items():
        np.testing.assert_array_equal(out, outs["scalar"], err_msg=isa)
    want = np.exp(x.astype(np.float64))
    normal = (x > -87) & (x < 88)
    ulp = np.spacing(want[normal].astype(f32)).astype(np.float64)
    assert np.max(np.abs(outs["scalar"][normal] - want[normal]) / ulp) <= 3.0
    assert expf_ggml(np.array([-200.0, -np.inf, 200.0, np.inf], f32)).tolist() == [0.0, 0.0, np.inf, np.inf]


def test_expf_avx2_is_the_avx2_builds(rng, float_order) -> None:
    float_order("avx2")
    x = special_inputs(rng)[:3000]
    got = expf_ggml(x)
    want = np.array([expf_avx2_build(v) for v in x], f32)
    np.testing.assert_array_equal(got, want)
    float_order("avx512")  # the other build's formula rounds differently now and then
    assert not np.array_equal(expf_ggml(x), want)


@pytest.mark.parametrize("order", ORDERS)
def test_swiglu_lanes_and_tail(rng, float_order, order: str) -> None:
    """ggml's vector lanes (16 or 8 a step) take its expf, the n % lanes left libm's."""
    float_order(order)
    lanes = 8 if order == "avx2" else 16
    n = 1020  # 1020 % 16 = 12, 1020 % 8 = 4
    gate = rng.normal(0, 4, n).astype(f32)
    up = rng.normal(0, 1, n).astype(f32)
    e = expf_ggml(f32(0) - gate)
    tail = n - n % lanes
    e[tail:] = [_libm.expf(float(-g)) for g in gate[tail:]]
    want = gate / (f32(1) + e) * up
    for isa, out in each_isa(lambda: kernels.swiglu(gate, up)).items():
        np.testing.assert_array_equal(out, want, err_msg=isa)


@pytest.mark.parametrize("order", ORDERS)
def test_rope_rotation_per_order(rng, float_order, order: str) -> None:
    float_order(order)
    n, h, hd, base = 5, 3, 64, 100000.0
    x = rng.normal(0, 2, (n, h, hd)).astype(f32)
    pos = np.array([0, 1, 7, 300, 5000], np.int64)
    got = kernels.rope(x.copy(), pos, hd, base)
    theta_scale = f32(_libm.powf(base, float(f32(-2.0) / f32(hd))))
    want = x.copy()
    for t, p in enumerate(pos):
        theta = f32(p)
        for i in range(0, hd, 2):
            c, s = f32(_libm.cosf(float(theta))), f32(_libm.sinf(float(theta)))
            x0, x1 = x[t, :, i], x[t, :, i + 1]
            # both builds' compilers contract the rotation (a product fused with the sum)
            want[t, :, i] = [fmaf(a, c, -f32(b * s)) for a, b in zip(x0, x1, strict=True)]
            want[t, :, i + 1] = [fmaf(a, s, f32(b * c)) for a, b in zip(x0, x1, strict=True)]
            theta = f32(theta * theta_scale)
    np.testing.assert_array_equal(got, want)


# -- attention in each build's order --------------------------------------------------


def halves(a: np.ndarray) -> np.float32:
    """A horizontal sum by halves (upper half onto the lower, again, ...): tinyBLAS's hsum
    of a ymm register (8 lanes) and _mm512_reduce_add_ps (16)."""
    while a.size > 1:
        a = a[a.size // 2 :] + a[: a.size // 2]
    return a[0]


def reduce_vec_dot(a: np.ndarray, lanes: int) -> np.float32:
    """GGML_F32x8_REDUCE / GGML_F32x16_REDUCE of 4 accumulators of `lanes` (a[lanes m + l]):
    accumulators (0+2) + (1+3), then the register: two horizontal adds (8 lanes) or by
    halves (16)."""
    s = a.reshape(4, lanes)
    x = (s[0] + s[2]) + (s[1] + s[3])
    if lanes == 16:
        return halves(x)
    t = x[0:4] + x[4:8]
    return (t[0] + t[1]) + (t[2] + t[3])


def dot_tinyblas(a: np.ndarray, b: np.ndarray, lanes: int) -> np.float32:
    acc = np.zeros(lanes, f32)
    for i in range(0, a.size, lanes):
        acc = acc + a[i : i + lanes] * b[i : i + lanes]
    return halves(acc)


def dot_vec_f16(a: np.ndarray, b: np.ndarray, lanes: int) -> np.float32:
    """ggml_vec_dot_f16: 4 accumulators of `lanes` over steps of 4 lanes, the rest in double."""
    step = 4 * lanes
    np_ = a.size - a.size % step
    acc = np.zeros(step, f32)
    for i in range(0, np_, step):
        acc = acc + a[i : i + step] * b[i : i + step]
    total = float(reduce_vec_dot(acc, lanes))
    for i in range(np_, a.size):
        total += float(a[i] * b[i])
    return f32(total)


def build_attention(q, k_hist, v_hist, pos: int, batch: bool, order: str) -> np.ndarray:
    """llama.cpp's AVX-512 (16 lanes) or AVX2 (8) build, no flash attention: kq = K·Q
    (tinyBLAS for a batch when head_dim is a multiple of the lanes, else vec_dot_f16),
    softmax over 256 cells (sums per `lanes` cells, ggml's expf), P rounded to f16,
    kqv = V·P over the cells (tinyBLAS for a batch, vec_dot_f16 for one token)."""
    lanes = 16 if order == "avx512" else 8
    n_tokens, n_head, hd = q.shape
    group = n_head // k_hist.shape[1]
    n_kv = 256
    q16, k16, v16 = (x.astype(np.float16).astype(f32) for x in (q, k_hist, v_hist))
    k_batch, v_batch = batch and hd % lanes == 0, batch and hd % 4 == 0
    scale = f32(1) / np.sqrt(f32(hd))
    out = np.zeros((n_tokens, n_head, hd), f32)
    for t in range(n_tokens):
        p = pos + t
        for h in range(n_head):
            s = np.full(n_kv, -np.inf, f32)
            for j in range(p + 1):
                a, b = q16[t, h], k16[j, h // group]
                s[j] = (dot_tinyblas(a, b, lanes) if k_batch else dot_vec_f16(a, b, lanes)) * scale
            e = expf_ggml(np.ascontiguousarray(s - s.max(), f32))
            total = sum(float(halves(e[i : i + lanes])) for i in range(0, n_kv, lanes))
            prob = (e * f32(1.0 / total)).astype(np.float16).astype(f32)
            v = np.zeros((n_kv, hd), f32)
            v[: p + 1] = v16[: p + 1, h // group]
            vdot = dot_tinyblas if v_batch else dot_vec_f16
            out[t, h] = [vdot(prob, np.ascontiguousarray(v[:, d]), lanes) for d in range(hd)]
    return out


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("head_dim", [64, 48, 20])
def test_attention_is_the_builds(rng, float_order, order: str, head_dim: int) -> None:
    """A batch of 11 then two tokens one at a time (the decode order); head_dim 48 has a
    vec_dot tail (48 % 32 and 48 % 64) and takes vec_dot for a batch's K·Q on AVX-512
    (48 % 16), 20 takes vec_dot for a batch's K·Q in both (20 % 8)."""
    float_order(order)
    n_head, n_head_kv = 4, 2
    kv = KVRing(1, 64, n_head_kv, head_dim)
    k = (rng.standard_normal((13, n_head_kv, head_dim)) * 3).astype(f32)
    v = rng.standard_normal((13, n_head_kv, head_dim)).astype(f32)
    q = rng.standard_normal((13, n_head, head_dim)).astype(f32)
    for pos, n in [(0, 11), (11, 1), (12, 1)]:
        kv.append(0, pos, k[pos : pos + n].reshape(n, -1), v[pos : pos + n].reshape(n, -1))
        want = build_attention(q[pos : pos + n], k, v, pos, batch=n > 1, order=order)
        outs = each_isa(lambda pos=pos, n=n: attention(kv, 0, pos, q[pos : pos + n], n_threads=2))
        for isa, got in outs.items():
            np.testing.assert_array_equal(got, want, err_msg=f"{isa} at {pos}")
