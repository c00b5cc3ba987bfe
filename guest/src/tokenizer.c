/* tokenizer.c: llama.cpp's SentencePiece BPE tokenizer (llm_tokenizer_spm) and the
 * detokenizer.
 *
 * Encoding: optionally prefix ' ', turn every ' ' into U+2581, split into UTF-8
 * characters, then repeatedly merge the adjacent pair whose concatenation is a token
 * with the highest score (ties: the leftmost pair), using a max-heap of candidate
 * pairs; stale candidates are skipped when popped. Each final symbol is its token, or
 * its bytes as BYTE tokens, or unk.
 */
#include "tokenizer.h"

uint32_t tokenizer_lookup(const tokenizer_t *t, const uint8_t *s, uint32_t n);

typedef struct {
    int32_t prev, next; /* neighbouring symbols, -1 at the ends */
    uint32_t start, n;  /* bytes in the normalized text; n == 0 once merged away */
} symbol_t;

typedef struct {
    float score;
    int32_t left, right;
    uint32_t size; /* bytes of the merged text when the pair was made */
} bigram_t;

/* a comes out of the heap before b */
static int bigram_before(const bigram_t *a, const bigram_t *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct {
    bigram_t *items;
    uint32_t n;
} heap_t;

static void heap_push(heap_t *h, bigram_t v) {
    uint32_t i = h->n++;
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!bigram_before(&v, &h->items[parent])) break;
        h->items[i] = h->items[parent];
        i = parent;
    }
    h->items[i] = v;
}

static bigram_t heap_pop(heap_t *h) {
    bigram_t top = h->items[0], v = h->items[--h->n];
    uint32_t i = 0;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bigram_before(&h->items[c + 1], &h->items[c])) c++;
        if (!bigram_before(&h->items[c], &v)) break;
        h->items[i] = h->items[c];
        i = c;
    }
    if (h->n) h->items[i] = v;
    return top;
}

typedef struct {
    const tokenizer_t *t;
    const uint8_t *text; /* normalized */
    symbol_t *sym;
    heap_t heap;
} encoder_t;

static void try_add_bigram(encoder_t *e, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    uint32_t n = e->sym[left].n + e->sym[right].n;
    uint32_t id = tokenizer_lookup(e->t, e->text + e->sym[left].start, n);
    if (id == REALM_NO_TOKEN) return;
    bigram_t b = {e->t->scores[id], left, right, n};
    heap_push(&e->heap, b);
}

typedef struct {
    uint32_t *out;
    uint32_t cap, count;
} ids_t;

static void put_id(ids_t *ids, uint32_t id) {
    if (ids->count < ids->cap) ids->out[ids->count] = id;
    ids->count++;
}

int32_t tokenizer_encode(const tokenizer_t *t, const uint8_t *text, uint32_t len, uint32_t *out,
                         uint32_t cap) {
    if (len == 0) return 0;
    /* normalize: the dummy prefix, and U+2581 (3 bytes) for every space */
    int prefix = (t->flags & REALM_MODEL_ADD_SPACE_PREFIX) != 0;
    uint64_t norm_len = len + (prefix ? 3u : 0u);
    for (uint32_t i = 0; i < len; i++) norm_len += text[i] == ' ' ? 2 : 0;
    if (norm_len > 0x10000000u) return REALM_ERR_NOMEM;
    /* one block: text, symbols (at most one per byte), heap (every pair, plus two new
     * pairs per merge: fewer than 3 per symbol) */
    uint64_t text_bytes = (norm_len + 15) & ~15ull;
    uint64_t bytes = text_bytes + norm_len * sizeof(symbol_t) + 3 * norm_len * sizeof(bigram_t);
    if (bytes > 0x7FFFFFFFu) return REALM_ERR_NOMEM;
    uint8_t *mem = realm_alloc((uint32_t)bytes);
    if (!mem) return REALM_ERR_NOMEM;

    uint8_t *norm = mem;
    uint32_t k = 0;
    if (prefix) {
        norm[k++] = 0xE2, norm[k++] = 0x96, norm[k++] = 0x81;
    }
    for (uint32_t i = 0; i < len; i++) {
        if (text[i] == ' ') norm[k++] = 0xE2, norm[k++] = 0x96, norm[k++] = 0x81;
        else norm[k++] = text[i];
    }

    encoder_t e = {t, norm, (symbol_t *)(mem + text_bytes), {0, 0}};
    e.heap.items = (bigram_t *)(mem + text_bytes + norm_len * sizeof(symbol_t));
    int32_t n_sym = 0;
    for (uint32_t at = 0; at < k;) {
        uint32_t n = utf8_char_len(norm + at, k - at);
        symbol_t s = {n_sym - 1, -1, at, n};
        e.sym[n_sym] = s;
        if (n_sym) e.sym[n_sym - 1].next = n_sym;
        n_sym++;
        at += n;
    }
    for (int32_t i = 1; i < n_sym; i++) try_add_bigram(&e, i - 1, i);

    while (e.heap.n) {
        bigram_t b = heap_pop(&e.heap);
        symbol_t *l = &e.sym[b.left], *r = &e.sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size || l->next != b.right) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) e.sym[r->next].prev = b.left;
        try_add_bigram(&e, l->prev, b.left);
        try_add_bigram(&e, b.left, l->next);
    }

    ids_t ids = {out, cap, 0};
    for (int32_t i = 0; i != -1; i = e.sym[i].next) {
        const symbol_t *s = &e.sym[i];
        uint32_t id = tokenizer_lookup(t, norm + s->start, s->n);
        if (id != REALM_NO_TOKEN) {
            put_id(&ids, id);
            continue;
        }
        for (uint32_t j = 0; j < s->n; j++) { /* byte fallback */
            uint32_t bid = t->byte_ids[norm[s->start + j]];
            if (bid == REALM_NO_TOKEN) bid = t->unk_id;
            if (bid != REALM_NO_TOKEN) put_id(&ids, bid);
        }
    }
    realm_free(mem);
    return (int32_t)ids.count;
}

int tokenizer_byte_value(const tokenizer_t *t, uint32_t id);

uint32_t tokenizer_piece(const tokenizer_t *t, uint32_t id, uint8_t *out, uint32_t cap) {
    if (id >= t->n_tokens) return 0;
    uint32_t type = t->types[id];
    if (type == REALM_TOKEN_BYTE) {
        int b = tokenizer_byte_value(t, id);
        if (b < 0) return 0;
        if (cap) out[0] = (uint8_t)b;
        return 1;
    }
    if (type != REALM_TOKEN_NORMAL && type != REALM_TOKEN_USER_DEFINED) return 0;
    uint32_t start = id ? t->ends[id - 1] : 0, end = t->ends[id], n = 0;
    const uint8_t *s = t->text;
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

uint32_t detok_stream_add(detok_stream_t *s, const tokenizer_t *t, uint32_t id) {
    /* the buffer holds at most 3 bytes plus one piece */
    s->len += tokenizer_piece(t, id, s->buf + s->len, t->max_token_bytes + 1);
    return s->len - utf8_incomplete_tail(s->buf, s->len);
}

void detok_stream_consume(detok_stream_t *s, uint32_t n) {
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
}
