/* test_kernels.c: block decoders, encoders, matmul on every ISA and the llama layer, in
 * plain C (run by tests/c/run.sh under ASan and UBSan). Exits non-zero on a failure. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "act_quant.h"
#include "attention.h"
#include "dequant.h"
#include "fp16.h"
#include "ggml_blocks.h"
#include "kv_ring.h"
#include "llama.h"
#include "matmul.h"
#include "ops.h"
#include "quantize.h"
#include "realm_errors.h"
#include "repack.h"
#include "vec_dot.h"
#include "check.h"

static float normal(void) { /* sum of 4 uniforms: close enough to a bell for these checks */
    return (uniform() + uniform() + uniform() + uniform()) * 0.866f;
}

static const int WEIGHT_TYPES[] = {REALM_TYPE_F32,  REALM_TYPE_F16,  REALM_TYPE_BF16, REALM_TYPE_Q4_0, REALM_TYPE_Q4_1,
                                   REALM_TYPE_Q5_0, REALM_TYPE_Q5_1, REALM_TYPE_Q8_0, REALM_TYPE_Q2_K, REALM_TYPE_Q3_K,
                                   REALM_TYPE_Q4_K, REALM_TYPE_Q5_K, REALM_TYPE_Q6_K};
#define N_WEIGHT_TYPES (int)(sizeof WEIGHT_TYPES / sizeof WEIGHT_TYPES[0])

/* Random valid bytes for n_rows x n_cols of `type`: random quants, and every f16 scale
 * field (at the ggml offsets) a small positive value. */
static void random_weights(int type, uint8_t *w, int64_t n_rows, int64_t n_cols) {
    const int qk = realm_type_block_elems(type), bb = realm_type_block_bytes(type);
    const int64_t nb = n_rows * n_cols / qk;
    if (type == REALM_TYPE_F32 || type == REALM_TYPE_F16 || type == REALM_TYPE_BF16) {
        for (int64_t i = 0; i < nb; i++) {
            const float v = 0.02f * normal();
            if (type == REALM_TYPE_F32) memcpy(w + 4 * i, &v, 4);
            else {
                const uint16_t h = type == REALM_TYPE_F16 ? realm_f32_to_f16(v) : realm_f32_to_bf16(v);
                memcpy(w + 2 * i, &h, 2);
            }
        }
        return;
    }
    int offs[2] = {-1, -1};
    switch (type) {
    case REALM_TYPE_Q4_1: case REALM_TYPE_Q5_1: case REALM_TYPE_Q4_K: case REALM_TYPE_Q5_K:
        offs[0] = 0, offs[1] = 2; break;
    case REALM_TYPE_Q2_K: offs[0] = 80, offs[1] = 82; break;
    case REALM_TYPE_Q3_K: offs[0] = 108; break;
    case REALM_TYPE_Q6_K: offs[0] = 208; break;
    default: offs[0] = 0; break;
    }
    for (int64_t i = 0; i < nb * bb; i++) w[i] = (uint8_t)next_u64();
    for (int64_t b = 0; b < nb; b++)
        for (int k = 0; k < 2; k++)
            if (offs[k] >= 0) {
                const uint16_t h = realm_f32_to_f16(1e-3f * (0.5f + fabsf(uniform())));
                memcpy(w + b * bb + offs[k], &h, 2);
            }
}

/* y = W x in double from decoded weights and unrounded activations */
static void reference(int type, const uint8_t *w, int64_t n_rows, int64_t n_cols, const float *x, int64_t n_tok,
                      double *y) {
    const int64_t rb = n_cols / realm_type_block_elems(type) * realm_type_block_bytes(type);
    float *row = malloc((size_t)n_cols * sizeof *row);
    for (int64_t r = 0; r < n_rows; r++) {
        CHECK(realm_dequantize_row(type, w + r * rb, row, n_cols) == 0);
        for (int64_t t = 0; t < n_tok; t++) {
            double s = 0;
            for (int64_t c = 0; c < n_cols; c++) s += (double)row[c] * x[t * n_cols + c];
            y[t * n_rows + r] = s;
        }
    }
    free(row);
}

static double rel_l2(const float *a, const double *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den + 1e-300));
}

static void test_matmul_every_type_and_isa(void) {
    const int64_t n_rows = 37, n_cols = 512, n_tok = 5;
    float *x = malloc(n_tok * n_cols * sizeof *x);
    for (int64_t i = 0; i < n_tok * n_cols; i++) x[i] = normal();
    for (int k = 0; k < N_WEIGHT_TYPES; k++) {
        const int type = WEIGHT_TYPES[k];
        const int64_t rb = n_cols / realm_type_block_elems(type) * realm_type_block_bytes(type);
        uint8_t *w = malloc(n_rows * rb);
        random_weights(type, w, n_rows, n_cols);
        double *ref = malloc(n_tok * n_rows * sizeof *ref);
        reference(type, w, n_rows, n_cols, x, n_tok, ref);
        const int64_t sb = realm_matmul_scratch_bytes(type, n_cols, n_tok);
        CHECK(sb > 0);
        void *scratch = malloc(sb);
        float *y[3];
        for (int isa = 0; isa <= 2; isa++) {
            y[isa] = malloc(n_tok * n_rows * sizeof(float));
            realm_set_isa(isa);
            CHECK(realm_matmul(w, type, n_rows, n_cols, x, n_tok, y[isa], n_rows, scratch, 1 + isa) == 0);
        }
        realm_set_isa(-1);
        const double err = rel_l2(y[0], ref, n_tok * n_rows);
        if (!(err < 2e-2)) fprintf(stderr, "type %d: scalar vs float64 %g\n", type, err);
        CHECK(err < 2e-2); /* the activation rounding, no more */
        for (int isa = 1; isa <= 2; isa++) {
            double *d0 = malloc(n_tok * n_rows * sizeof *d0);
            for (int64_t i = 0; i < n_tok * n_rows; i++) d0[i] = y[0][i];
            const double e = rel_l2(y[isa], d0, n_tok * n_rows);
            if (!(e < 1e-5)) fprintf(stderr, "type %d isa %d: vs scalar %g\n", type, isa, e);
            CHECK(e < 1e-5);
            free(d0);
        }
        for (int isa = 0; isa <= 2; isa++) free(y[isa]);
        free(scratch);
        free(ref);
        free(w);
    }
    free(x);
    /* bad shapes are refused, not read past */
    CHECK(realm_matmul_scratch_bytes(REALM_TYPE_Q4_K, 300, 1) == -1);
    CHECK(realm_matmul_scratch_bytes(REALM_TYPE_Q8_1, 256, 1) == -1);
    CHECK(realm_matmul_scratch_bytes(99, 256, 1) == -1);
}

static void test_encoders_round_trip(void) {
    const int types[] = {REALM_TYPE_Q2_K, REALM_TYPE_Q3_K, REALM_TYPE_Q4_K, REALM_TYPE_Q5_K, REALM_TYPE_Q6_K};
    const double bound[] = {0.35, 0.2, 0.09, 0.045, 0.023};
    const int64_t n = 4 * QK_K;
    float *x = malloc(n * sizeof *x), *back = malloc(n * sizeof *back);
    uint8_t *q = malloc(n * 2);
    for (int k = 0; k < 5; k++) {
        for (int64_t i = 0; i < n; i++) x[i] = 0.02f * normal();
        CHECK(realm_quantize_row_k(types[k], x, q, n) == 0);
        CHECK(realm_dequantize_row(types[k], q, back, n) == 0);
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; i++) num += (back[i] - x[i]) * (back[i] - x[i]), den += (double)x[i] * x[i];
        CHECK(sqrt(num / den) < bound[k]);
    }
    CHECK(realm_quantize_row_k(REALM_TYPE_Q4_0, x, q, n) == -1);
    CHECK(realm_quantize_row_k(REALM_TYPE_Q4_K, x, q, 100) == -1);
    CHECK(realm_dequantize_row(REALM_TYPE_Q4_K, q, back, 100) == -1);
    free(x), free(back), free(q);
}

static void test_llama_layer(void) {
    realm_llama_dims d = {.n_embd = 256, .n_head = 4, .n_head_kv = 2, .head_dim = 64, .n_ff = 512,
                          .rope_dim = 64, .n_vocab = 300, .rms_eps = 1e-5f, .rope_base = 10000.f,
                          .rope_freq_scale = 1.f, .embd_scale = 1.f};
    const int type = REALM_TYPE_Q8_0;
    const int64_t kvd = (int64_t)d.n_head_kv * d.head_dim;
    struct { int64_t r, c; } shapes[7] = {{256, 256}, {kvd, 256}, {kvd, 256}, {256, 256}, {512, 256}, {512, 256}, {256, 512}};
    uint8_t *ws[7];
    realm_tensor ts[7];
    for (int i = 0; i < 7; i++) {
        const int64_t rb = shapes[i].c / 32 * 34;
        ws[i] = malloc(shapes[i].r * rb);
        random_weights(type, ws[i], shapes[i].r, shapes[i].c);
        ts[i] = (realm_tensor){ws[i], type, shapes[i].r, shapes[i].c};
    }
    float norm[256];
    for (int i = 0; i < 256; i++) norm[i] = 1.0f + 0.1f * uniform();
    realm_llama_layer L = {norm, norm, ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6],
                           .rope_base = d.rope_base, .rope_freq_scale = d.rope_freq_scale};
    CHECK(realm_llama_check_layer(&d, &L) == 0);

    const int64_t cap = 8;
    realm_f16 *k = calloc(cap * kvd, 2), *v = calloc(cap * kvd, 2);
    realm_kv_ring *kv = realm_kv_create(1, cap, d.n_head_kv, d.head_dim, k, v);
    CHECK(kv != NULL);
    realm_llama_scratch s;
    const int64_t att = realm_attention_scratch_floats(kv, d.n_head, 2);
    const int64_t need = realm_llama_scratch_init(&s, &d, &L, 1, NULL, 4, att, NULL, 0);
    CHECK(need > 0);
    void *buf = aligned_alloc(64, (need + 63) / 64 * 64);
    CHECK(realm_llama_scratch_init(&s, &d, &L, 1, NULL, 4, att, buf, need) == need);

    float x[11 * 256];
    for (int i = 0; i < 11 * 256; i++) x[i] = normal();
    /* 6 tokens (chunks of 4 and 2), then 5 more one by one past the ring's wrap */
    CHECK(realm_llama_layer_forward(&d, &L, 0, kv, 0, 6, x, x, &s, 2) == 0);
    for (int p = 6; p < 11; p++) CHECK(realm_llama_layer_forward(&d, &L, 0, kv, p, 1, x + p * 256, x + p * 256, &s, 2) == 0);
    int finite = 1;
    for (int i = 0; i < 11 * 256; i++) finite &= isfinite(x[i]);
    CHECK(finite);
    CHECK(kv->n_pos[0] == 11);
    /* misuse: wrong layer, skipped position, bad arguments */
    CHECK(realm_llama_layer_forward(&d, &L, 1, kv, 11, 1, x, x, &s, 1) == -5);
    CHECK(realm_llama_layer_forward(&d, &L, 0, kv, 13, 1, x, x, &s, 1) == -5);
    CHECK(realm_llama_layer_forward(&d, &L, 0, kv, 11, 0, x, x, &s, 1) == -1);
    realm_llama_layer bad = L;
    bad.w_down.n_cols = 256;
    CHECK(realm_llama_check_layer(&d, &bad) == -1);

    /* embedding rows: ids are bounds-checked */
    int32_t ids[2] = {3, 255};
    float rows[2 * 256];
    CHECK(realm_get_rows(ws[0], type, 256, 256, ids, 2, rows) == 0);
    ids[1] = 256;
    CHECK(realm_get_rows(ws[0], type, 256, 256, ids, 2, rows) == -5);
    ids[1] = -1;
    CHECK(realm_get_rows(ws[0], type, 256, 256, ids, 2, rows) == -5);

    realm_kv_free(kv);
    free(buf), free(k), free(v);
    for (int i = 0; i < 7; i++) free(ws[i]);
}

static void test_rope_factors(void) {
    /* dividing every angle by 2 (freq_factors) equals scaling it by 0.5 (freq_scale),
     * bit for bit; all-1 factors equal none */
    float a[2 * 64], b[2 * 64], c[2 * 64], ff[32], one[32];
    for (int i = 0; i < 2 * 64; i++) a[i] = b[i] = c[i] = normal();
    for (int i = 0; i < 32; i++) ff[i] = 2.0f, one[i] = 1.0f;
    realm_rope(a, 2, 64, 64, 777, 10000.f, 1.0f, ff, 0);
    realm_rope(b, 2, 64, 64, 777, 10000.f, 0.5f, NULL, 0);
    CHECK(memcmp(a, b, sizeof a) == 0);
    memcpy(a, c, sizeof a);
    realm_rope(a, 2, 64, 64, 777, 10000.f, 1.0f, one, 0);
    realm_rope(c, 2, 64, 64, 777, 10000.f, 1.0f, NULL, 0);
    CHECK(memcmp(a, c, sizeof a) == 0);
}

/* Q4_0 and Q4_K repacked to Q4_0_X16 and Q4_K_X16 multiply bit for bit as their file
 * types, on every ISA and token count (Q4_K's batched order from 4 tokens included);
 * shapes and pairs they cannot hold are refused. */
static void test_repacked(int wtype, int packed) {
    const int64_t n_rows = 48, n_cols = 512, max_tok = 20;
    const int64_t rb = n_cols / realm_type_block_elems(wtype) * realm_type_block_bytes(wtype);
    uint8_t *w = malloc(n_rows * rb), *p = malloc(n_rows * rb);
    random_weights(wtype, w, n_rows, n_cols);
    CHECK(realm_repack(wtype, packed, w, p, n_rows, n_cols) == 0);
    if (wtype == REALM_TYPE_Q4_0) { /* block 1 of row 17 (group 1, lane 1) */
        const block_q4_0 *b = (const block_q4_0 *)(w + 17 * rb) + 1;
        const block_q4_0_x16 *g = (const block_q4_0_x16 *)(p + 16 * rb) + 1;
        CHECK(g->d[1] == b->d && memcmp(g->qs[2][1], b->qs + 8, 4) == 0);
    } else { /* word 5 (qs bytes 4..7) of block 1 of row 17 */
        const block_q4_K *b = (const block_q4_K *)(w + 17 * rb) + 1;
        const block_q4_K_x16 *g = (const block_q4_K_x16 *)(p + 16 * rb) + 1;
        CHECK(memcmp(&g->w[5][1], b->qs + 4, 4) == 0 && memcmp(&g->w[0][1], &b->d, 2) == 0);
    }
    float *x = malloc(max_tok * n_cols * sizeof *x), *y0 = malloc(max_tok * n_rows * sizeof *y0);
    float *y1 = malloc(max_tok * n_rows * sizeof *y1);
    for (int64_t i = 0; i < max_tok * n_cols; i++) x[i] = normal();
    void *scratch = malloc(realm_matmul_scratch_bytes(wtype, n_cols, max_tok));
    for (int isa = 0; isa <= 2; isa++) {
        realm_set_isa(isa);
        for (int n_tok = 1; n_tok <= max_tok; n_tok += n_tok < 9 ? 1 : 11) {
            CHECK(realm_matmul(w, wtype, n_rows, n_cols, x, n_tok, y0, n_rows, scratch, 2) == 0);
            CHECK(realm_matmul(p, packed, n_rows, n_cols, x, n_tok, y1, n_rows, scratch, 2) == 0);
            CHECK(memcmp(y0, y1, n_tok * n_rows * sizeof *y0) == 0);
        }
    }
    realm_set_isa(-1);
    CHECK(realm_matmul(p, packed, 40, n_cols, x, 1, y1, n_rows, scratch, 1) == REALM_ERR_INVALID);
    CHECK(realm_repack(wtype, packed, w, p, 40, n_cols) == REALM_ERR_INVALID);
    CHECK(realm_repack(REALM_TYPE_Q8_0, packed, w, p, 16, n_cols) == REALM_ERR_INVALID);
    CHECK(realm_repack(wtype, packed == REALM_TYPE_Q4_0_X16 ? REALM_TYPE_Q4_K_X16 : REALM_TYPE_Q4_0_X16, w, p, 16,
                       n_cols) == REALM_ERR_INVALID);
    CHECK(realm_repack_type(wtype, 40, n_cols) == -1 && realm_repack_type(REALM_TYPE_Q6_K, 48, 256) == -1);
    CHECK(realm_get_rows(p, packed, n_rows, n_cols, (const int32_t[]){0}, 1, y1) == REALM_ERR_INVALID);
    free(scratch);
    free(y1);
    free(y0);
    free(x);
    free(p);
    free(w);
}

int main(void) {
    test_rope_factors();
    test_matmul_every_type_and_isa();
    test_repacked(REALM_TYPE_Q4_0, REALM_TYPE_Q4_0_X16);
    test_repacked(REALM_TYPE_Q4_K, REALM_TYPE_Q4_K_X16);
    test_encoders_round_trip();
    test_llama_layer();
    if (failures) {
        fprintf(stderr, "test_kernels: %d checks failed\n", failures);
        return 1;
    }
    printf("test_kernels: all checks passed (cpu isa %d)\n", realm_cpu_isa());
    return 0;
}
