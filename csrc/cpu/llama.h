/* llama.h: the llama forward pass on the CPU, one layer at a time, as ggml computes it.
 *
 * Weights are GGUF tensors as they lie in the (memory-mapped) file, never decoded to
 * a matrix. Hidden states are f32 [n_tokens][n_embd]; tokens are processed in chunks
 * of at most scratch->max_tokens, each chunk running the whole layer (and appending its
 * K/V to the ring) before the next, which is exactly causal attention over the batch.
 */
#ifndef REALM_LLAMA_H
#define REALM_LLAMA_H

#include <stdint.h>

#include "fair_lock.h"
#include "kv_ring.h"

typedef struct {
    const void *data; /* raw blocks, n_rows rows of n_cols elements; borrowed */
    int32_t type;     /* ggml type id */
    int64_t n_rows;
    int64_t n_cols;
} realm_tensor;

typedef struct {
    int32_t n_embd, n_head, n_head_kv, head_dim, n_ff, rope_dim, n_vocab;
    float rms_eps, rope_base;
    float rope_freq_scale;    /* 1 / linear scaling factor; 1 for none */
    const float *rope_freqs;  /* rope_dim / 2 per-pair divisors of the angle, or NULL; borrowed */
} realm_llama_dims;

typedef struct {
    const float *attn_norm, *ffn_norm; /* f32 [n_embd]; borrowed */
    realm_tensor wq, wk, wv, wo, w_gate, w_up, w_down;
} realm_llama_layer;

/* Work buffers for up to max_tokens tokens per chunk; carved by realm_llama_scratch_init
 * out of one caller-owned buffer, reused by every call (no allocation per token). */
typedef struct {
    int64_t max_tokens;
    float *cur, *q, *k, *v, *att, *tmp, *gate, *up; /* [max_tokens][width] */
    float *att_scratch;                             /* realm_attention's scratch */
    int64_t att_scratch_floats;
    void *xq; /* rounded activations for the matmuls */
    int64_t xq_bytes;
} realm_llama_scratch;

/* Check dims and the layer's tensors (shapes, types, norms present). 0 or -1. */
int realm_llama_check_layer(const realm_llama_dims *d, const realm_llama_layer *L);

/* Bytes needed for max_tokens tokens, attention scratch of att_floats floats and the
 * given layers and LM head (output may be NULL); with buf != NULL, also carve buf (of
 * buf_bytes) into *s. Returns the bytes needed, or -1 on a bad argument. */
int64_t realm_llama_scratch_init(realm_llama_scratch *s, const realm_llama_dims *d, const realm_llama_layer *layers,
                                 int32_t n_layer, const realm_tensor *output, int64_t max_tokens, int64_t att_floats,
                                 void *buf, int64_t buf_bytes);

/* One whole layer on x (tokens at positions pos .. pos+n_tokens-1) into out (out may
 * equal x): RMSNorm, Q/K/V, RoPE, K/V appended to the ring's layer `layer`, attention,
 * output projection, residual, RMSNorm, gate/up, SwiGLU, down, residual.
 * Returns 0, -1 bad argument, -5 layer or position out of range, -7 scratch too small. */
int realm_llama_layer_forward(const realm_llama_dims *d, const realm_llama_layer *L, int32_t layer,
                              realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x, float *out,
                              realm_llama_scratch *s, int n_threads);

/* Final RMSNorm and output projection: logits f32 [n_tokens][n_vocab]. 0 or -1. */
int realm_llama_lm_head(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                        const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s, int n_threads);

/* ---- long calls in chunks --------------------------------------------------------
 * A guest's one call may carry thousands of tokens. The drivers below run it in chunks,
 * each under the model's fair lock, so other guests' steps interleave between chunks,
 * and check the call's control between token chunks. A chunk's work is at most
 * scratch->max_tokens "token-layers": one token through one layer's matmuls, plus its
 * attention over a window of W positions counted as REALM_ATTENTION_COST matmul
 * multiply-adds per attention multiply-add (2 * n_head * head_dim * W of them): attention,
 * in f16 and f32 with a softmax, runs slower per operation than the integer dot
 * products, and slower still in few-token chunks (each reads the window again). The
 * factor trades a neighbour's wait against the long call's speed (SECURITY.md). An LM
 * head row counts its weight elements over a layer's. */
#define REALM_ATTENTION_COST 8

/* A call's stop signals: `cancel` is set from any thread (realm_call_cancel), and
 * `deadline_ns` is CLOCK_MONOTONIC nanoseconds (0: none). Owned by the guest's host.
 * The drivers also write what the call's chunks met at the lock, for measurement. */
typedef struct {
    int32_t cancel;
    int64_t deadline_ns;
    uint64_t chunks;                  /* lock grants the call took */
    uint64_t first_grant, last_grant; /* their tickets (grant numbers of the model's lock) */
    uint64_t max_ahead;               /* the most grants queued before one of its chunks */
} realm_call_control;

void realm_call_cancel(realm_call_control *c);
void realm_call_arm(realm_call_control *c, int64_t deadline_ns); /* clears cancel and the counts */
/* 0 (go on), 1 (cancelled) or 2 (past the deadline); c may be NULL (never stops) */
int realm_call_stopped(const realm_call_control *c);

/* The next chunk of a call at position pos with n_tokens left over n_layers layers:
 * *tokens tokens through *layers layers at a time. */
void realm_llama_chunk_shape(const realm_llama_dims *d, const realm_kv_ring *kv, int64_t max_tokens, int64_t pos,
                             int64_t n_tokens, int32_t n_layers, int64_t *tokens, int32_t *layers);

/* realm_llama_layer_forward for layers first .. first+count-1 (of `layers`, indexed by
 * layer number) over every token, in chunks under `lock`, tokens outer and layers inner
 * (as llama.cpp's micro-batches), each token chunk finishing every layer before the
 * next starts. Between token chunks, a stop of `ctl` ends the call with -8: *done then
 * says how many tokens every layer in range has taken (the ring holds positions up to
 * pos + *done - 1 of them; out's rows are unspecified). Other codes as the layer's. */
int realm_llama_forward_layers(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                               int32_t count, realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x,
                               float *out, realm_llama_scratch *s, int n_threads, realm_fair_lock *lock,
                               realm_call_control *ctl, int64_t *done);

/* realm_llama_lm_head in chunks of rows under `lock`, checking `ctl` between them
 * (-8: *done rows were written). */
int realm_llama_lm_head_chunked(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                                const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s,
                                int n_threads, realm_fair_lock *lock, realm_call_control *ctl,
                                int64_t *done);

#endif
