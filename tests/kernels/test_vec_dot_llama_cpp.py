"""Our dot kernels against llama.cpp's own, called through ctypes from the libggml-cpu
that llama-cpp-python ships: the same weight blocks, the same activation row, bit for bit.

These are the kernels llama.cpp runs for one token (decode) on the formats it does not
repack on x86. Q4_0, Q2_K and Q4_K are repacked there (ggml-cpu/repack.cpp) and run
other kernels; the whole-model test (tests/backends/test_cpu.py) covers those. Our x86
kernels follow an AVX-512 llama.cpp build (the one bootstrap.sh makes on this machine),
and give the same bits as an AVX2 build's (measured on an AVX2-only Zen 3), so the
comparison runs where both sides have AVX-512, or where our float order is the AVX2
build's and llama.cpp is one.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from support.llama_cpp_info import avx2_build, cpu_features

from realm_ext import _kernels, quant

llama_cpp = pytest.importorskip("llama_cpp")
both_avx512 = _kernels.cpu_isa() == "avx512" and "AVX512" in cpu_features()
both_avx2 = _kernels.float_order() == "avx2" and avx2_build(cpu_features())
if not (both_avx512 or both_avx2):
    pytest.skip("our kernels mirror an AVX-512 or AVX2 build of llama.cpp (both sides need the same)",
                allow_module_level=True)  # fmt: skip

# llama.cpp's activation types: (elements, bytes) per block
ACT = {"q8_0": (32, 34), "q8_1": (32, 36), "q8_K": (256, 292)}
FORMATS = {
    "Q4_1": "q8_1",
    "Q5_0": "q8_0",
    "Q5_1": "q8_1",
    "Q8_0": "q8_0",
    "Q3_K": "q8_K",
    "Q5_K": "q8_K",
    "Q6_K": "q8_K",
}


@pytest.fixture(scope="module")
def ggml_cpu() -> ctypes.CDLL:
    lib_path = Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"
    if not lib_path.exists():
        pytest.skip(f"{lib_path} not found")
    lib = ctypes.CDLL(str(lib_path))
    lib.ggml_cpu_init()  # its f16 tables
    return lib


def _fn(lib: ctypes.CDLL, name: str, argtypes: list) -> ctypes._CFuncPtr:
    f = getattr(lib, name)
    f.argtypes = argtypes
    f.restype = None
    return f


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_dot_is_llama_cpps(fmt: str, ggml_cpu: ctypes.CDLL, rng: np.random.Generator) -> None:
    act = FORMATS[fmt]
    p, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    quantize_row = _fn(ggml_cpu, f"quantize_row_{act}", [p, p, i64])
    vec_dot = _fn(
        ggml_cpu,
        f"ggml_vec_dot_{fmt.lower().replace('_k', '_K')}_{act}",
        [ctypes.c_int, p, sz, p, sz, p, sz, ctypes.c_int],
    )
    n_rows, n_cols = 37, 1024
    w = rng.normal(0, 1, (n_rows, n_cols)).astype(np.float32)
    w[5] *= 1e-3  # a row of small weights
    raw = np.ascontiguousarray(quant.quantize(w, fmt)).reshape(n_rows, -1)
    x = rng.normal(0, 1, (1, n_cols)).astype(np.float32)
    x[0, 7] = 40.0  # an outlier that sets one block's scale

    theirs_q = np.zeros(n_cols // ACT[act][0] * ACT[act][1], np.uint8)
    quantize_row(x.ctypes.data, theirs_q.ctypes.data, n_cols)
    ours_q = np.asarray(_kernels.quantize_acts(int(quant.parse_type(fmt)), x)).view(np.uint8).reshape(-1)
    np.testing.assert_array_equal(ours_q, theirs_q)

    theirs = np.zeros(n_rows, np.float32)
    s = ctypes.c_float()
    for r in range(n_rows):
        vec_dot(n_cols, ctypes.byref(s), 0, raw[r].ctypes.data, 0, theirs_q.ctypes.data, 0, 1)
        theirs[r] = s.value
    ours = np.asarray(_kernels.matmul(raw, int(quant.parse_type(fmt)), x))[0]
    np.testing.assert_array_equal(ours, theirs)
