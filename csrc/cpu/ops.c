/* ops.c: see ops.h. */
#include "ops.h"
#include "realm_errors.h"

#include <math.h>

#include "dequant.h"
#include "ggml_blocks.h"

void realm_rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void realm_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, int64_t pos, float base,
                float freq_scale, const float *freq_factors) {
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
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        for (int64_t i = 0; i < rope_dim; i += 2) {
            const float x0 = v[i], x1 = v[i + 1];
            v[i] = x0 * cs[i] - x1 * cs[i + 1];
            v[i + 1] = x0 * cs[i + 1] + x1 * cs[i];
        }
    }
}

float realm_expf_ggml(float x) {
    const float shifter = 0x1.8p23f; /* adding it rounds to an integer (|x log2 e| < 2^22) */
    const float n = fmaf(x, 0x1.715476p+0f, shifter) - shifter;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x)); /* x - n ln 2, in two parts */
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    const float u = b * b;
    const float p = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(p, (int)n);
}

static void expf_ggml_row_portable(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = realm_expf_ggml(x[i]);
}

#if defined(__x86_64__)
#include <immintrin.h>
/* 8 lanes of realm_expf_ggml: the same operations per lane. 2^n is built from its bits
 * where n is a normal exponent (-126..127); lanes outside (x below ~-87 or above ~88)
 * are redone by the scalar function. */
__attribute__((target("avx2,fma"))) static void expf_ggml_row_avx2(const float *x, float *y, int64_t n) {
    const __m256 shifter = _mm256_set1_ps(0x1.8p23f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 k = _mm256_sub_ps(_mm256_fmadd_ps(v, _mm256_set1_ps(0x1.715476p+0f), shifter), shifter);
        const __m256 b = _mm256_fnmadd_ps(k, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                          _mm256_fnmadd_ps(k, _mm256_set1_ps(0x1.62e4p-1f), v));
        const __m256 u = _mm256_mul_ps(b, b);
        const __m256 hi = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)),
                                          u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f)));
        const __m256 p = _mm256_fmadd_ps(hi, u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
        const __m256i ki = _mm256_cvtps_epi32(k); /* exact: k is an integer */
        const __m256 pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ki, _mm256_set1_epi32(127)), 23));
        /* lanes whose exponent is not normal (or x is NaN): scalar, from the inputs
         * kept here (y may be x) */
        const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(k, _mm256_set1_ps(-126.0f), _CMP_GE_OQ),
                                        _mm256_cmp_ps(k, _mm256_set1_ps(127.0f), _CMP_LE_OQ));
        int bad = ~_mm256_movemask_ps(ok) & 0xFF;
        float in[8];
        if (bad) _mm256_storeu_ps(in, v);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(p, pow2));
        while (bad) {
            const int l = __builtin_ctz(bad);
            y[i + l] = realm_expf_ggml(in[l]);
            bad &= bad - 1;
        }
    }
    for (; i < n; i++) y[i] = realm_expf_ggml(x[i]);
}
#endif

typedef void (*expf_row_fn)(const float *, float *, int64_t);

static expf_row_fn pick_expf_row(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return expf_ggml_row_avx2;
#endif
    return expf_ggml_row_portable;
}

void realm_expf_ggml_row(const float *x, float *y, int64_t n) {
    static expf_row_fn fn; /* chosen once; a race only picks the same function twice */
    if (!fn) fn = pick_expf_row();
    fn(x, y, n);
}

void realm_swiglu(const float *gate, const float *up, float *out, int64_t n) {
    const int64_t n16 = n - n % 16; /* ggml's 16-lane part; its tail uses libm's expf */
    float e[256];                   /* e^-gate of a piece (out may be gate or up) */
    for (int64_t i0 = 0; i0 < n16; i0 += 256) {
        const int64_t m = n16 - i0 < 256 ? n16 - i0 : 256;
        for (int64_t j = 0; j < m; j++) e[j] = 0.0f - gate[i0 + j];
        realm_expf_ggml_row(e, e, m);
        for (int64_t j = 0; j < m; j++) out[i0 + j] = gate[i0 + j] / (1.0f + e[j]) * up[i0 + j];
    }
    for (int64_t i = n16; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
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
