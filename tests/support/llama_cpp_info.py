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
# bit-identical prompt logits for these; the others within ~1e-7 on most prompts (the
# K-quants llama.cpp repacks, Q2_K and Q4_K, sum in an order not mirrored here; f16 K·Q).
BITWISE_ON_AVX512 = ("BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def sums_in_our_order(recipe: str) -> bool:
    """Whether llama.cpp's dot products for this format sum in our kernels' order: ours
    follow an AVX-512 build of llama.cpp (vec_dot_x86.inc), decided by what that build
    reports, not by this CPU's flags. A build with AVX512_BF16 takes vdpbf16ps for BF16
    (ggml_vec_dot_bf16, tinyBLAS), pairs summed in another order, which ours do not follow."""
    has = cpu_features()
    if kernels.cpu_isa() != "avx512" or "AVX512" not in has:
        return False
    return not (recipe == "BF16" and "AVX512_BF16" in has)
