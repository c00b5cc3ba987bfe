/* test_kv_ring.c: the KV ring and attention in plain C (run by tests/c/run.sh under
 * ASan and UBSan). Reports every failed check; exits non-zero if there was one. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "fp16.h"
#include "kv_ring.h"
#include "ops.h"
#include "vec_dot.h"
#include "check.h"

/* a multiple of 1/16 in [-2, 2]: products and sums of these stay exact in f32 */
static float grid_value(void) { return (float)((int)(next_u64() % 65) - 32) / 16.0f; }
/* any value in [-1, 1) */
static float any_value(void) { return uniform(); }

static void test_create(void) {
    realm_f16 buf[8];
    CHECK(realm_kv_create(0, 4, 1, 1, NULL, NULL) == NULL);
    CHECK(realm_kv_create(1, 0, 1, 1, NULL, NULL) == NULL);
    CHECK(realm_kv_create(1, -1, 1, 1, NULL, NULL) == NULL);
    CHECK(realm_kv_create(1, 4, 0, 1, NULL, NULL) == NULL);
    CHECK(realm_kv_create(1, 4, 1, -3, NULL, NULL) == NULL);
    CHECK(realm_kv_create(1, REALM_KV_RING_MAX_CAPACITY + 1, 1, 1, NULL, NULL) == NULL);
    CHECK(realm_kv_create(1, 4, 1, 1, buf, NULL) == NULL); /* both or neither */
    /* 2^31 * 2^24 * 2^31 * 2^31 elements: the size check must not overflow */
    CHECK(realm_kv_create(INT32_MAX, REALM_KV_RING_MAX_CAPACITY, INT32_MAX, INT32_MAX, NULL, NULL) == NULL);
    CHECK(realm_kv_create(INT32_MAX, REALM_KV_RING_MAX_CAPACITY, 1, INT32_MAX, NULL, NULL) == NULL);

    /* bookkeeping only (storage elsewhere): reserve and truncate work, append does not */
    realm_kv_ring *kv = realm_kv_create(3, REALM_KV_RING_MAX_CAPACITY, 8, 128, NULL, NULL);
    CHECK(kv != NULL);
    if (kv == NULL) return;
    CHECK(realm_kv_storage_elems(kv) == 3LL * REALM_KV_RING_MAX_CAPACITY * 8 * 128);
    CHECK(realm_kv_reserve(kv, 2, 0, 100) == 0 && kv->n_pos[2] == 100);
    float row[8 * 128] = {0};
    CHECK(realm_kv_append(kv, 2, 100, 1, row, row) == -1);
    CHECK(realm_kv_k_row(kv, 0, 0) == NULL);
    CHECK(realm_kv_truncate(kv, 7) == 0 && kv->n_pos[2] == 7 && kv->n_pos[0] == 0);
    realm_kv_free(kv);
    realm_kv_free(NULL);
    CHECK(realm_kv_storage_elems(NULL) == -1);
}

static void test_append_truncate(void) {
    enum { L = 2, CAP = 4, H = 2, D = 3, ROW = H * D };
    realm_f16 k[L * CAP * ROW], v[L * CAP * ROW];
    memset(k, 0, sizeof(k));
    memset(v, 0, sizeof(v));
    realm_kv_ring *kv = realm_kv_create(L, CAP, H, D, k, v);
    CHECK(kv != NULL);
    if (kv == NULL) return;
    float kr[CAP + 1][ROW], vr[CAP + 1][ROW];
    for (int t = 0; t <= CAP; t++)
        for (int i = 0; i < ROW; i++) {
            kr[t][i] = any_value() * 100.0f;
            vr[t][i] = any_value();
        }

    /* argument errors change nothing */
    CHECK(realm_kv_append(NULL, 0, 0, 1, kr[0], vr[0]) == -1);
    CHECK(realm_kv_append(kv, 0, 0, 1, NULL, vr[0]) == -1);
    CHECK(realm_kv_append(kv, -1, 0, 1, kr[0], vr[0]) == -5);
    CHECK(realm_kv_append(kv, L, 0, 1, kr[0], vr[0]) == -5);
    CHECK(realm_kv_append(kv, 0, 0, 0, kr[0], vr[0]) == -1);
    CHECK(realm_kv_append(kv, 0, 0, CAP + 1, kr[0], vr[0]) == -1);
    CHECK(realm_kv_append(kv, 0, 1, 1, kr[0], vr[0]) == -5); /* skip ahead */
    CHECK(kv->n_pos[0] == 0 && kv->n_pos[1] == 0);

    /* positions 0..2 in one call, then 3, 4, 5 one at a time (5 wraps into slot 1) */
    CHECK(realm_kv_append(kv, 0, 0, 3, kr[0], vr[0]) == 0);
    CHECK(realm_kv_append(kv, 0, 1, 1, kr[0], vr[0]) == -5); /* rewrite without truncate */
    CHECK(realm_kv_append(kv, 0, 3, 1, kr[3], vr[3]) == 0);
    CHECK(kv->n_pos[0] == 4 && kv->n_pos[1] == 0 && kv->held_from[0] == 0);
    for (int p = 0; p < 4; p++) {
        const realm_f16 *kp = realm_kv_k_row(kv, 0, p), *vp = realm_kv_v_row(kv, 0, p);
        CHECK(kp == k + p * ROW && vp == v + p * ROW);
        for (int i = 0; i < ROW; i++) CHECK(kp[i] == realm_f32_to_f16(kr[p][i]) && vp[i] == realm_f32_to_f16(vr[p][i]));
    }
    CHECK(realm_kv_k_row(kv, 1, 5) == k + (CAP + 1) * ROW);
    CHECK(realm_kv_k_row(kv, 2, 0) == NULL && realm_kv_k_row(kv, 0, -1) == NULL);
    CHECK(realm_kv_window_start(kv, 0, 0) == 0 && realm_kv_window_start(kv, 0, 3) == 0);
    CHECK(realm_kv_window_start(kv, 0, 4) == 1 && realm_kv_window_start(kv, 0, 9) == 6);
    CHECK(realm_kv_window_start(kv, 0, -1) == -1);

    /* no wrap yet: any truncate works */
    CHECK(realm_kv_truncate(kv, 2) == 0 && kv->n_pos[0] == 2);
    CHECK(realm_kv_append(kv, 0, 2, 2, kr[2], vr[2]) == 0 && kv->n_pos[0] == 4);
    CHECK(realm_kv_append(kv, 0, 4, 1, kr[4], vr[4]) == 0); /* slot 0 now holds 4 */
    CHECK(kv->held_from[0] == 1);
    CHECK(realm_kv_append(kv, 0, 5, 1, kr[0], vr[0]) == 0); /* slot 1 now holds 5 */
    CHECK(kv->held_from[0] == 2 && kv->k[1 * ROW] == realm_f32_to_f16(kr[0][0]));

    /* held: 2..5. truncate(4) needs 1..3: fails and changes nothing, in any layer */
    CHECK(realm_kv_truncate(kv, 4) == -5);
    CHECK(kv->n_pos[0] == 6 && kv->held_from[0] == 2 && kv->n_pos[1] == 0);
    CHECK(realm_kv_truncate(kv, -1) == -1);
    CHECK(realm_kv_truncate(kv, 100) == 0 && kv->n_pos[0] == 6); /* beyond the end: no-op */
    /* truncate(5) needs 2..4: fine. Then 4 would need 1..3, and 1 is still gone */
    CHECK(realm_kv_truncate(kv, 5) == 0 && kv->n_pos[0] == 5 && kv->held_from[0] == 2);
    CHECK(realm_kv_truncate(kv, 4) == -5 && kv->n_pos[0] == 5);
    CHECK(realm_kv_append(kv, 0, 5, 1, kr[1], vr[1]) == 0);
    CHECK(realm_kv_truncate(kv, 0) == 0 && kv->n_pos[0] == 0 && kv->held_from[0] == 0);
    CHECK(realm_kv_append(kv, 0, 0, CAP, kr[0], vr[0]) == 0 && kv->held_from[0] == 0);
    realm_kv_free(kv);
}

/* Attention with everything made exact: q and K on the 1/16 grid (so the f32 dot is
 * exact in any order) and the reference doing ggml's float steps one by one, in the
 * AVX-512 build's float order (ops.h; test_attention forces it): P.V in 16 lanes by
 * cell for a batch (tinyBLAS), in 64 for one token (ggml_vec_dot_f16: 4 accumulators of
 * 16), reduced as those do. The result must be bit-identical. */
static void reduce_pv_lanes(float acc[64][64], int lanes, int64_t hd, float *o) {
    int w = lanes;
    if (lanes == 64) /* accumulators (0+2) + (1+3) */
        for (; w > 16; w /= 2)
            for (int r = 0; r < w / 2; r++)
                for (int64_t d = 0; d < hd; d++) acc[r][d] += acc[r + w / 2][d];
    for (; w > 1; w /= 2) /* the register by halves */
        for (int r = 0; r < w / 2; r++)
            for (int64_t d = 0; d < hd; d++) acc[r][d] += acc[r + w / 2][d];
    for (int64_t d = 0; d < hd; d++) o[d] = acc[0][d];
}

static void reference_attention(const realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens,
                                int32_t n_head, const float *q, float *out) {
    const int64_t hd = kv->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    float s[64];
    for (int64_t t = 0; t < n_tokens; t++)
        for (int32_t h = 0; h < n_head; h++) {
            const int64_t p = pos + t, first = realm_kv_window_start(kv, 0, p);
            const int32_t kvh = h / (n_head / kv->n_head_kv);
            const float *qr = q + (t * n_head + h) * hd;
            float *o = out + (t * n_head + h) * hd;
            float max = -INFINITY;
            for (int64_t j = first; j <= p; j++) {
                const realm_f16 *kr = realm_kv_k_row(kv, layer, j) + kvh * hd;
                double dot = 0.0; /* exact here */
                for (int64_t d = 0; d < hd; d++)
                    dot += (double)realm_f16_to_f32(realm_f32_to_f16(qr[d])) * realm_f16_to_f32(kr[d]);
                s[j - first] = (float)dot * scale;
                if (s[j - first] > max) max = s[j - first];
            }
            double sum = 0.0;
            for (int64_t j = 0; j <= p - first; j++) {
                s[j] = expf(s[j] - max);
                sum += s[j];
            }
            const float inv = (float)(1.0 / sum);
            const int lanes = n_tokens > 1 ? 16 : 64;
            static float acc[64][64];
            memset(acc, 0, sizeof acc);
            for (int64_t j = first; j <= p; j++) {
                const float pj = realm_f16_to_f32(realm_f32_to_f16(s[j - first] * inv));
                const realm_f16 *vr = realm_kv_v_row(kv, layer, j) + kvh * hd;
                for (int64_t d = 0; d < hd; d++) acc[j % lanes][d] += pj * realm_f16_to_f32(vr[d]);
            }
            reduce_pv_lanes(acc, lanes, hd, o);
        }
}

static void test_attention(void) {
    realm_set_float_order(REALM_ORDER_AVX512);
    enum { L = 2, CAP = 8, HKV = 2, NH = 4, D = 24, ROW = HKV * D, T = 5 };
    static realm_f16 k[L * CAP * ROW], v[L * CAP * ROW];
    realm_kv_ring *kv = realm_kv_create(L, CAP, HKV, D, k, v);
    CHECK(kv != NULL);
    if (kv == NULL) return;
    const int threads_max = 3;
    const int64_t n_scratch = realm_attention_scratch_floats(kv, NH, threads_max);
    CHECK(n_scratch >= threads_max * (CAP + D));
    CHECK(realm_attention_scratch_floats(kv, NH, 0) == -1 && realm_attention_scratch_floats(NULL, NH, 1) == -1);
    float *scratch = malloc((size_t)n_scratch * sizeof(float));
    float kr[T][ROW], vr[T][ROW], q[T][NH][D], out[T][NH][D], ref[T][NH][D];

    /* prefill: 5 tokens at positions 0..4, with 1, 2 and 3 threads */
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < ROW; i++) {
            kr[t][i] = grid_value();
            vr[t][i] = any_value();
        }
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < D; d++) q[t][h][d] = grid_value() * (1.0f + any_value() * 0x1.0p-13f);
    }
    CHECK(realm_kv_append(kv, 1, 0, T, kr[0], vr[0]) == 0);
    reference_attention(kv, 1, 0, T, NH, q[0][0], ref[0][0]);
    for (int threads = 1; threads <= threads_max; threads++) {
        memset(out, 0xff, sizeof(out));
        CHECK(realm_attention(kv, 1, 0, T, NH, q[0][0], out[0][0], scratch, threads) == 0);
        CHECK(memcmp(out, ref, sizeof(out)) == 0);
    }
    /* the last three tokens alone see the same windows */
    CHECK(realm_attention(kv, 1, 2, 3, NH, q[2][0], out[2][0], scratch, 2) == 0);
    CHECK(memcmp(out[2], ref[2], sizeof(out[2]) * 3) == 0);

    /* errors */
    CHECK(realm_attention(kv, 1, T - 1, 2, NH, q[0][0], out[0][0], scratch, 1) == -5); /* T not appended */
    CHECK(realm_attention(kv, 0, 0, 1, NH, q[0][0], out[0][0], scratch, 1) == -5);     /* layer 0 empty */
    CHECK(realm_attention(kv, 2, 0, 1, NH, q[0][0], out[0][0], scratch, 1) == -5);
    CHECK(realm_attention(kv, 1, -1, 1, NH, q[0][0], out[0][0], scratch, 1) == -5);
    CHECK(realm_attention(kv, 1, 0, 1, 3, q[0][0], out[0][0], scratch, 1) == -1); /* 3 % 2 */
    CHECK(realm_attention(kv, 1, 0, 0, NH, q[0][0], out[0][0], scratch, 1) == -1);
    CHECK(realm_attention(kv, 1, 0, 1, NH, q[0][0], out[0][0], scratch, 0) == -1);
    CHECK(realm_attention(kv, 1, 0, 1, NH, q[0][0], q[0][0], scratch, 1) == -1); /* out aliases q */
    CHECK(realm_attention(kv, 1, 0, 1, NH, q[0][0], out[0][0], NULL, 1) == -1);

    /* decode past the wrap, one token at a time: positions 5 .. 20 */
    for (int64_t p = T; p < T + 2 * CAP; p++) {
        for (int i = 0; i < ROW; i++) {
            kr[0][i] = grid_value();
            vr[0][i] = any_value();
        }
        CHECK(realm_kv_append(kv, 1, p, 1, kr[0], vr[0]) == 0);
        reference_attention(kv, 1, p, 1, NH, q[p % T][0], ref[0][0]);
        CHECK(realm_attention(kv, 1, p, 1, NH, q[p % T][0], out[0][0], scratch, 2) == 0);
        CHECK(memcmp(out[0], ref[0], sizeof(out[0])) == 0);
    }
    /* a batch over the wrap: position 22 overwrote 14, which the window of 21 needs */
    CHECK(realm_kv_append(kv, 1, 21, 2, kr[0], vr[0]) == 0);
    CHECK(realm_attention(kv, 1, 22, 1, NH, q[0][0], out[0][0], scratch, 1) == 0);
    CHECK(realm_attention(kv, 1, 21, 2, NH, q[0][0], out[0][0], scratch, 1) == -5);
    free(scratch);
    realm_kv_free(kv);
    realm_set_float_order(-1);
}

/* Each float order's portable build gives its SIMD build's bits (realm_set_isa), for a
 * batch and for one token at a time past the wrap, with K and V off the grid. */
static void test_attention_orders_portable_is_simd(void) {
    enum { L = 1, CAP = 16, HKV = 2, NH = 6, D = 48, ROW = HKV * D, T = 9 };
    static realm_f16 k[L * CAP * ROW], v[L * CAP * ROW];
    realm_kv_ring *kv = realm_kv_create(L, CAP, HKV, D, k, v);
    CHECK(kv != NULL);
    if (kv == NULL) return;
    float *scratch = malloc((size_t)realm_attention_scratch_floats(kv, NH, 2) * sizeof(float));
    static float kr[CAP + T][ROW], vr[CAP + T][ROW], q[CAP + T][NH][D], simd[T][NH][D], portable[T][NH][D];
    for (int t = 0; t < CAP + T; t++) {
        for (int i = 0; i < ROW; i++) kr[t][i] = 4 * any_value(), vr[t][i] = any_value();
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < D; d++) q[t][h][d] = any_value();
    }
    CHECK(realm_kv_append(kv, 0, 0, T, kr[0], vr[0]) == 0);
    const int orders[2] = {REALM_ORDER_AVX512, REALM_ORDER_AVX2};
    for (int o = 0; o < 2; o++) {
        CHECK(realm_set_float_order(orders[o]) == orders[o]);
        realm_set_isa(-1);
        CHECK(realm_attention(kv, 0, 0, T, NH, q[0][0], simd[0][0], scratch, 2) == 0);
        realm_set_isa(REALM_ISA_SCALAR);
        CHECK(realm_attention(kv, 0, 0, T, NH, q[0][0], portable[0][0], scratch, 2) == 0);
        CHECK(memcmp(simd, portable, sizeof(simd)) == 0);
    }
    for (int64_t p = T; p < T + CAP; p++) {
        CHECK(realm_kv_append(kv, 0, p, 1, kr[p], vr[p]) == 0);
        for (int o = 0; o < 2; o++) {
            realm_set_float_order(orders[o]);
            realm_set_isa(-1);
            CHECK(realm_attention(kv, 0, p, 1, NH, q[p][0], simd[0][0], scratch, 1) == 0);
            realm_set_isa(REALM_ISA_SCALAR);
            CHECK(realm_attention(kv, 0, p, 1, NH, q[p][0], portable[0][0], scratch, 1) == 0);
            CHECK(memcmp(simd[0], portable[0], sizeof(simd[0])) == 0);
        }
    }
    realm_set_isa(-1);
    realm_set_float_order(-1);
    free(scratch);
    realm_kv_free(kv);
}

/* The kernel's branch-free f16 -> f32 equals realm_f16_to_f32 on all 65536 values:
 * with a one-position window p = 1 exactly, so out = 0 + 1 * V. */
static void test_all_f16_values(void) {
    enum { D = 65536 };
    realm_f16 *k = calloc(D, sizeof(realm_f16)), *v = malloc(D * sizeof(realm_f16));
    float *q = calloc(D, sizeof(float)), *out = malloc(D * sizeof(float));
    for (int i = 0; i < D; i++) v[i] = (realm_f16)i;
    realm_kv_ring *kv = realm_kv_create(1, 1, 1, D, k, v);
    CHECK(kv != NULL && realm_kv_reserve(kv, 0, 0, 1) == 0);
    float *scratch = malloc((size_t)realm_attention_scratch_floats(kv, 1, 1) * sizeof(float));
    CHECK(realm_attention(kv, 0, 0, 1, 1, q, out, scratch, 1) == 0);
    int bad = 0;
    for (int i = 0; i < D; i++) {
        const float want = realm_f16_to_f32((realm_f16)i);
        if (isnan(want) ? !isnan(out[i]) : out[i] != want) bad++;
    }
    CHECK(bad == 0);
    free(k), free(v), free(q), free(out), free(scratch);
    realm_kv_free(kv);
}

int main(void) {
    test_create();
    test_append_truncate();
    test_attention();
    test_attention_orders_portable_is_simd();
    test_all_f16_values();
    if (failures) {
        fprintf(stderr, "test_kv_ring: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_kv_ring: all checks passed\n");
    return 0;
}
