"""realm_ext.kernels: the per-token ops against float64 numpy on fresh random data."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import numpy as np
import pytest

from realm_ext import _kernels, kernels


def test_rmsnorm_matches_float64(rng: np.random.Generator) -> None:
    x = rng.normal(0, 3, (7, 256)).astype(np.float32)
    w = rng.normal(1, 0.1, 256).astype(np.float32)
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(kernels.rmsnorm(x, w, 1e-5), ref, rtol=2e-6, atol=1e-6)
    out = x.copy()
    kernels.rmsnorm(out, w, 1e-5, out=out)  # in place
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError):
        kernels.rmsnorm(x, w[:10], 1e-5)


@pytest.mark.parametrize(("head_dim", "rope_dim"), [(64, 64), (48, 32), (128, 128)])
def test_rope_matches_float64(rng: np.random.Generator, head_dim: int, rope_dim: int) -> None:
    n, h, base = 9, 3, 10000.0
    x = rng.normal(0, 1, (n, h, head_dim)).astype(np.float32)
    pos = rng.integers(0, 4096, n).astype(np.int64)
    got = kernels.rope(x.copy(), pos, rope_dim, base)
    # float64: pair i of each head turns by pos * base^(-2i/rope_dim)
    ang = pos[:, None] * base ** (-2.0 * np.arange(rope_dim // 2) / rope_dim)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    ref = x.astype(np.float64).copy()
    x0, x1 = x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]
    ref[..., 0:rope_dim:2] = x0 * c - x1 * s
    ref[..., 1:rope_dim:2] = x0 * s + x1 * c
    # the angles are built in f32 as ggml does: about pos * 1e-7 rad off at most
    np.testing.assert_allclose(got, ref, atol=5e-4 * (1 + pos.max() / 1000))
    np.testing.assert_array_equal(got[..., rope_dim:], x[..., rope_dim:])
    np.testing.assert_array_equal(kernels.rope(x.copy(), np.zeros(n, np.int64), rope_dim, base), x)
    with pytest.raises(ValueError):
        kernels.rope(x.copy(), pos, rope_dim + 1, base)
    with pytest.raises(ValueError):
        kernels.rope(x.copy(), pos[:3], rope_dim, base)


def test_swiglu_matches_float64(rng: np.random.Generator) -> None:
    g = rng.normal(0, 4, 1000).astype(np.float32)
    u = rng.normal(0, 1, 1000).astype(np.float32)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(kernels.swiglu(g, u), g64 / (1 + np.exp(-g64)) * u, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        kernels.swiglu(g, u[:3])


def test_isa_switch() -> None:
    best = kernels.cpu_isa()
    try:
        assert kernels.set_isa("scalar") == "scalar" == kernels.active_isa()
    finally:
        assert kernels.set_isa(None) == best
    with pytest.raises(ValueError):
        kernels.set_isa("neon")


DECODE_KERNELS = (
    "x86_dot_8r_q4_K",
    "x86_dot_8r_q4_0",
    "x86_dot_nx_q6_K",
    "x86_dot_nx_q8_0",
    "x86_dot_8r_q8_0",
    "x86_dot_nx_q4_1",
    "x86_dot_q4_K",
    "x86_dot_q4_1",
)
DECODE_KERNELS_AVX512 = ("x86_dot_16r_q4_0",)  # 16 rows in 512-bit lanes: built for AVX-512 only


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 kernels only")
def test_decode_kernels_prefetch() -> None:
    """Every build (AVX2, AVX-512) of the main decode kernels holds prefetch instructions
    (csrc/cpu/vec_dot_x86.inc): GCC once dropped them all without a word, which cost about a
    third of the decode speed."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    asm = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", _kernels.__file__], capture_output=True, text=True, check=True
    ).stdout
    copies: dict[str, list[int]] = {}  # function name -> prefetches in each copy
    for block in asm.split("\n\n"):
        head = re.match(r"[0-9a-f]+ <([^>]+)>:", block.strip())
        if head:
            copies.setdefault(head.group(1), []).append(block.count("prefetch"))
    if not any(name in copies for name in DECODE_KERNELS):
        pytest.skip("the extension's local symbols are stripped")
    for name in DECODE_KERNELS:
        assert len(copies.get(name, [])) >= 2, f"{name}: expected an AVX2 and an AVX-512 build"
        assert all(n > 0 for n in copies[name]), f"{name} has no prefetch in some build: {copies[name]}"
    for name in DECODE_KERNELS_AVX512:
        assert copies.get(name), f"{name}: expected an AVX-512 build"
        assert all(n > 0 for n in copies[name]), f"{name} has no prefetch: {copies[name]}"
