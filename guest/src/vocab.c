/* vocab.c: read and check the vocabulary blob, build the text -> id table, cache the
 * tokenizer per model id. */
#include "tokenizer.h"

static tokenizer_t *cache; /* every tokenizer built so far */

static int is_piece_type(uint32_t type) {
    return type == REALM_TOKEN_NORMAL || type == REALM_TOKEN_USER_DEFINED;
}

static uint32_t fnv1a(const uint8_t *s, uint32_t n) {
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

static uint32_t token_start(const tokenizer_t *t, uint32_t id) { return id ? t->ends[id - 1] : 0; }

/* Id of the NORMAL / USER_DEFINED token whose text is s[0 .. n), or REALM_NO_TOKEN. */
uint32_t tokenizer_lookup(const tokenizer_t *t, const uint8_t *s, uint32_t n) {
    for (uint32_t i = fnv1a(s, n) & t->table_mask;; i = (i + 1) & t->table_mask) {
        uint32_t e = t->table[i];
        if (!e) return REALM_NO_TOKEN;
        uint32_t id = e - 1, start = token_start(t, id);
        if (t->ends[id] - start == n && memcmp(t->text + start, s, n) == 0) return id;
    }
}

static int hex_digit(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of a "<0xNN>" token, or -1. */
int tokenizer_byte_value(const tokenizer_t *t, uint32_t id) {
    uint32_t start = token_start(t, id);
    const uint8_t *s = t->text + start;
    if (t->ends[id] - start != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* An array of `count` elements of `size` bytes at `off`, 4-byte aligned, after the
 * header and inside total bytes. */
static int array_ok(uint32_t off, uint64_t count, uint32_t size, uint32_t total) {
    return (off & 3) == 0 && off >= sizeof(realm_vocab_header_t) && off + count * size <= total;
}

static int32_t bad_blob(const char *why) {
    return guest_log_error("vocabulary blob", why, REALM_ERR_INVALID);
}

/* Points t's arrays into the blob after checking every offset and length. */
static int32_t parse_blob(tokenizer_t *t, uint8_t *blob, uint32_t size) {
    realm_vocab_header_t h;
    if (size < sizeof h) return bad_blob("shorter than its header");
    memcpy(&h, blob, sizeof h);
    if (h.magic != REALM_VOCAB_MAGIC) return bad_blob("bad magic");
    if (h.version < 1) return bad_blob("bad version");
    if (h.total_bytes < sizeof h || h.total_bytes > size) return bad_blob("bad total_bytes");
    if (h.kind != REALM_VOCAB_SPM) return bad_blob("only the SPM (llama) tokenizer is supported");
    uint32_t n = h.n_tokens, total = h.total_bytes;
    if (n == 0) return bad_blob("no tokens");
    if (!array_ok(h.scores_off, n, 4, total) || !array_ok(h.types_off, n, 4, total) ||
        !array_ok(h.token_ends_off, n, 4, total) || !array_ok(h.merge_ends_off, h.n_merges, 4, total))
        return bad_blob("an array lies outside the blob");
    if (h.text_off < sizeof h || (uint64_t)h.text_off + h.text_bytes > total)
        return bad_blob("the text lies outside the blob");
    if ((h.bos_id != REALM_NO_TOKEN && h.bos_id >= n) || (h.eos_id != REALM_NO_TOKEN && h.eos_id >= n) ||
        (h.unk_id != REALM_NO_TOKEN && h.unk_id >= n))
        return bad_blob("a special token id outside the vocabulary");
    const uint32_t *ends = (const uint32_t *)(blob + h.token_ends_off);
    uint32_t prev = 0, max_len = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (ends[i] < prev || ends[i] > h.text_bytes) return bad_blob("token ends out of order");
        max_len = MAX(max_len, ends[i] - prev);
        prev = ends[i];
    }
    t->blob = blob;
    t->scores = (const float *)(blob + h.scores_off);
    t->types = (const uint32_t *)(blob + h.types_off);
    t->ends = ends;
    t->text = blob + h.text_off;
    t->n_tokens = n;
    t->flags = h.flags;
    t->bos_id = h.bos_id;
    t->eos_id = h.eos_id;
    t->unk_id = h.unk_id;
    t->max_token_bytes = max_len;
    return REALM_OK;
}

static int32_t build_tables(tokenizer_t *t) {
    uint32_t n_pieces = 0;
    for (uint32_t i = 0; i < t->n_tokens; i++) n_pieces += is_piece_type(t->types[i]);
    uint32_t cap = 16;
    while (cap < 2 * n_pieces) cap *= 2; /* load factor <= 1/2 */
    t->table = realm_alloc(cap * 4);
    if (!t->table) return REALM_ERR_NOMEM;
    memset(t->table, 0, cap * 4);
    t->table_mask = cap - 1;
    for (uint32_t id = 0; id < t->n_tokens; id++) {
        if (!is_piece_type(t->types[id])) continue;
        uint32_t start = token_start(t, id), n = t->ends[id] - start;
        if (tokenizer_lookup(t, t->text + start, n) != REALM_NO_TOKEN) continue; /* first wins */
        uint32_t i = fnv1a(t->text + start, n) & t->table_mask;
        while (t->table[i]) i = (i + 1) & t->table_mask;
        t->table[i] = id + 1;
    }
    for (uint32_t b = 0; b < 256; b++) t->byte_ids[b] = REALM_NO_TOKEN;
    for (uint32_t id = 0; id < t->n_tokens; id++) {
        if (t->types[id] != REALM_TOKEN_BYTE) continue;
        int b = tokenizer_byte_value(t, id);
        if (b >= 0 && t->byte_ids[b] == REALM_NO_TOKEN) t->byte_ids[b] = id;
    }
    return REALM_OK;
}

static void tokenizer_free(tokenizer_t *t) {
    realm_free(t->table);
    realm_free(t->blob);
    realm_free(t);
}

int32_t tokenizer_get(uint32_t model_id, tokenizer_t **out) {
    /* asked every time: a model the host has since revoked fails here, not in the cache */
    int32_t size = realm_vocab_size(model_id);
    if (size < 0) return size;
    for (tokenizer_t **link = &cache; *link; link = &(*link)->next) {
        tokenizer_t *t = *link;
        if (t->model_id != model_id) continue;
        if (t->blob_bytes == (uint32_t)size) {
            *out = t;
            return REALM_OK;
        }
        *link = t->next; /* a different vocabulary under the same id: rebuild */
        tokenizer_free(t);
        break;
    }
    tokenizer_t *t = realm_alloc(sizeof *t);
    uint8_t *blob = realm_alloc((uint32_t)size);
    if (!t || !blob) {
        realm_free(t);
        realm_free(blob);
        return REALM_ERR_NOMEM;
    }
    memset(t, 0, sizeof *t);
    t->model_id = model_id;
    t->blob = blob;
    t->blob_bytes = (uint32_t)size;
    int32_t r = realm_vocab_read(model_id, ADDR(blob), (uint32_t)size);
    if (r < 0) guest_log_error("realm_vocab_read", 0, r);
    else r = parse_blob(t, blob, (uint32_t)MIN(r, size));
    if (r >= 0) r = build_tables(t);
    if (r < 0) {
        tokenizer_free(t);
        return r;
    }
    t->next = cache;
    cache = t;
    *out = t;
    return REALM_OK;
}
