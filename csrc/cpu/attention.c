/* attention.c: causal grouped-query attention over a KV ring (see attention.h).
 *
 * Work item: one token and one KV head, i.e. the head_dim output rows of the query
 * heads that read that KV head; the pool (threadpool.h) hands ranges of items to
 * threads and each is computed by one thread start to finish, so the result does not
 * depend on the thread count.
 * Per query head, over the window positions j in ascending order (cell = position):
 *   s[j] = (f32 dot of q16 and K16[j]) * scale        (exact products, f32 sums; scale
 *                                                      1/sqrt(head_dim), or the model's)
 *   e[j] = exp(s[j] - max s) (ggml's vectorized expf of the order, realm_expf_ggml_row);
 *   sum  = sums of L e's in float (cache cells aligned at L), those in double
 *   p[j] = f16(e[j] * (float)(1.0 / sum))
 *   out  = sum_j p[j] * V16[j] in f32
 * The float order follows the llama.cpp build realm_float_order() names (ops.h), and
 * the batch: llama.cpp multiplies a batch of several tokens with tinyBLAS (llamafile's
 * sgemm) and a one-token batch, its decode, with ggml_vec_dot_f16, for both products:
 * - AVX-512, a batch (tinyBLAS<16>, ggml's 16-lane softmax): the K.Q dot in 16 lanes
 *   (each a running sum over head_dim in steps of 16) reduced by halves; L = 16; out[d]
 *   in 16 lanes by cell (cell mod 16, each a running sum over the cells), reduced so.
 * - AVX-512, one token (ggml_vec_dot_f16: 4 accumulators of 16 lanes over steps of 64,
 *   reduced as GGML_F32x16_REDUCE, the n % 64 left over added in double): the K.Q dot
 *   that way; L = 16; out[d] in 64 lanes by cell mod 64, reduced the same way.
 * - AVX2, a batch (tinyBLAS<8> for both products, ggml's 8-lane softmax): the K.Q dot
 *   in 8 lanes added as tinyBLAS's hsum; L = 8; out[d] in 8 lanes by cell, added so.
 * - AVX2, one token (ggml_vec_dot_f16: 4 accumulators of 8 lanes over steps of 32,
 *   reduced as GGML_F32x8_REDUCE, the n % 32 left over added in double): the K.Q dot
 *   that way; L = 8; out[d] in 32 lanes by cell mod 32, reduced the same way.
 * tinyBLAS takes a batch only where head_dim allows (a multiple of 16 or 8 for K.Q, of
 * 4 for P.V), else ggml falls back to the one-token kernel; llama.cpp's cells are padded
 * to a multiple of 256, so P.V has no leftovers.
 * Built with -ffp-contract=off: no fused multiply-adds, as in ggml's scalar semantics
 * (its FMAs here add exact f16 x f16 products, so they round as an add).
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

/* 16 floats a[0], a[s], .., a[15s] added as a 16-lane horizontal sum (halves,
 * quarters, then the two pairs: _mm512_reduce_add_ps) */
static inline __attribute__((always_inline)) float reduce16s(const float *a, int64_t s) {
    float t[8];
    for (int i = 0; i < 8; i++) t[i] = a[i * s] + a[(i + 8) * s];
    for (int i = 0; i < 4; i++) t[i] += t[i + 4];
    return (t[0] + t[2]) + (t[1] + t[3]);
}

/* AVX-512 order: f32 dot of q (f16 values held as f32) and k (f16 values held as f32).
 * Inlined into each ISA's attend_group, where the 16 lanes become one or two vector
 * registers (each lane's sum is the same in any ISA: products and adds, no fused
 * multiply-adds). */
static inline __attribute__((always_inline)) float dot_lanes(const float *restrict q, const float *restrict k,
                                                             int64_t n) {
    float acc[LANES] = {0};
    int64_t d = 0;
    for (; d + LANES <= n; d += LANES)
        for (int i = 0; i < LANES; i++) acc[i] += q[d + i] * k[d + i];
    for (int i = 0; d < n; d++, i++) acc[i] += q[d] * k[d];
    return reduce16s(acc, 1); /* by halves */
}

/* 64 floats (4 accumulators of 16 lanes: a[(16m + l) s]) reduced as GGML_F32x16_REDUCE:
 * accumulators (0+2) + (1+3), then the 16-lane horizontal sum */
static inline __attribute__((always_inline)) float reduce64(const float *a, int64_t s) {
    float x[16];
    for (int l = 0; l < 16; l++) x[l] = (a[l * s] + a[(32 + l) * s]) + (a[(16 + l) * s] + a[(48 + l) * s]);
    return reduce16s(x, 1);
}

/* 8 floats a[0], a[s], .., a[7s] added as tinyBLAS's hsum of a ymm register (the upper
 * half onto the lower, then the pairs (0,2) and (1,3), then those two) */
static inline __attribute__((always_inline)) float hsum8(const float *a, int64_t s) {
    const float t0 = a[0] + a[4 * s], t1 = a[s] + a[5 * s], t2 = a[2 * s] + a[6 * s], t3 = a[3 * s] + a[7 * s];
    return (t0 + t2) + (t1 + t3);
}

/* 32 floats (4 accumulators of 8 lanes: a[(8m + l) s]) reduced as GGML_F32x8_REDUCE:
 * accumulators (0+2) + (1+3), then the register's halves, then two horizontal adds */
static inline __attribute__((always_inline)) float reduce32(const float *a, int64_t s) {
    float x[8];
    for (int l = 0; l < 8; l++) x[l] = (a[l * s] + a[(16 + l) * s]) + (a[(8 + l) * s] + a[(24 + l) * s]);
    const float t0 = x[0] + x[4], t1 = x[1] + x[5], t2 = x[2] + x[6], t3 = x[3] + x[7];
    return (t0 + t1) + (t2 + t3);
}

/* AVX2 order, a batch: tinyBLAS<8>'s dot (n a multiple of 8): 8 running sums over
 * steps of 8, then hsum8 */
static inline __attribute__((always_inline)) float dot8(const float *restrict q, const float *restrict k,
                                                        int64_t n) {
    float acc[8] = {0};
    for (int64_t d = 0; d + 8 <= n; d += 8)
        for (int i = 0; i < 8; i++) acc[i] += q[d + i] * k[d + i];
    return hsum8(acc, 1);
}

/* One token's order (ggml_vec_dot_f16): 4 accumulators of `lanes` (8 in the AVX2
 * build, 16 in the AVX-512 one) over steps of 4 * lanes, reduced by reduce32 or
 * reduce64, the n % (4 * lanes) products left over added to that in double */
static inline __attribute__((always_inline)) float dot_vec_f16(const float *restrict q, const float *restrict k,
                                                               int64_t n, const int lanes) {
    float acc[64] = {0};
    const int64_t step = 4 * lanes, np = n - n % step;
    for (int64_t d = 0; d < np; d += step)
        for (int i = 0; i < step; i++) acc[i] += q[d + i] * k[d + i];
    double sum = lanes == 16 ? reduce64(acc, 1) : reduce32(acc, 1);
    for (int64_t d = np; d < n; d++) sum += (double)(q[d] * k[d]);
    return (float)sum;
}

/* The P.V lanes of one head, a[lane][d] for lane < pv, reduced into out[d] in the
 * order's horizontal sum (in place, a row at a time: the same adds as reduce64,
 * reduce32, reduce16s and hsum8 per column, in an order over d that vectorizes). */
static inline __attribute__((always_inline)) void reduce_lanes(float *restrict a, int64_t pv, int64_t hd,
                                                               float *restrict out) {
    int64_t w = pv;
    if (pv >= 32) /* 4 accumulators of pv / 4 lanes: (0+2) + (1+3) */
        for (; w > pv / 4; w /= 2)
            for (int64_t r = 0; r < w / 2; r++)
                for (int64_t d = 0; d < hd; d++) a[r * hd + d] += a[(r + w / 2) * hd + d];
    const int hadd_pairs = pv == 32; /* GGML_F32x8_REDUCE ends with two horizontal adds */
    for (; w > 1; w /= 2) {
        if (hadd_pairs && w == 4) { /* (l0 + l1) + (l2 + l3) */
            for (int64_t d = 0; d < hd; d++)
                out[d] = (a[d] + a[hd + d]) + (a[2 * hd + d] + a[3 * hd + d]);
            return;
        }
        for (int64_t r = 0; r < w / 2; r++)
            for (int64_t d = 0; d < hd; d++) a[r * hd + d] += a[(r + w / 2) * hd + d];
    }
    memcpy(out, a, (size_t)hd * sizeof *out);
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

/* s[0..n) := exp(s - max) for the window starting at position `first`; returns their
 * sum as ggml's softmax forms it: per `lanes` (16 or 8) cache cells (cell = position,
 * groups aligned at multiples of lanes; cells outside the window are 0) in float (a
 * 16-lane reduction, or hsum8), the groups in double. */
static inline __attribute__((always_inline)) double exp_and_sum(float *restrict s, int64_t n, int64_t first,
                                                                 float max, int lanes) {
    double sum = 0.0;
    float v[16];
    for (int64_t j = 0; j < n; j++) s[j] -= max;
    realm_expf_ggml_row(s, s, n);
    for (int64_t j = 0; j < n;) {
        if (((first + j) & (lanes - 1)) == 0 && j + lanes <= n) { /* a whole group, in place */
            sum += (double)(lanes == 16 ? reduce16s(s + j, 1) : hsum8(s + j, 1));
            j += lanes;
            continue;
        }
        memset(v, 0, sizeof v);
        do {
            v[(first + j) & (lanes - 1)] = s[j]; /* lanes: a power of 2 */
            j++;
        } while (j < n && (first + j) & (lanes - 1));
        sum += (double)(lanes == 16 ? reduce16s(v, 1) : hsum8(v, 1));
    }
    return sum;
}

/* lanes by cell of the AVX2 orders' P.V sums (attend_group_body) */
#define PV_LANES 64
/* V rows converted to f32 at a time: the tile (32 KB at head_dim 64) and one head's
 * lanes (4-16 KB) stay in L1/L2 while each head of the group goes over the tile. */
#define PV_TILE 128

/* V rows a tile of kv's holds: PV_TILE, or fewer where no window is that long */
static int64_t pv_tile(const realm_kv_ring *kv) { return kv->capacity < PV_TILE ? kv->capacity : PV_TILE; }

/* floats of one thread's scratch slice, rounded up to 64 bytes (no false sharing) */
static int64_t slice_floats(const realm_kv_ring *kv, int32_t group) {
    const int64_t hd = kv->head_dim;
    return ((int64_t)group * (kv->capacity + hd + PV_LANES * hd) + pv_tile(kv) * hd + 15) / 16 * 16;
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

static int64_t next_slot(int64_t cap, int64_t slot) { return slot + 1 == cap ? 0 : slot + 1; }

/* K rows attend_group_body fetches ahead of the one it converts */
#define PREFETCH_CELLS 8

/* n f16 values at h into the cache (a prefetch does not fault: a slot past the window
 * is still inside the ring) */
static inline __attribute__((always_inline)) void prefetch_row(const realm_f16 *h, int64_t n) {
    for (int64_t b = 0; b < n * (int64_t)sizeof *h; b += 64) __builtin_prefetch((const char *)h + b, 0, 3);
}

/* The three float orders of the file comment */
enum { ORDER_AVX512_BATCH, ORDER_AVX512_ONE, ORDER_AVX2_BATCH, ORDER_AVX2_ONE };

/* One token at position p and one KV head kvh, for the `group` query heads that read
 * it: q and out are [group][head_dim] f32. Each K and V row of the window is converted
 * to f32 once and serves every head of the group; per head the arithmetic is the one
 * the file comment gives for `order` (a constant in each instance). Scratch: [group][capacity]
 * scores, [group][head_dim] q16, [pv_tile][head_dim] converted rows, [group][PV_LANES][head_dim]
 * lanes of the AVX2 orders' P.V sums. */
static inline __attribute__((always_inline)) void attend_group_body(
    const realm_kv_ring *kv, int32_t layer, int64_t p, int32_t kvh, int32_t group, const float *q, float scale,
    float *restrict out, float *restrict scratch, int order,
    void (*convert)(const realm_f16 *restrict, float *restrict, int64_t), void (*round_f16)(float *, int64_t)) {
    const int64_t hd = kv->head_dim, cap = kv->slots[layer];
    const int64_t row = (int64_t)kv->n_head_kv * hd; /* f16 elements per position */
    const int64_t first = realm_kv_window_start(kv, layer, p), n = p - first + 1;
    const realm_f16 *k_layer = kv->k + kv->row0[layer] * row + (int64_t)kvh * hd;
    const realm_f16 *v_layer = kv->v + kv->row0[layer] * row + (int64_t)kvh * hd;
    float *restrict s = scratch;                   /* [group][cap] scores, then probabilities */
    float *restrict q16 = scratch + group * cap;   /* [group][hd] */
    const int64_t tile = pv_tile(kv);
    float *restrict buf = q16 + group * hd;        /* [tile][hd] K or V rows as f32 */
    float *restrict lanes = buf + tile * hd;       /* [group][PV_LANES][hd] */
    const int64_t first_slot = first % cap; /* the window's slots wrap at capacity */
    /* the one-token kernel's order where the batch's is not taken (file comment) */
    const int avx512 = order == ORDER_AVX512_BATCH || order == ORDER_AVX512_ONE;
    const int kq_batch = order == ORDER_AVX512_BATCH ? hd % 16 == 0 : order == ORDER_AVX2_BATCH && hd % 8 == 0;
    const int pv_batch = (order == ORDER_AVX512_BATCH || order == ORDER_AVX2_BATCH) && hd % 4 == 0;
    const int64_t pv = avx512 ? (pv_batch ? 16 : 64) : (pv_batch ? 8 : 32);

    memcpy(q16, q, (size_t)(group * hd) * sizeof *q16);
    round_f16(q16, group * hd);
    /* The window's K and V rows lie a position (`row` f16) apart, this head's hd of each
     * in one or two cache lines, out of cache after a layer's matmuls: fetch the K row
     * PREFETCH_CELLS ahead, and each cell's V row, which P.V reads after the softmax. */
    int64_t ahead = first_slot;
    for (int64_t j = 0; j < PREFETCH_CELLS && j < n; j++) ahead = next_slot(cap, ahead);
    for (int64_t j = 0, slot = first_slot; j < n; j++, slot = next_slot(cap, slot), ahead = next_slot(cap, ahead)) {
        prefetch_row(k_layer + ahead * row, hd);
        prefetch_row(v_layer + slot * row, hd);
        convert(k_layer + slot * row, buf, hd);
        for (int32_t h = 0; h < group; h++) {
            const float *qh = q16 + h * hd;
            const float dot = kq_batch ? (avx512 ? dot_lanes(qh, buf, hd) : dot8(qh, buf, hd))
                                       : dot_vec_f16(qh, buf, hd, avx512 ? 16 : 8);
            s[h * cap + j] = dot * scale;
        }
    }
    for (int32_t h = 0; h < group; h++) {
        float *sh = s + h * cap, max = -INFINITY;
        for (int64_t j = 0; j < n; j++) max = sh[j] > max ? sh[j] : max;
        const float inv = (float)(1.0 / exp_and_sum(sh, n, first, max, avx512 ? 16 : 8));
        for (int64_t j = 0; j < n; j++) sh[j] *= inv;
        round_f16(sh, n);
    }
    /* P.V: running sums per output, in lane (first + j) % pv, then reduced; the V rows a
     * tile at a time, each head's lanes over the tile in turn (each lane still adds its
     * cells in ascending order) */
    for (int64_t i = 0; i < group * pv * hd; i++) lanes[i] = 0.0f;
    for (int64_t j0 = 0, slot = first_slot; j0 < n; j0 += tile) {
        const int64_t nj = n - j0 < tile ? n - j0 : tile;
        for (int64_t jj = 0; jj < nj; jj++, slot = next_slot(cap, slot)) convert(v_layer + slot * row, buf + jj * hd, hd);
        for (int32_t h = 0; h < group; h++)
            for (int64_t l = 0; l < pv && l < nj; l++) { /* tile cells l, l + pv, ..: one lane */
                const int64_t lane = (first + j0 + l) & (pv - 1); /* pv: a power of 2 */
                const float *restrict ph = s + h * cap + j0;
                float *restrict o = lanes + (h * pv + lane) * hd;
                int64_t d0 = 0;
                for (; d0 + 32 <= hd; d0 += 32) { /* 32 outputs held in registers over the cells */
                    float t[32];
                    for (int i = 0; i < 32; i++) t[i] = o[d0 + i];
                    for (int64_t jj = l; jj < nj; jj += pv)
                        for (int i = 0; i < 32; i++) t[i] += ph[jj] * buf[jj * hd + d0 + i];
                    for (int i = 0; i < 32; i++) o[d0 + i] = t[i];
                }
                for (; d0 < hd; d0++)
                    for (int64_t jj = l; jj < nj; jj += pv) o[d0] += ph[jj] * buf[jj * hd + d0];
            }
    }
    for (int32_t h = 0; h < group; h++) reduce_lanes(lanes + h * pv * hd, pv, hd, out + h * hd);
}

/* attend_group compiled for each order, portable and AVX2 + F16C (the same arithmetic:
 * the lanes become ymm registers), picked by realm_active_isa() so that tests can force
 * the portable one. AVX-512 machines take the AVX2 build too: a zmm build was slower
 * and, by lowering the core's clock, slowed the ymm matmuls around it (docs/PERF.md). */
typedef void (*attend_group_fn)(const realm_kv_ring *, int32_t, int64_t, int32_t, int32_t, const float *, float,
                                float *, float *);

#define ATTEND_GROUP(name, attrs, order, convert, round_f16)                                                        \
    attrs static void name(const realm_kv_ring *kv, int32_t layer, int64_t p, int32_t kvh, int32_t group,            \
                           const float *q, float scale, float *out, float *scratch) {                               \
        attend_group_body(kv, layer, p, kvh, group, q, scale, out, scratch, order, convert, round_f16);              \
    }

ATTEND_GROUP(attend_portable_512batch, , ORDER_AVX512_BATCH, row_f16_to_f32_portable, round_f16_portable)
ATTEND_GROUP(attend_portable_512one, , ORDER_AVX512_ONE, row_f16_to_f32_portable, round_f16_portable)
ATTEND_GROUP(attend_portable_2batch, , ORDER_AVX2_BATCH, row_f16_to_f32_portable, round_f16_portable)
ATTEND_GROUP(attend_portable_2one, , ORDER_AVX2_ONE, row_f16_to_f32_portable, round_f16_portable)
#if defined(__x86_64__)
#define AVX2_F16C __attribute__((target("avx2,f16c")))
ATTEND_GROUP(attend_avx2_512batch, AVX2_F16C, ORDER_AVX512_BATCH, row_f16_to_f32_f16c, round_f16_f16c)
ATTEND_GROUP(attend_avx2_512one, AVX2_F16C, ORDER_AVX512_ONE, row_f16_to_f32_f16c, round_f16_f16c)
ATTEND_GROUP(attend_avx2_2batch, AVX2_F16C, ORDER_AVX2_BATCH, row_f16_to_f32_f16c, round_f16_f16c)
ATTEND_GROUP(attend_avx2_2one, AVX2_F16C, ORDER_AVX2_ONE, row_f16_to_f32_f16c, round_f16_f16c)
#endif

/* batch_tokens: the tokens of the batch the call belongs to (llama.cpp sums a one-token
 * batch in another order) */
static attend_group_fn pick_attend_group(int64_t batch_tokens) {
    const int one = batch_tokens == 1;
    const int order = realm_float_order() == REALM_ORDER_AVX512 ? (one ? ORDER_AVX512_ONE : ORDER_AVX512_BATCH)
                                                                : (one ? ORDER_AVX2_ONE : ORDER_AVX2_BATCH);
    static const attend_group_fn portable[] = {attend_portable_512batch, attend_portable_512one,
                                               attend_portable_2batch, attend_portable_2one};
#if defined(__x86_64__)
    static const attend_group_fn avx2[] = {attend_avx2_512batch, attend_avx2_512one, attend_avx2_2batch,
                                           attend_avx2_2one};
    if (realm_active_isa() >= REALM_ISA_AVX2) return avx2[order];
#endif
    return portable[order];
}

struct attend_job {
    const realm_attention_seq *seqs;
    const attend_group_fn *fns; /* per sequence: its call's order */
    int n_seqs;
    int32_t layer, n_head, group;
    const float *q;
    float *out;
    float *scratch; /* slice floats per thread */
    int64_t slice;
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
        j->fns[sq](s->kv, j->layer, s->pos + t, kvh, j->group, j->q + off, s->kq_scale, j->out + off, my_scratch);
    }
}

/* the checks of one sequence: 0 or the code */
static int seq_ok(const realm_attention_seq *s, int32_t layer, int32_t n_head) {
    const realm_kv_ring *kv = s->kv;
    if (kv == NULL || kv->k == NULL || kv->v == NULL) return REALM_ERR_INVALID;
    if (s->n_tokens < 1 || s->batch_tokens < s->n_tokens || n_head < 1 || n_head % kv->n_head_kv != 0)
        return REALM_ERR_INVALID;
    if (layer < 0 || layer >= kv->n_layer) return REALM_ERR_RANGE;
    /* every position appended, and every window still intact (windows only move up) */
    if (s->pos < 0 || s->pos > kv->n_pos[layer] - s->n_tokens) return REALM_ERR_RANGE;
    if (realm_kv_window_start(kv, layer, s->pos) < kv->held_from[layer]) return REALM_ERR_RANGE;
    if (!(s->kq_scale > 0.0f)) return REALM_ERR_INVALID;
    return 0;
}

int realm_attention_seqs(const realm_attention_seq *seqs, int n_seqs, int32_t layer, int32_t n_head, const float *q,
                         float *out, float *scratch, int n_threads) {
    if (seqs == NULL || n_seqs < 1 || n_seqs > REALM_ATTENTION_MAX_SEQS || q == NULL || out == NULL ||
        scratch == NULL || n_threads < 1)
        return REALM_ERR_INVALID;
    const realm_kv_ring *kv0 = seqs[0].kv;
    if (kv0 == NULL) return REALM_ERR_INVALID;
    const int64_t hd = kv0->head_dim;
    attend_group_fn fns[REALM_ATTENTION_MAX_SEQS];
    int64_t n_rows = 0, n_items = 0, slice = 0;
    for (int i = 0; i < n_seqs; i++) {
        const realm_attention_seq *s = &seqs[i];
        const int rc = seq_ok(s, layer, n_head);
        if (rc) return rc;
        if (s->kv->n_head_kv != kv0->n_head_kv || s->kv->head_dim != hd) return REALM_ERR_INVALID;
        if (s->n_tokens > INT64_MAX / 4 / n_head / hd / (int64_t)sizeof(float) - n_rows) return REALM_ERR_INVALID;
        n_rows += s->n_tokens;
        n_items += s->n_tokens * kv0->n_head_kv;
        const int64_t sl = slice_floats(s->kv, n_head / kv0->n_head_kv);
        slice = sl > slice ? sl : slice;
        fns[i] = pick_attend_group(s->batch_tokens);
    }
    const int64_t bytes = n_rows * n_head * hd * (int64_t)sizeof(float);
    if (overlaps(q, bytes, out, bytes)) return REALM_ERR_INVALID;
    struct attend_job j = {seqs, fns,   n_seqs, layer, n_head, n_head / kv0->n_head_kv, q, out, scratch, slice,
                           n_items, n_threads};
    realm_parallel_for(n_items, n_threads, attend_items, &j);
    return 0;
}

int realm_attention_in_batch(const realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, int32_t n_head,
                             const float *q, float *out, float *scratch, int n_threads, int64_t batch_tokens) {
    if (kv == NULL) return REALM_ERR_INVALID;
    const realm_attention_seq seq = {kv, pos, n_tokens, batch_tokens, 1.0f / sqrtf((float)kv->head_dim)};
    return realm_attention_seqs(&seq, 1, layer, n_head, q, out, scratch, n_threads);
}

int realm_attention(const realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, int32_t n_head,
                    const float *q, float *out, float *scratch, int n_threads) {
    return realm_attention_in_batch(kv, layer, pos, n_tokens, n_head, q, out, scratch, n_threads, n_tokens);
}
