/* ops.c: see ops.h. */
#include "ops.h"

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

void realm_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, int64_t pos, float base) {
    /* the cos/sin cache of one position, shared by every head */
    float cs[REALM_ROPE_MAX_DIM];
    if (rope_dim > REALM_ROPE_MAX_DIM) rope_dim = REALM_ROPE_MAX_DIM; /* callers validate */
    const float theta_scale = powf(base, -2.0f / (float)rope_dim);
    float theta = (float)pos;
    for (int64_t i = 0; i < rope_dim; i += 2) {
        cs[i] = cosf(theta);
        cs[i + 1] = sinf(theta);
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

void realm_swiglu(const float *gate, const float *up, float *out, int64_t n) {
    const int64_t n16 = n - n % 16; /* ggml's 16-lane part; its tail uses libm's expf */
    int64_t i = 0;
    for (; i < n16; i++) out[i] = gate[i] / (1.0f + realm_expf_ggml(0.0f - gate[i])) * up[i];
    for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void realm_add(const float *a, const float *b, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

int realm_get_rows(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const int32_t *ids, int64_t n_ids,
                   float *out) {
    const int qk = realm_type_block_elems(wtype);
    if (qk == 0 || n_cols <= 0 || n_cols % qk) return -1;
    const int64_t rb = n_cols / qk * realm_type_block_bytes(wtype);
    for (int64_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= n_rows) return -5;
    for (int64_t i = 0; i < n_ids; i++)
        if (realm_dequantize_row(wtype, (const char *)w + ids[i] * rb, out + i * n_cols, n_cols)) return -1;
    return 0;
}
