/* attention.h: causal grouped-query attention over a KV ring, as ggml's CPU path
 * computes it (no flash attention):
 *   Q rounded to f16; score = dot(Q_f16, K_f16) in f32, times 1/sqrt(head_dim) (or
 *   the scale a realm_attention_seq gives);
 *   softmax over the window (max subtracted, exp, sum in double, times (float)(1/sum));
 *   probabilities rounded to f16; out = sum_j P_f16[j] * V_f16[j] in f32,
 * summed in the order of the llama.cpp build that realm_float_order() names (ops.h).
 * Query head h reads KV head h / (n_head / n_head_kv).
 */
#ifndef REALM_ATTENTION_H
#define REALM_ATTENTION_H

#include <stdint.h>

#include "kv_ring.h"

/* q, out: f32 [n_tokens][n_head][head_dim] (out may not alias q). The tokens sit at
 * positions pos .. pos+n_tokens-1 and their K/V are already appended to `layer`;
 * token t attends to the layer's window of position pos+t (causal). scratch: at least
 * realm_attention_scratch_floats(kv, n_head, n_threads) floats. Threads over
 * (token, KV head): each K/V row is converted once for the query heads that share it.
 * Returns 0 or an error code (-1 bad argument, -5 layer or position out of range, which
 * includes a window reaching below held_from: after a wrap, a batch of several tokens
 * appended at once has overwritten the oldest positions its first tokens need). */
int realm_attention(const realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, int32_t n_head,
                    const float *q, float *out, float *scratch, int n_threads);

/* realm_attention for n_tokens of a batch of batch_tokens >= n_tokens tokens that the
 * caller attends in pieces: the float order can depend on the batch's size, not the
 * piece's (llama.cpp's AVX2 build sums a one-token batch, its decode, with
 * ggml_vec_dot_f16 and a larger one with tinyBLAS; see attention.c). realm_attention
 * is this with batch_tokens = n_tokens. */
int realm_attention_in_batch(const realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, int32_t n_head,
                             const float *q, float *out, float *scratch, int n_threads, int64_t batch_tokens);

int64_t realm_attention_scratch_floats(const realm_kv_ring *kv, int32_t n_head, int n_threads);

/* One sequence of a batch: n_tokens rows at positions pos .. in the ring kv, of a call
 * of batch_tokens >= n_tokens rows (which decides the float order, as above); scores
 * are the dot products times kq_scale (> 0; realm_attention takes 1/sqrt(head_dim)). */
typedef struct {
    const realm_kv_ring *kv;
    int64_t pos, n_tokens, batch_tokens;
    float kq_scale;
} realm_attention_seq;

#define REALM_ATTENTION_MAX_SEQS 64

/* realm_attention for several sequences in one threaded loop (a batched step of several
 * guests): q and out hold the sequences' rows one after another, each sequence attends
 * over its own ring at its own positions, with the arithmetic of realm_attention (so a
 * row's result does not depend on the other sequences). scratch: the largest
 * realm_attention_scratch_floats of the rings. Checks every sequence first: on an error
 * nothing is computed. */
int realm_attention_seqs(const realm_attention_seq *seqs, int n_seqs, int32_t layer, int32_t n_head, const float *q,
                         float *out, float *scratch, int n_threads);

#endif
