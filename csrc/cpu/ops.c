/* ops.c: see ops.h. */
#include "ops.h"
#include "realm_errors.h"

#include <math.h>
#include <pthread.h>

#include "dequant.h"
#include "fp16.h"
#include "ggml_blocks.h"
#include "vec_dot.h"

void realm_rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void realm_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, int64_t pos, float base,
                float freq_scale, const float *freq_factors, int neox) {
    /* the cos/sin cache of one position, shared by every head */
    float cs[REALM_ROPE_MAX_DIM];
    if (rope_dim > REALM_ROPE_MAX_DIM) rope_dim = REALM_ROPE_MAX_DIM; /* callers validate */
    const float theta_scale = powf(base, -2.0f / (float)rope_dim);
    float theta = (float)pos;
    for (int64_t i = 0; i < rope_dim; i += 2) {
        const float ff = freq_factors ? freq_factors[i / 2] : 1.0f;
        const float angle = freq_scale * (theta / ff);
        cs[i] = cosf(angle);
        cs[i + 1] = sinf(angle);
        theta *= theta_scale;
    }
    /* pair i is (v[a], v[a + off]): adjacent (a = 2i, off = 1) or NEOX (a = i, off = rope_dim / 2) */
    const int64_t off = neox ? rope_dim / 2 : 1, step = neox ? 1 : 2;
    /* a native build's compiler (GCC, AVX2 and AVX-512 alike) contracts ggml's rotation:
     * its first product fused with the sum (x0 c - x1 s and x0 s + x1 c, each one FMA) */
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        for (int64_t i = 0, a = 0; i < rope_dim; i += 2, a += step) {
            const float x0 = v[a], x1 = v[a + off], c = cs[i], sn = cs[i + 1];
            v[a] = fmaf(x0, c, -(x1 * sn));
            v[a + off] = fmaf(x0, sn, x1 * c);
        }
    }
}

/* -- GELU (tanh form) ------------------------------------------------------------------ */

/* ggml's CPU GELU reads a table of gelu(x) rounded to f16 at x rounded to f16 (the
 * GGML_GELU_FP16 build every llama.cpp CPU build uses); below -10 it is 0 and from 10 on x. */
static realm_f16 gelu_table[(1 << 16) + 1]; /* + 1: geglu_avx2's 4-byte gathers of the last entry */
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static void gelu_table_init(void) {
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f, coef_a = 0.044715f;
    for (int i = 0; i < 1 << 16; i++) {
        const float x = realm_f16_to_f32((realm_f16)i);
        /* 0.5 x (1 + tanh(sqrt(2/pi) x (1 + a x^2))), one rounding per operation but for
         * 1 + (a x) x in one FMA: GCC contracts ggml's expression so (llama.cpp's table
         * equals this one entry for entry) */
        const float inner = sqrt_2_over_pi * x * fmaf(coef_a * x, x, 1.0f);
        gelu_table[i] = realm_f32_to_f16(0.5f * x * (1.0f + tanhf(inner)));
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
/* realm_geglu 8 at a time: F16C's rounding to f16 (to nearest even, as realm_f32_to_f16)
 * gives the table index, a gather the entry; the ends blended in. out may be gate. */
__attribute__((target("avx2,f16c"))) static int64_t geglu_avx2(const float *gate, const float *up, float *out,
                                                               int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i);
        const __m256i at = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(g, _MM_FROUND_TO_NEAREST_INT));
        const __m256i e = _mm256_and_si256(_mm256_i32gather_epi32((const int *)gelu_table, at, 2),
                                           _mm256_set1_epi32(0xFFFF));
        const __m128i e16 = _mm_packus_epi32(_mm256_castsi256_si128(e), _mm256_extracti128_si256(e, 1));
        __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(e16), u);
        v = _mm256_blendv_ps(v, _mm256_mul_ps(g, u), _mm256_cmp_ps(g, _mm256_set1_ps(10.0f), _CMP_GE_OQ));
        v = _mm256_blendv_ps(v, _mm256_setzero_ps(), _mm256_cmp_ps(g, _mm256_set1_ps(-10.0f), _CMP_LE_OQ));
        _mm256_storeu_ps(out + i, v);
    }
    return i;
}
#endif

void realm_geglu(const float *gate, const float *up, float *out, int64_t n) {
    pthread_once(&gelu_once, gelu_table_init);
    int64_t i = 0;
#if defined(__x86_64__)
    if (realm_active_isa() >= REALM_ISA_AVX2) i = geglu_avx2(gate, up, out, n);
#endif
    for (; i < n; i++) {
        const float g = gate[i];
        if (g <= -10.0f)
            out[i] = 0.0f;
        else if (g >= 10.0f)
            out[i] = g * up[i];
        else
            out[i] = realm_f16_to_f32(gelu_table[realm_f32_to_f16(g)]) * up[i];
    }
}

/* -- float orders ------------------------------------------------------------------- */

static int forced_order = -1;

static int cpu_order(void) {
    return realm_cpu_isa() == REALM_ISA_AVX2 ? REALM_ORDER_AVX2 : REALM_ORDER_AVX512;
}

int realm_float_order(void) { return forced_order >= 0 ? forced_order : cpu_order(); }

int realm_set_float_order(int order) {
    forced_order = order == REALM_ORDER_AVX512 || order == REALM_ORDER_AVX2 ? order : -1;
    return realm_float_order();
}

/* -- ggml's vectorized expf, both builds ---------------------------------------------- */

/* The steps both builds share: n = x log2 e rounded to an integer (adding the shifter
 * rounds, |x log2 e| < 2^22; z keeps n in its low mantissa bits), b = x - n ln 2 in two
 * parts, and the polynomial's terms of degree 2..5 in FMAs (hi, to be times b^2). */
#define EXPF_SHIFTER 0x1.8p23f

struct expf_parts {
    float z, n, b, u, hi;
};

static inline struct expf_parts expf_parts(float x) {
    struct expf_parts r;
    r.z = fmaf(x, 0x1.715476p+0f, EXPF_SHIFTER);
    r.n = r.z - EXPF_SHIFTER;
    r.b = fmaf(-r.n, 0x1.7f7d1cp-20f, fmaf(-r.n, 0x1.62e4p-1f, x));
    r.u = r.b * r.b;
    r.hi = fmaf(fmaf(0x1.0e4020p-7f, r.b, 0x1.573e2ep-5f), r.u, fmaf(0x1.555e66p-3f, r.b, 0x1.fffdb6p-2f));
    return r;
}

float realm_expf_ggml(float x) {
    const struct expf_parts e = expf_parts(x);
    if (fabsf(e.n) > 192.0f) return e.n <= 0.0f ? 0.0f : INFINITY;
    const float p = fmaf(e.hi, e.u, fmaf(0x1.ffffecp-1f, e.b, 1.0f)); /* 1 + b + ... in one sum */
    return ldexpf(p, (int)e.n);
}

float realm_expf_ggml_avx2(float x) {
    const struct expf_parts e = expf_parts(x);
    const uint32_t bits = realm_f32_to_bits(e.z) << 23;     /* n in the exponent field (mod 2^9) */
    const float j = fmaf(e.hi, e.u, 0x1.ffffecp-1f * e.b); /* e^b - 1 */
    if (!(fabsf(e.n) > 126.0f)) {
        const float k = realm_bits_to_f32(bits + 0x3f800000u); /* 2^n */
        return fmaf(j, k, k);
    }
    /* 2^n = s2 * s1 with s1 = 2^-125 (n <= 0) or 2^127 (n > 0) */
    const uint32_t g = e.n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = realm_bits_to_f32(g + 0x7f000000u), s2 = realm_bits_to_f32(bits - g);
    if (fabsf(e.n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

static void expf_row_portable(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = realm_expf_ggml(x[i]);
}

static void expf_row_portable_avx2(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = realm_expf_ggml_avx2(x[i]);
}

#if defined(__x86_64__)
#include <immintrin.h>
/* 8 lanes of realm_expf_ggml (avx2 = 0) or realm_expf_ggml_avx2 (avx2 = 1): the same
 * operations per lane. Lanes whose 2^n is not a normal float (x below ~-87 or above
 * ~88, or NaN) are redone by the scalar function. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void expf_row_avx2_body(
    const float *x, float *y, int64_t n, int avx2) {
    const __m256 shifter = _mm256_set1_ps(EXPF_SHIFTER);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 z = _mm256_fmadd_ps(v, _mm256_set1_ps(0x1.715476p+0f), shifter);
        const __m256 k = _mm256_sub_ps(z, shifter);
        const __m256 b = _mm256_fnmadd_ps(k, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                          _mm256_fnmadd_ps(k, _mm256_set1_ps(0x1.62e4p-1f), v));
        const __m256 u = _mm256_mul_ps(b, b);
        const __m256 hi = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)),
                                          u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f)));
        /* 2^k from its bits: k + 127 in the exponent field */
        const __m256 pow2 = _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23));
        __m256 r;
        if (avx2) { /* pow2 + pow2 * j */
            const __m256 j = _mm256_fmadd_ps(hi, u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
            r = _mm256_fmadd_ps(j, pow2, pow2);
        } else { /* (1 + b + ...) * pow2 */
            const __m256 p = _mm256_fmadd_ps(hi, u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
            r = _mm256_mul_ps(p, pow2);
        }
        /* lanes whose exponent is not normal (or x is NaN): scalar, from the inputs kept
         * here (y may be x). |k| <= 126 is where both builds take their plain formula. */
        const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(k, _mm256_set1_ps(-126.0f), _CMP_GE_OQ),
                                        _mm256_cmp_ps(k, _mm256_set1_ps(126.0f), _CMP_LE_OQ));
        int bad = ~_mm256_movemask_ps(ok) & 0xFF;
        float in[8];
        if (bad) _mm256_storeu_ps(in, v);
        _mm256_storeu_ps(y + i, r);
        while (bad) {
            const int l = __builtin_ctz(bad);
            y[i + l] = avx2 ? realm_expf_ggml_avx2(in[l]) : realm_expf_ggml(in[l]);
            bad &= bad - 1;
        }
    }
    for (; i < n; i++) y[i] = avx2 ? realm_expf_ggml_avx2(x[i]) : realm_expf_ggml(x[i]);
}

__attribute__((target("avx2,fma"))) static void expf_row_avx2(const float *x, float *y, int64_t n) {
    expf_row_avx2_body(x, y, n, 0);
}

__attribute__((target("avx2,fma"))) static void expf_row_avx2_avx2(const float *x, float *y, int64_t n) {
    expf_row_avx2_body(x, y, n, 1);
}
#endif

void realm_expf_ggml_row(const float *x, float *y, int64_t n) {
    const int avx2 = realm_float_order() == REALM_ORDER_AVX2;
#if defined(__x86_64__)
    if (realm_active_isa() >= REALM_ISA_AVX2) {
        (avx2 ? expf_row_avx2_avx2 : expf_row_avx2)(x, y, n);
        return;
    }
#endif
    (avx2 ? expf_row_portable_avx2 : expf_row_portable)(x, y, n);
}

void realm_swiglu(const float *gate, const float *up, float *out, int64_t n) {
    /* ggml's vector part (16 or 8 lanes per step); its tail uses libm's expf */
    const int64_t lanes = realm_float_order() == REALM_ORDER_AVX2 ? 8 : 16, n_vec = n - n % lanes;
    float e[256]; /* e^-gate of a piece (out may be gate or up) */
    for (int64_t i0 = 0; i0 < n_vec; i0 += 256) {
        const int64_t m = n_vec - i0 < 256 ? n_vec - i0 : 256;
        for (int64_t j = 0; j < m; j++) e[j] = 0.0f - gate[i0 + j];
        realm_expf_ggml_row(e, e, m);
        for (int64_t j = 0; j < m; j++) out[i0 + j] = gate[i0 + j] / (1.0f + e[j]) * up[i0 + j];
    }
    for (int64_t i = n_vec; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void realm_add(const float *a, const float *b, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

int realm_get_rows(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const int32_t *ids, int64_t n_ids,
                   float *out) {
    const int qk = realm_type_block_elems(wtype);
    if (qk == 0 || n_cols <= 0 || n_cols % qk) return REALM_ERR_INVALID;
    const int64_t rb = n_cols / qk * realm_type_block_bytes(wtype);
    for (int64_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= n_rows) return REALM_ERR_RANGE;
    for (int64_t i = 0; i < n_ids; i++)
        if (realm_dequantize_row(wtype, (const char *)w + ids[i] * rb, out + i * n_cols, n_cols))
            return REALM_ERR_INVALID;
    return 0;
}
