/* generate.c: the generation loop, for one-shot prompts (realm_generate) and for
 * conversations that keep their KV ring across calls (realm_chat_*).
 *
 * Both run the same steps on a conversation (conv_t): tokenize the prompt (BOS first
 * when asked), reuse the longest common prefix of its tokens with the tokens the
 * ring already holds (realm_kv_truncate forgets the rest), run the remaining prompt
 * tokens through the model in chunks of n_batch positions, then sample, stream the
 * piece out through realm_emit and feed the token back, one position at a time.
 * realm_generate's conversation lives for one call (an empty ring, so nothing is
 * reused); a chat conversation lives until realm_chat_close. Every buffer is
 * allocated once per call (or kept by the conversation between calls); nothing is
 * allocated per token.
 */
#include "sampler.h"
#include "tokenizer.h"

/* A conversation: a KV ring and the token ids whose K/V it holds.
 *
 * Invariant between calls: ids[0 .. n_held) are the tokens at positions 0 .. n_held-1
 * of the ring, each computed in full (every layer). The ring may hold positions past
 * n_held (a forward call that failed part-way, after some layers appended); the next
 * call truncates them away before it appends. ids is owned by the conversation
 * ([ids_cap] u32); a call replaces it with its own token buffer once it starts
 * changing the ring. kv is 0 when the conversation has no ring (a realm_generate
 * before its first step, or a chat whose ring could not be rewound). */
typedef struct {
    uint32_t model_id;
    uint32_t n_ctx; /* the ring's positions */
    int64_t kv;
    uint32_t *ids;
    uint32_t n_held, ids_cap;
} conv_t;

/* One call on a conversation. tokens ([n_prompt + max_tokens], allocated by the call)
 * is the prompt's ids followed by the generated ones; it becomes the conversation's
 * ids when the call starts to change the ring. */
typedef struct {
    conv_t *c;
    realm_model_info_t info;
    realm_params_t p;
    uint32_t *tokens;
    uint32_t n_prompt, tokens_cap;
    uint32_t chunk;   /* prompt rows per forward call at most */
    float *hidden;    /* [chunk][n_embd] */
    float *logits;    /* [n_vocab] */
    uint32_t *hist;   /* the last tokens for the repetition penalty: [hist_cap] */
    uint32_t n_hist, hist_keep, hist_cap;
    detok_stream_t stream;
    realm_chat_stats_t stats;
} gen_t;

static int32_t fail(const char *call, int32_t code) {
    return guest_log_error("realm_generate", call, code);
}

/* Generation stops at this token (it is neither emitted nor fed back). */
static int is_stop_token(const gen_t *g, const tokenizer_t *t, uint32_t id) {
    return (g->p.flags & REALM_GEN_STOP_AT_EOS) && tokenizer_is_eog(t, id);
}

/* Runs rows tokens (their embeddings already in g->hidden) through every layer at
 * positions pos .. pos + rows - 1. */
static int32_t run_layers(gen_t *g, uint32_t rows, uint32_t pos) {
    uint32_t len = rows * g->info.n_embd, h = ADDR(g->hidden);
    uint64_t kv = (uint64_t)g->c->kv;
    if (g->p.flags & REALM_GEN_PER_LAYER) {
        for (uint32_t l = 0; l < g->info.n_layer; l++) {
            int32_t r = realm_forward_layer(g->c->model_id, l, h, len, pos, kv, h);
            if (r < 0) return fail("realm_forward_layer", r);
        }
        return REALM_OK;
    }
    int32_t r = realm_forward_layers(g->c->model_id, 0, g->info.n_layer, h, len, pos, kv, h);
    return r < 0 ? fail("realm_forward_layers", r) : REALM_OK;
}

/* Embeds tokens[pos .. pos + rows), runs the layers at pos, and (if want_logits) the
 * LM head on the last row. On success the conversation holds pos + rows positions. */
static int32_t forward(gen_t *g, uint32_t pos, uint32_t rows, int want_logits) {
    uint32_t model_id = g->c->model_id;
    int32_t r = realm_forward_embedding(model_id, ADDR(g->tokens + pos), rows, ADDR(g->hidden));
    if (r < 0) return fail("realm_forward_embedding", r);
    r = run_layers(g, rows, pos);
    if (r < 0) return r;
    g->c->n_held = pos + rows;
    if (!want_logits) return REALM_OK;
    const float *last = g->hidden + (uint64_t)(rows - 1) * g->info.n_embd;
    r = realm_forward_lm_head(model_id, ADDR(last), g->info.n_embd, ADDR(g->logits));
    return r < 0 ? fail("realm_forward_lm_head", r) : REALM_OK;
}

static void hist_push(gen_t *g, uint32_t id) {
    if (!g->hist_cap) return;
    if (g->n_hist == g->hist_cap) { /* keep the newest hist_keep, contiguous */
        memmove(g->hist, g->hist + g->n_hist - g->hist_keep, g->hist_keep * 4);
        g->n_hist = g->hist_keep;
    }
    g->hist[g->n_hist++] = id;
}

static void *alloc_bytes(uint64_t n) { return n > 0x7FFFFFFFu ? 0 : realm_alloc((uint32_t)n); }

/* The prompt's tokens and every buffer of the call, the prompt tokenized as llama.cpp's
 * CLI does (special tokens parsed, BOS / EOS where the model's tokenizer asks for them).
 * Changes nothing in the conversation. */
static int32_t prepare(gen_t *g, const tokenizer_t *t, const uint8_t *text, uint32_t text_len) {
    int add_bos = (g->p.flags & REALM_GEN_ADD_BOS) && (g->info.flags & REALM_MODEL_ADD_BOS) &&
                  g->info.bos_id != REALM_NO_TOKEN;
    int add_eos = (g->p.flags & REALM_GEN_ADD_BOS) && (g->info.flags & REALM_MODEL_ADD_EOS) &&
                  g->info.eos_id != REALM_NO_TOKEN;
    int32_t n_text = tokenizer_encode(t, text, text_len, 0, 0, 1);
    if (n_text < 0) return fail("tokenize", n_text);
    g->n_prompt = (uint32_t)n_text + (add_bos ? 1 : 0) + (add_eos ? 1 : 0);
    if (g->n_prompt == 0) return fail("empty prompt", REALM_ERR_INVALID);
    uint64_t cap = (uint64_t)g->n_prompt + g->p.max_tokens;
    if (cap > 0x1FFFFFFFu) return fail("prompt tokens + max_tokens", REALM_ERR_NOMEM);
    g->tokens_cap = (uint32_t)cap;
    g->tokens = alloc_bytes(cap * 4);
    if (!g->tokens) return fail("prompt tokens", REALM_ERR_NOMEM);
    if (add_bos) g->tokens[0] = g->info.bos_id;
    int32_t r = tokenizer_encode(t, text, text_len, g->tokens + add_bos, (uint32_t)n_text, 1);
    if (r < 0) return fail("tokenize", r);
    if (add_eos) g->tokens[g->n_prompt - 1] = g->info.eos_id;

    uint32_t chunk = g->p.n_batch ? MIN(g->p.n_batch, g->n_prompt) : g->n_prompt;
    g->chunk = MIN(chunk, g->c->n_ctx); /* a chunk never overruns the ring it attends over */

    if (g->p.repeat_last_n && g->p.repeat_penalty != 1.0f) {
        uint64_t keep = MIN((uint64_t)g->p.repeat_last_n, cap);
        g->hist_keep = (uint32_t)keep;
        g->hist_cap = (uint32_t)MIN(2 * keep, 0x10000000ull);
        g->hist = alloc_bytes((uint64_t)g->hist_cap * 4);
        if (!g->hist) return fail("history", REALM_ERR_NOMEM);
        for (uint32_t i = g->n_prompt - MIN(g->n_prompt, g->hist_keep); i < g->n_prompt; i++)
            hist_push(g, g->tokens[i]);
    }
    g->hidden = alloc_bytes((uint64_t)g->chunk * g->info.n_embd * 4);
    g->logits = alloc_bytes((uint64_t)g->info.n_vocab * 4);
    g->stream.buf = alloc_bytes((uint64_t)t->max_token_bytes + 4);
    if (!g->hidden || !g->logits || !g->stream.buf) return fail("activations", REALM_ERR_NOMEM);
    r = sampler_reserve(g->info.n_vocab);
    if (r < 0) return fail("sampler", r);
    return REALM_OK;
}

/* A new ring for the conversation. */
static int32_t ring_create(conv_t *c) {
    int64_t kv = realm_kv_create(c->model_id, c->n_ctx);
    if (kv < 0) return fail("realm_kv_create", kv < -0x7FFFFFFF ? REALM_ERR_INTERNAL : (int32_t)kv);
    if (kv == 0) return fail("realm_kv_create returned 0", REALM_ERR_INTERNAL);
    c->kv = kv;
    c->n_held = 0;
    return REALM_OK;
}

/* Rewinds the ring to the longest common prefix of what it holds and the prompt, and
 * hands g->tokens to the conversation. At least the prompt's last token is left to
 * evaluate (its logits give the first sample). Once the ring has wrapped, the host
 * refuses a rewind whose window was overwritten (-5): the ring then starts over from
 * position 0 (what a fresh ring would compute, never attention over stale slots). */
static int32_t reuse(gen_t *g) {
    conv_t *c = g->c;
    uint32_t keep = 0;
    if (c->kv) {
        uint32_t n = MIN(c->n_held, g->n_prompt - 1);
        while (keep < n && c->ids[keep] == g->tokens[keep]) keep++;
        int32_t r = realm_kv_truncate((uint64_t)c->kv, keep);
        if (r == REALM_ERR_RANGE) {
            g->stats.flags |= REALM_CHAT_RESTARTED;
            keep = 0;
            r = realm_kv_truncate((uint64_t)c->kv, 0);
        }
        if (r < 0) { /* the ring is unusable: drop it, the next call makes a new one */
            realm_kv_free((uint64_t)c->kv);
            c->kv = 0;
            c->n_held = 0;
            return fail("realm_kv_truncate", r);
        }
    } else {
        int32_t r = ring_create(c);
        if (r < 0) return r;
    }
    /* ids[0 .. keep) equal tokens[0 .. keep): the conversation takes the new buffer */
    realm_free(c->ids);
    c->ids = g->tokens;
    c->ids_cap = g->tokens_cap;
    c->n_held = keep;
    g->tokens = 0;
    g->stats.n_cached = keep;
    return REALM_OK;
}

/* Rows of the prompt chunk at pos. Appending rows positions at once overwrites the
 * slots of positions pos + rows - 1 - n_ctx and below, which the window of pos still
 * needs once pos + rows > n_ctx: so a chunk stops at the ring's end, and after the
 * wrap the prompt goes one position at a time (the windows of a fresh ring). */
static uint32_t chunk_rows(const gen_t *g, uint32_t pos) {
    uint32_t n_ctx = g->c->n_ctx, rows = MIN(g->chunk, g->n_prompt - pos);
    return pos < n_ctx ? MIN(rows, n_ctx - pos) : 1;
}

/* The prompt from the reused prefix on; the logits of its last token. */
static int32_t prefill(gen_t *g) {
    uint32_t *ids = g->c->ids;
    g->tokens = ids; /* borrowed from the conversation for forward() */
    for (uint32_t pos = g->c->n_held; pos < g->n_prompt;) {
        uint32_t rows = chunk_rows(g, pos);
        int32_t r = forward(g, pos, rows, pos + rows == g->n_prompt);
        if (r < 0) return r;
        g->stats.n_evaluated += rows;
        pos += rows;
    }
    return REALM_OK;
}

/* The loop: sample, stop at the stop token, stream the piece, feed the token back.
 * Returns the count of tokens generated. */
static int32_t loop(gen_t *g, const tokenizer_t *t) {
    uint64_t rng = g->p.seed;
    uint32_t n = 0;
    int stopped = 0;
    while (n < g->p.max_tokens) {
        int32_t id = sampler_sample(g->logits, g->info.n_vocab, &g->p, g->hist, g->n_hist, &rng);
        if (id < 0) return fail("sample", id);
        if (is_stop_token(g, t, (uint32_t)id)) break;
        n++;
        g->stats.n_generated = n;
        hist_push(g, (uint32_t)id);
        uint32_t ready = detok_stream_add(&g->stream, t, (uint32_t)id);
        if (ready) {
            int32_t e = realm_emit(ADDR(g->stream.buf), ready);
            detok_stream_consume(&g->stream, ready);
            if (e < 0) {
                stopped = 1;
                break;
            }
        }
        if (n == g->p.max_tokens) break;
        uint32_t pos = g->n_prompt + n - 1;
        g->tokens[pos] = (uint32_t)id;
        int32_t r = forward(g, pos, 1, 1);
        if (r < 0) return r;
    }
    if (!stopped && g->stream.len) realm_emit(ADDR(g->stream.buf), g->stream.len); /* flush */
    return (int32_t)n;
}

/* The model's info struct, checked. */
static int32_t read_info(uint32_t model_id, realm_model_info_t *info) {
    int32_t r = realm_model_info(model_id, ADDR(info), sizeof *info);
    if (r < 0) return fail("realm_model_info", r);
    if ((uint32_t)r < sizeof *info || info->version < 1 || info->n_vocab == 0 || info->n_embd == 0 ||
        info->n_layer == 0)
        return fail("realm_model_info: a bad struct", REALM_ERR_INTERNAL);
    return REALM_OK;
}

/* One call on conversation c: everything above, then the call's buffers freed. The
 * conversation keeps its ring and ids (see conv_t for what holds on failure). */
static int32_t run(conv_t *c, const uint8_t *text, uint32_t text_len, const realm_params_t *p,
                   realm_chat_stats_t *stats) {
    gen_t g;
    memset(&g, 0, sizeof g);
    g.c = c;
    g.p = *p;
    g.stats.version = REALM_CHAT_STATS_VERSION;
    int32_t r = read_info(c->model_id, &g.info);
    tokenizer_t *t = 0;
    if (r >= 0) r = tokenizer_get(c->model_id, &t);
    if (r >= 0 && g.p.max_tokens == 0) r = 0;
    else if (r >= 0) {
        r = prepare(&g, t, text, text_len);
        if (r >= 0) r = reuse(&g);
        if (r >= 0) r = prefill(&g);
        if (r >= 0) r = loop(&g, t);
        if (g.tokens == c->ids) g.tokens = 0; /* borrowed, not the call's */
    }
    g.stats.n_prompt = g.n_prompt;
    g.stats.n_held = c->n_held;
    if (stats) *stats = g.stats;
    realm_free(g.tokens);
    realm_free(g.hist);
    realm_free(g.hidden);
    realm_free(g.logits);
    realm_free(g.stream.buf);
    return r;
}

/* The ring size a call asks for: 0 means the model's training context. */
static uint32_t ctx_or_default(uint32_t n_ctx, const realm_model_info_t *info) {
    return n_ctx ? n_ctx : info->n_ctx_train;
}

int32_t realm_generate(uint32_t model_id, uint32_t prompt, uint32_t prompt_len, uint32_t params,
                       uint32_t params_len) EXPORT(realm_generate);
int32_t realm_generate(uint32_t model_id, uint32_t prompt, uint32_t prompt_len, uint32_t params,
                       uint32_t params_len) {
    if (!mem_in_bounds(prompt, prompt_len) || !mem_in_bounds(params, params_len)) return REALM_ERR_BOUNDS;
    realm_params_t p;
    int32_t r = params_read(PTR(params), params_len, &p);
    if (r < 0) return r;
    realm_model_info_t info;
    r = read_info(model_id, &info);
    if (r < 0) return r;
    tokenizer_t *t;
    r = tokenizer_get(model_id, &t);
    if (r < 0) return r;
    if (p.max_tokens == 0) return 0;
    conv_t c;
    memset(&c, 0, sizeof c);
    c.model_id = model_id;
    c.n_ctx = ctx_or_default(p.n_ctx, &info);
    if (c.n_ctx == 0) return fail("n_ctx is 0", REALM_ERR_INVALID);
    r = run(&c, PTR(prompt), prompt_len, &p, 0);
    if (c.kv > 0) realm_kv_free((uint64_t)c.kv);
    realm_free(c.ids);
    return r;
}

/* ---- conversations ---------------------------------------------------------------
 * A table of open conversations; handle h > 0 is slot h - 1. Each conv_t is allocated
 * at open and freed at close, with its ring and ids. */

#define CHAT_MAX 64

static conv_t *chats[CHAT_MAX];

static conv_t *chat_get(uint32_t handle) {
    return handle >= 1 && handle <= CHAT_MAX ? chats[handle - 1] : 0;
}

int32_t realm_chat_open(uint32_t model_id, uint32_t n_ctx) EXPORT(realm_chat_open);
int32_t realm_chat_open(uint32_t model_id, uint32_t n_ctx) {
    realm_model_info_t info;
    int32_t r = read_info(model_id, &info);
    if (r < 0) return r;
    n_ctx = ctx_or_default(n_ctx, &info);
    if (n_ctx == 0) return fail("n_ctx is 0", REALM_ERR_INVALID);
    uint32_t slot = 0;
    while (slot < CHAT_MAX && chats[slot]) slot++;
    if (slot == CHAT_MAX) return fail("realm_chat_open: every conversation slot is taken", REALM_ERR_NOMEM);
    conv_t *c = realm_alloc(sizeof *c);
    if (!c) return fail("realm_chat_open", REALM_ERR_NOMEM);
    memset(c, 0, sizeof *c);
    c->model_id = model_id;
    c->n_ctx = n_ctx;
    r = ring_create(c); /* now, so that a KV limit shows at open */
    if (r < 0) {
        realm_free(c);
        return r;
    }
    chats[slot] = c;
    return (int32_t)(slot + 1);
}

int32_t realm_chat_generate(uint32_t handle, uint32_t prompt, uint32_t prompt_len, uint32_t params,
                            uint32_t params_len, uint32_t stats,
                            uint32_t stats_len) EXPORT(realm_chat_generate);
int32_t realm_chat_generate(uint32_t handle, uint32_t prompt, uint32_t prompt_len, uint32_t params,
                            uint32_t params_len, uint32_t stats, uint32_t stats_len) {
    if (!mem_in_bounds(prompt, prompt_len) || !mem_in_bounds(params, params_len) ||
        !mem_in_bounds(stats, stats_len))
        return REALM_ERR_BOUNDS;
    conv_t *c = chat_get(handle);
    if (!c) return fail("realm_chat_generate: no such conversation", REALM_ERR_INVALID);
    realm_params_t p;
    int32_t r = params_read(PTR(params), params_len, &p);
    if (r < 0) return r;
    if (p.n_ctx && p.n_ctx != c->n_ctx)
        return fail("realm_chat_generate: n_ctx is not the conversation's", REALM_ERR_INVALID);
    realm_chat_stats_t s;
    r = run(c, PTR(prompt), prompt_len, &p, &s);
    memcpy(PTR(stats), &s, MIN(stats_len, (uint32_t)sizeof s));
    return r;
}

int32_t realm_chat_close(uint32_t handle) EXPORT(realm_chat_close);
int32_t realm_chat_close(uint32_t handle) {
    conv_t *c = chat_get(handle);
    if (!c) return REALM_ERR_INVALID;
    if (c->kv > 0) realm_kv_free((uint64_t)c->kv);
    realm_free(c->ids);
    realm_free(c);
    chats[handle - 1] = 0;
    return REALM_OK;
}
