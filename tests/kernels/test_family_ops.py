"""The kernels other families add: NEOX RoPE, GeGLU, and KV rings whose sliding layers
hold their window only (csrc/cpu/ops.c, csrc/cpu/kv_ring.c)."""

from __future__ import annotations

import numpy as np
import pytest

from realm_ext import kernels, reference
from realm_ext._kernels import KVRing


def test_neox_rope_rotates_halves(rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)
    pos = np.array([0, 1, 7, 300, 4095], np.int64)
    got = kernels.rope(x.copy(), pos, 48, 10000.0, neox=True)
    want = reference.rope(x.astype(np.float64), pos, 10000.0, 48, neox=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want).max())
    np.testing.assert_array_equal(got[..., 48:], x[..., 48:])  # past rope_dim: untouched
    adjacent = kernels.rope(x.copy(), pos, 48, 10000.0)
    assert np.abs(adjacent[1:] - got[1:]).max() > 0.1  # the two modes differ


def test_geglu_is_ggmls_f16_table(rng: np.random.Generator) -> None:
    g = np.concatenate([rng.standard_normal(4000) * 4, [-10.5, -10.0, 9.99, 10.0, 12.0, 0.0]]).astype(
        np.float32
    )
    u = rng.standard_normal(g.size).astype(np.float32)
    got = kernels.geglu(g, u)
    # ggml: gelu looked up at g rounded to f16, the value rounded to f16; 0 / g at the ends
    g16 = g.astype(np.float16).astype(np.float32)
    f = np.float32
    inner = f(0.7978845608028654) * g16 * (f(1) + f(0.044715) * g16 * g16)  # float32, one rounding each
    table = (f(0.5) * g16 * (f(1) + np.tanh(inner))).astype(np.float16).astype(np.float32)
    want = np.where(g <= -10, 0.0, np.where(g >= 10, g, table)).astype(np.float32) * u
    # numpy's float32 tanh rounds otherwise than libm's tanhf (which ggml and we call) now
    # and then: where that crosses an f16 rounding boundary the table entry moves one f16
    # step; and near -1, where gelu is ~0
    mid = np.abs(g) < 3
    assert (got[mid] == want[mid]).mean() > 0.99
    np.testing.assert_allclose(got[mid], want[mid], rtol=1e-3 * 1.01, atol=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(u).max())


def test_geglu_is_the_same_in_every_isa(rng: np.random.Generator) -> None:
    """The SIMD GeGLU (F16C rounding, a gathered table) gives the scalar one's bits, at
    the ends, at f16 ties and subnormals, and in the leftover elements past the vectors."""
    lo = (rng.standard_normal(400) * 3).astype(np.float16)
    hi = np.nextafter(lo, np.float16(np.inf))
    ties = (lo.astype(np.float32) + hi.astype(np.float32)) / 2  # halfway between f16 neighbours: exact in f32
    subnormals = np.float32(2.0**-24) * (np.arange(-40, 40) + np.float32(0.5))  # and their ties
    g = np.concatenate(
        [
            rng.standard_normal(1001) * 5,
            ties,
            subnormals,
            [-10.0, 10.0, -9.999, 1e-6, -3e-8, 0.0, -0.0, 65519.0, np.inf],
        ]
    ).astype(np.float32)
    u = rng.standard_normal(g.size).astype(np.float32)
    best = kernels.geglu(g, u)
    assert kernels.set_isa("scalar") == "scalar"
    try:
        scalar = kernels.geglu(g, u)
    finally:
        kernels.set_isa(None)
    np.testing.assert_array_equal(best, scalar)


@pytest.mark.parametrize("chunk", [1, 4])
def test_sliding_layers_hold_their_window_and_one_chunk(chunk: int) -> None:
    ring = KVRing(3, 32, 1, 8, windows=[8, None, 5], chunk=chunk)
    assert ring.slots == (8 + chunk - 1, 32, 5 + chunk - 1) and ring.window == (8, 32, 5)
    assert ring.k.shape == (sum(ring.slots), 1, 8) and ring.row0 == (0, ring.slots[0], ring.slots[0] + 32)
    assert ring.window_start(20, 0) == 13 and ring.window_start(20, 1) == 0 and ring.window_start(20, 2) == 16
    rows = np.ones((1, 8), np.float32)
    for p in range(20):
        for layer in range(3):
            ring.append(layer, p, rows * p, rows * p)
    # a chunk at 20 may take `chunk` tokens: each keeps its sliding window
    assert ring.chunk_limit(20) == chunk
    assert ring.k[ring.row0[2] + ring.slot(19, 2), 0, 0] == 19
    with pytest.raises(IndexError):
        ring.truncate(10)  # layer 2 no longer holds the window of position 10
    ring.truncate(19)
    assert ring.n_pos == (19, 19, 19)
