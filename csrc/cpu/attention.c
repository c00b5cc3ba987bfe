/* attention.c: causal grouped-query attention over a KV ring (see attention.h).
 *
 * Work item: one token and one KV head, i.e. the head_dim output rows of the query
 * heads that read that KV head; the pool (threadpool.h) hands ranges of items to
 * threads and each is computed by one thread start to finish, so the result does not
 * depend on the thread count.
 * Per query head, over the window positions j in ascending order:
 *   s[j] = (f32 dot of q16 and K16[j]) * scale        (exact products, f32 sums)
 *   e[j] = exp(s[j] - max s) (ggml's vectorized expf, realm_expf_ggml);
 *   sum  = sums of 16 e's in float (cache cells aligned at 16), those in double
 *   p[j] = f16(e[j] * (float)(1.0 / sum))
 *   out  = sum_j p[j] * V16[j], accumulated in f32 one position at a time
 * Built with -ffp-contract=off: no fused multiply-adds, as in ggml's scalar semantics.
 *
 * Scratch (owned by the caller, no allocation here): per thread a slice of
 * slice_floats() floats, see attend_group.
 */
#include "attention.h"
#include "realm_errors.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fp16.h"
#include "ops.h"
#include "threadpool.h"
#include "vec_dot.h"

/* f16 -> f32 without branches (exact for every finite value and infinity; NaNs stay
 * NaN), so that the head_dim loops below vectorize; realm_f16_to_f32 branches. The
 * normal case rebiases the exponent by a multiply by 2^-112; subnormals go through
 * a float subtraction (the FP16 library's method). */
static inline float f16_to_f32_vec(realm_f16 h) {
    const uint32_t two_w = (uint32_t)h << 17; /* exponent and mantissa, sign dropped */
    const uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    const float normal = realm_bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float subnormal = realm_bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t is_sub = 0u - (uint32_t)(two_w < (1u << 27)); /* all ones or zero */
    const uint32_t bits = (realm_f32_to_bits(subnormal) & is_sub) | (realm_f32_to_bits(normal) & ~is_sub);
    return realm_bits_to_f32(sign | bits);
}

/* Running sums kept per lane, the shape a SIMD dot product has (ggml's f16 dot also
 * sums in lanes); the lanes are added pairwise at the end. */
#define LANES 16

/* f32 dot of q (f16 values held as f32) and k (f16 values held as f32). Inlined into
 * each ISA's attend_group, where the 16 lanes become one or two vector registers (each
 * lane's sum is the same in any ISA: products and adds, no fused multiply-adds). */
static inline __attribute__((always_inline)) float dot_lanes(const float *restrict q, const float *restrict k,
                                                             int64_t n) {
    float acc[LANES] = {0};
    int64_t d = 0;
    for (; d + LANES <= n; d += LANES)
        for (int i = 0; i < LANES; i++) acc[i] += q[d + i] * k[d + i];
    for (int i = 0; d < n; d++, i++) acc[i] += q[d] * k[d];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++) acc[i] += acc[i + w];
    return acc[0];
}

/* A row of f16 to f32, and a row of floats rounded to f16 values in place: exact
 * conversions and round to nearest even, so every ISA gives the same floats. */
static inline __attribute__((always_inline)) void row_f16_to_f32_portable(const realm_f16 *restrict h,
                                                                          float *restrict f, int64_t n) {
    for (int64_t d = 0; d < n; d++) f[d] = f16_to_f32_vec(h[d]);
}

static inline __attribute__((always_inline)) void round_f16_portable(float *f, int64_t n) {
    for (int64_t d = 0; d < n; d++) f[d] = realm_f16_to_f32(realm_f32_to_f16(f[d]));
}

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2,f16c"))) static inline __attribute__((always_inline)) void row_f16_to_f32_f16c(
    const realm_f16 *restrict h, float *restrict f, int64_t n) {
    int64_t d = 0;
    for (; d + 8 <= n; d += 8) _mm256_storeu_ps(f + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + d))));
    for (; d < n; d++) f[d] = f16_to_f32_vec(h[d]);
}

__attribute__((target("avx2,f16c"))) static inline __attribute__((always_inline)) void round_f16_f16c(float *f,
                                                                                                     int64_t n) {
    int64_t d = 0;
    for (; d + 8 <= n; d += 8)
        _mm256_storeu_ps(f + d, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(f + d), _MM_FROUND_TO_NEAREST_INT)));
    for (; d < n; d++) f[d] = realm_f16_to_f32(realm_f32_to_f16(f[d]));
}
#endif

/* 16 floats added in the order of a 16-lane horizontal reduction (halves, quarters,
 * then the two pairs) */
static float reduce16(const float *v) {
    float t8[8], t4[4];
    for (int i = 0; i < 8; i++) t8[i] = v[i + 8] + v[i];
    for (int i = 0; i < 4; i++) t4[i] = t8[i + 4] + t8[i];
    return (t4[0] + t4[2]) + (t4[1] + t4[3]);
}

/* s[0..n) := exp(s - max) for the window starting at position `first`; returns their
 * sum as ggml's softmax forms it: per 16 cache cells (cell = position, groups aligned
 * at multiples of 16; cells outside the window are 0) in float, the groups in double. */
static double exp_and_sum(float *restrict s, int64_t n, int64_t first, float max) {
    double sum = 0.0;
    float lanes[16];
    for (int64_t j = 0; j < n; j++) s[j] -= max;
    realm_expf_ggml_row(s, s, n);
    for (int64_t j = 0; j < n;) {
        memset(lanes, 0, sizeof lanes);
        do {
            lanes[(first + j) % 16] = s[j];
            j++;
        } while (j < n && (first + j) % 16);
        sum += (double)reduce16(lanes);
    }
    return sum;
}

/* floats of one thread's scratch slice, rounded up to 64 bytes (no false sharing) */
static int64_t slice_floats(const realm_kv_ring *kv, int32_t group) {
    return ((int64_t)group * (kv->capacity + kv->head_dim) + kv->head_dim + 15) / 16 * 16;
}

int64_t realm_attention_scratch_floats(const realm_kv_ring *kv, int32_t n_head, int n_threads) {
    if (kv == NULL || n_threads < 1 || n_head < 1 || n_head % kv->n_head_kv) return -1;
    return slice_floats(kv, n_head / kv->n_head_kv) * n_threads; /* < 2^32 * 2^31 */
}

/* do the byte ranges [a, a + na) and [b, b + nb) overlap? */
static int overlaps(const void *a, int64_t na, const void *b, int64_t nb) {
    const uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return pa < pb + (uintptr_t)nb && pb < pa + (uintptr_t)na;
}

static int64_t next_slot(const realm_kv_ring *kv, int64_t slot) {
    return slot + 1 == kv->capacity ? 0 : slot + 1;
}

/* One token at position p and one KV head kvh, for the `group` query heads that read
 * it: q and out are [group][head_dim] f32. Each K and V row of the window is converted
 * to f32 once and serves every head of the group; per head the arithmetic is the one
 * the file comment gives. Scratch: [group][capacity] scores, [group][head_dim] q16,
 * [head_dim] converted row. */
static inline __attribute__((always_inline)) void attend_group_body(
    const realm_kv_ring *kv, int32_t layer, int64_t p, int32_t kvh, int32_t group, const float *q,
    float *restrict out, float *restrict scratch,
    void (*convert)(const realm_f16 *restrict, float *restrict, int64_t), void (*round_f16)(float *, int64_t)) {
    const int64_t hd = kv->head_dim, cap = kv->capacity;
    const int64_t row = (int64_t)kv->n_head_kv * hd; /* f16 elements per position */
    const int64_t first = realm_kv_window_start(kv, p), n = p - first + 1;
    const realm_f16 *k_layer = kv->k + (int64_t)layer * cap * row + (int64_t)kvh * hd;
    const realm_f16 *v_layer = kv->v + (int64_t)layer * cap * row + (int64_t)kvh * hd;
    float *restrict s = scratch;                   /* [group][cap] scores, then probabilities */
    float *restrict q16 = scratch + group * cap;   /* [group][hd] */
    float *restrict buf = q16 + group * hd;        /* [hd] one K or V row as f32 */
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t first_slot = first % cap; /* the window's slots wrap at capacity */

    memcpy(q16, q, (size_t)(group * hd) * sizeof *q16);
    round_f16(q16, group * hd);
    for (int64_t j = 0, slot = first_slot; j < n; j++, slot = next_slot(kv, slot)) {
        convert(k_layer + slot * row, buf, hd);
        for (int32_t h = 0; h < group; h++) s[h * cap + j] = dot_lanes(q16 + h * hd, buf, hd) * scale;
    }
    for (int32_t h = 0; h < group; h++) {
        float *sh = s + h * cap, max = -INFINITY;
        for (int64_t j = 0; j < n; j++) max = sh[j] > max ? sh[j] : max;
        const float inv = (float)(1.0 / exp_and_sum(sh, n, first, max));
        for (int64_t j = 0; j < n; j++) sh[j] *= inv;
        round_f16(sh, n);
    }
    for (int64_t i = 0; i < group * hd; i++) out[i] = 0.0f;
    for (int64_t j = 0, slot = first_slot; j < n; j++, slot = next_slot(kv, slot)) {
        convert(v_layer + slot * row, buf, hd);
        for (int32_t h = 0; h < group; h++) {
            float *restrict o = out + h * hd;
            const float pj = s[h * cap + j];
            for (int64_t d = 0; d < hd; d++) o[d] += pj * buf[d];
        }
    }
}

/* attend_group compiled twice, portable and AVX2 + F16C (the same arithmetic: the 16
 * lanes are two ymm registers), picked by realm_active_isa() so that tests can force
 * the portable one. AVX-512 machines take the AVX2 build too: a zmm build was slower
 * and, by lowering the core's clock, slowed the ymm matmuls around it (docs/PERF.md). */
typedef void (*attend_group_fn)(const realm_kv_ring *, int32_t, int64_t, int32_t, int32_t, const float *, float *,
                                float *);

static void attend_group_portable(const realm_kv_ring *kv, int32_t layer, int64_t p, int32_t kvh, int32_t group,
                                  const float *q, float *out, float *scratch) {
    attend_group_body(kv, layer, p, kvh, group, q, out, scratch, row_f16_to_f32_portable, round_f16_portable);
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) static void attend_group_avx2(const realm_kv_ring *kv, int32_t layer, int64_t p,
                                                                    int32_t kvh, int32_t group, const float *q,
                                                                    float *out, float *scratch) {
    attend_group_body(kv, layer, p, kvh, group, q, out, scratch, row_f16_to_f32_f16c, round_f16_f16c);
}
#endif

static attend_group_fn pick_attend_group(void) {
#if defined(__x86_64__)
    switch (realm_active_isa()) {
    case REALM_ISA_AVX512:
    case REALM_ISA_AVX2: return attend_group_avx2;
    default: break;
    }
#endif
    return attend_group_portable;
}

struct attend_job {
    const realm_attention_seq *seqs;
    int n_seqs;
    int32_t layer, n_head, group;
    const float *q;
    float *out;
    float *scratch; /* slice floats per thread */
    int64_t slice;
    attend_group_fn attend_group;
    int64_t n_items;
    int n_threads;
};

/* The pool hands each thread a contiguous range; the items are dealt round-robin
 * instead (item i to thread i % T), since later tokens of a causal batch attend to
 * more positions. Item i: the i-th (row, KV head) pair over the sequences in order. */
static void attend_items(void *ctx, int64_t i0, int64_t i1, int thread) {
    const struct attend_job *j = ctx;
    const int64_t n_kv = j->seqs[0].kv->n_head_kv, hd = j->seqs[0].kv->head_dim;
    const int n_threads = realm_pool_threads(j->n_items, j->n_threads);
    float *my_scratch = j->scratch + thread * j->slice;
    (void)i0, (void)i1;
    int sq = 0;
    int64_t seq_first_item = 0, seq_first_row = 0; /* of sequence sq */
    for (int64_t i = thread; i < j->n_items; i += n_threads) {
        while (i >= seq_first_item + j->seqs[sq].n_tokens * n_kv) {
            seq_first_item += j->seqs[sq].n_tokens * n_kv;
            seq_first_row += j->seqs[sq].n_tokens;
            sq++;
        }
        const realm_attention_seq *s = &j->seqs[sq];
        const int64_t t = (i - seq_first_item) / n_kv, row = seq_first_row + t;
        const int32_t kvh = (int32_t)((i - seq_first_item) % n_kv);
        const int64_t off = (row * j->n_head + (int64_t)kvh * j->group) * hd;
        j->attend_group(s->kv, j->layer, s->pos + t, kvh, j->group, j->q + off, j->out + off, my_scratch);
    }
}

/* the checks of one sequence: 0 or the code */
static int seq_ok(const realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, int32_t n_head) {
    if (kv == NULL || kv->k == NULL || kv->v == NULL) return REALM_ERR_INVALID;
    if (n_tokens < 1 || n_head < 1 || n_head % kv->n_head_kv != 0) return REALM_ERR_INVALID;
    if (layer < 0 || layer >= kv->n_layer) return REALM_ERR_RANGE;
    /* every position appended, and every window still intact (windows only move up) */
    if (pos < 0 || pos > kv->n_pos[layer] - n_tokens) return REALM_ERR_RANGE;
    if (realm_kv_window_start(kv, pos) < kv->held_from[layer]) return REALM_ERR_RANGE;
    return 0;
}

int realm_attention_seqs(const realm_attention_seq *seqs, int n_seqs, int32_t layer, int32_t n_head, const float *q,
                         float *out, float *scratch, int n_threads) {
    if (seqs == NULL || n_seqs < 1 || q == NULL || out == NULL || scratch == NULL || n_threads < 1)
        return REALM_ERR_INVALID;
    const realm_kv_ring *kv0 = seqs[0].kv;
    if (kv0 == NULL) return REALM_ERR_INVALID;
    const int64_t hd = kv0->head_dim;
    int64_t n_rows = 0, n_items = 0, slice = 0;
    for (int i = 0; i < n_seqs; i++) {
        const realm_attention_seq *s = &seqs[i];
        const int rc = seq_ok(s->kv, layer, s->pos, s->n_tokens, n_head);
        if (rc) return rc;
        if (s->kv->n_head_kv != kv0->n_head_kv || s->kv->head_dim != hd) return REALM_ERR_INVALID;
        if (s->n_tokens > INT64_MAX / 4 / n_head / hd / (int64_t)sizeof(float) - n_rows) return REALM_ERR_INVALID;
        n_rows += s->n_tokens;
        n_items += s->n_tokens * kv0->n_head_kv;
        const int64_t sl = slice_floats(s->kv, n_head / kv0->n_head_kv);
        slice = sl > slice ? sl : slice;
    }
    const int64_t bytes = n_rows * n_head * hd * (int64_t)sizeof(float);
    if (overlaps(q, bytes, out, bytes)) return REALM_ERR_INVALID;
    struct attend_job j = {seqs,   n_seqs, layer, n_head, n_head / kv0->n_head_kv, q, out, scratch, slice,
                           pick_attend_group(), n_items, n_threads};
    realm_parallel_for(n_items, n_threads, attend_items, &j);
    return 0;
}

int realm_attention(const realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, int32_t n_head,
                    const float *q, float *out, float *scratch, int n_threads) {
    const realm_attention_seq seq = {kv, pos, n_tokens};
    return realm_attention_seqs(&seq, 1, layer, n_head, q, out, scratch, n_threads);
}
