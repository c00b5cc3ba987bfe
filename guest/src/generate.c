/* generate.c: realm_generate, the generation loop.
 *
 * Tokenize the prompt (BOS first when asked), open a KV ring, run the prompt through
 * the model in chunks of n_batch positions, then sample, stream the piece out through
 * realm_emit and feed the token back, one position at a time. Every buffer is
 * allocated once per call; nothing is allocated per token.
 */
#include "sampler.h"
#include "tokenizer.h"

typedef struct {
    uint32_t model_id;
    realm_model_info_t info;
    realm_params_t p;
    int64_t kv;
    uint32_t *prompt; /* [n_prompt] */
    uint32_t n_prompt;
    float *hidden;    /* [chunk][n_embd] */
    float *logits;    /* [n_vocab] */
    uint32_t *hist;   /* the last tokens for the repetition penalty: [hist_cap] */
    uint32_t n_hist, hist_keep, hist_cap;
    detok_stream_t stream;
} gen_t;

static int32_t fail(const char *call, int32_t code) {
    return guest_log_error("realm_generate", call, code);
}

/* Runs rows tokens (their embeddings already in g->hidden) through every layer at
 * positions pos .. pos + rows - 1. */
static int32_t run_layers(gen_t *g, uint32_t rows, uint32_t pos) {
    uint32_t len = rows * g->info.n_embd, h = ADDR(g->hidden);
    if (g->p.flags & REALM_GEN_PER_LAYER) {
        for (uint32_t l = 0; l < g->info.n_layer; l++) {
            int32_t r = realm_forward_layer(g->model_id, l, h, len, pos, (uint64_t)g->kv, h);
            if (r < 0) return fail("realm_forward_layer", r);
        }
        return REALM_OK;
    }
    int32_t r = realm_forward_layers(g->model_id, 0, g->info.n_layer, h, len, pos, (uint64_t)g->kv, h);
    return r < 0 ? fail("realm_forward_layers", r) : REALM_OK;
}

/* Embeds ids[0 .. rows), runs the layers at pos, and (if want_logits) the LM head on
 * the last row. */
static int32_t forward(gen_t *g, const uint32_t *ids, uint32_t rows, uint32_t pos, int want_logits) {
    int32_t r = realm_forward_embedding(g->model_id, ADDR(ids), rows, ADDR(g->hidden));
    if (r < 0) return fail("realm_forward_embedding", r);
    r = run_layers(g, rows, pos);
    if (r < 0 || !want_logits) return r;
    const float *last = g->hidden + (uint64_t)(rows - 1) * g->info.n_embd;
    r = realm_forward_lm_head(g->model_id, ADDR(last), g->info.n_embd, ADDR(g->logits));
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

/* Everything before the first sample: the prompt's tokens, the buffers, the KV ring
 * and the prompt's logits. */
static int32_t setup(gen_t *g, const tokenizer_t *t, const uint8_t *text, uint32_t text_len) {
    /* as llama.cpp's CLI tokenizes a prompt: special tokens parsed, BOS / EOS added
       where the model's tokenizer asks for them */
    int add_bos = (g->p.flags & REALM_GEN_ADD_BOS) && (g->info.flags & REALM_MODEL_ADD_BOS) &&
                  g->info.bos_id != REALM_NO_TOKEN;
    int add_eos = (g->p.flags & REALM_GEN_ADD_BOS) && (g->info.flags & REALM_MODEL_ADD_EOS) &&
                  g->info.eos_id != REALM_NO_TOKEN;
    int32_t n_text = tokenizer_encode(t, text, text_len, 0, 0, 1);
    if (n_text < 0) return fail("tokenize", n_text);
    g->n_prompt = (uint32_t)n_text + (add_bos ? 1 : 0) + (add_eos ? 1 : 0);
    if (g->n_prompt == 0) return fail("empty prompt", REALM_ERR_INVALID);
    g->prompt = alloc_bytes((uint64_t)g->n_prompt * 4);
    if (!g->prompt) return fail("prompt tokens", REALM_ERR_NOMEM);
    if (add_bos) g->prompt[0] = g->info.bos_id;
    int32_t r = tokenizer_encode(t, text, text_len, g->prompt + add_bos, (uint32_t)n_text, 1);
    if (r < 0) return fail("tokenize", r);
    if (add_eos) g->prompt[g->n_prompt - 1] = g->info.eos_id;

    uint32_t n_ctx = g->p.n_ctx ? g->p.n_ctx : g->info.n_ctx_train;
    if (n_ctx == 0) return fail("n_ctx is 0", REALM_ERR_INVALID);
    uint32_t chunk = g->p.n_batch ? MIN(g->p.n_batch, g->n_prompt) : g->n_prompt;
    chunk = MIN(chunk, n_ctx); /* a chunk never overruns the ring it attends over */

    if (g->p.repeat_last_n && g->p.repeat_penalty != 1.0f) {
        uint64_t keep = MIN((uint64_t)g->p.repeat_last_n, (uint64_t)g->n_prompt + g->p.max_tokens);
        g->hist_keep = (uint32_t)keep;
        g->hist_cap = (uint32_t)MIN(2 * keep, 0x10000000ull);
        g->hist = alloc_bytes((uint64_t)g->hist_cap * 4);
        if (!g->hist) return fail("history", REALM_ERR_NOMEM);
        for (uint32_t i = g->n_prompt - MIN(g->n_prompt, g->hist_keep); i < g->n_prompt; i++)
            hist_push(g, g->prompt[i]);
    }
    g->hidden = alloc_bytes((uint64_t)chunk * g->info.n_embd * 4);
    g->logits = alloc_bytes((uint64_t)g->info.n_vocab * 4);
    g->stream.buf = alloc_bytes((uint64_t)t->max_token_bytes + 4);
    if (!g->hidden || !g->logits || !g->stream.buf) return fail("activations", REALM_ERR_NOMEM);
    r = sampler_reserve(g->info.n_vocab);
    if (r < 0) return fail("sampler", r);

    g->kv = realm_kv_create(g->model_id, n_ctx);
    if (g->kv < 0) {
        int32_t code = g->kv < -0x7FFFFFFF ? REALM_ERR_INTERNAL : (int32_t)g->kv;
        g->kv = 0;
        return fail("realm_kv_create", code);
    }
    if (g->kv == 0) return fail("realm_kv_create returned 0", REALM_ERR_INTERNAL);

    for (uint32_t pos = 0; pos < g->n_prompt; pos += chunk) {
        uint32_t rows = MIN(chunk, g->n_prompt - pos);
        r = forward(g, g->prompt + pos, rows, pos, pos + rows == g->n_prompt);
        if (r < 0) return r;
    }
    return REALM_OK;
}

/* The loop: sample, stop at EOS, stream the piece, feed the token back. Returns the
 * count of tokens generated. */
static int32_t loop(gen_t *g, const tokenizer_t *t) {
    uint64_t rng = g->p.seed;
    uint32_t n = 0, token = 0;
    int stopped = 0;
    while (n < g->p.max_tokens) {
        int32_t id = sampler_sample(g->logits, g->info.n_vocab, &g->p, g->hist, g->n_hist, &rng);
        if (id < 0) return fail("sample", id);
        if ((g->p.flags & REALM_GEN_STOP_AT_EOS) && tokenizer_is_eog(t, (uint32_t)id)) break;
        n++;
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
        token = (uint32_t)id;
        int32_t r = forward(g, &token, 1, g->n_prompt + n - 1, 1);
        if (r < 0) return r;
    }
    if (!stopped && g->stream.len) realm_emit(ADDR(g->stream.buf), g->stream.len); /* flush */
    return (int32_t)n;
}

int32_t realm_generate(uint32_t model_id, uint32_t prompt, uint32_t prompt_len, uint32_t params,
                       uint32_t params_len) EXPORT(realm_generate);
int32_t realm_generate(uint32_t model_id, uint32_t prompt, uint32_t prompt_len, uint32_t params,
                       uint32_t params_len) {
    if (!mem_in_bounds(prompt, prompt_len) || !mem_in_bounds(params, params_len)) return REALM_ERR_BOUNDS;
    gen_t g;
    memset(&g, 0, sizeof g);
    g.model_id = model_id;
    int32_t r = params_read(PTR(params), params_len, &g.p);
    if (r < 0) return r;
    r = realm_model_info(model_id, ADDR(&g.info), sizeof g.info);
    if (r < 0) return fail("realm_model_info", r);
    if ((uint32_t)r < sizeof g.info || g.info.version < 1 || g.info.n_vocab == 0 || g.info.n_embd == 0 ||
        g.info.n_layer == 0)
        return fail("realm_model_info: a bad struct", REALM_ERR_INTERNAL);
    tokenizer_t *t;
    r = tokenizer_get(model_id, &t);
    if (r < 0) return r;

    if (g.p.max_tokens == 0) return 0;
    r = setup(&g, t, PTR(prompt), prompt_len);
    if (r >= 0) r = loop(&g, t);

    if (g.kv > 0) realm_kv_free((uint64_t)g.kv);
    realm_free(g.prompt);
    realm_free(g.hist);
    realm_free(g.hidden);
    realm_free(g.logits);
    realm_free(g.stream.buf);
    return r;
}
