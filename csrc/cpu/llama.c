/* llama.c: see llama.h. Read realm_llama_layer_forward top to bottom: it is the layer. */
#include "llama.h"
#include "realm_errors.h"

#include <math.h>
#include <stddef.h>

#include "act_quant.h"
#include "attention.h"
#include "matmul.h"
#include "ops.h"
#include "threadpool.h"
#include "vec_dot.h"

static int tensor_ok(const realm_tensor *t, int64_t n_rows, int64_t n_cols) {
    return t->data && t->n_rows == n_rows && t->n_cols == n_cols &&
           realm_matmul_scratch_bytes(t->type, n_cols, 1) >= 0;
}

static int dims_ok(const realm_llama_dims *d) {
    return d->n_embd > 0 && d->n_head > 0 && d->n_head_kv > 0 && d->n_head % d->n_head_kv == 0 &&
           d->head_dim > 0 && d->head_dim % 2 == 0 && d->rope_dim > 0 && d->rope_dim % 2 == 0 &&
           d->rope_dim <= d->head_dim && d->rope_dim <= REALM_ROPE_MAX_DIM && d->n_ff > 0 && d->n_vocab > 0 &&
           d->rms_eps > 0 && d->rope_base > 0 && d->rope_freq_scale > 0 && (d->ffn_act == REALM_FFN_SILU ||
           d->ffn_act == REALM_FFN_GELU) && d->embd_scale > 0 && d->q_scale >= 0;
}

int realm_llama_check_layer(const realm_llama_dims *d, const realm_llama_layer *L) {
    if (!d || !L || !dims_ok(d) || !L->attn_norm || !L->ffn_norm) return REALM_ERR_INVALID;
    if (!(L->rope_base > 0 && L->rope_freq_scale > 0) || !L->q_norm != !L->k_norm) return REALM_ERR_INVALID;
    const int64_t q_dim = (int64_t)d->n_head * d->head_dim, kv_dim = (int64_t)d->n_head_kv * d->head_dim;
    const int ok = tensor_ok(&L->wq, q_dim, d->n_embd) && tensor_ok(&L->wk, kv_dim, d->n_embd) &&
                   tensor_ok(&L->wv, kv_dim, d->n_embd) && tensor_ok(&L->wo, d->n_embd, q_dim) &&
                   tensor_ok(&L->w_gate, d->n_ff, d->n_embd) && tensor_ok(&L->w_up, d->n_ff, d->n_embd) &&
                   tensor_ok(&L->w_down, d->n_embd, d->n_ff);
    return ok ? 0 : -1;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* weight elements of one layer: its matmuls' multiply-adds per token */
int64_t realm_llama_layer_weight_elems(const realm_llama_dims *d) {
    const int64_t E = d->n_embd, q_dim = (int64_t)d->n_head * d->head_dim;
    const int64_t kv_dim = (int64_t)d->n_head_kv * d->head_dim;
    return 2 * q_dim * E + 2 * kv_dim * E + 3 * E * (int64_t)d->n_ff;
}

int64_t realm_llama_lm_rows(const realm_llama_dims *d, int64_t max_tokens) {
    const int64_t per_row = (int64_t)d->n_vocab * d->n_embd;
    return clamp64(max_tokens * realm_llama_layer_weight_elems(d) / per_row, 1, max_tokens);
}

static int64_t xq_need(const realm_tensor *t, int64_t max_tokens) {
    return realm_matmul_scratch_bytes(t->type, t->n_cols, max_tokens);
}

int64_t realm_llama_scratch_init(realm_llama_scratch *s, const realm_llama_dims *d, const realm_llama_layer *layers,
                                 int32_t n_layer, const realm_tensor *output, int64_t max_tokens, int64_t att_floats,
                                 void *buf, int64_t buf_bytes) {
    if (!d || !dims_ok(d) || max_tokens <= 0 || att_floats < 0 || n_layer < 0 || (n_layer && !layers)) return -1;
    const int64_t q_dim = (int64_t)d->n_head * d->head_dim, kv_dim = (int64_t)d->n_head_kv * d->head_dim;
    int64_t xq = 0;
    for (int32_t i = 0; i < n_layer; i++) {
        const realm_llama_layer *L = &layers[i];
        if (realm_llama_check_layer(d, L)) return -1;
        const realm_tensor *ts[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t j = 0; j < sizeof ts / sizeof ts[0]; j++) xq = max64(xq, xq_need(ts[j], max_tokens));
    }
    if (output) {
        if (!tensor_ok(output, d->n_vocab, d->n_embd)) return -1;
        xq = max64(xq, xq_need(output, max_tokens));
    }
    /* the float buffers, in order, then the activation bytes (64-byte aligned pieces) */
    const int64_t lm_rows = realm_llama_lm_rows(d, max_tokens);
    const int64_t widths[] = {d->n_embd, q_dim, kv_dim, kv_dim, q_dim, d->n_embd, d->n_ff, d->n_ff, d->n_embd};
    int64_t offs[12], off = 0;
    for (int j = 0; j < 9; j++) {
        offs[j] = off;
        off += (widths[j] * max_tokens * 4 + 63) / 64 * 64;
    }
    offs[9] = off; /* row_pos */
    off += (max_tokens * 8 + 63) / 64 * 64;
    offs[10] = off; /* logits */
    if (output) off += (lm_rows * d->n_vocab * 4 + 63) / 64 * 64;
    offs[11] = off;
    off += (att_floats * 4 + 63) / 64 * 64;
    const int64_t xq_off = off;
    off += (xq + 63) / 64 * 64;
    if (!buf) return off;
    if (!s || buf_bytes < off || ((uintptr_t)buf & 63)) return -1;
    char *b = buf;
    float **fs[] = {&s->cur, &s->q, &s->k, &s->v, &s->att, &s->tmp, &s->gate, &s->up, &s->hidden};
    for (int j = 0; j < 9; j++) *fs[j] = (float *)(b + offs[j]);
    s->row_pos = (int64_t *)(b + offs[9]);
    s->logits = output ? (float *)(b + offs[10]) : NULL;
    s->lm_rows = lm_rows;
    s->att_scratch = (float *)(b + offs[11]);
    s->att_scratch_floats = att_floats;
    s->xq = b + xq_off;
    s->xq_bytes = xq;
    s->max_tokens = max_tokens;
    return off;
}

/* The rows of a step and their calls' sizes (realm_llama_seq), as the matmuls read them. */
struct step_rows {
    const realm_llama_seq *seqs;
    int n_seqs;
    int64_t n; /* rows in all */
};

/* Rows [row0, row1) of a step's matmul, all in one float order. */
static int mm_run(const realm_tensor *w, const realm_llama_scratch *s, int64_t arb, int64_t row0, int64_t row1,
                  int batched, float *y, int nt) {
    if (row1 == row0) return 0;
    return realm_matmul_q_order(w->data, w->type, w->n_rows, w->n_cols, (const char *)s->xq + row0 * arb,
                                row1 - row0, batched, y + row0 * w->n_rows, w->n_rows, nt);
}

/* y[t] = W x[t] for the step's rows, activations already rounded in s->xq when
 * `rounded`; each row in the float order its call gives it (realm_vec_dot_gemm_tokens:
 * a sequence's leading rows batched, the rest single-row), one matmul per run of rows
 * that share an order. */
static int mm(const realm_tensor *w, const float *x, const struct step_rows *r, float *y, realm_llama_scratch *s,
              int nt, int rounded) {
    if (!rounded && realm_quantize_acts(w->type, x, w->n_cols, r->n, s->xq, nt)) return REALM_ERR_INVALID;
    const int64_t arb = realm_matmul_scratch_bytes(w->type, w->n_cols, 1);
    if (arb < 0) return REALM_ERR_INVALID;
    int64_t run0 = 0, row = 0; /* the open run: rows [run0, row) in order run_batched */
    int run_batched = 0, rc = 0;
    for (int i = 0; i < r->n_seqs && !rc; i++) {
        const realm_llama_seq *q = &r->seqs[i];
        const int64_t b =
            realm_vec_dot_gemm_tokens(w->type, w->n_rows, w->n_cols, q->call_tokens, q->call_row, q->n_tokens);
        if (b > 0 && !run_batched) {
            rc = mm_run(w, s, arb, run0, row, 0, y, nt);
            run0 = row, run_batched = 1;
        }
        row += b;
        if (!rc && q->n_tokens > b && run_batched) {
            rc = mm_run(w, s, arb, run0, row, 1, y, nt);
            run0 = row, run_batched = 0;
        }
        row += q->n_tokens - b;
    }
    return rc ? rc : mm_run(w, s, arb, run0, row, run_batched, y, nt);
}

/* whether b's matmul can reuse the activations a's matmul rounded (same x, same rounding) */
static int same_rounding(const realm_tensor *a, const realm_tensor *b) {
    return realm_vec_dot_type(a->type) == realm_vec_dot_type(b->type);
}

/* The per-token steps, run over tokens in parallel when there are several (prefill);
 * each token's arithmetic is the same whichever thread does it. */
struct token_job {
    const realm_llama_dims *d;
    const realm_llama_layer *L; /* rope, qk_norm_rows */
    const float *in, *w; /* rmsnorm: rows in, weight w */
    float *out;
    realm_llama_scratch *s; /* rope: s->row_pos holds each row's position */
};

static void norm_rows(void *ctx, int64_t t0, int64_t t1, int thread) {
    const struct token_job *j = ctx;
    const int64_t E = j->d->n_embd;
    (void)thread;
    for (int64_t t = t0; t < t1; t++) realm_rmsnorm(j->in + t * E, j->w, j->out + t * E, E, j->d->rms_eps);
}

static void rope_rows(void *ctx, int64_t t0, int64_t t1, int thread) {
    const struct token_job *j = ctx;
    const realm_llama_dims *d = j->d;
    const int64_t q_dim = (int64_t)d->n_head * d->head_dim, kv_dim = (int64_t)d->n_head_kv * d->head_dim;
    (void)thread;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t p = j->s->row_pos[t];
        realm_rope(j->s->q + t * q_dim, d->n_head, d->head_dim, d->rope_dim, p, j->L->rope_base,
                   j->L->rope_freq_scale, d->rope_freqs, d->rope_neox);
        realm_rope(j->s->k + t * kv_dim, d->n_head_kv, d->head_dim, d->rope_dim, p, j->L->rope_base,
                   j->L->rope_freq_scale, d->rope_freqs, d->rope_neox);
        if (d->q_scale > 0)
            for (int64_t i = 0; i < q_dim; i++) j->s->q[t * q_dim + i] *= d->q_scale;
    }
}

/* each head of Q and K RMS-normalised over head_dim, times the layer's q_norm / k_norm */
static void qk_norm_rows(void *ctx, int64_t t0, int64_t t1, int thread) {
    const struct token_job *j = ctx;
    const realm_llama_dims *d = j->d;
    const int64_t hd = d->head_dim;
    (void)thread;
    for (int64_t t = t0; t < t1; t++) {
        float *q = j->s->q + t * d->n_head * hd, *k = j->s->k + t * d->n_head_kv * hd;
        for (int32_t h = 0; h < d->n_head; h++) realm_rmsnorm(q + h * hd, j->L->q_norm, q + h * hd, hd, d->rms_eps);
        for (int32_t h = 0; h < d->n_head_kv; h++) realm_rmsnorm(k + h * hd, j->L->k_norm, k + h * hd, hd, d->rms_eps);
    }
}

/* rows[t] += bias for n rows of width w */
static void add_bias(float *rows, const float *bias, int64_t n, int64_t w) {
    if (!bias) return;
    for (int64_t t = 0; t < n; t++) realm_add(rows + t * w, bias, rows + t * w, w);
}

static void glu_rows(void *ctx, int64_t t0, int64_t t1, int thread) {
    const struct token_job *j = ctx;
    const int64_t F = j->d->n_ff;
    void (*glu)(const float *, const float *, float *, int64_t) =
        j->d->ffn_act == REALM_FFN_GELU ? realm_geglu : realm_swiglu;
    (void)thread;
    for (int64_t t = t0; t < t1; t++) glu(j->s->gate + t * F, j->s->up + t * F, j->s->gate + t * F, F);
}

/* rows = norm(rows) * w in place, when the layer has that post norm (tj: the layer's job) */
static void post_norm(const float *w, float *rows, int64_t n, int nt, const struct token_job *tj) {
    if (!w) return;
    struct token_job pj = *tj;
    pj.in = rows;
    pj.w = w;
    pj.out = rows;
    realm_parallel_for(n, nt, norm_rows, &pj);
}

/* One layer over the rows of n_seqs sequences (n rows in all, n <= max_tokens), one
 * sequence's rows after another in x and out: the matmuls over every row (each weight
 * block read once for all of them), RoPE, the K/V append and attention per sequence, at
 * its own positions in its own ring. A row's arithmetic is the same whatever the other
 * rows are. The caller has checked each sequence against its ring (layer_seqs_ok). */
static int layer_rows(const realm_llama_dims *d, const realm_llama_layer *L, int32_t layer,
                      const realm_llama_seq *seqs, int n_seqs, int64_t n, const float *x, float *out,
                      realm_llama_scratch *s, int nt) {
    const int64_t E = d->n_embd, q_dim = (int64_t)d->n_head * d->head_dim;
    const int64_t kv_dim = (int64_t)d->n_head_kv * d->head_dim;
    realm_attention_seq att[REALM_STEP_MAX_SEQS];
    const struct step_rows r = {seqs, n_seqs, n};
    const float kq_scale = d->q_scale > 0 ? 1.0f : 1.0f / sqrtf((float)d->head_dim);
    int rc;

    for (int i = 0, row = 0; i < n_seqs; row += (int)seqs[i].n_tokens, i++) {
        for (int64_t t = 0; t < seqs[i].n_tokens; t++) s->row_pos[row + t] = seqs[i].pos + t;
        att[i] = (realm_attention_seq){seqs[i].kv, seqs[i].pos, seqs[i].n_tokens, seqs[i].call_tokens, kq_scale};
    }

    /* attention block: cur = norm(x); q, k, v = W cur (+ b); [q, k per-head norms]; rope;
     * append; attend; tmp = Wo att; [tmp = norm(tmp)] */
    struct token_job tj = {d, L, x, L->attn_norm, s->cur, s};
    realm_parallel_for(n, nt, norm_rows, &tj);
    rc = mm(&L->wq, s->cur, &r, s->q, s, nt, 0);
    /* wk and wv reuse the activations wq rounded when their vec dot types agree */
    if (!rc) rc = mm(&L->wk, s->cur, &r, s->k, s, nt, same_rounding(&L->wq, &L->wk));
    if (!rc) rc = mm(&L->wv, s->cur, &r, s->v, s, nt, same_rounding(&L->wk, &L->wv));
    if (rc) return REALM_ERR_INVALID;
    add_bias(s->q, L->bq, n, q_dim);
    add_bias(s->k, L->bk, n, kv_dim);
    add_bias(s->v, L->bv, n, kv_dim);
    if (L->q_norm) realm_parallel_for(n, nt, qk_norm_rows, &tj);
    realm_parallel_for(n, nt, rope_rows, &tj);
    for (int i = 0, row = 0; i < n_seqs; row += (int)seqs[i].n_tokens, i++) {
        rc = realm_kv_append(seqs[i].kv, layer, seqs[i].pos, seqs[i].n_tokens, s->k + row * kv_dim,
                             s->v + row * kv_dim);
        if (rc) return rc;
    }
    rc = realm_attention_seqs(att, n_seqs, layer, d->n_head, s->q, s->att, s->att_scratch, nt);
    if (rc) return rc;
    if (mm(&L->wo, s->att, &r, s->tmp, s, nt, 0)) return REALM_ERR_INVALID;
    post_norm(L->attn_post_norm, s->tmp, n, nt, &tj);
    realm_add(s->tmp, x, out, n * E); /* out = x + attention (the residual) */

    /* feed-forward block: cur = norm(out); out += [norm](down(act(gate cur) * up cur)) */
    tj.in = out;
    tj.w = L->ffn_norm;
    tj.out = s->cur;
    realm_parallel_for(n, nt, norm_rows, &tj);
    rc = mm(&L->w_gate, s->cur, &r, s->gate, s, nt, 0);
    if (!rc) rc = mm(&L->w_up, s->cur, &r, s->up, s, nt, same_rounding(&L->w_gate, &L->w_up));
    if (rc) return REALM_ERR_INVALID;
    realm_parallel_for(n, nt, glu_rows, &tj);
    if (mm(&L->w_down, s->gate, &r, s->tmp, s, nt, 0)) return REALM_ERR_INVALID;
    post_norm(L->ffn_post_norm, s->tmp, n, nt, &tj);
    realm_add(s->tmp, out, out, n * E);
    return 0;
}

/* Tokens a chunk at position p may take of n_tokens: it appends all its K/V before
 * attending, so it must not overwrite a slot its own first token still attends to.
 * Before the ring wraps that means staying within capacity; once the window is full,
 * one token at a time. */
static int64_t ring_chunk(const realm_kv_ring *kv, int64_t p, int64_t n) {
    const int64_t limit = realm_kv_chunk_limit(kv, p);
    return n < limit ? n : limit;
}

int realm_llama_seq_check(const realm_llama_dims *d, int32_t first, int32_t count, const realm_kv_ring *kv,
                          int64_t pos, int64_t n_tokens, const realm_llama_scratch *s, int n_threads) {
    if (!d || !kv || !s || n_tokens <= 0 || pos < 0 || n_threads <= 0 || count <= 0 || first < 0)
        return REALM_ERR_INVALID;
    if (kv->n_head_kv != d->n_head_kv || kv->head_dim != d->head_dim || !kv->k || !kv->v) return REALM_ERR_INVALID;
    if (first >= kv->n_layer || count > kv->n_layer - first) return REALM_ERR_RANGE;
    if (n_tokens > s->max_tokens || ring_chunk(kv, pos, n_tokens) != n_tokens) return REALM_ERR_INVALID;
    if (s->att_scratch_floats < realm_attention_scratch_floats(kv, d->n_head, n_threads)) return REALM_ERR_NOMEM;
    for (int32_t l = first; l < first + count; l++) {
        if (kv->n_pos[l] != pos) return REALM_ERR_RANGE; /* appends go to the next position only */
        const int64_t window_from = realm_kv_window_start(kv, l, pos);
        const int64_t held = kv->held_from[l] > pos + n_tokens - kv->slots[l] ? kv->held_from[l]
                                                                              : pos + n_tokens - kv->slots[l];
        if (window_from < held) return REALM_ERR_RANGE; /* the chunk's first window, after its appends */
    }
    return 0;
}

int realm_llama_layers_rows(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                            int32_t count, const realm_llama_seq *seqs, int n_seqs, const float *x, float *out,
                            realm_llama_scratch *s, int n_threads) {
    if (!d || !layers || !seqs || n_seqs < 1 || n_seqs > REALM_STEP_MAX_SEQS || !x || !out || !s || count <= 0)
        return REALM_ERR_INVALID;
    int64_t n = 0;
    for (int i = 0; i < n_seqs; i++) n += seqs[i].n_tokens;
    if (n > s->max_tokens) return REALM_ERR_INVALID;
    for (int32_t l = first; l < first + count; l++) {
        const int rc = layer_rows(d, &layers[l], l, seqs, n_seqs, n, l == first ? x : out, out, s, n_threads);
        if (rc) return rc;
    }
    return 0;
}

int realm_llama_layer_forward(const realm_llama_dims *d, const realm_llama_layer *L, int32_t layer,
                              realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x, float *out,
                              realm_llama_scratch *s, int n_threads) {
    if (!d || !L || !kv || !x || !out || !s || n_tokens <= 0 || pos < 0 || n_threads <= 0) return REALM_ERR_INVALID;
    if (realm_llama_check_layer(d, L)) return REALM_ERR_INVALID;
    if (kv->n_head_kv != d->n_head_kv || kv->head_dim != d->head_dim || !kv->k || !kv->v) return REALM_ERR_INVALID;
    if (layer < 0 || layer >= kv->n_layer) return REALM_ERR_RANGE;
    if (s->att_scratch_floats < realm_attention_scratch_floats(kv, d->n_head, n_threads)) return REALM_ERR_NOMEM;
    for (int64_t t0 = 0, n; t0 < n_tokens; t0 += n) {
        const int64_t p = pos + t0;
        n = ring_chunk(kv, p, n_tokens - t0 < s->max_tokens ? n_tokens - t0 : s->max_tokens);
        const realm_llama_seq seq = {kv, p, n, n_tokens, t0};
        const int rc = layer_rows(d, L, layer, &seq, 1, n, x + t0 * d->n_embd, out + t0 * d->n_embd, s, n_threads);
        if (rc) return rc;
    }
    return 0;
}

int realm_llama_embed(const realm_llama_dims *d, const realm_tensor *token_embd, const int32_t *ids, int64_t n_ids,
                      float *out) {
    if (!d || !token_embd || !ids || !out || n_ids < 0 || token_embd->n_cols != d->n_embd) return REALM_ERR_INVALID;
    const int rc = realm_get_rows(token_embd->data, token_embd->type, token_embd->n_rows, token_embd->n_cols, ids,
                                  n_ids, out);
    if (rc || d->embd_scale == 1.0f) return rc;
    for (int64_t i = 0; i < n_ids * d->n_embd; i++) out[i] *= d->embd_scale;
    return 0;
}

int realm_llama_lm_head_rows(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                             const realm_llama_seq *seqs, int n_seqs, const float *x, float *logits,
                             realm_llama_scratch *s, int n_threads) {
    if (!d || !dims_ok(d) || !output_norm || !output || !seqs || n_seqs < 1 || !x || !logits || !s || n_threads <= 0)
        return REALM_ERR_INVALID;
    if (!tensor_ok(output, d->n_vocab, d->n_embd)) return REALM_ERR_INVALID;
    const int64_t E = d->n_embd;
    int64_t n = 0;
    for (int i = 0; i < n_seqs; i++) n += seqs[i].n_tokens;
    if (n <= 0 || n > s->max_tokens) return REALM_ERR_INVALID;
    for (int64_t t = 0; t < n; t++) realm_rmsnorm(x + t * E, output_norm, s->cur + t * E, E, d->rms_eps);
    const struct step_rows r = {seqs, n_seqs, n};
    return mm(output, s->cur, &r, logits, s, n_threads, 0) ? REALM_ERR_INVALID : 0;
}

int realm_llama_lm_head(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                        const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s, int n_threads) {
    if (!s || n_tokens <= 0) return REALM_ERR_INVALID;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += s->max_tokens) {
        const int64_t n = n_tokens - t0 < s->max_tokens ? n_tokens - t0 : s->max_tokens;
        const realm_llama_seq seq = {NULL, 0, n, n, 0};
        const int rc = realm_llama_lm_head_rows(d, output_norm, output, &seq, 1, x + t0 * d->n_embd,
                                                logits + t0 * d->n_vocab, s, n_threads);
        if (rc) return rc;
    }
    return 0;
}

