/* matmul.h: y = W x for a quantized weight W and n_tokens activation rows, threaded.
 *
 * W: n_rows rows of n_cols elements of `wtype`, each row_bytes long, back to back
 * (a GGUF tensor as it lies in the file), or of a repacked type (repack.h), whose
 * n_rows must then be a multiple of its group of rows. x: f32 [n_tokens][n_cols]. y: f32, token t's
 * output row r at y[t * ldy + r]. The activations are first rounded to the weight's
 * vec dot type (act_quant.h), once per call, into caller-provided scratch; then every
 * output is an integer (or f16/f32) dot product of a weight row with an activation row.
 * Rows are split among threads in blocks; within a block every token is processed
 * before moving on, so a weight block is read from memory once per call.
 */
#ifndef REALM_MATMUL_H
#define REALM_MATMUL_H

#include <stdint.h>

/* Bytes of scratch realm_matmul needs (the rounded activations); -1 on a bad shape. */
int64_t realm_matmul_scratch_bytes(int wtype, int64_t n_cols, int64_t n_tokens);

/* Round n_tokens rows of x into xq (the weight's vec dot type). Returns 0 or -1. */
int realm_quantize_acts(int wtype, const float *x, int64_t n_cols, int64_t n_tokens, void *xq, int n_threads);

/* y = W xq, xq as realm_quantize_acts wrote it. Returns 0 or -1. The float order of a
 * token's sums is llama.cpp's for a call of n_tokens: its batched order
 * (realm_get_vec_dot_gemm) for the rows realm_vec_dot_gemm_tokens picks, the
 * single-row order for the others. */
int realm_matmul_q(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tokens,
                   float *y, int64_t ldy, int n_threads);

/* realm_matmul_q with every token in one order: the batched one (`batched`, where the
 * format has one) or the single-row one. A step of several calls multiplies each run
 * of rows that share an order with one of these, so that a row sums as its call would
 * alone. */
int realm_matmul_q_order(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tokens,
                         int batched, float *y, int64_t ldy, int n_threads);

/* Both steps: xq is scratch of realm_matmul_scratch_bytes. Returns 0 or -1. */
int realm_matmul(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const float *x, int64_t n_tokens,
                 float *y, int64_t ldy, void *scratch, int n_threads);

#endif
