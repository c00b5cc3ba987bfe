/* llama.c: see llama.h. Read realm_llama_layer_forward top to bottom: it is the layer. */
#include "llama.h"
#include "realm_errors.h"

#include <stddef.h>
#include <time.h>

#include "act_quant.h"
#include "attention.h"
#include "matmul.h"
#include "ops.h"
#include "threadpool.h"

static int tensor_ok(const realm_tensor *t, int64_t n_rows, int64_t n_cols) {
    return t->data && t->n_rows == n_rows && t->n_cols == n_cols &&
           realm_matmul_scratch_bytes(t->type, n_cols, 1) >= 0;
}

static int dims_ok(const realm_llama_dims *d) {
    return d->n_embd > 0 && d->n_head > 0 && d->n_head_kv > 0 && d->n_head % d->n_head_kv == 0 &&
           d->head_dim > 0 && d->head_dim % 2 == 0 && d->rope_dim > 0 && d->rope_dim % 2 == 0 &&
           d->rope_dim <= d->head_dim && d->rope_dim <= REALM_ROPE_MAX_DIM && d->n_ff > 0 && d->n_vocab > 0 &&
           d->rms_eps > 0 && d->rope_base > 0 && d->rope_freq_scale > 0;
}

int realm_llama_check_layer(const realm_llama_dims *d, const realm_llama_layer *L) {
    if (!d || !L || !dims_ok(d) || !L->attn_norm || !L->ffn_norm) return REALM_ERR_INVALID;
    const int64_t q_dim = (int64_t)d->n_head * d->head_dim, kv_dim = (int64_t)d->n_head_kv * d->head_dim;
    const int ok = tensor_ok(&L->wq, q_dim, d->n_embd) && tensor_ok(&L->wk, kv_dim, d->n_embd) &&
                   tensor_ok(&L->wv, kv_dim, d->n_embd) && tensor_ok(&L->wo, d->n_embd, q_dim) &&
                   tensor_ok(&L->w_gate, d->n_ff, d->n_embd) && tensor_ok(&L->w_up, d->n_ff, d->n_embd) &&
                   tensor_ok(&L->w_down, d->n_embd, d->n_ff);
    return ok ? 0 : -1;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

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
    const int64_t widths[] = {d->n_embd, q_dim, kv_dim, kv_dim, q_dim, d->n_embd, d->n_ff, d->n_ff};
    int64_t offs[9], off = 0;
    for (int j = 0; j < 8; j++) {
        offs[j] = off;
        off += (widths[j] * max_tokens * 4 + 63) / 64 * 64;
    }
    offs[8] = off;
    off += (att_floats * 4 + 63) / 64 * 64;
    const int64_t xq_off = off;
    off += (xq + 63) / 64 * 64;
    if (!buf) return off;
    if (!s || buf_bytes < off || ((uintptr_t)buf & 63)) return -1;
    char *b = buf;
    float **fs[] = {&s->cur, &s->q, &s->k, &s->v, &s->att, &s->tmp, &s->gate, &s->up};
    for (int j = 0; j < 8; j++) *fs[j] = (float *)(b + offs[j]);
    s->att_scratch = (float *)(b + offs[8]);
    s->att_scratch_floats = att_floats;
    s->xq = b + xq_off;
    s->xq_bytes = xq;
    s->max_tokens = max_tokens;
    return off;
}

/* y[t] = W x[t] for the chunk, activations already rounded in s->xq when `rounded`. */
static int mm(const realm_tensor *w, const float *x, int64_t n, float *y, realm_llama_scratch *s, int nt,
              int rounded) {
    if (!rounded && realm_quantize_acts(w->type, x, w->n_cols, n, s->xq, nt)) return REALM_ERR_INVALID;
    return realm_matmul_q(w->data, w->type, w->n_rows, w->n_cols, s->xq, n, y, w->n_rows, nt);
}

/* whether b's matmul can reuse the activations a's matmul rounded (same x, same rounding) */
static int same_rounding(const realm_tensor *a, const realm_tensor *b) {
    return realm_vec_dot_type(a->type) == realm_vec_dot_type(b->type);
}

/* The per-token steps, run over tokens in parallel when there are several (prefill);
 * each token's arithmetic is the same whichever thread does it. */
struct token_job {
    const realm_llama_dims *d;
    const float *in, *w; /* rmsnorm: rows in, weight w */
    float *out;
    realm_llama_scratch *s;
    int64_t pos; /* rope: position of token 0 */
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
        const int64_t p = j->pos + t;
        realm_rope(j->s->q + t * q_dim, d->n_head, d->head_dim, d->rope_dim, p, d->rope_base, d->rope_freq_scale,
                   d->rope_freqs);
        realm_rope(j->s->k + t * kv_dim, d->n_head_kv, d->head_dim, d->rope_dim, p, d->rope_base,
                   d->rope_freq_scale, d->rope_freqs);
    }
}

static void swiglu_rows(void *ctx, int64_t t0, int64_t t1, int thread) {
    const struct token_job *j = ctx;
    const int64_t F = j->d->n_ff;
    (void)thread;
    for (int64_t t = t0; t < t1; t++) realm_swiglu(j->s->gate + t * F, j->s->up + t * F, j->s->gate + t * F, F);
}

/* one chunk of n <= max_tokens tokens of a batch of `batch` tokens (attention's float
 * order follows the batch) */
static int layer_chunk(const realm_llama_dims *d, const realm_llama_layer *L, int32_t layer, realm_kv_ring *kv,
                       int64_t pos, int64_t n, int64_t batch, const float *x, float *out, realm_llama_scratch *s,
                       int nt) {
    const int64_t E = d->n_embd;
    int rc;

    /* attention block: cur = norm(x); q, k, v = W cur; rope; append; attend; tmp = Wo att */
    struct token_job tj = {d, x, L->attn_norm, s->cur, s, pos};
    realm_parallel_for(n, nt, norm_rows, &tj);
    rc = mm(&L->wq, s->cur, n, s->q, s, nt, 0);
    /* wk and wv reuse the activations wq rounded when their vec dot types agree */
    if (!rc) rc = mm(&L->wk, s->cur, n, s->k, s, nt, same_rounding(&L->wq, &L->wk));
    if (!rc) rc = mm(&L->wv, s->cur, n, s->v, s, nt, same_rounding(&L->wk, &L->wv));
    if (rc) return REALM_ERR_INVALID;
    realm_parallel_for(n, nt, rope_rows, &tj);
    rc = realm_kv_append(kv, layer, pos, n, s->k, s->v);
    if (rc) return rc;
    rc = realm_attention_in_batch(kv, layer, pos, n, d->n_head, s->q, s->att, s->att_scratch, nt, batch);
    if (rc) return rc;
    if (mm(&L->wo, s->att, n, s->tmp, s, nt, 0)) return REALM_ERR_INVALID;
    realm_add(s->tmp, x, out, n * E); /* out = x + attention (the residual) */

    /* feed-forward block: cur = norm(out); out += down(silu(gate cur) * up cur) */
    tj.in = out;
    tj.w = L->ffn_norm;
    realm_parallel_for(n, nt, norm_rows, &tj);
    rc = mm(&L->w_gate, s->cur, n, s->gate, s, nt, 0);
    if (!rc) rc = mm(&L->w_up, s->cur, n, s->up, s, nt, same_rounding(&L->w_gate, &L->w_up));
    if (rc) return REALM_ERR_INVALID;
    realm_parallel_for(n, nt, swiglu_rows, &tj);
    if (mm(&L->w_down, s->gate, n, s->tmp, s, nt, 0)) return REALM_ERR_INVALID;
    realm_add(s->tmp, out, out, n * E);
    return 0;
}

/* realm_llama_layer_forward on n_tokens of a batch of `batch` tokens */
static int layer_forward(const realm_llama_dims *d, const realm_llama_layer *L, int32_t layer, realm_kv_ring *kv,
                         int64_t pos, int64_t n_tokens, int64_t batch, const float *x, float *out,
                         realm_llama_scratch *s, int n_threads) {
    if (!d || !L || !kv || !x || !out || !s || n_tokens <= 0 || pos < 0 || n_threads <= 0) return REALM_ERR_INVALID;
    if (realm_llama_check_layer(d, L)) return REALM_ERR_INVALID;
    if (kv->n_head_kv != d->n_head_kv || kv->head_dim != d->head_dim || !kv->k || !kv->v) return REALM_ERR_INVALID;
    if (layer < 0 || layer >= kv->n_layer) return REALM_ERR_RANGE;
    if (s->att_scratch_floats < realm_attention_scratch_floats(kv, d->n_head, n_threads)) return REALM_ERR_NOMEM;
    for (int64_t t0 = 0, n; t0 < n_tokens; t0 += n) {
        const int64_t p = pos + t0;
        n = n_tokens - t0 < s->max_tokens ? n_tokens - t0 : s->max_tokens;
        /* A chunk appends all its K/V before attending: it must not overwrite a slot that
         * its own first token still attends to. Before the ring wraps that means staying
         * within capacity; once the window is full, one token at a time. */
        if (p + n > kv->capacity) n = p < kv->capacity ? kv->capacity - p : 1;
        const int rc =
            layer_chunk(d, L, layer, kv, p, n, batch, x + t0 * d->n_embd, out + t0 * d->n_embd, s, n_threads);
        if (rc) return rc;
    }
    return 0;
}

int realm_llama_layer_forward(const realm_llama_dims *d, const realm_llama_layer *L, int32_t layer,
                              realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x, float *out,
                              realm_llama_scratch *s, int n_threads) {
    return layer_forward(d, L, layer, kv, pos, n_tokens, n_tokens, x, out, s, n_threads);
}

int realm_llama_lm_head(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                        const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s, int n_threads) {
    if (!d || !dims_ok(d) || !output_norm || !output || !x || !logits || !s || n_tokens <= 0 || n_threads <= 0)
        return REALM_ERR_INVALID;
    if (!tensor_ok(output, d->n_vocab, d->n_embd)) return REALM_ERR_INVALID;
    const int64_t E = d->n_embd;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += s->max_tokens) {
        const int64_t n = n_tokens - t0 < s->max_tokens ? n_tokens - t0 : s->max_tokens;
        for (int64_t t = 0; t < n; t++) realm_rmsnorm(x + (t0 + t) * E, output_norm, s->cur + t * E, E, d->rms_eps);
        if (mm(output, s->cur, n, logits + t0 * d->n_vocab, s, n_threads, 0)) return REALM_ERR_INVALID;
    }
    return 0;
}

/* ---- long calls in chunks ------------------------------------------------------------ */

void realm_call_cancel(realm_call_control *c) { __atomic_store_n(&c->cancel, 1, __ATOMIC_RELAXED); }

void realm_call_arm(realm_call_control *c, int64_t deadline_ns) {
    c->deadline_ns = deadline_ns;
    c->chunks = c->first_grant = c->last_grant = c->max_ahead = 0;
    __atomic_store_n(&c->cancel, 0, __ATOMIC_RELAXED);
}

/* the model's lock for one chunk of a call, noted in its control */
static void take_lock(realm_fair_lock *lock, realm_call_control *c) {
    uint64_t ahead;
    const uint64_t ticket = realm_fair_lock_acquire(lock, &ahead);
    if (!c) return;
    if (!c->chunks++) c->first_grant = ticket;
    c->last_grant = ticket;
    if (ahead > c->max_ahead) c->max_ahead = ahead;
}

int realm_call_stopped(const realm_call_control *c) {
    if (!c) return 0;
    if (__atomic_load_n(&c->cancel, __ATOMIC_RELAXED)) return 1;
    if (c->deadline_ns > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if ((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec >= c->deadline_ns) return 2;
    }
    return 0;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* weight elements of one layer: its matmuls' multiply-adds per token */
static int64_t layer_weight_elems(const realm_llama_dims *d) {
    const int64_t E = d->n_embd, q_dim = (int64_t)d->n_head * d->head_dim;
    const int64_t kv_dim = (int64_t)d->n_head_kv * d->head_dim;
    return 2 * q_dim * E + 2 * kv_dim * E + 3 * E * (int64_t)d->n_ff;
}

void realm_llama_chunk_shape(const realm_llama_dims *d, const realm_kv_ring *kv, int64_t max_tokens, int64_t pos,
                             int64_t n_tokens, int32_t n_layers, int64_t *tokens, int32_t *layers) {
    const int64_t window = pos + max_tokens < kv->capacity ? pos + max_tokens : kv->capacity;
    const int64_t attention = REALM_ATTENTION_COST * 2 * (int64_t)d->n_head * d->head_dim * window;
    const int64_t unit = 1 + attention / layer_weight_elems(d); /* token-layers per token and layer */
    const int64_t t = clamp64(max_tokens / unit, 1, n_tokens);
    *tokens = t;
    *layers = (int32_t)clamp64(max_tokens / (t * unit), 1, n_layers);
}

int realm_llama_forward_layers(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                               int32_t count, realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x,
                               float *out, realm_llama_scratch *s, int n_threads, realm_fair_lock *lock,
                               realm_call_control *ctl, int64_t *done) {
    *done = 0;
    if (!d || !layers || !kv || !s || !lock || count <= 0 || first < 0 || n_tokens <= 0) return REALM_ERR_INVALID;
    const int64_t E = d->n_embd;
    for (int64_t t0 = 0, n; t0 < n_tokens; t0 += n) {
        if (realm_call_stopped(ctl)) return REALM_ERR_CANCELLED;
        int32_t group;
        realm_llama_chunk_shape(d, kv, s->max_tokens, pos + t0, n_tokens - t0, count, &n, &group);
        for (int32_t l0 = first; l0 < first + count; l0 += group) {
            const int32_t l1 = l0 + group < first + count ? l0 + group : first + count;
            int rc = 0;
            take_lock(lock, ctl);
            for (int32_t l = l0; l < l1 && !rc; l++) {
                const float *in = l == first ? x + t0 * E : out + t0 * E;
                rc = layer_forward(d, &layers[l], l, kv, pos + t0, n, n_tokens, in, out + t0 * E, s, n_threads);
            }
            realm_fair_lock_release(lock);
            if (rc) return rc;
        }
        *done = t0 + n;
    }
    return 0;
}

int realm_llama_lm_head_chunked(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                                const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s,
                                int n_threads, realm_fair_lock *lock, realm_call_control *ctl,
                                int64_t *done) {
    *done = 0;
    if (!d || !output || !s || !lock || n_tokens <= 0) return REALM_ERR_INVALID;
    const int64_t E = d->n_embd;
    const int64_t rows = clamp64(s->max_tokens * layer_weight_elems(d) / ((int64_t)d->n_vocab * E), 1, s->max_tokens);
    for (int64_t t0 = 0, n; t0 < n_tokens; t0 += n) {
        if (realm_call_stopped(ctl)) return REALM_ERR_CANCELLED;
        n = n_tokens - t0 < rows ? n_tokens - t0 : rows;
        take_lock(lock, ctl);
        const int rc = realm_llama_lm_head(d, output_norm, output, x + t0 * E, n, logits + t0 * d->n_vocab, s,
                                           n_threads);
        realm_fair_lock_release(lock);
        if (rc) return rc;
        *done = t0 + n;
    }
    return 0;
}
