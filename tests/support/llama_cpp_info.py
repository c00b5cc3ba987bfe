"""What the llama.cpp that llama-cpp-python loaded says about its own build."""

from __future__ import annotations

import functools
import re

from realm_ext import kernels


@functools.cache
def cpu_features() -> frozenset[str]:
    """The features llama.cpp reports as on, e.g. {"AVX2", "AVX512", "AVX512_BF16", ...},
    from llama_print_system_info ("CPU : SSE3 = 1 | AVX512 = 1 | ..."). ggml sets them from
    the compiler's __AVX512F__ etc., so they say which SIMD paths, and with them which
    float orders, its kernels take: a test that pins that order decides by these, not by
    the flags of the CPU it runs on."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    found = frozenset(re.findall(r"(\w+) = 1\b", info))
    if not found:  # a new format: fail loudly rather than take every path for the plain one
        raise RuntimeError(f"no features found in llama.cpp's system info {info!r}")
    return found


# Measured on this project's machine (AVX-512, llama-cpp-python 0.3.36 built native):
# bit-identical prompt logits for these (BF16 where the build has no AVX512_BF16); Q2_K
# within ~1e-7 (llama.cpp repacks it on AVX-512 and sums in an order not mirrored here).
BITWISE_ON_AVX512 = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M",
)  # fmt: skip
# Measured on an AVX2-only machine (AMD EPYC Zen 3, the same llama-cpp-python built
# native: AVX2, F16C, FMA, LLAMAFILE) with our AVX2 float order: bit-identical prompt
# logits on the random models, and on SmolLM2-135M (Q4_1, Q8_0 output) its batched
# prefill and its token-by-token decode. BF16 sums in another order there (its AVX2
# ggml_vec_dot_bf16), the K-quants as on AVX-512.
BITWISE_ON_AVX2 = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def avx2_build(has: frozenset[str]) -> bool:
    """An AVX2 + FMA + F16C build without AVX-512, with tinyBLAS (LLAMAFILE): the build
    whose float order kernels.float_order() == "avx2" follows (ops.h)."""
    return {"AVX2", "FMA", "F16C", "LLAMAFILE"} <= has and "AVX512" not in has


def sums_in_our_order(recipe: str) -> bool:
    """Whether llama.cpp's dot products for this format sum in our kernels' order. Ours
    follow the llama.cpp build that kernels.float_order() names (the CPU decides: AVX-512
    on an AVX-512 CPU, AVX2 on an AVX2-only one), decided by what the loaded build
    reports, not by this CPU's flags. On AVX-512: every format but BF16 where that build
    has AVX512_BF16 (vdpbf16ps for ggml_vec_dot_bf16 and tinyBLAS, pairs summed in another
    order, which ours do not follow). On AVX2: the formats of BITWISE_ON_AVX2."""
    has = cpu_features()
    order = kernels.float_order()
    if order == "avx2" and avx2_build(has):
        return recipe in BITWISE_ON_AVX2
    if order != "avx512" or kernels.cpu_isa() != "avx512" or "AVX512" not in has:
        return False
    return not (recipe == "BF16" and "AVX512_BF16" in has)


def bit_for_bit(recipe: str) -> bool:
    """Whether our prompt logits equal llama.cpp's bit for bit for this format (measured:
    BITWISE_ON_AVX512, BITWISE_ON_AVX2) where the orders agree."""
    wanted = BITWISE_ON_AVX2 if kernels.float_order() == "avx2" else BITWISE_ON_AVX512
    return sums_in_our_order(recipe) and recipe in wanted
