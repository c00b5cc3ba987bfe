/* dequant.c: scalar row decoders for every block format in ggml_blocks.h.
 * Each follows ggml's dequantize_row_* exactly, including the order of the float
 * operations (built with -ffp-contract=off so no multiply-add is fused). */
#include "dequant.h"
#include "realm_errors.h"

#include "fp16.h"
#include "ggml_blocks.h"

static void decode_f32(const float *x, float *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

static void decode_f16(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = realm_f16_to_f32(x[i]);
}

static void decode_bf16(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = realm_bf16_to_f32(x[i]);
}

static void decode_q4_0(const block_q4_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK4_0) {
        const float d = realm_f16_to_f32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void decode_q4_1(const block_q4_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK4_1) {
        const float d = realm_f16_to_f32(x[i].d);
        const float m = realm_f16_to_f32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = (x[i].qs[j] & 0x0F) * d + m;
            y[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

/* the 32 high bits of a Q5 block, element i at bit i */
static uint32_t q5_high_bits(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) | ((uint32_t)qh[3] << 24);
}

static void decode_q5_0(const block_q5_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK5_0) {
        const float d = realm_f16_to_f32(x[i].d);
        const uint32_t qh = q5_high_bits(x[i].qh);
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int h0 = (int)((qh >> j) << 4) & 0x10;
            const int h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = (((x[i].qs[j] & 0x0F) | h0) - 16) * d;
            y[j + QK5_0 / 2] = (((x[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

static void decode_q5_1(const block_q5_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK5_1) {
        const float d = realm_f16_to_f32(x[i].d);
        const float m = realm_f16_to_f32(x[i].m);
        const uint32_t qh = q5_high_bits(x[i].qh);
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int h0 = (int)((qh >> j) << 4) & 0x10;
            const int h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = ((x[i].qs[j] & 0x0F) | h0) * d + m;
            y[j + QK5_1 / 2] = ((x[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

static void decode_q8_0(const block_q8_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK8_0) {
        const float d = realm_f16_to_f32(x[i].d);
        for (int j = 0; j < QK8_0; j++) y[j] = x[i].qs[j] * d;
    }
}

/* Q2_K: qs byte l of each 32-byte group holds, in bit pairs 0..3, elements
 * l, l+32, l+64, l+96 of that 128-element half. */
static void decode_q2_K(const block_q2_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_f16_to_f32(x[i].d);
        const float dmin = realm_f16_to_f32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int half = 0; half < QK_K; half += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int part = 0; part < 2; part++, is++) {
                    const uint8_t sc = x[i].scales[is];
                    const float dl = d * (sc & 0xF);
                    const float ml = dmin * (sc >> 4);
                    for (int l = 0; l < 16; l++) *y++ = dl * ((q[l + 16 * part] >> shift) & 3) - ml;
                }
            }
        }
    }
}

static void decode_q3_K(const block_q3_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d_all = realm_f16_to_f32(x[i].d);
        const uint8_t *q = x[i].qs;
        const uint8_t *hm = x[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int half = 0; half < QK_K; half += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                for (int part = 0; part < 2; part++, is++) {
                    const float dl = d_all * realm_q3_K_scale(x[i].scales, is);
                    for (int l = 16 * part; l < 16 * part + 16; l++)
                        *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                }
            }
        }
    }
}

static void decode_q4_K(const block_q4_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_f16_to_f32(x[i].d);
        const float dmin = realm_f16_to_f32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        for (int j = 0; j < QK_K / 64; j++, q += 32) {
            uint8_t sc, m;
            realm_k4_scale_min(2 * j, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            realm_k4_scale_min(2 * j + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

static void decode_q5_K(const block_q5_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_f16_to_f32(x[i].d);
        const float dmin = realm_f16_to_f32(x[i].dmin);
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K / 64; j++, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            realm_k4_scale_min(2 * j, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            realm_k4_scale_min(2 * j + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

static void decode_q6_K(const block_q6_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_f16_to_f32(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int half = 0; half < QK_K; half += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

int realm_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const int qk = realm_type_block_elems(type);
    if (qk == 0 || n < 0 || n % qk != 0) return REALM_ERR_INVALID;
    const int64_t nb = n / qk;
    switch (type) {
    case REALM_TYPE_F32: decode_f32(src, dst, n); return 0;
    case REALM_TYPE_F16: decode_f16(src, dst, n); return 0;
    case REALM_TYPE_BF16: decode_bf16(src, dst, n); return 0;
    case REALM_TYPE_Q4_0: decode_q4_0(src, dst, nb); return 0;
    case REALM_TYPE_Q4_1: decode_q4_1(src, dst, nb); return 0;
    case REALM_TYPE_Q5_0: decode_q5_0(src, dst, nb); return 0;
    case REALM_TYPE_Q5_1: decode_q5_1(src, dst, nb); return 0;
    case REALM_TYPE_Q8_0: decode_q8_0(src, dst, nb); return 0;
    case REALM_TYPE_Q2_K: decode_q2_K(src, dst, nb); return 0;
    case REALM_TYPE_Q3_K: decode_q3_K(src, dst, nb); return 0;
    case REALM_TYPE_Q4_K: decode_q4_K(src, dst, nb); return 0;
    case REALM_TYPE_Q5_K: decode_q5_K(src, dst, nb); return 0;
    case REALM_TYPE_Q6_K: decode_q6_K(src, dst, nb); return 0;
    default: return REALM_ERR_INVALID; /* Q8_1 / Q8_K are activation formats, never stored in a file */
    }
}
