/* text.c: the tokenizer's exports. */
#include "tokenizer.h"

int32_t realm_tokenize(uint32_t model_id, uint32_t text, uint32_t text_len, uint32_t out, uint32_t out_cap,
                       uint32_t flags) EXPORT(realm_tokenize);
int32_t realm_tokenize(uint32_t model_id, uint32_t text, uint32_t text_len, uint32_t out, uint32_t out_cap,
                       uint32_t flags) {
    if (!mem_in_bounds(text, text_len) || !mem_in_bounds(out, (uint64_t)out_cap * 4))
        return REALM_ERR_BOUNDS;
    if (flags & ~REALM_TOKENIZE_SPECIAL) return guest_log_error("realm_tokenize", "unknown flags", REALM_ERR_INVALID);
    tokenizer_t *t;
    int32_t r = tokenizer_get(model_id, &t);
    if (r < 0) return r;
    return tokenizer_encode(t, PTR(text), text_len, PTR(out), out_cap, (flags & REALM_TOKENIZE_SPECIAL) != 0);
}

/* Writes bytes into out[0 .. cap) and counts all of them; drops the first byte if it
 * is the dummy prefix's space. */
typedef struct {
    uint8_t *out;
    uint64_t cap, len;
    int strip_space;
} writer_t;

static void write_piece(writer_t *w, const uint8_t *s, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        if (w->strip_space) {
            w->strip_space = 0;
            if (s[i] == ' ') continue;
        }
        if (w->len < w->cap) w->out[w->len] = s[i];
        w->len++;
    }
}

/* llama.cpp's clean_spaces passes over text[0 .. n) in place (as its detokenize does
 * them); returns the new length. */
static uint32_t clean_spaces(uint8_t *text, uint32_t n) {
    /* " ?", " !", " .", " ," lose the space */
    uint32_t total = n ? 1 : 0;
    for (uint32_t i = 1; i < n; i++) {
        uint8_t x = text[i];
        if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) total--;
        text[total++] = x;
    }
    /* " ' " loses both spaces */
    n = total;
    total = n ? 1 : 0;
    for (uint32_t i = 1; i < n; i++) {
        uint8_t x = text[i];
        if (x == '\'' && i + 1 < n && text[i - 1] == ' ' && text[i + 1] == ' ') {
            total--;
            text[++i] = 0;
        }
        text[total++] = x;
    }
    /* " 's", " 'm", " 're", " 've" lose the space */
    n = total;
    total = n ? 1 : 0;
    for (uint32_t i = 1; i < n; i++) {
        uint8_t x = text[i];
        if (text[i - 1] == ' ' && x == '\'' && i + 1 < n) {
            uint8_t x1 = text[i + 1];
            if (x1 == 's' || x1 == 'm') total--;
            else if (i + 2 < n && ((x1 == 'r' && text[i + 2] == 'e') || (x1 == 'v' && text[i + 2] == 'e'))) total--;
        }
        text[total++] = x;
    }
    return total;
}

int32_t realm_detokenize(uint32_t model_id, uint32_t ids, uint32_t n_ids, uint32_t out,
                         uint32_t out_cap) EXPORT(realm_detokenize);
int32_t realm_detokenize(uint32_t model_id, uint32_t ids, uint32_t n_ids, uint32_t out,
                         uint32_t out_cap) {
    if (!mem_in_bounds(ids, (uint64_t)n_ids * 4) || !mem_in_bounds(out, out_cap)) return REALM_ERR_BOUNDS;
    tokenizer_t *t;
    int32_t r = tokenizer_get(model_id, &t);
    if (r < 0) return r;
    const uint32_t *id = PTR(ids);
    int prefix = (t->flags & REALM_MODEL_ADD_SPACE_PREFIX) != 0;
    int clean = t->kind == REALM_VOCAB_GPT2 && (t->flags & REALM_MODEL_CLEAN_SPACES);
    uint8_t *text = 0;
    writer_t w = {PTR(out), out_cap, 0, prefix};
    if (clean) { /* the passes need the whole text: build it here first */
        uint64_t total = 0;
        for (uint32_t i = 0; i < n_ids; i++) total += tokenizer_piece(t, id[i], 0, 0);
        if (total > 0x7FFFFFFFu || !(text = realm_alloc((uint32_t)total))) return REALM_ERR_NOMEM;
        w.out = text;
        w.cap = total;
    }
    uint8_t *piece = realm_alloc(t->max_token_bytes + 1);
    if (!piece) {
        realm_free(text);
        return REALM_ERR_NOMEM;
    }
    for (uint32_t i = 0; i < n_ids; i++) {
        uint32_t n = tokenizer_piece(t, id[i], piece, t->max_token_bytes + 1);
        write_piece(&w, piece, n);
        /* SPM drops the first space of the text, byte-level BPE (as llama.cpp) only a
           space the first token starts with */
        if (t->kind == REALM_VOCAB_GPT2) w.strip_space = 0;
    }
    realm_free(piece);
    if (clean) {
        uint32_t n = clean_spaces(text, (uint32_t)w.len);
        memcpy(PTR(out), text, MIN(n, out_cap));
        realm_free(text);
        w.len = n;
    }
    return w.len > 0x7FFFFFFFu ? REALM_ERR_INVALID : (int32_t)w.len;
}

/* Not part of realm.h: the streaming detokenizer that realm_generate uses, for tests.
 * Feeds ids one at a time; out gets the bytes it lets out (the first out_cap), and
 * ends[i] (n_ids + 1 u32) the byte count out after id i, the last after the final
 * flush. Returns the total byte count. */
int32_t realm_detokenize_stream(uint32_t model_id, uint32_t ids, uint32_t n_ids, uint32_t out,
                                uint32_t out_cap, uint32_t ends) EXPORT(realm_detokenize_stream);
int32_t realm_detokenize_stream(uint32_t model_id, uint32_t ids, uint32_t n_ids, uint32_t out,
                                uint32_t out_cap, uint32_t ends) {
    if (!mem_in_bounds(ids, (uint64_t)n_ids * 4) || !mem_in_bounds(out, out_cap) ||
        !mem_in_bounds(ends, ((uint64_t)n_ids + 1) * 4))
        return REALM_ERR_BOUNDS;
    tokenizer_t *t;
    int32_t r = tokenizer_get(model_id, &t);
    if (r < 0) return r;
    detok_stream_t s = {realm_alloc(t->max_token_bytes + 4), 0};
    if (!s.buf) return REALM_ERR_NOMEM;
    const uint32_t *id = PTR(ids);
    uint32_t *end = PTR(ends);
    writer_t w = {PTR(out), out_cap, 0, 0};
    for (uint32_t i = 0; i <= n_ids; i++) {
        uint32_t ready = i < n_ids ? detok_stream_add(&s, t, id[i]) : s.len;
        write_piece(&w, s.buf, ready);
        detok_stream_consume(&s, ready);
        end[i] = w.len;
    }
    realm_free(s.buf);
    return w.len > 0x7FFFFFFFu ? REALM_ERR_INVALID : (int32_t)w.len;
}
