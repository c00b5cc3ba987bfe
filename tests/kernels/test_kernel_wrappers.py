"""The Cython wrappers check every size before a pointer reaches C.

For each public wrapper of realm_ext._kernels (and its .pxi files), realm_ext.kernels
and realm_ext.quant: wrong dtypes, non-contiguous or read-only arrays, wrong lengths and
shapes, negative or huge sizes and None each raise a Python exception, and an output
array passed in is written inside its bounds only: it lies in a larger buffer whose guard
regions, before and after it, must come back untouched (both when the call fails and
when it succeeds).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import gguf
import numpy as np
import pytest

from realm_ext import _kernels, kernels, quant
from realm_ext.backends.cpu import CpuBackend, runtime_args
from realm_ext.model import load_gguf

T = gguf.GGMLQuantizationType
ERRORS = (TypeError, ValueError, IndexError, MemoryError, OverflowError, KeyError)
SENTINEL = np.float32(-12345.0)
GUARD = 64  # elements of guard on each side


class Guarded:
    """A C-contiguous array of `shape` inside a buffer with GUARD elements either side."""

    def __init__(self, shape: tuple[int, ...], dtype=np.float32, fill=SENTINEL):
        n = int(np.prod(shape))
        self.buf = np.full(n + 2 * GUARD, fill, dtype=dtype)
        self.fill = self.buf[0].copy()
        self.a = self.buf[GUARD : GUARD + n].reshape(shape)

    def guards_intact(self) -> bool:
        return bool((self.buf[:GUARD] == self.fill).all() and (self.buf[-GUARD:] == self.fill).all())

    def untouched(self) -> bool:
        return bool((self.buf == self.fill).all())


def raises(fn: Callable[[], object], *outs: Guarded) -> BaseException:
    """fn() raises a Python error and leaves every output (and its guards) as it was."""
    try:
        fn()
    except ERRORS as e:
        err = e
    else:
        pytest.fail(f"no error from {_where(fn)}")
    for g in outs:
        assert g.untouched(), f"an output was written by a failing call: {_where(fn)}"
    return err


def _where(fn: Callable[[], object]) -> str:
    """The source line of a failing case (the lambda, or the lambda it calls)."""
    inner = [cell.cell_contents for cell in fn.__closure__ or ()] + list(fn.__defaults__ or ())
    for c in (fn, *inner):
        if callable(c) and getattr(c, "__name__", "") == "<lambda>" and c.__code__.co_filename == __file__:
            try:
                src = inspect.getsourcelines(c)
                if "case(" not in src[0][0]:
                    return f"line {src[1]}: {src[0][0].strip()}"
            except OSError:
                pass
    return repr(fn)


def f32(*shape: int, rng: np.random.Generator | None = None) -> np.ndarray:
    rng = rng or np.random.default_rng(0)
    return rng.standard_normal(shape).astype(np.float32)


def noncontig(a: np.ndarray) -> np.ndarray:
    """The same shape as a, not C-contiguous (every other element of a buffer twice as large)."""
    big = np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), a.dtype)
    v = big[..., ::2]
    v[...] = a
    assert not v.flags.c_contiguous
    return v


def readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


# ---- block sizes, dequantize_rows, quantize_rows_k ---------------------------------------


def test_block_sizes_reject_unknown_types() -> None:
    assert _kernels.block_elems(int(T.Q4_0)) == 32 and _kernels.block_bytes(int(T.Q4_0)) == 18
    for bad in (-1, 4, 99, 2**31 - 1):
        assert _kernels.block_elems(bad) == 0 and _kernels.block_bytes(bad) == 0
    for bad in (None, "Q4_0", 2**40):
        raises(lambda bad=bad: _kernels.block_elems(bad))
        raises(lambda bad=bad: _kernels.block_bytes(bad))


def test_dequantize_rows_checks_every_size() -> None:
    raw = quant.quantize(f32(3, 64), T.Q4_0)  # (3, 36)
    good = Guarded((3, 64))
    _kernels.dequantize_rows(raw, int(T.Q4_0), good.a)
    assert good.guards_intact() and (good.a != SENTINEL).all()
    np.testing.assert_array_equal(good.a, quant.dequantize(raw, T.Q4_0, (3, 64)))
    cases = [
        lambda o: _kernels.dequantize_rows(raw[:2], int(T.Q4_0), o),  # too few source rows
        lambda o: _kernels.dequantize_rows(raw[:, :18], int(T.Q4_0), o),  # short rows
        lambda o: _kernels.dequantize_rows(np.zeros((3, 37), np.uint8), int(T.Q4_0), o),
        lambda o: _kernels.dequantize_rows(raw, int(T.Q8_0), o),  # rows of another type's size
        lambda o: _kernels.dequantize_rows(raw, 99, o),  # unknown type
        lambda o: _kernels.dequantize_rows(raw, -1, o),
        lambda o: _kernels.dequantize_rows(raw, 2**40, o),
        lambda o: _kernels.dequantize_rows(raw.view(np.int8), int(T.Q4_0), o),  # dtype
        lambda o: _kernels.dequantize_rows(noncontig(raw), int(T.Q4_0), o),
        lambda o: _kernels.dequantize_rows(None, int(T.Q4_0), o),
        lambda o: _kernels.dequantize_rows(raw.reshape(-1), int(T.Q4_0), o),  # 1-D
        lambda o: _kernels.dequantize_rows(raw, int(T.Q4_0), None),
    ]
    for case in cases:
        out = Guarded((3, 64))
        raises(lambda case=case, out=out: case(out.a), out)
    for bad_out in (
        Guarded((3, 65)),  # not whole blocks
        Guarded((3, 32)),
        Guarded((4, 64)),
        Guarded((3, 64), np.float64, -1.0),
    ):
        raises(lambda o=bad_out: _kernels.dequantize_rows(raw, int(T.Q4_0), o.a), bad_out)
    out = Guarded((3, 128))
    raises(lambda: _kernels.dequantize_rows(raw, int(T.Q4_0), out.a[:, ::2]), out)  # non-contiguous out
    ro = readonly(np.zeros((3, 64), np.float32))
    raises(lambda: _kernels.dequantize_rows(raw, int(T.Q4_0), ro))


def test_quantize_rows_k_checks_every_size() -> None:
    x = f32(2, 256)
    good = Guarded((2, 144), np.uint8, 0xA5)  # Q4_K: 144 bytes per 256
    _kernels.quantize_rows_k(x, int(T.Q4_K), good.a)
    assert good.guards_intact()
    np.testing.assert_array_equal(good.a, quant.quantize(x, T.Q4_K))
    for args in [
        (x, int(T.Q4_K), (2, 143)),
        (x, int(T.Q4_K), (1, 144)),
        (x, int(T.Q4_K), (3, 144)),
        (x[:, :255].copy(), int(T.Q4_K), (2, 144)),  # not whole blocks
        (x, 99, (2, 144)),
        (x, int(T.Q4_0), (2, 144)),  # not a K-quant: no encoder here
        (x.astype(np.float64), int(T.Q4_K), (2, 144)),
        (noncontig(x), int(T.Q4_K), (2, 144)),
        (None, int(T.Q4_K), (2, 144)),
    ]:
        src, t, shape = args
        out = Guarded(shape, np.uint8, 0xA5)
        raises(lambda src=src, t=t, out=out: _kernels.quantize_rows_k(src, t, out.a), out)
    raises(lambda: _kernels.quantize_rows_k(x, int(T.Q4_K), None))
    raises(lambda: _kernels.quantize_rows_k(x, int(T.Q4_K), readonly(np.zeros((2, 144), np.uint8))))


# ---- matmul, quantize_acts, vec_dot_type, ISA --------------------------------------------


def test_matmul_checks_every_size() -> None:
    w = quant.quantize(f32(8, 64), T.Q8_0)  # (8, 68)
    x = f32(3, 64, rng=np.random.default_rng(1))
    good = Guarded((3, 8))
    y = kernels.matmul(w, int(T.Q8_0), x, good.a, n_threads=2)
    assert y is not None and good.guards_intact() and (good.a != SENTINEL).all()
    np.testing.assert_allclose(good.a, x @ quant.dequantize(w, T.Q8_0, (8, 64)).T, rtol=0.05, atol=0.05)
    cases = [
        lambda o: kernels.matmul(w, int(T.Q8_0), x[:, :32].copy(), o),  # x rows too short
        lambda o: kernels.matmul(w[:, :34].copy(), int(T.Q8_0), x, o),  # weight rows too short
        lambda o: kernels.matmul(w, int(T.Q4_0), x, o),  # another type's row size
        lambda o: kernels.matmul(w, 99, x, o),
        lambda o: kernels.matmul(w, int(T.Q8_0), x.astype(np.float64), o),
        lambda o: kernels.matmul(w, int(T.Q8_0), noncontig(x), o),
        lambda o: kernels.matmul(noncontig(w), int(T.Q8_0), x, o),
        lambda o: kernels.matmul(w.view(np.int8), int(T.Q8_0), x, o),
        lambda o: kernels.matmul(None, int(T.Q8_0), x, o),
        lambda o: kernels.matmul(w, int(T.Q8_0), None, o),
        lambda o: kernels.matmul(w, int(T.Q8_0), x.reshape(-1), o),
        lambda o: kernels.matmul(w, int(T.Q8_0), x, o, n_threads=-1),
        lambda o: kernels.matmul(w, int(T.Q8_0), x, o, n_threads=None),
    ]
    for case in cases:
        out = Guarded((3, 8))
        raises(lambda case=case, out=out: case(out.a), out)
    for shape in ((3, 7), (2, 8), (4, 8), (8, 3)):
        out = Guarded(shape)
        raises(lambda out=out: kernels.matmul(w, int(T.Q8_0), x, out.a), out)
    out = Guarded((3, 16))
    raises(lambda: kernels.matmul(w, int(T.Q8_0), x, out.a[:, ::2]), out)
    raises(lambda: kernels.matmul(w, int(T.Q8_0), x, readonly(np.zeros((3, 8), np.float32))))
    raises(lambda: kernels.matmul(w, int(T.Q8_0), x, np.zeros((3, 8), np.float64)))
    # a huge thread count is clamped, not handed to OpenMP
    big = Guarded((3, 8))
    kernels.matmul(w, int(T.Q8_0), x, big.a, n_threads=2**70)
    np.testing.assert_array_equal(big.a, good.a)
    assert big.guards_intact()
    # no tokens, no rows: nothing to do, nothing written
    assert kernels.matmul(w, int(T.Q8_0), np.zeros((0, 64), np.float32)).shape == (0, 8)
    assert kernels.matmul(w[:0], int(T.Q8_0), x).shape == (3, 0)


@pytest.mark.parametrize("wtype", [T.Q4_0, T.Q4_1])  # rounded to Q8_0, Q8_1
def test_quantize_acts_same_bytes_on_every_isa(wtype, rng: np.random.Generator) -> None:
    """The SIMD rounding of activations (csrc/cpu/act_quant.c) writes the scalar one's
    bytes: blocks of zeros, ties, outliers, tiny values, a NaN and infinities included."""
    if kernels.cpu_isa() == "scalar":
        pytest.skip("this CPU has no SIMD rounding to compare with the scalar one")
    x = rng.normal(0, 1, (3, 256)).astype(np.float32)
    x[0, :32] = 0.0
    x[0, 32:64] = np.arange(32, dtype=np.float32) - 15.5  # halves: ties to even
    x[1, 64:96] *= 1e-30
    x[1, 100] = 3e4
    x[2, 7] = np.nan
    x[2, 40], x[2, 41] = np.inf, -np.inf
    got = {}
    try:
        for isa in ("scalar", kernels.cpu_isa()):
            assert kernels.set_isa(isa) == isa
            got[isa] = np.asarray(kernels.quantize_acts(int(wtype), x, n_threads=2)).copy()
    finally:
        kernels.set_isa(None)
    np.testing.assert_array_equal(got["scalar"], got[kernels.cpu_isa()])


def test_quantize_acts_checks_every_size() -> None:
    x = f32(2, 64)
    q = kernels.quantize_acts(int(T.Q8_0), x, n_threads=1)
    assert q.dtype == np.uint8 and q.shape == (2, 68)
    for case in [
        lambda: kernels.quantize_acts(int(T.Q8_0), x[:, :33].copy()),  # not whole blocks
        lambda: kernels.quantize_acts(int(T.Q8_0), np.zeros((2, 0), np.float32)),
        lambda: kernels.quantize_acts(99, x),
        lambda: kernels.quantize_acts(-1, x),
        lambda: kernels.quantize_acts(int(T.Q8_0), x.astype(np.float64)),
        lambda: kernels.quantize_acts(int(T.Q8_0), noncontig(x)),
        lambda: kernels.quantize_acts(int(T.Q8_0), None),
        lambda: kernels.quantize_acts(int(T.Q8_0), x.reshape(-1)),
        lambda: kernels.quantize_acts(int(T.Q8_0), x, n_threads=-3),
        lambda: kernels.quantize_acts(int(T.Q8_0), x, n_threads="2"),
    ]:
        raises(case)
    np.testing.assert_array_equal(kernels.quantize_acts(int(T.Q8_0), x, n_threads=2**40), q)


def test_vec_dot_type_and_isa() -> None:
    assert kernels.vec_dot_type(int(T.Q4_K)) == int(T.Q8_K)
    for bad in (99, -1):
        raises(lambda bad=bad: kernels.vec_dot_type(bad))
    for bad in (None, 2**40, "Q4_K"):
        raises(lambda bad=bad: kernels.vec_dot_type(bad))
    before = kernels.active_isa()
    try:
        for bad in ("avx9000", 1, b"scalar", ""):
            raises(lambda bad=bad: kernels.set_isa(bad))
            assert kernels.active_isa() == before
        assert kernels.set_isa("scalar") == "scalar"
    finally:
        kernels.set_isa(None)
    assert kernels.active_isa() == kernels.cpu_isa()


# ---- rmsnorm, rope, swiglu ---------------------------------------------------------------


def test_rmsnorm_checks_every_size() -> None:
    x, w = f32(3, 16), f32(16, rng=np.random.default_rng(2))
    good = Guarded((3, 16))
    kernels.rmsnorm(x, w, 1e-5, good.a)
    assert good.guards_intact()
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(good.a, ref, rtol=1e-5, atol=1e-6)
    for case in [
        lambda o: kernels.rmsnorm(x, w[:15].copy(), 1e-5, o),
        lambda o: kernels.rmsnorm(x, f32(17), 1e-5, o),
        lambda o: kernels.rmsnorm(np.zeros((3, 0), np.float32), np.zeros(0, np.float32), 1e-5, o),
        lambda o: kernels.rmsnorm(x.astype(np.float64), w, 1e-5, o),
        lambda o: kernels.rmsnorm(noncontig(x), w, 1e-5, o),
        lambda o: kernels.rmsnorm(x, noncontig(w), 1e-5, o),
        lambda o: kernels.rmsnorm(None, w, 1e-5, o),
        lambda o: kernels.rmsnorm(x, None, 1e-5, o),
        lambda o: kernels.rmsnorm(x, w, None, o),
        lambda o: kernels.rmsnorm(x.reshape(-1), w, 1e-5, o),
    ]:
        out = Guarded((3, 16))
        raises(lambda case=case, out=out: case(out.a), out)
    for shape in ((3, 15), (2, 16), (4, 16), (16, 3)):
        out = Guarded(shape)
        raises(lambda out=out: kernels.rmsnorm(x, w, 1e-5, out.a), out)
    raises(lambda: kernels.rmsnorm(x, w, 1e-5, readonly(np.zeros((3, 16), np.float32))))


def test_rope_checks_every_size() -> None:
    x = Guarded((2, 3, 8))
    x.a[...] = f32(2, 3, 8)
    pos = np.array([0, 5], np.int64)
    kernels.rope(x.a, pos, 8, 10000.0)
    assert x.guards_intact()
    for case in [
        lambda a: kernels.rope(a, pos[:1].copy(), 8, 10000.0),  # one position for two tokens
        lambda a: kernels.rope(a, np.array([0, 1, 2], np.int64), 8, 10000.0),
        lambda a: kernels.rope(a, pos.astype(np.int32), 8, 10000.0),
        lambda a: kernels.rope(a, pos, 10, 10000.0),  # rope_dim > head_dim
        lambda a: kernels.rope(a, pos, 7, 10000.0),  # odd
        lambda a: kernels.rope(a, pos, 0, 10000.0),
        lambda a: kernels.rope(a, pos, -2, 10000.0),
        lambda a: kernels.rope(a, pos, 2**40, 10000.0),
        lambda a: kernels.rope(a, None, 8, 10000.0),
        lambda a: kernels.rope(a, noncontig(pos), 8, 10000.0),
        lambda a: kernels.rope(a.reshape(2, 24), pos, 8, 10000.0),
        lambda a: kernels.rope(a.astype(np.float64), pos, 8, 10000.0),
    ]:
        g = Guarded((2, 3, 8))
        raises(lambda case=case, g=g: case(g.a), g)
    raises(lambda: kernels.rope(None, pos, 8, 10000.0))
    g = Guarded((2, 3, 16))
    raises(lambda: kernels.rope(g.a[:, :, ::2], pos, 8, 10000.0), g)
    raises(lambda: kernels.rope(readonly(f32(2, 3, 8)), pos, 8, 10000.0))
    # a larger rope_dim than the C cache holds is refused, not clipped silently
    big = np.zeros((1, 1, 4096), np.float32)
    raises(lambda: kernels.rope(big, np.zeros(1, np.int64), 4096, 10000.0))


def test_swiglu_checks_every_size() -> None:
    g, u = f32(10), f32(10, rng=np.random.default_rng(3))
    out = Guarded((10,))
    kernels.swiglu(g, u, out.a)
    assert out.guards_intact()
    np.testing.assert_allclose(out.a, g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)
    for case in [
        lambda o: kernels.swiglu(g, u[:9].copy(), o),
        lambda o: kernels.swiglu(g[:9].copy(), u, o),
        lambda o: kernels.swiglu(g.astype(np.float64), u, o),
        lambda o: kernels.swiglu(noncontig(g), u, o),
        lambda o: kernels.swiglu(None, u, o),
        lambda o: kernels.swiglu(g, None, o),
        lambda o: kernels.swiglu(g.reshape(2, 5), u, o),
    ]:
        o = Guarded((10,))
        raises(lambda case=case, o=o: case(o.a), o)
    for n in (9, 11):
        o = Guarded((n,))
        raises(lambda o=o: kernels.swiglu(g, u, o.a), o)
    raises(lambda: kernels.swiglu(g, u, readonly(np.zeros(10, np.float32))))


# ---- KVRing and attention ----------------------------------------------------------------


def test_kv_ring_checks_every_argument() -> None:
    for args in [
        (0, 4, 1, 8),
        (1, -1, 1, 8),
        (1, 4, 1, 2**31),
        (1, 2**70, 1, 8),
        (None, 4, 1, 8),
        (1.5, 4, 1, 8),
        ("1", 4, 1, 8),
    ]:
        raises(lambda args=args: kernels.KVRing(*args))
    kv = kernels.KVRing(2, 4, 2, 8)
    k = f32(1, 16)
    before_k, before_v = kv.k.copy(), kv.v.copy()
    for case in [
        lambda: kv.append(0, 0, k[:, :15].copy(), k[:, :15].copy()),  # short rows
        lambda: kv.append(0, 0, k, f32(2, 16)),  # k and v differ in tokens
        lambda: kv.append(0, 0, f32(5, 16), f32(5, 16)),  # more than capacity at once
        lambda: kv.append(0, 0, np.zeros((0, 16), np.float32), np.zeros((0, 16), np.float32)),
        lambda: kv.append(0, 0, k.astype(np.float64), k),
        lambda: kv.append(0, 0, noncontig(k), k),
        lambda: kv.append(0, 0, None, k),
        lambda: kv.append(0, 0, k.reshape(-1), k.reshape(-1)),
        lambda: kv.append(2, 0, k, k),  # layer out of range
        lambda: kv.append(-1, 0, k, k),
        lambda: kv.append(2**40, 0, k, k),
        lambda: kv.append(0, 1, k, k),  # skips a position
        lambda: kv.append(0, -1, k, k),
        lambda: kv.append(0, 2**70, k, k),
        lambda: kv.append(None, 0, k, k),
        lambda: kv.truncate(-1),
        lambda: kv.truncate(None),
        lambda: kv.window_start(-1),
        lambda: kv.window_start(2**64),
        lambda: kv.slot(-1),
    ]:
        raises(case)
    np.testing.assert_array_equal(kv.k, before_k)
    np.testing.assert_array_equal(kv.v, before_v)
    assert kv.n_pos == (0, 0)
    kv.append(0, 0, k, k)
    kv.truncate(2**70)  # beyond every layer: nothing to forget
    assert kv.n_pos == (1, 0)


def test_attention_checks_every_argument() -> None:
    kv = kernels.KVRing(1, 8, 2, 8)
    kv.append(0, 0, f32(2, 16), f32(2, 16))
    q = f32(2, 4, 8)
    good = Guarded((2, 4, 8))
    kernels.attention(kv, 0, 0, q, good.a, n_threads=2)
    assert good.guards_intact() and (good.a != SENTINEL).all()
    for case in [
        lambda o: kernels.attention(kv, 0, 0, q[:, :3].copy(), o),  # 3 heads, not a multiple of 2
        lambda o: kernels.attention(kv, 0, 0, f32(2, 4, 7), o),  # head_dim
        lambda o: kernels.attention(kv, 0, 0, q.astype(np.float64), o),
        lambda o: kernels.attention(kv, 0, 0, noncontig(q), o),
        lambda o: kernels.attention(kv, 0, 0, None, o),
        lambda o: kernels.attention(kv, 0, 0, q.reshape(2, 32), o),
        lambda o: kernels.attention(kv, 0, 0, np.zeros((0, 4, 8), np.float32), o),
        lambda o: kernels.attention(kv, 1, 0, q, o),  # layer
        lambda o: kernels.attention(kv, -1, 0, q, o),
        lambda o: kernels.attention(kv, 2**40, 0, q, o),
        lambda o: kernels.attention(kv, 0, 1, q, o),  # position 2 not appended
        lambda o: kernels.attention(kv, 0, -1, q, o),
        lambda o: kernels.attention(kv, 0, 2**63 - 1, q, o),
        lambda o: kernels.attention(kv, 0, 2**70, q, o),
        lambda o: kernels.attention(None, 0, 0, q, o),
        lambda o: kernels.attention(kv, 0, 0, q, o, n_threads=-1),
    ]:
        out = Guarded((2, 4, 8))
        raises(lambda case=case, out=out: case(out.a), out)
    for shape in ((2, 4, 7), (1, 4, 8), (2, 2, 8)):
        out = Guarded(shape)
        raises(lambda out=out: kernels.attention(kv, 0, 0, q, out.a), out)
    raises(lambda: kernels.attention(kv, 0, 0, q, q))  # out overlapping q
    raises(lambda: kernels.attention(kv, 0, 0, q, readonly(np.zeros_like(q))))
    k_view = kv.k.view(np.float32).reshape(-1)[: q.size].reshape(q.shape)
    raises(lambda: kernels.attention(kv, 0, 0, q, k_view))  # out inside the ring's storage
    big = Guarded((2, 4, 8))
    kernels.attention(kv, 0, 0, q, big.a, n_threads=2**31 - 1)
    np.testing.assert_array_equal(big.a, good.a)


# ---- LlamaRuntime ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(model_path):
    model = load_gguf(model_path("Q4_0"))
    backend = CpuBackend(n_threads=2, max_batch=4)
    return model, backend, backend.prepare(model)


def _runtime_args(model):
    """CpuBackend's arguments for LlamaRuntime, to break one at a time."""
    return runtime_args(model)


def test_llama_runtime_construction_checks_every_tensor(tiny) -> None:
    model, _, _ = tiny
    dims, n_layer, tensors, norms = _runtime_args(model)
    rt = _kernels.LlamaRuntime(dims, n_layer, tensors, norms, 4)
    assert rt.scratch_bytes > 0
    raises(lambda: rt.__init__(dims, n_layer, tensors, norms, 4))  # never rebuilt in place
    raw, t, rows, cols = tensors["blk.0.attn_q.weight"]
    emb_raw, emb_t, emb_rows, emb_cols = tensors["token_embd.weight"]
    broken_tensors = {
        "short raw": ("blk.0.attn_q.weight", (raw[: rows // 2], t, rows, cols)),  # claims more rows
        "narrow raw": ("blk.0.ffn_up.weight", (tensors["blk.0.ffn_up.weight"][0][:, :72], t, 768, 256)),
        "wrong type": ("blk.0.attn_q.weight", (raw, int(T.Q8_0), rows, cols)),
        "unknown type": ("blk.0.attn_q.weight", (raw, 99, rows, cols)),
        "zero rows": ("blk.0.attn_q.weight", (raw[:0], t, 0, cols)),
        "negative rows": ("blk.0.attn_q.weight", (raw, t, -rows, cols)),
        "huge rows": ("blk.0.attn_q.weight", (raw, t, 2**62, cols)),
        "non-contiguous": ("blk.0.attn_q.weight", (noncontig(raw), t, rows, cols)),
        "not uint8": ("blk.0.attn_q.weight", (raw.view(np.int8), t, rows, cols)),
        "None": ("blk.0.attn_q.weight", (None, t, rows, cols)),
        "not a tuple": ("blk.0.attn_q.weight", raw),
        # token_embd is read by embedding(): its shape must be the model's
        "embd columns": (
            "token_embd.weight",
            (np.zeros((emb_rows, 18 * 16), np.uint8), emb_t, emb_rows, 512),
        ),
        "embd rows": ("token_embd.weight", (emb_raw[:10], emb_t, 10, emb_cols)),
        "output rows": ("output.weight", (emb_raw[:10], emb_t, 10, emb_cols)),
    }
    for why, (name, entry) in broken_tensors.items():
        bad = dict(tensors)
        bad[name] = entry
        with pytest.raises(ERRORS):
            _kernels.LlamaRuntime(dims, n_layer, bad, norms, 4)
        print("rejected:", why)
    for name, val in [
        ("blk.0.attn_norm.weight", norms["blk.0.attn_norm.weight"][:100].copy()),
        ("blk.0.attn_norm.weight", norms["blk.0.attn_norm.weight"].astype(np.float64)),
        ("output_norm.weight", None),
        ("output_norm.weight", [1.0] * 256),
    ]:
        bad = dict(norms)
        bad[name] = val
        raises(lambda bad=bad: _kernels.LlamaRuntime(dims, n_layer, tensors, bad, 4))
    for key, val in [("n_embd", 128), ("n_head", 3), ("n_vocab", 1000), ("head_dim", 0), ("n_ff", 2**40)]:
        bad_dims = dict(dims, **{key: val})
        raises(lambda bad_dims=bad_dims: _kernels.LlamaRuntime(bad_dims, n_layer, tensors, norms, 4))
    for n in (3, -1, 2**40):
        raises(lambda n=n: _kernels.LlamaRuntime(dims, n, tensors, norms, 4))
    for mt in (0, -1, 2**40):
        raises(lambda mt=mt: _kernels.LlamaRuntime(dims, n_layer, tensors, norms, mt))
    raises(lambda: _kernels.LlamaRuntime(None, n_layer, tensors, norms, 4))


def test_llama_runtime_calls_check_every_argument(tiny) -> None:
    model, _, rt = tiny
    c = model.config
    E, V = c.n_embd, c.n_vocab
    uninit = _kernels.LlamaRuntime.__new__(_kernels.LlamaRuntime)
    kv = kernels.KVRing(c.n_layer, 8, c.n_head_kv, c.head_dim)
    ids = np.array([1, 5, 7], np.int32)

    good = Guarded((3, E))
    rt.embedding(ids, good.a)
    assert good.guards_intact() and (good.a != SENTINEL).all()
    for case in [
        lambda o: rt.embedding(np.array([1, 5, V], np.int32), o),  # id == n_vocab
        lambda o: rt.embedding(np.array([1, -1, 7], np.int32), o),
        lambda o: rt.embedding(ids[:2].copy(), o),
        lambda o: rt.embedding(ids.astype(np.int64), o),
        lambda o: rt.embedding(noncontig(ids), o),
        lambda o: rt.embedding(None, o),
        lambda o: uninit.embedding(ids, o),
    ]:
        out = Guarded((3, E))
        raises(lambda case=case, out=out: case(out.a), out)
    for shape in ((3, E - 1), (3, E + 1), (2, E), (4, E)):
        out = Guarded(shape)
        raises(lambda out=out: rt.embedding(ids, out.a), out)
    raises(lambda: rt.embedding(ids, None))
    raises(lambda: rt.embedding(ids, readonly(np.zeros((3, E), np.float32))))

    x = f32(3, E)
    n_pos = kv.n_pos
    for case in [
        lambda o: rt.layer(0, x, 0, None, o, 2),  # None ring
        lambda o: rt.layer(c.n_layer, x, 0, kv, o, 2),
        lambda o: rt.layer(-1, x, 0, kv, o, 2),
        lambda o: rt.layer(2**40, x, 0, kv, o, 2),
        lambda o: rt.layer(0, x, 5, kv, o, 2),  # skips positions
        lambda o: rt.layer(0, x, -1, kv, o, 2),
        lambda o: rt.layer(0, x[:, :-1].copy(), 0, kv, o, 2),
        lambda o: rt.layer(0, x.astype(np.float64), 0, kv, o, 2),
        lambda o: rt.layer(0, noncontig(x), 0, kv, o, 2),
        lambda o: rt.layer(0, None, 0, kv, o, 2),
        lambda o: rt.layer(0, x, 0, kv, o, -2),
        lambda o: rt.layer(0, x, 0, kernels.KVRing(c.n_layer, 8, c.n_head_kv, c.head_dim // 2), o, 2),
        lambda o: rt.layer(0, x, 0, kernels.KVRing(c.n_layer, 8, 1, c.head_dim), o, 2),
        lambda o: rt.layer(0, x, 0, "kv", o, 2),
        lambda o: uninit.layer(0, x, 0, kv, o, 2),
    ]:
        out = Guarded((3, E))
        raises(lambda case=case, out=out: case(out.a), out)
        assert kv.n_pos == n_pos
    for shape in ((3, E - 1), (2, E), (4, E)):
        out = Guarded(shape)
        raises(lambda out=out: rt.layer(0, x, 0, kv, out.a, 2), out)
    good = Guarded((3, E))
    rt.layer(0, x, 0, kv, good.a, 2**31 - 1)  # a huge thread count is clamped
    assert good.guards_intact() and kv.n_pos[0] == 3

    good = Guarded((3, V))
    rt.lm_head(x, good.a, 0)  # 0: every CPU, as everywhere
    assert good.guards_intact() and (good.a != SENTINEL).all()
    for case in [
        lambda o: rt.lm_head(x[:, :-1].copy(), o, 2),
        lambda o: rt.lm_head(x.astype(np.float64), o, 2),
        lambda o: rt.lm_head(noncontig(x), o, 2),
        lambda o: rt.lm_head(None, o, 2),
        lambda o: rt.lm_head(x, o, -1),
        lambda o: rt.lm_head(x, o, None),
        lambda o: uninit.lm_head(x, o, 2),
    ]:
        out = Guarded((3, V))
        raises(lambda case=case, out=out: case(out.a), out)
    for shape in ((3, V - 1), (2, V), (4, V)):
        out = Guarded(shape)
        raises(lambda out=out: rt.lm_head(x, out.a, 2), out)

    raises(lambda: rt.reserve(None, 2))
    raises(lambda: rt.reserve(kv, -1))
    raises(lambda: uninit.reserve(kv, 2))
    rt.reserve(kv, 2**31 - 1)  # clamped


# ---- realm_ext.quant ---------------------------------------------------------------------


def test_quant_functions_check_every_argument() -> None:
    raw = quant.quantize(f32(2, 64), T.Q8_0)
    for case in [
        lambda: quant.parse_type("Q9_9"),
        lambda: quant.parse_type(None),
        lambda: quant.parse_type(99),
        lambda: quant.parse_type(T.IQ2_XS),  # a ggml type realm-ext does not read
        lambda: quant.block_size("nope"),
        lambda: quant.row_bytes(T.Q8_0, 33),
        lambda: quant.row_bytes(T.Q8_0, None),
        lambda: quant.dequantize(raw, T.Q8_0, ()),
        lambda: quant.dequantize(raw, T.Q8_0, (3, 64)),  # more bytes needed than given
        lambda: quant.dequantize(raw, T.Q8_0, (2, 32)),
        lambda: quant.dequantize(raw[:, :-1], T.Q8_0, (2, 64)),
        lambda: quant.dequantize(raw.tobytes()[:-1], T.Q8_0, (2, 64)),
        lambda: quant.dequantize(raw, T.Q8_0, (2, -64)),
        lambda: quant.dequantize(raw, T.Q8_0, (-2, 64)),
        lambda: quant.dequantize(None, T.Q8_0, (2, 64)),
        lambda: quant.quantize(np.float32(1.0), T.Q8_0),
        lambda: quant.quantize(f32(2, 33), T.Q8_0),
        lambda: quant.quantize(f32(2, 256), T.Q4_K, n_threads=-1),
        lambda: quant.quantize(None, T.Q8_0),
        lambda: quant.random_blocks(np.random.default_rng(0), T.Q4_0, (2, 33)),
    ]:
        raises(case)
    # valid calls on awkward inputs: non-contiguous and bytes sources are copied, not misread
    x = f32(2, 64)
    np.testing.assert_array_equal(quant.quantize(noncontig(x), T.Q8_0), quant.quantize(x, T.Q8_0))
    np.testing.assert_array_equal(
        quant.dequantize(raw.tobytes(), T.Q8_0, (2, 64)), quant.dequantize(noncontig(raw), T.Q8_0, (2, 64))
    )
