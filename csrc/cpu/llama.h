/* llama.h: the llama forward pass on the CPU, one layer at a time, as ggml computes it,
 * with what the other families add to it (realm_ext/arch.py says which family has what):
 * Q/K/V biases (Qwen2); per-head Q/K RMSNorm, post-block norms, GeGLU, a scaled
 * embedding, Q scaled before attention and a RoPE base per layer (Gemma 3).
 *
 * Weights are GGUF tensors as they lie in the (memory-mapped) file, never decoded to
 * a matrix. Hidden states are f32 [n_tokens][n_embd]; tokens are processed in chunks
 * of at most scratch->max_tokens, each chunk running the whole layer (and appending its
 * K/V to the ring) before the next, which is exactly causal attention over the batch.
 */
#ifndef REALM_LLAMA_H
#define REALM_LLAMA_H

#include <stdint.h>

#include "attention.h"
#include "kv_ring.h"

/* The most sequences (guests' calls) one batched step carries (llama_steps.h). */
#define REALM_STEP_MAX_SEQS REALM_ATTENTION_MAX_SEQS

typedef struct {
    const void *data; /* raw blocks, n_rows rows of n_cols elements; borrowed */
    int32_t type;     /* ggml type id */
    int64_t n_rows;
    int64_t n_cols;
} realm_tensor;

/* the feed-forward's gating: silu(gate) * up (llama, Qwen2) or gelu(gate) * up (Gemma) */
enum { REALM_FFN_SILU = 0, REALM_FFN_GELU = 1 };

typedef struct {
    int32_t n_embd, n_head, n_head_kv, head_dim, n_ff, rope_dim, n_vocab;
    float rms_eps, rope_base;
    float rope_freq_scale;    /* 1 / linear scaling factor; 1 for none */
    const float *rope_freqs;  /* rope_dim / 2 per-pair divisors of the angle, or NULL; borrowed */
    int32_t rope_neox;        /* RoPE pairs (i, i + rope_dim/2) (ggml's NEOX mode), else adjacent */
    int32_t ffn_act;          /* REALM_FFN_* */
    float embd_scale;         /* embedding rows times this (Gemma: sqrtf(n_embd)); 1 for none */
    float q_scale;            /* > 0: Q times this (f32) before attention, scores unscaled
                                 (Gemma); 0: scores times 1/sqrt(head_dim) */
} realm_llama_dims;

typedef struct {
    const float *attn_norm, *ffn_norm; /* f32 [n_embd]; borrowed */
    realm_tensor wq, wk, wv, wo, w_gate, w_up, w_down;
    /* what a family adds, NULL where it has none; f32, borrowed */
    const float *bq, *bk, *bv;                   /* [q_dim], [kv_dim], [kv_dim]: added to Q, K, V */
    const float *q_norm, *k_norm;                /* [head_dim]: RMSNorm of each head of Q and K before RoPE */
    const float *attn_post_norm, *ffn_post_norm; /* [n_embd]: RMSNorm of a block's output before its residual */
    float rope_base, rope_freq_scale;            /* this layer's RoPE (local and global layers differ) */
} realm_llama_layer;

/* Work buffers for up to max_tokens tokens per chunk; carved by realm_llama_scratch_init
 * out of one caller-owned buffer, reused by every call (no allocation per token). */
typedef struct {
    int64_t max_tokens;
    float *cur, *q, *k, *v, *att, *tmp, *gate, *up; /* [max_tokens][width] */
    float *att_scratch;                             /* realm_attention's scratch */
    int64_t att_scratch_floats;
    int64_t *row_pos;      /* [max_tokens] each row's position (RoPE) */
    float *hidden;         /* [max_tokens][n_embd] a batched step's rows (llama_steps.c) */
    float *logits;         /* [lm_rows][n_vocab] a batched LM head step's logits, or NULL */
    int64_t lm_rows;       /* rows per LM head chunk (realm_llama_lm_rows) */
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
 * equal x): RMSNorm, Q/K/V (+ biases), [Q/K norms], RoPE, K/V appended to the ring's
 * layer `layer`, attention over the layer's window, output projection, [post norm],
 * residual, RMSNorm, gate/up, SwiGLU or GeGLU, down, [post norm], residual.
 * Returns 0, -1 bad argument, -5 layer or position out of range, -7 scratch too small. */
int realm_llama_layer_forward(const realm_llama_dims *d, const realm_llama_layer *L, int32_t layer,
                              realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x, float *out,
                              realm_llama_scratch *s, int n_threads);

/* The embedding rows of ids (times d->embd_scale): out f32 [n_ids][n_embd].
 * 0, -1 bad argument, -5 an id outside the vocabulary. */
int realm_llama_embed(const realm_llama_dims *d, const realm_tensor *token_embd, const int32_t *ids, int64_t n_ids,
                      float *out);

/* Final RMSNorm and output projection: logits f32 [n_tokens][n_vocab]. 0 or -1. */
int realm_llama_lm_head(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                        const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s, int n_threads);

/* One sequence of a batched step: n_tokens rows at positions pos .. in its ring, rows
 * call_row .. of a call of call_tokens rows. The call decides the float order of the
 * rows' matmuls (vec_dot.h: realm_vec_dot_gemm_tokens, llama.cpp's batched order for a
 * large enough call, by the row's place in it), so a row sums the same in any step; in
 * a step, the sequences of larger calls come first. */
typedef struct {
    realm_kv_ring *kv; /* NULL for the LM head */
    int64_t pos, n_tokens, call_tokens, call_row;
} realm_llama_seq;

/* May a chunk of n_tokens at pos go through layers first .. first+count-1 of kv in one
 * step (every layer's next position is pos, the chunk fits the ring and the scratch, its
 * first window survives its own appends)? 0, or the code the layer would fail with. */
int realm_llama_seq_check(const realm_llama_dims *d, int32_t first, int32_t count, const realm_kv_ring *kv,
                          int64_t pos, int64_t n_tokens, const realm_llama_scratch *s, int n_threads);

/* Layers first .. first+count-1 (of `layers`, indexed by layer number) over the rows of
 * n_seqs sequences at once (each checked by realm_llama_seq_check; at most max_tokens
 * rows in all), x and out holding one sequence's rows after another (out may be x):
 * every matmul over all the rows, RoPE, the K/V append and attention per sequence. A
 * row's result is the one realm_llama_layer_forward gives it alone. */
int realm_llama_layers_rows(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                            int32_t count, const realm_llama_seq *seqs, int n_seqs, const float *x, float *out,
                            realm_llama_scratch *s, int n_threads);

/* Weight elements of one layer: its matmuls' multiply-adds per token. */
int64_t realm_llama_layer_weight_elems(const realm_llama_dims *d);

/* The final RMSNorm and output projection over the rows of n_seqs sequences (as in
 * realm_llama_layers_rows; kv and pos unused): logits [rows][n_vocab]. 0 or -1. */
int realm_llama_lm_head_rows(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                             const realm_llama_seq *seqs, int n_seqs, const float *x, float *logits,
                             realm_llama_scratch *s, int n_threads);

/* Rows of one LM head chunk: its weight elements over a layer's, per max_tokens. */
int64_t realm_llama_lm_rows(const realm_llama_dims *d, int64_t max_tokens);

#endif
