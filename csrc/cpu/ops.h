/* ops.h: the small per-token operations of a llama layer, with ggml's float semantics
 * (see NUMERICS.md). Rows are f32 and contiguous; in-place use (out == x) is allowed. */
#ifndef REALM_OPS_H
#define REALM_OPS_H

#include <stdint.h>

/* out = x / sqrt(mean(x^2) + eps) * w: x*x in f32 summed in double, mean and the scale
 * in f32, then (x * scale) * w, as ggml's rms_norm followed by mul. */
void realm_rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps);

#define REALM_ROPE_MAX_DIM 1024

/* RoPE on pairs of each of n_heads heads (head_dim apart), for i < rope_dim / 2:
 * adjacent (x[2i], x[2i+1]), ggml's NORMAL mode (llama), or with neox (x[i],
 * x[i + rope_dim/2]), its NEOX mode (Qwen2, Gemma 3); at absolute position pos, as ggml's rope cache builds the angles
 * in f32: theta_i = pos * theta_scale^i by repeated multiplication (theta_scale =
 * powf(base, -2/rope_dim)), then angle_i = freq_scale * (theta_i / freq_factors[i]).
 * freq_factors: rope_dim / 2 floats (a model's rope_freqs), or NULL for all 1;
 * freq_scale: 1 / the linear scaling factor (1 for none). rope_dim <= REALM_ROPE_MAX_DIM.
 * The rotation (x0 c - x1 s, x0 s + x1 c) rounds its products and sums one by one in
 * the AVX-512 order, and fuses each first product into its sum in the AVX2 order (ops.h's
 * float orders, below). */
void realm_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, int64_t pos, float base,
                float freq_scale, const float *freq_factors, int neox);

/* Float orders. ggml's CPU kernels sum and round in an order that depends on the SIMD
 * width its build was compiled for; the kernels here reproduce one of two builds bit
 * for bit, chosen at run time from the CPU (an x86 CPU with AVX2 but not AVX-512 takes
 * the AVX2 build's order, every other CPU the AVX-512 build's), each in portable C and
 * in SIMD with the same floats:
 * - REALM_ORDER_AVX512: 16-lane expf (polynomial + 1, then times 2^n), softmax sums per
 *   16 cells, attention as attention.c describes under that name;
 * - REALM_ORDER_AVX2: 8-lane expf (2^n + 2^n * polynomial in one FMA), softmax sums per
 *   8 cells, attention in tinyBLAS<8>'s order for a batch and ggml_vec_dot_f16's (4
 *   accumulators of 8) for one token, RoPE's rotation with FMAs. */
enum { REALM_ORDER_AVX512 = 0, REALM_ORDER_AVX2 = 1 };

/* The order in use: the CPU's, or the one forced by realm_set_float_order. */
int realm_float_order(void);

/* Force an order (tests: run either order's portable and SIMD code on any x86 CPU);
 * -1 restores the CPU's. Returns the order now in use. */
int realm_set_float_order(int order);

/* out = silu(gate) * up, silu(g) = g / (1 + exp(-g)), in realm_float_order(): ggml's
 * vector lanes (16 or 8) use its vectorized expf, the n % lanes left over libm's. */
void realm_swiglu(const float *gate, const float *up, float *out, int64_t n);

/* e^x as ggml's vectorized expf computes it in an AVX-512 build (used by its softmax
 * and SiLU): n = round(x log2 e), b = x - n ln 2 in two parts, a degree-5 polynomial
 * in FMAs (its constant 1 included), scaled by 2^n; 0 or infinity when |n| > 192. Each
 * step is one IEEE operation, so this scalar version has the bits of the 16-lane one
 * (max error ~1.5 ulp against the exact e^x). */
float realm_expf_ggml(float x);

/* e^x as ggml's vectorized expf computes it in an AVX2 build: the same n and b, the
 * polynomial without its constant 1 (j), then 2^n + 2^n * j in one FMA; where |n| >
 * 126 (2^n not a normal float) 2^n is split into two factors, s2 * (1 + j) rounded,
 * then times s1 (0 or infinity when |n| > 192). Each step one IEEE operation. */
float realm_expf_ggml_avx2(float x);

/* y[i] = e^x[i] in realm_float_order() (realm_expf_ggml or realm_expf_ggml_avx2),
 * vectorized where the CPU has AVX2 + FMA (same bits); y may be x. */
void realm_expf_ggml_row(const float *x, float *y, int64_t n);

/* out = gelu(gate) * up, GELU in its tanh form as ggml's CPU computes it: gelu(x)
 * from a table of f16 values at x rounded to f16, 0 for x <= -10, x for x >= 10
 * (GeGLU: Gemma's feed-forward). out may be gate or up. */
void realm_geglu(const float *gate, const float *up, float *out, int64_t n);

/* out = a + b */
void realm_add(const float *a, const float *b, float *out, int64_t n);

/* Embedding: out[i] = row ids[i] of W (n_rows x n_cols of wtype), decoded to f32.
 * Returns 0, -1 on a bad type or shape, -5 when an id is outside 0..n_rows-1. */
int realm_get_rows(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const int32_t *ids, int64_t n_ids,
                   float *out);

#endif
