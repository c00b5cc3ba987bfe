/* act_quant.c: see act_quant.h. */
#include "act_quant.h"
#include "realm_errors.h"

#include <math.h>
#include <string.h>

#include "fp16.h"
#include "ggml_blocks.h"

int realm_vec_dot_type(int wtype) {
    switch (wtype) {
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

static void quantize_q8_0(const float *x, block_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK8_0) y[i].d = realm_f32_to_f16(q8_block(x, y[i].qs));
}

static void quantize_q8_1(const float *x, block_q8_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK8_1) {
        const float d = q8_block(x, y[i].qs);
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
