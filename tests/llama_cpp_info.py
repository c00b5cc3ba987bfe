"""What the llama.cpp that llama-cpp-python loaded says about its own build."""

from __future__ import annotations

import functools
import re


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
