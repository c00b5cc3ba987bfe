/* cuda_host_harness.cpp: csrc/cuda/quants.cuh compiled for the host, so that the
 * per-format dot products and decoders the CUDA kernels use can be checked on a CPU
 * (tests/backends/test_cuda_quants_host.py builds this with g++ and loads it by ctypes).
 *
 * The CUDA intrinsics quants.cuh uses are emulated here with their documented
 * semantics; common.cuh (PTX inline asm) is replaced by host versions of its f16/bf16
 * conversions. Build with -ffp-contract=off so no multiply-add is fused (as on the
 * device, where decode() uses __fmul_rn / __fadd_rn). */
#include <cmath>
#include <cstdint>
#include <cstring>

#define __device__
#define __host__
#define __forceinline__ inline
#define REALM_CUDA_COMMON_CUH /* skip common.cuh: its conversions are PTX */
#include "ggml_blocks.h"

static inline float f16_to_f32(realm_f16 h) {
    const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    float f;
    if (exp == 0)
        f = std::ldexp((float)mant, -24);
    else if (exp == 31)
        f = mant ? NAN : INFINITY;
    else
        f = std::ldexp((float)(mant | 0x400), exp - 25);
    return sign ? -f : f;
}
static inline float bf16_to_f32(realm_bf16 h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

/* the sum of the four signed byte products of a and b, plus c */
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
/* per signed byte a - b, saturated to -128 .. 127 */
static inline unsigned __vsubss4(int a, int b) {
    unsigned r = 0;
    for (int i = 0; i < 4; i++) {
        int v = (int)(int8_t)(a >> (8 * i)) - (int)(int8_t)(b >> (8 * i));
        v = v < -128 ? -128 : (v > 127 ? 127 : v);
        r |= (unsigned)(uint8_t)v << (8 * i);
    }
    return r;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }

#include "quants.cuh"

/* a row's dot product as the kernels form it: every block, every part, summed */
template <typename F>
static float dot_row(const uint8_t *w, const block_q8_1 *y, int n_cols) {
    const typename F::block *b = (const typename F::block *)w;
    float sum = 0.0f;
    for (int kb = 0; kb < n_cols / F::QK; kb++)
        for (int part = 0; part < F::NPART; part++) sum += F::dot(b + kb, y + kb * (F::QK / QK8_1), part);
    return sum;
}
template <typename F>
static void decode_row(const uint8_t *w, float *out, int n_cols) {
    const typename F::block *b = (const typename F::block *)w;
    for (int c = 0; c < n_cols; c++) out[c] = F::decode(b + c / F::QK, c % F::QK);
}

#define FORMATS(X)                                                                                          \
    X(REALM_TYPE_Q4_0, fmt_q4_0)                                                                            \
    X(REALM_TYPE_Q4_1, fmt_q4_1)                                                                            \
    X(REALM_TYPE_Q5_0, fmt_q5_0)                                                                            \
    X(REALM_TYPE_Q5_1, fmt_q5_1)                                                                            \
    X(REALM_TYPE_Q8_0, fmt_q8_0)                                                                            \
    X(REALM_TYPE_Q2_K, fmt_q2_K)                                                                            \
    X(REALM_TYPE_Q3_K, fmt_q3_K)                                                                            \
    X(REALM_TYPE_Q4_K, fmt_q4_K)                                                                            \
    X(REALM_TYPE_Q5_K, fmt_q5_K)                                                                            \
    X(REALM_TYPE_Q6_K, fmt_q6_K)

extern "C" {
/* out[r] = dot of row r of w (n_rows x n_cols, raw blocks) with the q8_1 row y; -1 for
 * a type without a q8_1 dot */
int harness_dot_rows(int type, const uint8_t *w, const uint8_t *y, int n_rows, int n_cols, float *out) {
    const long long rb = (long long)n_cols / realm_type_block_elems(type) * realm_type_block_bytes(type);
#define CASE(T, F)                                                                                          \
    case T:                                                                                                 \
        for (int r = 0; r < n_rows; r++) out[r] = dot_row<F>(w + r * rb, (const block_q8_1 *)y, n_cols);    \
        return 0;
    switch (type) { FORMATS(CASE) default: return -1; }
#undef CASE
}

/* the n_rows x n_cols tensor w decoded by the kernels' decode() */
int harness_decode_rows(int type, const uint8_t *w, int n_rows, int n_cols, float *out) {
    const int qk = realm_type_block_elems(type);
    if (qk == 0) return -1;
    const long long rb = (long long)n_cols / qk * realm_type_block_bytes(type);
#define CASE(T, F)                                                                                          \
    case T:                                                                                                 \
        for (int r = 0; r < n_rows; r++) decode_row<F>(w + r * rb, out + (long long)r * n_cols, n_cols);    \
        return 0;
    switch (type) {
        FORMATS(CASE)
        CASE(REALM_TYPE_F32, fmt_f32)
        CASE(REALM_TYPE_F16, fmt_f16)
        CASE(REALM_TYPE_BF16, fmt_bf16)
    default: return -1;
    }
#undef CASE
}
}
