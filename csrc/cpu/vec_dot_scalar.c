/* vec_dot_scalar.c: the portable kernels, one per weight format. They are the
 * definition the SIMD kernels are tested against: integer dot products per block
 * (exact), then float scaling as ggml does. */
#include <math.h>
#include <string.h>

#include "fp16.h"
#include "ggml_blocks.h"
#include "vec_dot.h"

static void dot_f32(int64_t n, float *s, const void *w, const void *a) {
    const float *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * y[i]);
    *s = (float)sum;
}

/* f16 x f16 and bf16 x bf16 products are exact in f32 */
static void dot_f16(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(realm_f16_to_f32(x[i]) * realm_f16_to_f32(y[i]));
    *s = (float)sum;
}

static void dot_bf16(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(realm_bf16_to_f32(x[i]) * realm_bf16_to_f32(y[i]));
    *s = (float)sum;
}

static void dot_q4_0(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_0 *x = w;
    const block_q8_0 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK4_0 / 2; j++)
            sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
        /* one fused multiply-add per block, in block order: the float arithmetic of
         * llama.cpp's repacked Q4_0 kernels, which it uses for these weights on x86 */
        sum = fmaf((float)sumi, realm_f16_to_f32(x[i].d) * realm_f16_to_f32(y[i].d), sum);
    }
    *s = sum;
}

static void dot_q4_1(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_1 *x = w;
    const block_q8_1 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        int sumi = 0;
        for (int j = 0; j < QK4_1 / 2; j++)
            sumi += (x[i].qs[j] & 0xF) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + 16];
        sum += (float)sumi * (realm_f16_to_f32(x[i].d) * realm_f16_to_f32(y[i].d)) +
               realm_f16_to_f32(x[i].m) * realm_f16_to_f32(y[i].s);
    }
    *s = sum;
}

static uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void dot_q5_0(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_0 *x = w;
    const block_q8_0 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK5_0; i++) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int q0 = ((x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
            const int q1 = ((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += q0 * y[i].qs[j] + q1 * y[i].qs[j + 16];
        }
        sum += (float)sumi * (realm_f16_to_f32(x[i].d) * realm_f16_to_f32(y[i].d));
    }
    *s = sum;
}

static void dot_q5_1(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_1 *x = w;
    const block_q8_1 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int q0 = (x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int q1 = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            sumi += q0 * y[i].qs[j] + q1 * y[i].qs[j + 16];
        }
        sum += (float)sumi * (realm_f16_to_f32(x[i].d) * realm_f16_to_f32(y[i].d)) +
               realm_f16_to_f32(x[i].m) * realm_f16_to_f32(y[i].s);
    }
    *s = sum;
}

static void dot_q8_0(int64_t n, float *s, const void *w, const void *a) {
    const block_q8_0 *x = w;
    const block_q8_0 *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sum += (float)sumi * (realm_f16_to_f32(x[i].d) * realm_f16_to_f32(y[i].d));
    }
    *s = sum;
}

/* K-quants: y.d is f32; sums over sub-blocks are integers until the last multiply. */

/* Q2_K: as Q4_K, the float order of llama.cpp's repacked Q2_K kernels. */
static void dot_q2_K(int64_t n, float *s, const void *w, const void *a) {
    const block_q2_K *x = w;
    const block_q8_K *y = a;
    float acc = 0.0f, acc_m = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *q2 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        int summs = 0; /* sum of mins times the 16-sums of q8 */
        for (int j = 0; j < 16; j++) summs += y[i].bsums[j] * (x[i].scales[j] >> 4);
        int isum = 0, is = 0;
        for (int half = 0; half < QK_K / 128; half++, q2 += 32) {
            for (int shift = 0; shift < 8; shift += 2, q8 += 32) {
                for (int part = 0; part < 2; part++, is++) {
                    int isuml = 0;
                    for (int l = 16 * part; l < 16 * part + 16; l++) isuml += q8[l] * ((q2[l] >> shift) & 3);
                    isum += (x[i].scales[is] & 0xF) * isuml;
                }
            }
        }
        acc = fmaf((float)isum, realm_f16_to_f32(x[i].d) * y[i].d, acc);
        acc_m = fmaf((float)summs, realm_f16_to_f32(x[i].dmin) * y[i].d, acc_m);
    }
    *s = acc - acc_m;
}

static void dot_q3_K(int64_t n, float *s, const void *w, const void *a) {
    const block_q3_K *x = w;
    const block_q8_K *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *q = x[i].qs;
        const uint8_t *hm = x[i].hmask;
        const int8_t *q8 = y[i].qs;
        uint8_t m = 1;
        int isum = 0, is = 0;
        for (int half = 0; half < QK_K / 128; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1, q8 += 32) {
                for (int part = 0; part < 2; part++, is++) {
                    int isuml = 0;
                    for (int l = 16 * part; l < 16 * part + 16; l++)
                        isuml += q8[l] * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                    isum += realm_q3_K_scale(x[i].scales, is) * isuml;
                }
            }
        }
        sum += realm_f16_to_f32(x[i].d) * y[i].d * (float)isum;
    }
    *s = sum;
}

/* Q4_K: integer sums, then two fused multiply-add chains (scales, mins) subtracted at
 * the end: the float arithmetic of llama.cpp's repacked Q4_K kernels (ggml-cpu/repack).
 * Its one-token kernel (gemv) adds one whole-block sum per chain and block; its kernel
 * for 4 tokens at once (gemm) one sum per 64-element chunk (`per_chunk`). */
/* Block x times y added to the running sums acc (the scales') and acc_m (the mins'):
 * one fmaf each per block, or per 64-element chunk (per_chunk: llama.cpp's batched
 * order). */
static inline void q4_K_block(const block_q4_K *x, const block_q8_K *y, const int per_chunk, float *acc,
                              float *acc_m) {
    const uint8_t *q4 = x->qs;
    const int8_t *q8 = y->qs;
    const float d = realm_f16_to_f32(x->d) * y->d, dmin = realm_f16_to_f32(x->dmin) * y->d;
    int isum = 0, summs = 0;
    for (int j = 0; j < QK_K / 64; j++, q4 += 32, q8 += 64) {
        uint8_t sc0, m0, sc1, m1;
        realm_k4_scale_min(2 * j, x->scales, &sc0, &m0);
        realm_k4_scale_min(2 * j + 1, x->scales, &sc1, &m1);
        int s0 = 0, s1 = 0;
        for (int l = 0; l < 32; l++) {
            s0 += (q4[l] & 0xF) * q8[l];
            s1 += (q4[l] >> 4) * q8[l + 32];
        }
        isum += sc0 * s0 + sc1 * s1;
        summs += m0 * (y->bsums[4 * j] + y->bsums[4 * j + 1]) + m1 * (y->bsums[4 * j + 2] + y->bsums[4 * j + 3]);
        if (per_chunk) {
            *acc = fmaf((float)isum, d, *acc);
            *acc_m = fmaf((float)summs, dmin, *acc_m);
            isum = summs = 0;
        }
    }
    if (!per_chunk) {
        *acc = fmaf((float)isum, d, *acc);
        *acc_m = fmaf((float)summs, dmin, *acc_m);
    }
}

static inline void q4_K_dot(int64_t n, float *s, const void *w, const void *a, const int per_chunk) {
    const block_q4_K *x = w;
    const block_q8_K *y = a;
    float acc = 0.0f, acc_m = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) q4_K_block(x + i, y + i, per_chunk, &acc, &acc_m);
    *s = acc - acc_m;
}
static void dot_q4_K(int64_t n, float *s, const void *w, const void *a) { q4_K_dot(n, s, w, a, 0); }
static void dot_q4_K_gemm4(int64_t n, float *s, const void *w, const void *a) { q4_K_dot(n, s, w, a, 1); }

static void dot_q5_K(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_K *x = w;
    const block_q8_K *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        const int8_t *q8 = y[i].qs;
        uint8_t u1 = 1, u2 = 2;
        int isum = 0, summs = 0;
        for (int j = 0; j < QK_K / 64; j++, ql += 32, q8 += 64, u1 <<= 2, u2 <<= 2) {
            uint8_t sc0, m0, sc1, m1;
            realm_k4_scale_min(2 * j, x[i].scales, &sc0, &m0);
            realm_k4_scale_min(2 * j + 1, x[i].scales, &sc1, &m1);
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) * q8[l];
                s1 += ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) * q8[l + 32];
            }
            isum += sc0 * s0 + sc1 * s1;
            summs += m0 * (y[i].bsums[4 * j] + y[i].bsums[4 * j + 1]) +
                     m1 * (y[i].bsums[4 * j + 2] + y[i].bsums[4 * j + 3]);
        }
        const float d = y[i].d * realm_f16_to_f32(x[i].d);
        const float dmin = y[i].d * realm_f16_to_f32(x[i].dmin);
        sum += d * (float)isum - dmin * (float)summs;
    }
    *s = sum;
}

static void dot_q6_K(int64_t n, float *s, const void *w, const void *a) {
    const block_q6_K *x = w;
    const block_q8_K *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        const int8_t *q8 = y[i].qs;
        int isum = 0;
        for (int half = 0; half < QK_K / 128; half++, ql += 64, qh += 32, sc += 8, q8 += 128) {
            int s[8] = {0}; /* one sum per 16-element sub-block of this half */
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                s[is + 0] += q1 * q8[l];
                s[is + 2] += q2 * q8[l + 32];
                s[is + 4] += q3 * q8[l + 64];
                s[is + 6] += q4 * q8[l + 96];
            }
            for (int j = 0; j < 8; j++) isum += sc[j] * s[j];
        }
        sum += realm_f16_to_f32(x[i].d) * y[i].d * (float)isum;
    }
    *s = sum;
}

const realm_vec_dot_fn realm_vec_dot_scalar[REALM_N_TYPES] = {
    [REALM_TYPE_F32] = dot_f32,   [REALM_TYPE_F16] = dot_f16,   [REALM_TYPE_BF16] = dot_bf16,
    [REALM_TYPE_Q4_0] = dot_q4_0, [REALM_TYPE_Q4_1] = dot_q4_1, [REALM_TYPE_Q5_0] = dot_q5_0,
    [REALM_TYPE_Q5_1] = dot_q5_1, [REALM_TYPE_Q8_0] = dot_q8_0, [REALM_TYPE_Q2_K] = dot_q2_K,
    [REALM_TYPE_Q3_K] = dot_q3_K, [REALM_TYPE_Q4_K] = dot_q4_K, [REALM_TYPE_Q5_K] = dot_q5_K,
    [REALM_TYPE_Q6_K] = dot_q6_K,
};

/* Q4_0_X16 (ggml_blocks.h) x n_tokens, 16 rows from the group at w: dot_q4_0's sums and
 * float steps, row by row (lw, the bytes of one row, is implied by n). */
static void dot_x16_q4_0(int64_t n, float *s, int64_t ls, const void *w, int64_t lw, const void *a, int64_t la,
                         int n_tokens) {
    const block_q4_0_x16 *x = w;
    (void)lw;
    for (int t = 0; t < n_tokens; t++) {
        const block_q8_0 *y = (const block_q8_0 *)((const char *)a + t * la);
        for (int r = 0; r < 16; r++) {
            float sum = 0.0f;
            for (int64_t i = 0; i < n / QK4_0; i++) {
                int sumi = 0;
                for (int j = 0; j < QK4_0 / 2; j++) {
                    const int q = x[i].qs[j / 4][r][j % 4];
                    sumi += ((q & 0xF) - 8) * y[i].qs[j] + ((q >> 4) - 8) * y[i].qs[j + 16];
                }
                sum = fmaf((float)sumi, realm_f16_to_f32(x[i].d[r]) * realm_f16_to_f32(y[i].d), sum);
            }
            s[t * ls + r] = sum;
        }
    }
}
/* Q4_K_X16 x n_tokens, 16 rows from the group at w: each row's blocks gathered back
 * from their words and summed as q4_K_dot sums them. */
static inline void x16_q4_K(int64_t n, float *s, int64_t ls, const void *w, const void *a, int64_t la, int n_tokens,
                            const int per_chunk) {
    const block_q4_K_x16 *x = w;
    for (int t = 0; t < n_tokens; t++) {
        const block_q8_K *y = (const block_q8_K *)((const char *)a + t * la);
        for (int r = 0; r < 16; r++) {
            float acc = 0.0f, acc_m = 0.0f;
            for (int64_t i = 0; i < n / QK_K; i++) {
                block_q4_K b;
                for (size_t k = 0; k < sizeof b / 4; k++) memcpy((char *)&b + 4 * k, &x[i].w[k][r], 4);
                q4_K_block(&b, y + i, per_chunk, &acc, &acc_m);
            }
            s[t * ls + r] = acc - acc_m;
        }
    }
}
static void dot_x16_q4_K(int64_t n, float *s, int64_t ls, const void *w, int64_t lw, const void *a, int64_t la,
                         int n_tokens) {
    (void)lw;
    x16_q4_K(n, s, ls, w, a, la, n_tokens, 0);
}
static void dot_x16_q4_K_gemm4(int64_t n, float *s, int64_t ls, const void *w, int64_t lw, const void *a, int64_t la,
                               int n_tokens) {
    (void)lw;
    x16_q4_K(n, s, ls, w, a, la, n_tokens, 1);
}
const realm_vec_dot_8r_fn realm_vec_dot_x16_scalar[REALM_N_TYPES] = {[REALM_TYPE_Q4_0_X16] = dot_x16_q4_0,
                                                                     [REALM_TYPE_Q4_K_X16] = dot_x16_q4_K};
/* the batched orders of the repacked types (Q4_K's, as realm_vec_dot_gemm_scalar) */
const realm_vec_dot_8r_fn realm_vec_dot_x16_gemm_scalar[REALM_N_TYPES] = {[REALM_TYPE_Q4_K_X16] = dot_x16_q4_K_gemm4};

/* The batched orders that hold on every ISA (vec_dot.h: realm_get_vec_dot_gemm). */
const realm_vec_dot_fn realm_vec_dot_gemm_scalar[REALM_N_TYPES] = {[REALM_TYPE_Q4_K] = dot_q4_K_gemm4};
