/* act_quant.c: see act_quant.h. */
#include "act_quant.h"
#include "realm_errors.h"

#include <math.h>
#include <string.h>

#include "fp16.h"
#include "ggml_blocks.h"
#include "vec_dot.h" /* realm_active_isa */
#if defined(__x86_64__)
#include <immintrin.h>
#endif

int realm_vec_dot_type(int wtype) {
    switch (realm_repacked_from(wtype)) { /* a repacked type's rows are its file type's */
    case REALM_TYPE_F32: return REALM_TYPE_F32;
    case REALM_TYPE_F16: return REALM_TYPE_F16;
    case REALM_TYPE_BF16: return REALM_TYPE_BF16;
    case REALM_TYPE_Q4_0: case REALM_TYPE_Q5_0: case REALM_TYPE_Q8_0: return REALM_TYPE_Q8_0;
    case REALM_TYPE_Q4_1: case REALM_TYPE_Q5_1: return REALM_TYPE_Q8_1;
    case REALM_TYPE_Q2_K: case REALM_TYPE_Q3_K: case REALM_TYPE_Q4_K:
    case REALM_TYPE_Q5_K: case REALM_TYPE_Q6_K: return REALM_TYPE_Q8_K;
    default: return -1;
    }
}

int64_t realm_act_row_bytes(int act_type, int64_t n) {
    const int qk = realm_type_block_elems(act_type);
    if (qk == 0 || n < 0 || n % qk) return -1;
    return n / qk * realm_type_block_bytes(act_type);
}

/* One block of 32 as ggml's AVX2 quantize_row_q8_0/_1: d = amax / 127, q = rint(x *
 * (127 / amax)). Writes qs, returns d before its f16 rounding (Q8_1's sum uses it). */
static float q8_block(const float *x, int8_t *qs) {
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float id = amax != 0.0f ? 127.f / amax : 0.0f;
    for (int j = 0; j < QK8_0; j++) qs[j] = (int8_t)lrintf(x[j] * id);
    return amax / 127.f;
}

#if defined(__x86_64__)
/* q8_block in 8 lanes: the same amax (a maximum, in any order; NaN ignored as fmaxf
 * does, by putting the running maximum second), the same products and rounding to
 * nearest even; a NaN lane becomes 0, as lrintf's result cast to int8 does on x86-64. */
__attribute__((target("avx2"))) static float q8_block_avx2(const float *x, int8_t *qs) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(_mm256_and_ps(v[k], abs_mask), m);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        const __m256 r = _mm256_round_ps(_mm256_mul_ps(v[k], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q[k] = _mm256_and_si256(_mm256_cvtps_epi32(r), _mm256_castps_si256(_mm256_cmp_ps(r, r, _CMP_ORD_Q)));
    }
    /* the packs work per 128-bit lane: 32 bytes in the order 0-3 8-11 16-19 24-27 4-7 ... */
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i *)qs, _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return amax / 127.f;
}
#endif

typedef float (*q8_block_fn)(const float *x, int8_t *qs);

static q8_block_fn pick_q8_block(void) {
#if defined(__x86_64__)
    if (realm_active_isa() >= REALM_ISA_AVX2) return q8_block_avx2;
#endif
    return q8_block;
}

static void quantize_q8_0(const float *x, block_q8_0 *y, int64_t nb) {
    const q8_block_fn block = pick_q8_block();
    for (int64_t i = 0; i < nb; i++, x += QK8_0) y[i].d = realm_f32_to_f16(block(x, y[i].qs));
}

static void quantize_q8_1(const float *x, block_q8_1 *y, int64_t nb) {
    const q8_block_fn block = pick_q8_block();
    for (int64_t i = 0; i < nb; i++, x += QK8_1) {
        const float d = block(x, y[i].qs);
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) sum += y[i].qs[j];
        y[i].d = realm_f32_to_f16(d);
        y[i].s = realm_f32_to_f16(d * (float)sum);
    }
}

/* Q8_K as ggml's quantize_row_q8_K_ref (used on x86). */
static void quantize_q8_K(const float *x, block_q8_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = (int)lrintf(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++) sum += y[i].qs[16 * j + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

int realm_quantize_act_row(int act_type, const float *x, void *dst, int64_t n) {
    if (realm_act_row_bytes(act_type, n) < 0) return REALM_ERR_INVALID;
    switch (act_type) {
    case REALM_TYPE_F32: memcpy(dst, x, (size_t)n * sizeof(float)); return 0;
    case REALM_TYPE_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = realm_f32_to_f16(x[i]);
        return 0;
    case REALM_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = realm_f32_to_bf16(x[i]);
        return 0;
    case REALM_TYPE_Q8_0: quantize_q8_0(x, dst, n / QK8_0); return 0;
    case REALM_TYPE_Q8_1: quantize_q8_1(x, dst, n / QK8_1); return 0;
    case REALM_TYPE_Q8_K: quantize_q8_K(x, dst, n / QK_K); return 0;
    default: return REALM_ERR_INVALID;
    }
}
