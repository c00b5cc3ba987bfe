/* vec_dot_x86.h: the 256-bit x86 dot kernels, one per weight format, written once.
 *
 * Not a public header: it is a template that vec_dot_avx2.c and vec_dot_avx512.c each
 * include after their `#pragma GCC target`, so every function here is compiled twice,
 * once per instruction set. The including file defines REALM_X86_VNNI:
 *   0  AVX2 + FMA + F16C: integer multiply-adds are vpmaddubsw (u8 x s8 -> s16 pairs)
 *      followed by vpmaddwd (s16 x s16 -> s32 pairs) and vpaddd;
 *   1  AVX-512 VL + VNNI: the same on 256-bit registers with vpdpbusd (u8 x s8, four
 *      products summed into s32, no saturation) and vpdpwssd (madd + add in one).
 *
 * Every kernel computes exactly the integer sums of the scalar kernel
 * (vec_dot_scalar.c); only the order of the float additions differs: partial integer
 * sums stay in the 8 lanes of a vector, are converted to float per block and scaled
 * with FMA into a vector accumulator that is summed horizontally at the end.
 *
 * Saturation: vpmaddubsw saturates the sum of two u8*s8 products to s16. Every use
 * below keeps |u| <= 128 and |s| <= 127 (activations are rounded to [-127, 127]), so a
 * pair is at most 2 * 128 * 127 = 32512 and never saturates.
 */
#ifndef REALM_X86_VNNI
#error "define REALM_X86_VNNI (0 or 1) before including vec_dot_x86.h"
#endif

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "ggml_blocks.h"
#include "vec_dot.h"

/* ---- helpers ------------------------------------------------------------------- */

static inline float x86_f16(realm_f16 h) { return _cvtsh_ss(h); }

static inline float x86_hsum_ps(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline int x86_hsum_epi32(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 1));
    return _mm_cvtsi128_si32(r);
}

/* Software prefetch for one token (decode), which reads each weight byte once: without
 * it a core waits on memory and computes in turn (the hardware prefetcher does not run
 * far enough ahead of these kernels), and reaches ~6 GB/s of weights where a plain read
 * loop reaches ~11; with it, 2 threads on this project's 2-core VM read ~19-20 GB/s of
 * Q4_K/Q6_K weights against ~13 without (the decode matmuls of the tinyllama Q4_K_M
 * file, both builds alternating in one process; a read loop: 21-22 GB/s). Row
 * kernels prefetch the block X86_PREFETCH_AHEAD bytes on (rows lie back to back, so
 * past a row's end that is the next row); 8-row kernels prefetch the next group of 8
 * rows, a slice per block. __builtin_prefetch in an always_inline function: GCC 12
 * dropped _mm_prefetch's prefetches from these kernels (tests/test_kernels.py checks
 * that the built kernels have them). */
#define X86_PREFETCH_AHEAD 4096
static inline __attribute__((always_inline)) void x86_prefetch(const void *p, int64_t bytes) {
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)p + o, 0, 3);
}

/* acc + (sums of 4 adjacent products u8 u * s8 s), per s32 lane */
static inline __m256i x86_dpbusd(__m256i acc, __m256i u, __m256i s) {
#if REALM_X86_VNNI
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    const __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}

/* acc + (sums of 2 adjacent products s16 a * s16 b), per s32 lane */
static inline __m256i x86_dpwssd(__m256i acc, __m256i a, __m256i b) {
#if REALM_X86_VNNI
    return _mm256_dpwssd_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

/* Signed x signed bytes through the unsigned x signed multiply: |x| * (y with x's sign).
 * |x| of -128 is 128 as an unsigned byte, so every int8 weight is handled. */
static inline __m256i x86_dot_i8(__m256i acc, __m256i x, __m256i y) {
    return x86_dpbusd(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* 16 bytes of packed nibbles -> 32 bytes 0..15: low nibbles in bytes 0..15, high
 * nibbles in bytes 16..31 (the element order of Q4_0/Q4_1/Q5_0/Q5_1 blocks). */
static inline __m256i x86_nibbles_32(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0xF));
}

/* 32 bits (little-endian) -> 32 bytes, 0xFF where bit i is set: broadcast the word,
 * give byte i a copy of byte i/8, OR in every bit but bit i%8, compare with all-ones. */
static inline __m256i x86_bits_32(const uint8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)w), shuf);
    const __m256i other_bits = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    return _mm256_cmpeq_epi8(_mm256_or_si256(bytes, other_bits), _mm256_set1_epi64x(-1));
}

/* The 8 6-bit scales (bytes 0..7) and 8 mins (bytes 8..15) of a Q4_K/Q5_K block, in
 * one go (realm_k4_scale_min for all j): scales 0..3 / mins 0..3 are the low 6 bits of
 * bytes 0..3 / 4..7; scales / mins 4..7 are the low / high nibbles of bytes 8..11 with
 * the top 2 bits of bytes 0..3 / 4..7 above them. */
static inline __m128i x86_k4_scales_mins(const uint8_t *scales) {
    uint32_t u[3];
    memcpy(u, scales, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const uint32_t sc_lo = u[0] & m6;
    const uint32_t sc_hi = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);
    const uint32_t mn_lo = u[1] & m6;
    const uint32_t mn_hi = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4);
    return _mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo);
}

/* The 16 6-bit signed scales of a Q3_K block (realm_q3_K_scale for all j), as int8:
 * low nibbles of bytes 0..7 then their high nibbles, 2 more bits from bytes 8..11. */
static inline __m128i x86_q3k_scales(const uint8_t *scales) {
    uint32_t a[3];
    memcpy(a, scales, 12);
    const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const __m128i s = _mm_set_epi32((int)(((a[1] >> 4) & m4) | (((a[2] >> 6) & m2) << 4)),
                                    (int)(((a[0] >> 4) & m4) | (((a[2] >> 4) & m2) << 4)),
                                    (int)((a[1] & m4) | (((a[2] >> 2) & m2) << 4)),
                                    (int)((a[0] & m4) | ((a[2] & m2) << 4)));
    return _mm_sub_epi8(s, _mm_set1_epi8(32));
}

/* Two s16 scales for a 32-element chunk of 16-element sub-blocks: a in the low 128-bit
 * lane (elements 0..15), b in the high lane (elements 16..31). */
static inline __m256i x86_scale_pair(int a, int b) {
    return _mm256_set_m128i(_mm_set1_epi16((short)b), _mm_set1_epi16((short)a));
}

/* ---- llama.cpp's tiled K-quant order ----------------------------------------------
 * For 8 or more tokens, llama.cpp's CPU backend multiplies Q3_K/Q5_K/Q6_K weights (the
 * K-quants it does not repack on x86) through ggml-cpu/tiled: per 256-block it forms
 * the whole integer sums s1 = sum_j scale_j * (q . q8)_j and s2 = sum_j min_j * bsum_j,
 * then in float r = s1 * d_w - dmin_w * s2 (one fused rounding for the min) and
 * acc = acc + r * d_act, block after block from acc = 0. Its AVX-512 VNNI microkernel
 * rounds r * d_act before the add; its AVX2 one fuses them. The `tiled` variants below
 * compute the same integers as the vec_dot kernels and finish in this order. */
static inline float x86_tiled_step(float acc, int s1, int s2, float d_w, float dmin_w, float d_act) {
    const float r = fmaf(-dmin_w, (float)s2, (float)s1 * d_w);
#if REALM_X86_VNNI
    return acc + r * d_act;
#else
    return fmaf(r, d_act, acc);
#endif
}

/* ---- multi-token kernels --------------------------------------------------------
 * A format with a `_rows` body computes, for nt (1..X86_NT) activation rows a + t*la,
 * s[t*ls] = dot(w, a_t): each weight block is decoded into registers once and serves
 * all nt rows. The single dot is the nt = 1 instance of the same body, so a token's
 * result is bit for bit the same alone (decode) and inside a batch (prefill). */
#define X86_NT 4

#define X86_DEFINE_DOTS(fmt)                                                                              \
    static void x86_dot_##fmt(int64_t n, float *s, const void *w, const void *a) {                        \
        x86_##fmt##_rows(n, s, 0, w, a, 0, 1);                                                            \
    }                                                                                                     \
    static void x86_dot_nx_##fmt(int64_t n, float *s, int64_t ls, const void *w, const void *a, int64_t la, \
                                 int n_tokens) {                                                          \
        int t = 0;                                                                                        \
        for (; t + X86_NT <= n_tokens; t += X86_NT)                                                       \
            x86_##fmt##_rows(n, s + t * ls, ls, w, (const char *)a + t * la, la, X86_NT);                 \
        switch (n_tokens - t) {                                                                           \
        case 3: x86_##fmt##_rows(n, s + t * ls, ls, w, (const char *)a + t * la, la, 3); break;           \
        case 2: x86_##fmt##_rows(n, s + t * ls, ls, w, (const char *)a + t * la, la, 2); break;           \
        case 1: x86_##fmt##_rows(n, s + t * ls, ls, w, (const char *)a + t * la, la, 1); break;           \
        default: break;                                                                                   \
        }                                                                                                 \
    }

/* ---- f32 / f16 / bf16: convert to f32 and FMA, 32 elements per step --------------- */

static inline __m256 x86_load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* bf16 is the top half of an f32: zero-extend to 32 bits and shift left by 16 */
static inline __m256 x86_load_bf16(const uint16_t *p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static inline float x86_bf16(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#ifndef REALM_X86_GGML16
static void x86_dot_f32(int64_t n, float *s, const void *w, const void *a) {
    const float *x = w, *y = a;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * k), _mm256_loadu_ps(y + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc[0]);
    float sum = x86_hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

/* f16 and bf16 rows: convert 8 at a time to f32 and FMA into 4 accumulators */
#define X86_DEFINE_DOT_HALF(name, load, scalar)                                                            \
    static void x86_dot_##name(int64_t n, float *s, const void *w, const void *a) {                         \
        const uint16_t *x = w, *y = a;                                                                     \
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}; \
        int64_t i = 0;                                                                                     \
        for (; i + 32 <= n; i += 32)                                                                       \
            for (int k = 0; k < 4; k++)                                                                    \
                acc[k] = _mm256_fmadd_ps(load(x + i + 8 * k), load(y + i + 8 * k), acc[k]);               \
        for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load(x + i), load(y + i), acc[0]);             \
        float sum = x86_hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))); \
        for (; i < n; i++) sum += scalar(x[i]) * scalar(y[i]);                                             \
        *s = sum;                                                                                          \
    }
X86_DEFINE_DOT_HALF(f16, x86_load_f16, x86_f16)
X86_DEFINE_DOT_HALF(bf16, x86_load_bf16, x86_bf16)
#endif /* !REALM_X86_GGML16 */

/* ---- f32 / f16 / bf16 in llama.cpp's float order for an AVX-512 build ---------------
 * The tables of vec_dot_avx512.c sum float rows the way llama.cpp's CPU backend does
 * when built for AVX-512 (16-lane vectors; modelled as 8-lane pairs: per lane the same
 * operations, and x86_hsum_ps(lo + hi) is _mm512_reduce_add_ps):
 *   one token (ggml_vec_dot_f32 / _f16): 4 accumulators of 16 lanes over steps of 64,
 *     FMA; reduced as (a0 + a2) + (a1 + a3); the tail added in double.
 *   one token, bf16 (ggml_vec_dot_bf16 without AVX512_BF16): 2 accumulators of 16 lanes
 *     over steps of 32, multiply then add; each reduced and added in double; tail in
 *     double.
 *   several tokens (llamafile's tinyBLAS, rows a multiple of 16): one accumulator of 16
 *     lanes per output, FMA, then reduced. */
#ifdef REALM_X86_GGML16
#define X86_DEFINE_DOT_G16(name, T, load, scalar)                                                          \
    static void x86_dot_g16_##name(int64_t n, float *s, const void *w, const void *a) {                     \
        const T *x = w, *y = a;                                                                            \
        __m256 acc[4][2];                                                                                  \
        for (int j = 0; j < 4; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();                           \
        const int64_t np = n & ~(int64_t)63;                                                               \
        for (int64_t i = 0; i < np; i += 64)                                                               \
            for (int j = 0; j < 4; j++)                                                                    \
                for (int h = 0; h < 2; h++)                                                                \
                    acc[j][h] = _mm256_fmadd_ps(load(x + i + 16 * j + 8 * h), load(y + i + 16 * j + 8 * h), \
                                                acc[j][h]);                                                \
        for (int h = 0; h < 2; h++) {                                                                      \
            acc[0][h] = _mm256_add_ps(acc[0][h], acc[2][h]);                                               \
            acc[1][h] = _mm256_add_ps(acc[1][h], acc[3][h]);                                               \
            acc[0][h] = _mm256_add_ps(acc[0][h], acc[1][h]);                                               \
        }                                                                                                  \
        double sum = x86_hsum_ps(_mm256_add_ps(acc[0][0], acc[0][1]));                                     \
        for (int64_t i = np; i < n; i++) sum += (double)(scalar(x[i]) * scalar(y[i]));                      \
        *s = (float)sum;                                                                                   \
    }
#define X86_DEFINE_GEMM_G16(name, T, load)                                                                 \
    static void x86_gemm_g16_##name(int64_t n, float *s, const void *w, const void *a) {                    \
        const T *x = w, *y = a;                                                                            \
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();                                         \
        for (int64_t i = 0; i < n; i += 16) {                                                              \
            lo = _mm256_fmadd_ps(load(x + i), load(y + i), lo);                                            \
            hi = _mm256_fmadd_ps(load(x + i + 8), load(y + i + 8), hi);                                    \
        }                                                                                                  \
        *s = x86_hsum_ps(_mm256_add_ps(lo, hi));                                                           \
    }

static inline float x86_f32(float v) { return v; }
X86_DEFINE_DOT_G16(f32, float, _mm256_loadu_ps, x86_f32)
X86_DEFINE_DOT_G16(f16, uint16_t, x86_load_f16, x86_f16)
X86_DEFINE_GEMM_G16(f32, float, _mm256_loadu_ps)
X86_DEFINE_GEMM_G16(f16, uint16_t, x86_load_f16)
X86_DEFINE_GEMM_G16(bf16, uint16_t, x86_load_bf16)

/* bf16, one token: 2 accumulators, multiply then add (see above) */
static void x86_dot_g16_bf16(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w, *y = a;
    __m256 c1[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, c2[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int h = 0; h < 2; h++) {
            c1[h] = _mm256_add_ps(_mm256_mul_ps(x86_load_bf16(x + i + 8 * h), x86_load_bf16(y + i + 8 * h)), c1[h]);
            c2[h] = _mm256_add_ps(_mm256_mul_ps(x86_load_bf16(x + i + 16 + 8 * h), x86_load_bf16(y + i + 16 + 8 * h)),
                                  c2[h]);
        }
    double sum = 0;
    sum += x86_hsum_ps(_mm256_add_ps(c1[0], c1[1]));
    sum += x86_hsum_ps(_mm256_add_ps(c2[0], c2[1]));
    for (; i < n; i++) sum += (double)(x86_bf16(x[i]) * x86_bf16(y[i]));
    *s = (float)sum;
}
#endif /* REALM_X86_GGML16 */

/* ---- 32-element block formats: one block = one 32-byte vector -------------------- */

/* Q4_0 x Q8_0: nibbles minus 8 as int8, signed dot. */
static inline __attribute__((always_inline)) void x86_q4_0_rows(int64_t n, float *s, int64_t ls, const void *w,
                                                                const void *a, int64_t la, const int nt) {
    const block_q4_0 *x = w;
    float acc[X86_NT];
    for (int t = 0; t < nt; t++) acc[t] = 0.0f;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        if (nt == 1) x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const __m256i qx = _mm256_sub_epi8(x86_nibbles_32(x[i].qs), _mm256_set1_epi8(8));
        const __m256i ax = _mm256_sign_epi8(qx, qx);
        const float dx = x86_f16(x[i].d);
        for (int t = 0; t < nt; t++) {
            const block_q8_0 *y = (const block_q8_0 *)((const char *)a + t * la) + i;
            const __m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);
            const __m256i sumi = x86_dpbusd(_mm256_setzero_si256(), ax, _mm256_sign_epi8(qy, qx));
            /* the block's whole integer sum, then one fused multiply-add (see scalar) */
            acc[t] = fmaf((float)x86_hsum_epi32(sumi), dx * x86_f16(y->d), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) s[t * ls] = acc[t];
}
X86_DEFINE_DOTS(q4_0)

/* Q4_1 x Q8_1: nibbles 0..15 unsigned times q8; the min m meets y's s = d * sum(q). */
static void x86_dot_q4_1(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_1 *x = w;
    const block_q8_1 *y = a;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const __m256i qx = x86_nibbles_32(x[i].qs);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256i sumi = x86_dpbusd(_mm256_setzero_si256(), qx, qy);
        const __m256 d = _mm256_set1_ps(x86_f16(x[i].d) * x86_f16(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        summs += x86_f16(x[i].m) * x86_f16(y[i].s);
    }
    *s = x86_hsum_ps(acc) + summs;
}

/* Q5_0 x Q8_0: the 5th bit comes from qh via x86_bits_32; OR-ing 0xF0 into the bytes
 * whose bit is clear turns q in 0..15 into q - 16 as int8, and a set bit leaves q,
 * i.e. (q + 16) - 16: the signed value in one step. */
static void x86_dot_q5_0(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_0 *x = w;
    const block_q8_0 *y = a;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK5_0; i++) {
        x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const __m256i hi = _mm256_andnot_si256(x86_bits_32(x[i].qh), _mm256_set1_epi8((char)0xF0));
        const __m256i qx = _mm256_or_si256(x86_nibbles_32(x[i].qs), hi);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256i sumi = x86_dot_i8(_mm256_setzero_si256(), qx, qy);
        const __m256 d = _mm256_set1_ps(x86_f16(x[i].d) * x86_f16(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = x86_hsum_ps(acc);
}

/* Q5_1 x Q8_1: 5th bit OR-ed in as 0x10, unsigned 0..31 times q8; min as Q4_1. */
static void x86_dot_q5_1(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_1 *x = w;
    const block_q8_1 *y = a;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const __m256i hi = _mm256_and_si256(x86_bits_32(x[i].qh), _mm256_set1_epi8(0x10));
        const __m256i qx = _mm256_or_si256(x86_nibbles_32(x[i].qs), hi);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256i sumi = x86_dpbusd(_mm256_setzero_si256(), qx, qy);
        const __m256 d = _mm256_set1_ps(x86_f16(x[i].d) * x86_f16(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        summs += x86_f16(x[i].m) * x86_f16(y[i].s);
    }
    *s = x86_hsum_ps(acc) + summs;
}

/* Q8_0 x Q8_0: signed dot of two 32-byte vectors (|x| computed once per weight block). */
static inline __attribute__((always_inline)) void x86_q8_0_rows(int64_t n, float *s, int64_t ls, const void *w,
                                                                const void *a, int64_t la, const int nt) {
    const block_q8_0 *x = w;
    __m256 acc[X86_NT];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK8_0; i++) {
        if (nt == 1) x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const __m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m256i ax = _mm256_sign_epi8(qx, qx);
        const float dx = x86_f16(x[i].d);
        for (int t = 0; t < nt; t++) {
            const block_q8_0 *y = (const block_q8_0 *)((const char *)a + t * la) + i;
            const __m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);
            const __m256i sumi = x86_dpbusd(_mm256_setzero_si256(), ax, _mm256_sign_epi8(qy, qx));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * x86_f16(y->d)), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) s[t * ls] = x86_hsum_ps(acc[t]);
}
X86_DEFINE_DOTS(q8_0)

/* ---- K-quants x Q8_K ----------------------------------------------------------- */

/* Q2_K: 2-bit q (unsigned) times q8 with vpmaddubsw, then times the 4-bit sub-block
 * scales (s16, a pair per 32-element chunk); the mins meet the Q8_K bsums. qs holds 4
 * chunks of 32 per 32 bytes (bit pairs 0-1, 2-3, 4-5, 6-7). */
static void x86_dot_q2_K(int64_t n, float *s, const void *w, const void *a) {
    const block_q2_K *x = w;
    const block_q8_K *y = a;
    const __m256i m3 = _mm256_set1_epi8(3);
    /* whole-block integer sums, then two fused multiply-add chains (scales, mins):
     * the float order of the scalar kernel (and of llama.cpp's repacked Q2_K) */
    float acc = 0.0f, acc_m = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const __m128i sm = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sm, 4), _mm_set1_epi8(0xF)));
        const __m256i summs = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)y[i].bsums));
        const uint8_t *sc = x[i].scales;
        const uint8_t *q2 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int half = 0; half < 2; half++, q2 += 32, sc += 8) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)q2);
            for (int k = 0; k < 4; k++, q8 += 32) {
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
                const __m256i p16 = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)q8));
                sumi = x86_dpwssd(sumi, x86_scale_pair(sc[2 * k] & 0xF, sc[2 * k + 1] & 0xF), p16);
            }
        }
        acc = fmaf((float)x86_hsum_epi32(sumi), x86_f16(x[i].d) * y[i].d, acc);
        acc_m = fmaf((float)x86_hsum_epi32(summs), x86_f16(x[i].dmin) * y[i].d, acc_m);
    }
    *s = acc - acc_m;
}

/* Q3_K: q = low 2 bits - 4 * (high bit clear). Two unsigned products: low bits times
 * q8, and 4 * (hmask bit clear) times q8, subtracted in s16; then the signed 6-bit
 * scales (a pair per 32-element chunk). hmask bit b marks chunk b. */
static inline __attribute__((always_inline)) void x86_q3_K_dot(int64_t n, float *s, const void *w, const void *a,
                                                               const int tiled) {
    const block_q3_K *x = w;
    const block_q8_K *y = a;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    float acc_tiled = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        int8_t sc[16];
        _mm_storeu_si128((__m128i *)sc, x86_q3k_scales(x[i].scales));
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        const uint8_t *q3 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        int chunk = 0;
        for (int half = 0; half < 2; half++, q3 += 32) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)q3);
            for (int k = 0; k < 4; k++, q8 += 32, chunk++) {
                const __m256i ql = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
                /* 4 where hmask bit `chunk` is clear: 1 << chunk, andnot hmask, down to bit 0, times 4 */
                const __m256i clear = _mm256_andnot_si256(hbits, _mm256_set1_epi8((char)(1 << chunk)));
                const __m256i qh = _mm256_slli_epi16(_mm256_srli_epi16(clear, chunk), 2);
                const __m256i qy = _mm256_loadu_si256((const __m256i *)q8);
                const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(ql, qy), _mm256_maddubs_epi16(qh, qy));
                sumi = x86_dpwssd(sumi, x86_scale_pair(sc[2 * chunk], sc[2 * chunk + 1]), p16);
            }
        }
        if (tiled)
            acc_tiled = x86_tiled_step(acc_tiled, x86_hsum_epi32(sumi), 0, x86_f16(x[i].d), 0.0f, y[i].d);
        else
            acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * x86_f16(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = tiled ? acc_tiled : x86_hsum_ps(acc);
}
static void x86_dot_q3_K(int64_t n, float *s, const void *w, const void *a) { x86_q3_K_dot(n, s, w, a, 0); }
static void x86_tiled_q3_K(int64_t n, float *s, const void *w, const void *a) { x86_q3_K_dot(n, s, w, a, 1); }

/* Q4_K: 32 bytes of qs = 64 elements: low nibbles are sub-block 2j, high nibbles
 * sub-block 2j+1 (one scale each, broadcast as s16). The mins meet the Q8_K bsums
 * (pairs of 16-sums added with vphaddw): one vpmaddwd per block. */
static inline __attribute__((always_inline)) void x86_q4_K_rows(int64_t n, float *s, int64_t ls, const void *w,
                                                                const void *a, int64_t la, const int nt) {
    const block_q4_K *x = w;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    float acc[X86_NT], acc_m[X86_NT];
    for (int t = 0; t < nt; t++) acc[t] = 0.0f, acc_m[t] = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        if (nt == 1) x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const __m256i sc_mn = _mm256_cvtepu8_epi16(x86_k4_scales_mins(x[i].scales));
        uint16_t sc[16];
        _mm256_storeu_si256((__m256i *)sc, sc_mn);
        const uint8_t *q4 = x[i].qs;
        __m256i sumi[X86_NT];
#if REALM_X86_VNNI
        /* Several tokens, 512-bit: one zmm holds a 64-element chunk, low nibbles below
         * high ones, as the 64 q8 bytes lie; its scale vector holds sc[2j] below
         * sc[2j+1]. Folding the two halves gives each s32 lane the same integers as the
         * 256-bit path (used alone, where it is faster), so the results agree bit for bit. */
        if (nt > 1) {
            __m512i sum512[X86_NT];
            for (int t = 0; t < nt; t++) sum512[t] = _mm512_setzero_si512();
            for (int j = 0; j < QK_K / 64; j++, q4 += 32) {
                const __m256i bits = _mm256_loadu_si256((const __m256i *)q4);
                const __m512i q = _mm512_and_si512(
                    _mm512_inserti64x4(_mm512_castsi256_si512(bits), _mm256_srli_epi16(bits, 4), 1), _mm512_set1_epi8(0xF));
                const __m512i scv = _mm512_inserti64x4(_mm512_set1_epi16((short)sc[2 * j]),
                                                       _mm256_set1_epi16((short)sc[2 * j + 1]), 1);
                for (int t = 0; t < nt; t++) {
                    const int8_t *q8 = ((const block_q8_K *)((const char *)a + t * la) + i)->qs + 64 * j;
                    sum512[t] = _mm512_dpwssd_epi32(sum512[t], scv, _mm512_maddubs_epi16(q, _mm512_loadu_si512(q8)));
                }
            }
            for (int t = 0; t < nt; t++)
                sumi[t] = _mm256_add_epi32(_mm512_castsi512_si256(sum512[t]), _mm512_extracti64x4_epi64(sum512[t], 1));
        } else
#endif
        {
            for (int t = 0; t < nt; t++) sumi[t] = _mm256_setzero_si256();
            for (int j = 0; j < QK_K / 64; j++, q4 += 32) {
                const __m256i bits = _mm256_loadu_si256((const __m256i *)q4);
                const __m256i lo = _mm256_and_si256(bits, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                const __m256i sc_lo = _mm256_set1_epi16((short)sc[2 * j]), sc_hi = _mm256_set1_epi16((short)sc[2 * j + 1]);
                for (int t = 0; t < nt; t++) {
                    const int8_t *q8 = ((const block_q8_K *)((const char *)a + t * la) + i)->qs + 64 * j;
                    const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
                    const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
                    sumi[t] = x86_dpwssd(x86_dpwssd(sumi[t], sc_lo, p_lo), sc_hi, p_hi);
                }
            }
        }
        const __m128i mins = _mm256_extracti128_si256(sc_mn, 1);
        for (int t = 0; t < nt; t++) {
            const block_q8_K *y = (const block_q8_K *)((const char *)a + t * la) + i;
            const __m256i bsums = _mm256_loadu_si256((const __m256i *)y->bsums);
            const __m128i sums32 = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
            __m128i m = _mm_madd_epi16(mins, sums32);
            m = _mm_add_epi32(m, _mm_unpackhi_epi64(m, m));
            m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 1));
            /* whole-block integer sums, then fused multiply-adds in the scalar kernel's order */
            acc[t] = fmaf((float)x86_hsum_epi32(sumi[t]), x86_f16(x[i].d) * y->d, acc[t]);
            acc_m[t] = fmaf((float)_mm_cvtsi128_si32(m), x86_f16(x[i].dmin) * y->d, acc_m[t]);
        }
    }
    for (int t = 0; t < nt; t++) s[t * ls] = acc[t] - acc_m[t];
}
X86_DEFINE_DOTS(q4_K)

/* ---- 8-row kernels ----------------------------------------------------------------
 * 8 consecutive weight rows (row r at w + r * lw) times nt activation rows (a + t * la):
 * s[t * ls + r] = dot(row r, token t). The float accumulators are vectors whose lane r
 * is row r's: per block and token, the 8 rows' partial integer vectors are reduced to
 * one vector of 8 whole-block sums (x86_transpose_add8, exact), then one lane-wise FMA
 * updates all 8 rows. A lane-wise FMA is the scalar kernel's fmaf for each row, in the
 * same block order, so every output is bit for bit the scalar kernel's. */
#define X86_NR 8
/* Array bound for the tokens of one pass (the dispatch wrapper instantiates nt = 1..8). */
#define X86_NT8_MAX 8

/* Lane r of the result: the sum of the 8 lanes of v[r] (integers: exact in any order). */
static inline __attribute__((always_inline)) __m256i x86_transpose_add8(const __m256i v[X86_NR]) {
    __m256i t[4], u[2];
    for (int k = 0; k < 4; k++) /* per 128-bit lane: [v2k_0+v2k_2, v2k+1_0+.., v2k_1+v2k_3, v2k+1_1+..] */
        t[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
                                _mm256_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 2; k++) /* per 128-bit lane: [v4k, v4k+1, v4k+2, v4k+3], that lane's part */
        u[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(t[2 * k], t[2 * k + 1]),
                                _mm256_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
    /* [u0 low + u0 high | u1 low + u1 high] */
    return _mm256_add_epi32(_mm256_permute2x128_si256(u[0], u[1], 0x21), _mm256_blend_epi32(u[0], u[1], 0xF0));
}

/* The f16 pair at the start of block i of each of the 8 rows (d and dmin of a K-quant,
 * or d of Q4_0 and the next block's first bytes), as 8 u32 lanes. */
static inline __m256i x86_gather8_u32(const char *p, int64_t lw) {
    uint32_t v[X86_NR];
    for (int r = 0; r < X86_NR; r++) memcpy(&v[r], p + r * lw, 4);
    return _mm256_loadu_si256((const __m256i *)v);
}

/* The 16-byte headers (d, dmin, 12 bytes of scales and mins) of block i of 8 Q4_K rows,
 * decoded for all 8 rows at once: lane r of each vector is row r's. */
struct x86_q4_K_head {
    __m256 d, dmin;
    __m256i m02, m13, m46, m57; /* s16 pairs (min0, min2), (min1, min3), (min4, min6), (min5, min7) */
    uint64_t sc8[X86_NR];       /* row r's 8 6-bit scales, one per byte */
};

static inline __attribute__((always_inline)) void x86_q4_K_head8(struct x86_q4_K_head *h, const char *xi, int64_t lw) {
    /* 8 rows x 4 u32 (rows r and r + 4 in one ymm) -> 4 vectors of 8 rows: a 4x4 transpose per 128-bit lane */
    __m256i y[4];
    for (int k = 0; k < 4; k++)
        y[k] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(xi + k * lw))),
                                       _mm_loadu_si128((const __m128i *)(xi + (k + 4) * lw)), 1);
    const __m256i a = _mm256_unpacklo_epi32(y[0], y[1]), b = _mm256_unpackhi_epi32(y[0], y[1]);
    const __m256i c = _mm256_unpacklo_epi32(y[2], y[3]), e = _mm256_unpackhi_epi32(y[2], y[3]);
    const __m256i dd = _mm256_unpacklo_epi64(a, c); /* d | dmin << 16 */
    const __m256i u0 = _mm256_unpackhi_epi64(a, c), u1 = _mm256_unpacklo_epi64(b, e), u2 = _mm256_unpackhi_epi64(b, e);
    /* realm_k4_scale_min for all j, bytewise (see x86_k4_scales_mins) */
    const __m256i m6 = _mm256_set1_epi32(0x3f3f3f3f), m4 = _mm256_set1_epi32(0x0f0f0f0f);
    const __m256i top2 = _mm256_set1_epi32(0x30303030);
    const __m256i sc_lo = _mm256_and_si256(u0, m6);
    const __m256i sc_hi = _mm256_or_si256(_mm256_and_si256(u2, m4), _mm256_and_si256(_mm256_srli_epi32(u0, 2), top2));
    const __m256i mn_lo = _mm256_and_si256(u1, m6);
    const __m256i mn_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), m4),
                                          _mm256_and_si256(_mm256_srli_epi32(u1, 2), top2));
    /* scales: lanes [r0 lo, r0 hi, r1 lo, r1 hi | r4 .., r5 ..] and [r2, r3 | r6, r7] -> rows in order */
    const __m256i s01 = _mm256_unpacklo_epi32(sc_lo, sc_hi), s23 = _mm256_unpackhi_epi32(sc_lo, sc_hi);
    _mm256_storeu_si256((__m256i *)h->sc8, _mm256_permute2x128_si256(s01, s23, 0x20));
    _mm256_storeu_si256((__m256i *)(h->sc8 + 4), _mm256_permute2x128_si256(s01, s23, 0x31));
    /* mins: bytes 0, 2 and 1, 3 of each u32 as s16 pairs */
    const __m256i lo16 = _mm256_set1_epi32(0x00FF00FF);
    h->m02 = _mm256_and_si256(mn_lo, lo16);
    h->m13 = _mm256_and_si256(_mm256_srli_epi32(mn_lo, 8), lo16);
    h->m46 = _mm256_and_si256(mn_hi, lo16);
    h->m57 = _mm256_and_si256(_mm256_srli_epi32(mn_hi, 8), lo16);
    /* d and dmin: f16 pairs -> [d0..d7 | dmin0..dmin7] -> f32 */
    const __m256i d16 = _mm256_permute4x64_epi64(
        _mm256_packus_epi32(_mm256_and_si256(dd, _mm256_set1_epi32(0xFFFF)), _mm256_srli_epi32(dd, 16)), 0xD8);
    h->d = _mm256_cvtph_ps(_mm256_castsi256_si128(d16));
    h->dmin = _mm256_cvtph_ps(_mm256_extracti128_si256(d16, 1));
}

/* The mins chain's integers for one token and 8 rows: lane r = sum_j min_rj * S_j, S_j
 * the q8 sum of sub-block j (bsums[2j] + bsums[2j+1]); the pairs (S0, S2), (S1, S3),
 * (S4, S6), (S5, S7) meet the rows' min pairs in vpmaddwd. */
static inline __m256i x86_q4_K_summs8(const struct x86_q4_K_head *h, const block_q8_K *y) {
    const __m128i sums = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)y->bsums),
                                        _mm_loadu_si128((const __m128i *)(y->bsums + 8)));
    int32_t sp[4];
    _mm_storeu_si128((__m128i *)sp,
                     _mm_shuffle_epi8(sums, _mm_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15)));
    const __m256i s02 = _mm256_madd_epi16(h->m02, _mm256_set1_epi32(sp[0]));
    const __m256i s13 = _mm256_madd_epi16(h->m13, _mm256_set1_epi32(sp[1]));
    const __m256i s46 = _mm256_madd_epi16(h->m46, _mm256_set1_epi32(sp[2]));
    const __m256i s57 = _mm256_madd_epi16(h->m57, _mm256_set1_epi32(sp[3]));
    return _mm256_add_epi32(_mm256_add_epi32(s02, s13), _mm256_add_epi32(s46, s57));
}

#if REALM_X86_VNNI
/* Tokens per pass of the 8-row kernels: 512-bit registers hold 2 rows x 8 tokens. */
#define X86_NT8 8

/* Lane r: the sum of the 16 lanes of row r, from lvl[p] = the first reduction step of
 * rows 2p and 2p+1 (x86_pair_add). Integers: exact in any order. */
static inline __m512i x86_pair_add(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}

static inline __attribute__((always_inline)) __m256i x86_transpose_add8_512(const __m512i lvl[4]) {
    /* per 128-bit lane L: [r0, r1, r2, r3] (u0) and [r4 .. r7] (u1), lane L's part */
    const __m512i u0 = _mm512_add_epi32(_mm512_unpacklo_epi64(lvl[0], lvl[1]), _mm512_unpackhi_epi64(lvl[0], lvl[1]));
    const __m512i u1 = _mm512_add_epi32(_mm512_unpacklo_epi64(lvl[2], lvl[3]), _mm512_unpackhi_epi64(lvl[2], lvl[3]));
    /* [u0 L0, u1 L0, u0 L2, u1 L2] + [u0 L1, u1 L1, u0 L3, u1 L3], then the two halves */
    const __m512i x = _mm512_permutex2var_epi64(u0, _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), u1);
    const __m512i z = _mm512_add_epi32(x, _mm512_permutex2var_epi64(u0, _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15), u1));
    return _mm256_add_epi32(_mm512_castsi512_si256(z), _mm512_extracti64x4_epi64(z, 1));
}

/* Q4_K, rows 2p and 2p+1 of the 8 against nt tokens: out[t] = x86_pair_add of the two
 * rows' s32 partial sums. A zmm holds a 64-element chunk j: the 32 low nibbles below the
 * 32 high ones, as the q8 bytes lie; its scale vector sc[2j] (low half), sc[2j+1] as
 * s16, picked from the broadcast scale bytes by vpshufb (high bytes zeroed by 0x80). */
static inline __attribute__((always_inline)) void x86_q4_K_pair_sums(__m512i *out, const char *x0, const char *x1,
                                                                     uint64_t sc0, uint64_t sc1, const char *a,
                                                                     int64_t la, int64_t i, const int nt) {
    const uint8_t *q4[2] = {((const block_q4_K *)x0)->qs, ((const block_q4_K *)x1)->qs};
    const __m512i scb[2] = {_mm512_set1_epi64((long long)sc0), _mm512_set1_epi64((long long)sc1)};
    const __m512i m4 = _mm512_set1_epi8(0xF);
    __m512i sum[2][X86_NT8_MAX];
#pragma GCC unroll 4
    for (int j = 0; j < QK_K / 64; j++) {
        const __m512i ctl = _mm512_inserti64x4(_mm512_set1_epi16((short)(0x8000 | (2 * j))),
                                               _mm256_set1_epi16((short)(0x8000 | (2 * j + 1))), 1);
        __m512i q[2], scv[2];
        for (int k = 0; k < 2; k++) {
            const __m512i bits = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(q4[k] + 32 * j)));
            q[k] = _mm512_and_si512(_mm512_mask_srli_epi16(bits, 0xFFFF0000u, bits, 4), m4);
            scv[k] = _mm512_shuffle_epi8(scb[k], ctl);
        }
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            const __m512i q8 = _mm512_loadu_si512(((const block_q8_K *)(a + t * la) + i)->qs + 64 * j);
            for (int k = 0; k < 2; k++) {
                const __m512i p = _mm512_maddubs_epi16(q[k], q8);
                sum[k][t] = j ? _mm512_dpwssd_epi32(sum[k][t], scv[k], p) : _mm512_madd_epi16(scv[k], p);
            }
        }
    }
    for (int t = 0; t < nt; t++) out[t] = x86_pair_add(sum[0][t], sum[1][t]);
}
#else
#define X86_NT8 X86_NT

/* Q4_K, one row's block against nt tokens: out[t] = 8 s32 lanes summing to the block's
 * sum_j sc_j * (q4 . q8) (sc8: the 8 6-bit scales, one per byte). */
static inline __attribute__((always_inline)) void x86_q4_K_row_sums(__m256i *out, const uint8_t *q4, uint64_t sc8,
                                                                    const char *a, int64_t la, int64_t i, const int nt) {
    const __m256i scb = _mm256_set1_epi64x((long long)sc8);
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int t = 0; t < nt; t++) out[t] = _mm256_setzero_si256();
    for (int j = 0; j < QK_K / 64; j++) {
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(q4 + 32 * j));
        const __m256i lo = _mm256_and_si256(bits, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
        const __m256i sc_lo = _mm256_shuffle_epi8(scb, _mm256_set1_epi16((short)(0x8000 | (2 * j))));
        const __m256i sc_hi = _mm256_shuffle_epi8(scb, _mm256_set1_epi16((short)(0x8000 | (2 * j + 1))));
        for (int t = 0; t < nt; t++) {
            const int8_t *q8 = ((const block_q8_K *)(a + t * la) + i)->qs + 64 * j;
            const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
            const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            out[t] = x86_dpwssd(x86_dpwssd(out[t], sc_lo, p_lo), sc_hi, p_hi);
        }
    }
}
#endif

/* Q4_K, 8 rows: per block, the scales chain acc += isum * (d_w * d_a) and the mins chain
 * acc_m += summs * (dmin_w * d_a), lane r for row r, as dot_q4_K. */
static inline __attribute__((always_inline)) void x86_q4_K_8rows(int64_t n, float *s, int64_t ls, const void *w,
                                                                 int64_t lw, const void *a, int64_t la, const int nt) {
#if !REALM_X86_VNNI
    /* one token on AVX2: the single-row kernel is faster (same results) */
    if (nt == 1) {
        for (int r = 0; r < X86_NR; r++) x86_q4_K_rows(n, s + r, 0, (const char *)w + r * lw, a, 0, 1);
        return;
    }
#endif
    __m256 acc[X86_NT8_MAX], acc_m[X86_NT8_MAX];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps(), acc_m[t] = _mm256_setzero_ps();
    const int64_t slice = n >= QK_K ? (X86_NR * lw + n / QK_K - 1) / (n / QK_K) : 0; /* next group's bytes per block */
    for (int64_t i = 0; i < n / QK_K; i++) {
        if (nt == 1) x86_prefetch((const char *)w + X86_NR * lw + i * slice, slice);
        const char *xi = (const char *)((const block_q4_K *)w + i);
        struct x86_q4_K_head h;
        x86_q4_K_head8(&h, xi, lw);
        __m256i isum[X86_NT8_MAX];
#if REALM_X86_VNNI
        __m512i lvl[X86_NT8_MAX][4];
        for (int p = 0; p < 4; p++) {
            __m512i pair[X86_NT8_MAX];
            x86_q4_K_pair_sums(pair, xi + 2 * p * lw, xi + (2 * p + 1) * lw, h.sc8[2 * p], h.sc8[2 * p + 1], a, la, i, nt);
            for (int t = 0; t < nt; t++) lvl[t][p] = pair[t];
        }
        for (int t = 0; t < nt; t++) isum[t] = x86_transpose_add8_512(lvl[t]);
#else
        __m256i part[X86_NT8_MAX][X86_NR];
        for (int r = 0; r < X86_NR; r++) {
            __m256i sums[X86_NT8_MAX];
            x86_q4_K_row_sums(sums, ((const block_q4_K *)(xi + r * lw))->qs, h.sc8[r], a, la, i, nt);
            for (int t = 0; t < nt; t++) part[t][r] = sums[t];
        }
        for (int t = 0; t < nt; t++) isum[t] = x86_transpose_add8(part[t]);
#endif
        for (int t = 0; t < nt; t++) {
            const block_q8_K *y = (const block_q8_K *)((const char *)a + t * la) + i;
            const __m256 dy = _mm256_set1_ps(y->d);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(h.d, dy), acc[t]);
            acc_m[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(x86_q4_K_summs8(&h, y)), _mm256_mul_ps(h.dmin, dy), acc_m[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(s + t * ls, _mm256_sub_ps(acc[t], acc_m[t]));
}

#define X86_DEFINE_DOT_8R(fmt)                                                                                \
    static void x86_dot_8r_##fmt(int64_t n, float *s, int64_t ls, const void *w, int64_t lw, const void *a,  \
                                 int64_t la, int n_tokens) {                                                  \
        int t = 0;                                                                                            \
        for (; t + X86_NT8 <= n_tokens; t += X86_NT8)                                                         \
            x86_##fmt##_8rows(n, s + t * ls, ls, w, lw, (const char *)a + t * la, la, X86_NT8);               \
        s += t * ls, a = (const char *)a + t * la;                                                            \
        switch (n_tokens - t) {                                                                               \
        case 7: x86_##fmt##_8rows(n, s, ls, w, lw, a, la, 7); break;                                          \
        case 6: x86_##fmt##_8rows(n, s, ls, w, lw, a, la, 6); break;                                          \
        case 5: x86_##fmt##_8rows(n, s, ls, w, lw, a, la, 5); break;                                          \
        case 4: x86_##fmt##_8rows(n, s, ls, w, lw, a, la, 4); break;                                          \
        case 3: x86_##fmt##_8rows(n, s, ls, w, lw, a, la, 3); break;                                          \
        case 2: x86_##fmt##_8rows(n, s, ls, w, lw, a, la, 2); break;                                          \
        case 1: x86_##fmt##_8rows(n, s, ls, w, lw, a, la, 1); break;                                          \
        default: break;                                                                                       \
        }                                                                                                     \
    }
X86_DEFINE_DOT_8R(q4_K)

/* Q4_0, 8 rows: per block, acc += isum * (d_w * d_a), lane r for row r, as dot_q4_0.
 * The token's q8 is made unsigned once (q8 + 128, shared by the 8 rows) so that one
 * vpdpbusd per row and token does the products: sum (q8 + 128) qx - 128 sum qx is the
 * signed sum, and the 128 sum qx of the row's block starts its accumulator. */
static inline __attribute__((always_inline)) void x86_q4_0_8rows(int64_t n, float *s, int64_t ls, const void *w,
                                                                 int64_t lw, const void *a, int64_t la, const int nt) {
    const __m256i k80 = _mm256_set1_epi8((char)0x80);
    __m256 acc[X86_NT8_MAX];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    const int64_t slice = n >= QK4_0 ? (X86_NR * lw + n / QK4_0 - 1) / (n / QK4_0) : 0; /* next group's bytes per block */
    for (int64_t i = 0; i < n / QK4_0; i++) {
        if (nt == 1) x86_prefetch((const char *)w + X86_NR * lw + i * slice, slice);
        const char *xi = (const char *)((const block_q4_0 *)w + i);
        __m256i yu[X86_NT8_MAX];
        for (int t = 0; t < nt; t++)
            yu[t] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)((const block_q8_0 *)((const char *)a + t * la) + i)->qs), k80);
        __m256i part[X86_NT8_MAX][X86_NR];
        for (int r = 0; r < X86_NR; r++) {
            const block_q4_0 *x = (const block_q4_0 *)(xi + r * lw);
            const __m256i qx = _mm256_sub_epi8(x86_nibbles_32(x->qs), _mm256_set1_epi8(8));
            const __m256i init = _mm256_sub_epi32(_mm256_setzero_si256(), x86_dpbusd(_mm256_setzero_si256(), k80, qx));
            for (int t = 0; t < nt; t++) part[t][r] = x86_dpbusd(init, yu[t], qx);
        }
        /* the 8 rows' d: f16 -> f32 */
        const __m256i d32 = _mm256_and_si256(x86_gather8_u32(xi, lw), _mm256_set1_epi32(0xFFFF));
        const __m256i d16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(d32, d32), 0x08);
        const __m256 dw = _mm256_cvtph_ps(_mm256_castsi256_si128(d16));
        for (int t = 0; t < nt; t++) {
            const block_q8_0 *y = (const block_q8_0 *)((const char *)a + t * la) + i;
            const __m256i isum = x86_transpose_add8(part[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(x86_f16(y->d))), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(s + t * ls, acc[t]);
}
X86_DEFINE_DOT_8R(q4_0)

/* Q5_K: as Q4_K, plus the 5th bit: bit 2j / 2j+1 of qh[l] for the low / high nibbles of
 * chunk j, moved to bit 4 of each byte (shifts within 16-bit lanes keep bytes apart). */
static inline __attribute__((always_inline)) void x86_q5_K_dot(int64_t n, float *s, const void *w, const void *a,
                                                               const int tiled) {
    const block_q5_K *x = w;
    const block_q8_K *y = a;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i m16 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    float acc_tiled = 0.0f;
    float summs = 0.0f; /* the mins: one integer per block, then a scalar fused multiply-add */
    for (int64_t i = 0; i < n / QK_K; i++) {
        x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const float d = y[i].d * x86_f16(x[i].d);
        const float dmin = -y[i].d * x86_f16(x[i].dmin);
        const __m256i sc_mn = _mm256_cvtepu8_epi16(x86_k4_scales_mins(x[i].scales));
        const __m256i bsums = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        const __m128i sums32 = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
        __m128i m = _mm_madd_epi16(_mm256_extracti128_si256(sc_mn, 1), sums32);
        m = _mm_add_epi32(m, _mm_unpackhi_epi64(m, m));
        m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 1));
        const int mins = _mm_cvtsi128_si32(m);
        if (!tiled) summs = fmaf(dmin, (float)mins, summs);

        uint16_t sc[16];
        _mm256_storeu_si256((__m256i *)sc, sc_mn);
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)x[i].qh);
        const uint8_t *q5 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < QK_K / 64; j++, q5 += 32, q8 += 64) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)q5);
            /* bit 2j to bit 4: shift left by 4 - 2j (or right by 2j - 4) */
            const int b0 = 2 * j, b1 = 2 * j + 1;
            const __m256i h0 = b0 <= 4 ? _mm256_slli_epi16(hbits, 4 - b0) : _mm256_srli_epi16(hbits, b0 - 4);
            const __m256i h1 = b1 <= 4 ? _mm256_slli_epi16(hbits, 4 - b1) : _mm256_srli_epi16(hbits, b1 - 4);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(bits, m4), _mm256_and_si256(h0, m16));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), _mm256_and_si256(h1, m16));
            const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
            const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            sumi = x86_dpwssd(sumi, _mm256_set1_epi16((short)sc[2 * j]), p_lo);
            sumi = x86_dpwssd(sumi, _mm256_set1_epi16((short)sc[2 * j + 1]), p_hi);
        }
        if (tiled)
            acc_tiled = x86_tiled_step(acc_tiled, x86_hsum_epi32(sumi), mins, x86_f16(x[i].d), x86_f16(x[i].dmin),
                                       y[i].d);
        else
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = tiled ? acc_tiled : x86_hsum_ps(acc) + summs;
}
static void x86_dot_q5_K(int64_t n, float *s, const void *w, const void *a) { x86_q5_K_dot(n, s, w, a, 0); }
static void x86_tiled_q5_K(int64_t n, float *s, const void *w, const void *a) { x86_q5_K_dot(n, s, w, a, 1); }

/* Q6_K: per half (128 elements) 64 bytes of ql and 32 of qh make four 32-element
 * chunks: low/high nibbles of ql[0..31] and ql[32..63] plus bit pairs 0-1, 2-3, 4-5,
 * 6-7 of qh. The unsigned q (0..63) times q8 with vpmaddubsw, times the int8 scales (a
 * pair per chunk); the offset of 32 is taken off once per block through the Q8_K
 * bsums: sum_j sc_j * sum_l (q_l - 32) q8_l = sum_j sc_j * sum_l q_l q8_l - 32 * sum_j sc_j bsum_j. */
static inline __attribute__((always_inline)) void x86_q6_K_rows_in(int64_t n, float *s, int64_t ls, const void *w,
                                                                   const void *a, int64_t la, const int nt,
                                                                   const int tiled) {
    const block_q6_K *x = w;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i m2 = _mm256_set1_epi8(0x30);
    __m256 acc[X86_NT];
    float acc_tiled[X86_NT];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps(), acc_tiled[t] = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        if (nt == 1) x86_prefetch((const char *)(x + i) + X86_PREFETCH_AHEAD, sizeof *x);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
        __m256i sumi[X86_NT];
        for (int t = 0; t < nt; t++) {
            const block_q8_K *y = (const block_q8_K *)((const char *)a + t * la) + i;
            const __m256i off = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)y->bsums));
            sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5));
        }
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m2)),
                _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(h, 2), m2)),
            };
            const __m256i scl[4] = {x86_scale_pair(sc[0], sc[1]), x86_scale_pair(sc[2], sc[3]),
                                    x86_scale_pair(sc[4], sc[5]), x86_scale_pair(sc[6], sc[7])};
#if REALM_X86_VNNI
            /* Several tokens, 512-bit: chunks 0-1 and 2-3 in one zmm each (64 contiguous
             * q8 bytes); the same s32 lane sums as the 256-bit path, as for Q4_K */
            if (nt > 1) {
                const __m512i q01 = _mm512_inserti64x4(_mm512_castsi256_si512(q[0]), q[1], 1);
                const __m512i q23 = _mm512_inserti64x4(_mm512_castsi256_si512(q[2]), q[3], 1);
                const __m512i s01 = _mm512_inserti64x4(_mm512_castsi256_si512(scl[0]), scl[1], 1);
                const __m512i s23 = _mm512_inserti64x4(_mm512_castsi256_si512(scl[2]), scl[3], 1);
                for (int t = 0; t < nt; t++) {
                    const int8_t *q8 = ((const block_q8_K *)((const char *)a + t * la) + i)->qs + 128 * half;
                    __m512i acc2 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), s01,
                                                       _mm512_maddubs_epi16(q01, _mm512_loadu_si512(q8)));
                    acc2 = _mm512_dpwssd_epi32(acc2, s23, _mm512_maddubs_epi16(q23, _mm512_loadu_si512(q8 + 64)));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm512_castsi512_si256(acc2),
                                                                         _mm512_extracti64x4_epi64(acc2, 1)));
                }
            } else
#endif
            {
                for (int t = 0; t < nt; t++) {
                    const int8_t *q8 = ((const block_q8_K *)((const char *)a + t * la) + i)->qs + 128 * half;
                    for (int k = 0; k < 4; k++) {
                        const __m256i qy = _mm256_loadu_si256((const __m256i *)(q8 + 32 * k));
                        sumi[t] = x86_dpwssd(sumi[t], scl[k], _mm256_maddubs_epi16(q[k], qy));
                    }
                }
            }
        }
        for (int t = 0; t < nt; t++) {
            const block_q8_K *y = (const block_q8_K *)((const char *)a + t * la) + i;
            if (tiled)
                acc_tiled[t] = x86_tiled_step(acc_tiled[t], x86_hsum_epi32(sumi[t]), 0, x86_f16(x[i].d), 0.0f, y->d);
            else
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * x86_f16(x[i].d)), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) s[t * ls] = tiled ? acc_tiled[t] : x86_hsum_ps(acc[t]);
}
static inline __attribute__((always_inline)) void x86_q6_K_rows(int64_t n, float *s, int64_t ls, const void *w,
                                                                const void *a, int64_t la, const int nt) {
    x86_q6_K_rows_in(n, s, ls, w, a, la, nt, 0);
}
static inline __attribute__((always_inline)) void x86_q6_K_tiled_rows(int64_t n, float *s, int64_t ls, const void *w,
                                                                      const void *a, int64_t la, const int nt) {
    x86_q6_K_rows_in(n, s, ls, w, a, la, nt, 1);
}
X86_DEFINE_DOTS(q6_K)
X86_DEFINE_DOTS(q6_K_tiled)

#ifdef REALM_X86_GGML16
#define X86_FLOAT_ENTRIES \
    [REALM_TYPE_F32] = x86_dot_g16_f32, [REALM_TYPE_F16] = x86_dot_g16_f16, [REALM_TYPE_BF16] = x86_dot_g16_bf16
/* several tokens at once: tinyBLAS's order (rows must be a multiple of 16) */
#define X86_GEMM_FLOAT_ENTRIES \
    [REALM_TYPE_F32] = x86_gemm_g16_f32, [REALM_TYPE_F16] = x86_gemm_g16_f16, [REALM_TYPE_BF16] = x86_gemm_g16_bf16,
#else
#define X86_FLOAT_ENTRIES [REALM_TYPE_F32] = x86_dot_f32, [REALM_TYPE_F16] = x86_dot_f16, [REALM_TYPE_BF16] = x86_dot_bf16
#define X86_GEMM_FLOAT_ENTRIES
#endif
/* several tokens at once: the K-quants llama.cpp multiplies through ggml-cpu/tiled */
#define REALM_X86_GEMM_TABLE_ENTRIES                                                                  \
    X86_GEMM_FLOAT_ENTRIES[REALM_TYPE_Q3_K] = x86_tiled_q3_K, [REALM_TYPE_Q5_K] = x86_tiled_q5_K, \
                                            [REALM_TYPE_Q6_K] = x86_dot_q6_K_tiled
#define REALM_X86_GEMM_NX_TABLE_ENTRIES [REALM_TYPE_Q6_K] = x86_dot_nx_q6_K_tiled

#define REALM_X86_TABLE_ENTRIES                                                                          \
    X86_FLOAT_ENTRIES,                                                                                   \
    [REALM_TYPE_Q4_0] = x86_dot_q4_0, [REALM_TYPE_Q4_1] = x86_dot_q4_1, [REALM_TYPE_Q5_0] = x86_dot_q5_0, \
    [REALM_TYPE_Q5_1] = x86_dot_q5_1, [REALM_TYPE_Q8_0] = x86_dot_q8_0, [REALM_TYPE_Q2_K] = x86_dot_q2_K, \
    [REALM_TYPE_Q3_K] = x86_dot_q3_K, [REALM_TYPE_Q4_K] = x86_dot_q4_K, [REALM_TYPE_Q5_K] = x86_dot_q5_K, \
    [REALM_TYPE_Q6_K] = x86_dot_q6_K

#define REALM_X86_NX_TABLE_ENTRIES                                                                          \
    [REALM_TYPE_Q4_0] = x86_dot_nx_q4_0, [REALM_TYPE_Q8_0] = x86_dot_nx_q8_0, [REALM_TYPE_Q4_K] = x86_dot_nx_q4_K, \
    [REALM_TYPE_Q6_K] = x86_dot_nx_q6_K

#define REALM_X86_8R_TABLE_ENTRIES [REALM_TYPE_Q4_0] = x86_dot_8r_q4_0, [REALM_TYPE_Q4_K] = x86_dot_8r_q4_K

/* The including file's three dispatch tables and their accessors (vec_dot.h), e.g.
 * REALM_X86_DEFINE_TABLES(avx2) defines realm_vec_dot_table_avx2() and friends. */
#define REALM_X86_DEFINE_TABLES(isa)                                                                       \
    static const realm_vec_dot_fn table[REALM_N_TYPES] = {REALM_X86_TABLE_ENTRIES};                        \
    static const realm_vec_dot_nx_fn nx_table[REALM_N_TYPES] = {REALM_X86_NX_TABLE_ENTRIES};               \
    static const realm_vec_dot_8r_fn r8_table[REALM_N_TYPES] = {REALM_X86_8R_TABLE_ENTRIES};               \
    static const realm_vec_dot_fn gemm_table[REALM_N_TYPES] = {REALM_X86_GEMM_TABLE_ENTRIES};              \
    static const realm_vec_dot_nx_fn gemm_nx_table[REALM_N_TYPES] = {REALM_X86_GEMM_NX_TABLE_ENTRIES};     \
    const realm_vec_dot_fn *realm_vec_dot_gemm_table_##isa(void) { return gemm_table; }                     \
    const realm_vec_dot_nx_fn *realm_vec_dot_gemm_nx_table_##isa(void) { return gemm_nx_table; }            \
    const realm_vec_dot_fn *realm_vec_dot_table_##isa(void) { return table; }                              \
    const realm_vec_dot_nx_fn *realm_vec_dot_nx_table_##isa(void) { return nx_table; }                     \
    const realm_vec_dot_8r_fn *realm_vec_dot_8r_table_##isa(void) { return r8_table; }
