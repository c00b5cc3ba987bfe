"""The 8- and 16-row matmul kernels (Q4_0, Q4_K, Q8_0, Q5_0, Q4_1, Q5_1): bit for bit the one-row kernels.

The float arithmetic of Q4_0 and Q4_K is llama.cpp's one fused multiply-add per block
and row, in block order, so every ISA must give exactly the scalar result, whether a
row falls in a group of 16 or 8 or among the leftover rows, and whether a token is
alone (decode) or anywhere in a batch (prefill). Q8_0, Q5_0, Q4_1 and Q5_1 sum in 8
float lanes per row on x86 (llama.cpp's AVX2 order, not the scalar one): there each
ISA's result must equal the same ISA's one-row kernel (each row multiplied alone).
"""

from __future__ import annotations

import numpy as np
import pytest

from realm_ext import _kernels, quant

FORMATS = ("Q4_K", "Q4_0", "Q8_0", "Q5_0", "Q4_1", "Q5_1")
SCALAR_ORDER = ("Q4_K", "Q4_0")  # the formats whose SIMD kernels sum as the scalar one
ALL_ISAS = ("scalar", "avx2", "avx512")
ISAS = ALL_ISAS[: ALL_ISAS.index(_kernels.cpu_isa()) + 1]
N_ROWS = (8, 16, 33, 257, 2048 + 3)
N_TOKENS = (1, 2, 3, 4, 7, 13, 64)
N_THREADS = (1, 2, 3)


def matmul(raw: np.ndarray, fmt: str, x: np.ndarray, isa: str, n_threads: int) -> np.ndarray:
    assert _kernels.set_isa(isa) == isa
    try:
        return _kernels.matmul(raw, int(quant.parse_type(fmt)), x, n_threads=n_threads)
    finally:
        _kernels.set_isa(None)


@pytest.fixture(scope="module", params=FORMATS)
def case(request: pytest.FixtureRequest) -> tuple[str, np.ndarray, np.ndarray]:
    """(format, raw weights of the largest row count, activations of the most tokens):
    smaller cases take leading rows / tokens."""
    rng = np.random.default_rng(8)
    n_cols = 1280  # 5 Q4_K super-blocks, 40 Q4_0 blocks: more than one chunk of the chunked kernels
    w = rng.normal(0, 1, (max(N_ROWS), n_cols)).astype(np.float32)
    w[5] *= 1e-3  # rows of very different scales side by side
    w[11] = 0.0
    x = rng.normal(0, 1, (max(N_TOKENS), n_cols)).astype(np.float32)
    x[2, 7] = 3e4  # an outlier
    x[5] = 0.0
    return request.param, quant.quantize(w, request.param).reshape(w.shape[0], -1), x


@pytest.mark.parametrize("n_rows", N_ROWS)
def test_bitwise_across_isas(case, n_rows: int) -> None:
    fmt, raw_all, x_all = case
    raw = np.ascontiguousarray(raw_all[:n_rows])
    for n_tokens in N_TOKENS:
        x = np.ascontiguousarray(x_all[:n_tokens])
        ref = matmul(raw, fmt, x, "scalar", 1)
        assert np.all(np.isfinite(ref))
        for isa in ISAS:
            if fmt not in SCALAR_ORDER:  # the same ISA, a row at a time (its one-row kernels)
                ref = np.concatenate([matmul(raw[r : r + 1], fmt, x, isa, 1) for r in range(n_rows)], axis=1)
            for n_threads in N_THREADS:
                got = matmul(raw, fmt, x, isa, n_threads)
                assert np.array_equal(got, ref), (fmt, n_rows, n_tokens, isa, n_threads)


@pytest.mark.parametrize("isa", ISAS)
def test_decode_equals_batch(case, isa: str) -> None:
    fmt, raw_all, x_all = case
    raw = np.ascontiguousarray(raw_all[:257])
    for n_tokens in (7, 64):
        x = np.ascontiguousarray(x_all[:n_tokens])
        batch = matmul(raw, fmt, x, isa, 2)
        for t in range(n_tokens):
            alone = matmul(raw, fmt, np.ascontiguousarray(x[t : t + 1]), isa, 2)
            assert np.array_equal(alone[0], batch[t]), (fmt, isa, n_tokens, t)
