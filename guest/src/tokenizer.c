/* tokenizer.c: text to ids as llama.cpp's llama_vocab::impl::tokenize does it, and the
 * pieces of ids.
 *
 * First the special-token partition (tokenizer_st_partition): for each special token,
 * the longest text first, every occurrence in the text not yet claimed becomes that
 * token, splitting the text around it (LSTRIP / RSTRIP tokens eat the whitespace beside
 * them). CONTROL and UNKNOWN tokens take part only with parse_special, USER_DEFINED ones
 * always. Then each remaining run of text is tokenized on its own:
 *
 * SPM (llm_tokenizer_spm): a ' ' before a run that starts the text or follows a special
 * token (with the dummy prefix on), every ' ' turned into U+2581, then the merge loop
 * over tokens' scores. Each final symbol is its token, or its bytes as BYTE tokens, or
 * unk.
 *
 * GPT2 (bpe.c): the run is split into words by the pre-tokenizer, each word merged by
 * merge ranks.
 */
#include "pretokenize.h"
#include "tokenizer.h"

/* ---- the merge loop --------------------------------------------------------------- */

/* a comes out of the heap before b */
static int bigram_before(const bigram_t *a, const bigram_t *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(merger_t *m, bigram_t v) {
    uint32_t i = m->n_heap++;
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!bigram_before(&v, &m->heap[parent])) break;
        m->heap[i] = m->heap[parent];
        i = parent;
    }
    m->heap[i] = v;
}

static bigram_t heap_pop(merger_t *m) {
    bigram_t top = m->heap[0], v = m->heap[--m->n_heap];
    uint32_t i = 0;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= m->n_heap) break;
        if (c + 1 < m->n_heap && bigram_before(&m->heap[c + 1], &m->heap[c])) c++;
        if (!bigram_before(&m->heap[c], &v)) break;
        m->heap[i] = m->heap[c];
        i = c;
    }
    if (m->n_heap) m->heap[i] = v;
    return top;
}

/* The rank of the merge "left right" (GPT2), or -1. */
static int32_t merge_rank(const tokenizer_t *t, const uint8_t *l, uint32_t ln, const uint8_t *r, uint32_t rn) {
    static const uint8_t space = ' ';
    uint32_t h = fnv1a_more(fnv1a_more(fnv1a_more(FNV1A_INIT, l, ln), &space, 1), r, rn);
    uint32_t base = t->n_tokens ? t->ends[t->n_tokens - 1] : 0;
    for (uint32_t i = h & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        uint32_t e = t->merge_table[i];
        if (!e) return -1;
        uint32_t start = e - 1 ? t->merge_ends[e - 2] : base, n = t->merge_ends[e - 1] - start;
        const uint8_t *s = t->text + start;
        if (n == ln + 1 + rn && s[ln] == ' ' && memcmp(s, l, ln) == 0 && memcmp(s + ln + 1, r, rn) == 0)
            return (int32_t)(e - 1);
    }
}

static void try_add_bigram(merger_t *m, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const symbol_t *l = &m->sym[left], *r = &m->sym[right];
    float score;
    if (m->t->kind == REALM_VOCAB_GPT2) {
        int32_t rank = merge_rank(m->t, m->text + l->start, l->n, m->text + r->start, r->n);
        if (rank < 0) return;
        score = -(float)rank; /* ranks are below 2^24: exact */
    } else {
        uint32_t id = tokenizer_lookup(m->t, m->text + l->start, l->n + r->n);
        if (id == REALM_NO_TOKEN) return;
        score = m->t->scores[id];
    }
    bigram_t b = {score, left, right, l->n + r->n};
    heap_push(m, b);
}

void merger_run(merger_t *m, uint32_t len) {
    int32_t n_sym = 0;
    for (uint32_t at = 0; at < len;) {
        uint32_t n = utf8_char_len(m->text + at, len - at);
        symbol_t s = {n_sym - 1, -1, at, n};
        m->sym[n_sym] = s;
        if (n_sym) m->sym[n_sym - 1].next = n_sym;
        n_sym++;
        at += n;
    }
    m->n_heap = 0;
    for (int32_t i = 1; i < n_sym; i++) try_add_bigram(m, i - 1, i);
    while (m->n_heap) {
        bigram_t b = heap_pop(m);
        symbol_t *l = &m->sym[b.left], *r = &m->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size || l->next != b.right) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) m->sym[r->next].prev = b.left;
        try_add_bigram(m, l->prev, b.left);
        try_add_bigram(m, b.left, l->next);
    }
}

/* ---- the special-token partition -------------------------------------------------- */

/* A run of the text: raw text to tokenize (id REALM_NO_TOKEN) or a special token. */
typedef struct {
    uint32_t start, len, id;
} frag_t;

typedef struct {
    frag_t *items;
    uint32_t n, cap;
} frags_t;

static int frags_push(frags_t *f, uint32_t start, uint32_t len, uint32_t id) {
    if (f->n == f->cap) {
        uint64_t cap = f->cap ? 2ull * f->cap : 16;
        if (cap * sizeof(frag_t) > 0x7FFFFFFFu) return 0;
        frag_t *items = realm_alloc((uint32_t)(cap * sizeof(frag_t)));
        if (!items) return 0;
        if (f->n) memcpy(items, f->items, f->n * sizeof(frag_t));
        realm_free(f->items);
        f->items = items;
        f->cap = (uint32_t)cap;
    }
    frag_t v = {start, len, id};
    f->items[f->n++] = v;
    return 1;
}

static int is_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* The first occurrence of s[0 .. n) in text[from .. end), or end. */
static uint32_t find(const uint8_t *text, uint32_t from, uint32_t end, const uint8_t *s, uint32_t n) {
    if (n == 0 || end - from < n) return end;
    for (uint32_t i = from; i + n <= end; i++) {
        if (text[i] == s[0] && memcmp(text + i + 1, s + 1, n - 1) == 0) return i;
    }
    return end;
}

/* Splits the raw fragments of *cur at every occurrence of special token id (in
 * llama.cpp's order: within each fragment, left to right); the result goes to *next,
 * which is then swapped with *cur. Returns 0 when memory runs out. */
static int split_at(const tokenizer_t *t, const uint8_t *text, uint32_t id, frags_t *cur, frags_t *next) {
    uint32_t start = id ? t->ends[id - 1] : 0, n = t->ends[id] - start, attr = tokenizer_attr(t, id);
    const uint8_t *s = t->text + start;
    next->n = 0;
    int changed = 0;
    for (uint32_t k = 0; k < cur->n; k++) {
        frag_t f = cur->items[k];
        if (f.id != REALM_NO_TOKEN) {
            if (!frags_push(next, f.start, f.len, f.id)) return 0;
            continue;
        }
        uint32_t at = f.start, end = f.start + f.len;
        for (;;) {
            uint32_t m = find(text, at, end, s, n);
            if (m == end) {
                if (at < end && !frags_push(next, at, end - at, REALM_NO_TOKEN)) return 0;
                break;
            }
            changed = 1;
            uint32_t left_end = m;
            if (attr & REALM_ATTR_LSTRIP) {
                while (left_end > at && is_space(text[left_end - 1])) left_end--;
            }
            if (left_end > at && !frags_push(next, at, left_end - at, REALM_NO_TOKEN)) return 0;
            if (!frags_push(next, m, n, id)) return 0;
            at = m + n;
            if (attr & REALM_ATTR_RSTRIP) {
                while (at < end && is_space(text[at])) at++;
            }
        }
    }
    if (changed) {
        frags_t tmp = *cur;
        *cur = *next;
        *next = tmp;
    }
    return 1;
}

static int32_t partition(const tokenizer_t *t, const uint8_t *text, uint32_t len, int parse_special,
                         frags_t *out) {
    frags_t next = {0, 0, 0};
    out->n = 0;
    if (!frags_push(out, 0, len, REALM_NO_TOKEN)) return REALM_ERR_NOMEM;
    for (uint32_t i = 0; i < t->n_specials; i++) {
        uint32_t id = t->specials[i];
        if (!parse_special && (tokenizer_attr(t, id) & (REALM_ATTR_CONTROL | REALM_ATTR_UNKNOWN))) continue;
        if (!split_at(t, text, id, out, &next)) {
            realm_free(next.items);
            return REALM_ERR_NOMEM;
        }
    }
    realm_free(next.items);
    return REALM_OK;
}

/* ---- SPM -------------------------------------------------------------------------- */

/* One run of text through SentencePiece BPE; norm holds it normalized, m's buffers one
 * symbol and three pairs per byte of that. */
static void spm_encode_run(const tokenizer_t *t, const uint8_t *text, uint32_t len, int prefix, uint8_t *norm,
                           merger_t *m, ids_t *ids) {
    uint32_t k = 0;
    if (prefix) norm[k++] = 0xE2, norm[k++] = 0x96, norm[k++] = 0x81;
    for (uint32_t i = 0; i < len; i++) {
        if (text[i] == ' ') norm[k++] = 0xE2, norm[k++] = 0x96, norm[k++] = 0x81;
        else norm[k++] = text[i];
    }
    if (k == 0) return;
    m->text = norm;
    merger_run(m, k);
    for (int32_t i = 0; i != -1; i = m->sym[i].next) {
        const symbol_t *s = &m->sym[i];
        uint32_t id = tokenizer_lookup(t, norm + s->start, s->n);
        if (id != REALM_NO_TOKEN) {
            put_id(ids, id);
            continue;
        }
        for (uint32_t j = 0; j < s->n; j++) { /* byte fallback */
            uint32_t bid = t->byte_ids[norm[s->start + j]];
            if (bid == REALM_NO_TOKEN) bid = t->unk_id;
            if (bid != REALM_NO_TOKEN) put_id(ids, bid);
        }
    }
}

static void *alloc_bytes(uint64_t n) { return n > 0x7FFFFFFFu ? 0 : realm_alloc((uint32_t)n); }

static int32_t spm_encode(const tokenizer_t *t, const uint8_t *text, const frags_t *f, ids_t *ids) {
    int space_prefix = (t->flags & REALM_MODEL_ADD_SPACE_PREFIX) != 0;
    uint64_t norm_len = 0; /* the longest run normalized: U+2581 (3 bytes) for each ' ' */
    for (uint32_t i = 0; i < f->n; i++) {
        const frag_t *g = &f->items[i];
        if (g->id != REALM_NO_TOKEN) continue;
        uint64_t n = g->len + 3ull;
        for (uint32_t k = 0; k < g->len; k++) n += text[g->start + k] == ' ' ? 2 : 0;
        norm_len = MAX(norm_len, n);
    }
    /* one block: the normalized run, its symbols, its pairs */
    uint64_t text_bytes = (norm_len + 15) & ~15ull;
    uint8_t *mem = alloc_bytes(text_bytes + norm_len * (sizeof(symbol_t) + 3 * sizeof(bigram_t)));
    if (!mem) return REALM_ERR_NOMEM;
    merger_t m = {t, 0, (symbol_t *)(mem + text_bytes), 0, 0};
    m.heap = (bigram_t *)(mem + text_bytes + norm_len * sizeof(symbol_t));
    int prev_special = 1; /* the first run gets the prefix too */
    for (uint32_t i = 0; i < f->n; i++) {
        const frag_t *g = &f->items[i];
        if (g->id != REALM_NO_TOKEN) {
            put_id(ids, g->id);
            prev_special = 1;
            continue;
        }
        spm_encode_run(t, text + g->start, g->len, space_prefix && prev_special, mem, &m, ids);
        prev_special = 0;
    }
    realm_free(mem);
    return REALM_OK;
}

/* ---- GPT2 ------------------------------------------------------------------------- */

/* Each raw run split into words by the pre-tokenizer: f's raw fragments replaced by
 * their words (in *words). */
static int32_t split_words(const tokenizer_t *t, const uint8_t *text, const frags_t *f, frags_t *words,
                           uint32_t *longest) {
    uint32_t raw = 0;
    for (uint32_t i = 0; i < f->n; i++) {
        if (f->items[i].id == REALM_NO_TOKEN) raw = MAX(raw, f->items[i].len);
    }
    pretok_span_t *spans = raw ? alloc_bytes((uint64_t)raw * sizeof(pretok_span_t)) : 0;
    if (raw && !spans) return REALM_ERR_NOMEM;
    int32_t r = REALM_OK;
    *longest = 0;
    for (uint32_t i = 0; i < f->n && r >= 0; i++) {
        const frag_t *g = &f->items[i];
        if (g->id != REALM_NO_TOKEN) {
            if (!frags_push(words, g->start, g->len, g->id)) r = REALM_ERR_NOMEM;
            continue;
        }
        int32_t n = pretokenize(t->pre, text + g->start, g->len, spans, raw);
        if (n < 0) {
            r = n == REALM_ERR_NOMEM ? n : guest_log_error("pre-tokenizer", "failed", n);
            break;
        }
        if ((uint32_t)n > raw) { /* spans are non-empty: never more than the bytes */
            r = guest_log_error("pre-tokenizer", "more words than bytes", REALM_ERR_INTERNAL);
            break;
        }
        uint32_t covered = 0;
        for (int32_t k = 0; k < n; k++) {
            if (spans[k].start != covered || spans[k].len == 0 || spans[k].len > g->len - covered) {
                r = guest_log_error("pre-tokenizer", "words that do not cover the text", REALM_ERR_INTERNAL);
                break;
            }
            covered += spans[k].len;
            *longest = MAX(*longest, spans[k].len);
            if (!frags_push(words, g->start + spans[k].start, spans[k].len, REALM_NO_TOKEN)) {
                r = REALM_ERR_NOMEM;
                break;
            }
        }
        if (r >= 0 && covered != g->len)
            r = guest_log_error("pre-tokenizer", "words that do not cover the text", REALM_ERR_INTERNAL);
    }
    realm_free(spans);
    return r;
}

static int32_t bpe_encode(const tokenizer_t *t, const uint8_t *text, const frags_t *f, ids_t *ids) {
    frags_t words = {0, 0, 0};
    uint32_t longest = 0;
    int32_t r = split_words(t, text, f, &words, &longest);
    uint8_t *mem = 0;
    if (r >= 0) {
        /* one block for every word: its mapped bytes, symbols, pairs */
        uint64_t mapped = (6ull * longest + 15) & ~15ull;
        mem = alloc_bytes(mapped + (uint64_t)longest * (3 * sizeof(symbol_t) + 9 * sizeof(bigram_t)));
        if (!mem) r = REALM_ERR_NOMEM;
        bpe_work_t w = {mem, (symbol_t *)(mem + mapped), 0};
        w.heap = (bigram_t *)(mem + mapped + 3ull * longest * sizeof(symbol_t));
        for (uint32_t i = 0; i < words.n && r >= 0; i++) {
            const frag_t *g = &words.items[i];
            if (g->id != REALM_NO_TOKEN) put_id(ids, g->id);
            else bpe_encode_word(t, text + g->start, g->len, &w, ids);
        }
    }
    realm_free(mem);
    realm_free(words.items);
    return r;
}

int32_t tokenizer_encode(const tokenizer_t *t, const uint8_t *text, uint32_t len, uint32_t *out,
                         uint32_t cap, int parse_special) {
    if (len == 0) return 0;
    if (len > 0x10000000u) return REALM_ERR_NOMEM;
    frags_t f = {0, 0, 0};
    int32_t r = partition(t, text, len, parse_special, &f);
    ids_t ids = {out, cap, 0};
    if (r >= 0) r = t->kind == REALM_VOCAB_GPT2 ? bpe_encode(t, text, &f, &ids) : spm_encode(t, text, &f, &ids);
    realm_free(f.items);
    if (r < 0) return r;
    return ids.count > 0x7FFFFFFFu ? REALM_ERR_NOMEM : (int32_t)ids.count;
}

/* ---- pieces ----------------------------------------------------------------------- */

uint32_t tokenizer_attr(const tokenizer_t *t, uint32_t id) {
    if (t->attrs) return t->attrs[id];
    switch (t->types[id]) {
    case REALM_TOKEN_NORMAL: return REALM_ATTR_NORMAL;
    case REALM_TOKEN_UNKNOWN: return REALM_ATTR_UNKNOWN;
    case REALM_TOKEN_CONTROL: return REALM_ATTR_CONTROL;
    case REALM_TOKEN_USER_DEFINED: return REALM_ATTR_USER_DEFINED;
    case REALM_TOKEN_UNUSED: return REALM_ATTR_UNUSED;
    case REALM_TOKEN_BYTE: return REALM_ATTR_BYTE;
    default: return 0;
    }
}

int tokenizer_is_eog(const tokenizer_t *t, uint32_t id) {
    if (!t->eog) return id != REALM_NO_TOKEN && id == t->eos_id;
    uint32_t lo = 0, hi = t->n_eog;
    while (lo < hi) { /* ascending: binary search */
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->eog[mid] == id) return 1;
        if (t->eog[mid] < id) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

static uint64_t copy_out(const uint8_t *s, uint32_t n, uint8_t *out, uint64_t cap) {
    for (uint32_t i = 0; i < n && i < cap; i++) out[i] = s[i];
    return n;
}

/* tokenizer_piece in 64 bits (vocab.c checks every token's against 2^24 once). */
uint64_t tokenizer_piece64(const tokenizer_t *t, uint32_t id, uint8_t *out, uint64_t cap) {
    if (id >= t->n_tokens) return 0;
    uint32_t attr = tokenizer_attr(t, id);
    uint32_t start = id ? t->ends[id - 1] : 0, end = t->ends[id];
    const uint8_t *s = t->text;
    if (attr & (REALM_ATTR_CONTROL | REALM_ATTR_UNKNOWN)) return 0;
    if (attr & REALM_ATTR_USER_DEFINED) return copy_out(s + start, end - start, out, cap);
    if (attr & REALM_ATTR_NORMAL) {
        if (t->kind == REALM_VOCAB_GPT2) return bpe_decode_text(s + start, end - start, out, cap);
        uint64_t n = 0;
        for (uint32_t i = start; i < end;) {
            uint8_t c;
            if (i + 3 <= end && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
                c = ' ';
                i += 3;
            } else {
                c = s[i++];
            }
            if (n < cap) out[n] = c;
            n++;
        }
        return n;
    }
    if (attr & REALM_ATTR_BYTE) {
        int b = tokenizer_byte_value(t, id);
        if (b < 0) return 0;
        if (cap) out[0] = (uint8_t)b;
        return 1;
    }
    return 0;
}

uint32_t tokenizer_piece(const tokenizer_t *t, uint32_t id, uint8_t *out, uint32_t cap) {
    return (uint32_t)tokenizer_piece64(t, id, out, cap);
}

uint32_t detok_stream_add(detok_stream_t *s, const tokenizer_t *t, uint32_t id) {
    /* the buffer holds at most 3 bytes plus one piece */
    s->len += tokenizer_piece(t, id, s->buf + s->len, t->max_token_bytes + 1);
    return s->len - utf8_incomplete_tail(s->buf, s->len);
}

void detok_stream_consume(detok_stream_t *s, uint32_t n) {
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
}
