/* vocab.c: read and check the vocabulary blob, build the text -> id and merge -> rank
 * tables and the special-token list, cache the tokenizer per model id. */
#include "tokenizer.h"

static tokenizer_t *cache; /* every tokenizer built so far */

/* The tokens text -> id finds: SPM matches NORMAL / USER_DEFINED pieces, byte-level BPE
 * any token (llama.cpp's text_to_token). */
static int in_table(const tokenizer_t *t, uint32_t id) {
    uint32_t type = t->types[id];
    return t->kind == REALM_VOCAB_GPT2 || type == REALM_TOKEN_NORMAL || type == REALM_TOKEN_USER_DEFINED;
}

uint32_t fnv1a_more(uint32_t h, const uint8_t *s, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

static uint32_t fnv1a(const uint8_t *s, uint32_t n) { return fnv1a_more(FNV1A_INIT, s, n); }

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

/* The pre-tokenizers this guest splits text for. */
static int known_pre(uint32_t pre) {
    return pre == REALM_PRE_GPT2 || pre == REALM_PRE_LLAMA3 || pre == REALM_PRE_QWEN2 || pre == REALM_PRE_SMOLLM;
}

/* Checks the merges' ends and texts ("a b": a space at index 1 or later). */
static int32_t check_merges(const tokenizer_t *t, const realm_vocab_header_t *h) {
    uint32_t prev = t->n_tokens ? t->ends[t->n_tokens - 1] : 0;
    for (uint32_t i = 0; i < t->n_merges; i++) {
        uint32_t end = t->merge_ends[i];
        if (end < prev || end > h->text_bytes) return bad_blob("merge ends out of order");
        uint32_t n = end - prev, sep = 0;
        for (uint32_t k = 1; k < n && !sep; k++) sep = t->text[prev + k] == ' ' ? k : 0;
        if (!sep) return bad_blob("a merge that is not two texts separated by a space");
        prev = end;
    }
    return REALM_OK;
}

/* Points t's arrays into the blob after checking every offset and length. */
static int32_t parse_blob(tokenizer_t *t, uint8_t *blob, uint32_t size) {
    realm_vocab_header_t h;
    memset(&h, 0, sizeof h);
    if (size < REALM_VOCAB_HEADER_V1_BYTES) return bad_blob("shorter than its header");
    memcpy(&h, blob, REALM_VOCAB_HEADER_V1_BYTES);
    if (h.magic != REALM_VOCAB_MAGIC) return bad_blob("bad magic");
    if (h.version < 1) return bad_blob("bad version");
    if (h.version >= 2) {
        if (size < sizeof h) return bad_blob("shorter than its header");
        memcpy(&h, blob, sizeof h);
    }
    uint32_t header_bytes = h.version >= 2 ? sizeof h : REALM_VOCAB_HEADER_V1_BYTES;
    if (h.total_bytes < header_bytes || h.total_bytes > size) return bad_blob("bad total_bytes");
    if (h.kind != REALM_VOCAB_SPM && h.kind != REALM_VOCAB_GPT2) return bad_blob("unknown tokenizer kind");
    if (h.kind == REALM_VOCAB_GPT2 && !known_pre(h.pre))
        return guest_log_error_num("vocabulary blob: byte-level BPE with unknown pre-tokenizer", h.pre,
                                   "(known: 1 gpt2, 2 llama3, 3 qwen2, 4 smollm)", REALM_ERR_INVALID);
    uint32_t n = h.n_tokens, total = h.total_bytes;
    if (n == 0) return bad_blob("no tokens");
    if (!array_ok(h.scores_off, n, 4, total) || !array_ok(h.types_off, n, 4, total) ||
        !array_ok(h.token_ends_off, n, 4, total) || !array_ok(h.merge_ends_off, h.n_merges, 4, total))
        return bad_blob("an array lies outside the blob");
    if (h.version >= 2 && (!array_ok(h.eog_off, h.n_eog, 4, total) || !array_ok(h.attrs_off, n, 4, total)))
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
    t->kind = h.kind;
    t->pre = h.kind == REALM_VOCAB_GPT2 ? h.pre : REALM_PRE_NONE;
    t->scores = (const float *)(blob + h.scores_off);
    t->types = (const uint32_t *)(blob + h.types_off);
    t->ends = ends;
    t->text = blob + h.text_off;
    t->merge_ends = (const uint32_t *)(blob + h.merge_ends_off);
    t->n_tokens = n;
    t->n_merges = h.kind == REALM_VOCAB_GPT2 ? h.n_merges : 0;
    t->flags = h.flags;
    t->bos_id = h.bos_id;
    t->eos_id = h.eos_id;
    t->unk_id = h.unk_id;
    t->max_token_bytes = max_len;
    if (h.version >= 2) {
        t->attrs = (const uint32_t *)(blob + h.attrs_off);
        t->eog = (const uint32_t *)(blob + h.eog_off);
        t->n_eog = h.n_eog;
        for (uint32_t i = 0; i < h.n_eog; i++) {
            if (t->eog[i] >= n || (i && t->eog[i] <= t->eog[i - 1]))
                return bad_blob("end-of-generation ids not ascending inside the vocabulary");
        }
    }
    return check_merges(t, &h);
}

static uint32_t token_bytes(const tokenizer_t *t, uint32_t id) { return t->ends[id] - token_start(t, id); }

/* a sorts before b in the special-token list: longer text, then lower id */
static int special_before(const tokenizer_t *t, uint32_t a, uint32_t b) {
    uint32_t na = token_bytes(t, a), nb = token_bytes(t, b);
    return na > nb || (na == nb && a < b);
}

/* Moves v[i] down the max-heap v[0 .. n) ("max": sorts last in special_before order). */
static void sift_down(const tokenizer_t *t, uint32_t *v, uint32_t i, uint32_t n) {
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && special_before(t, v[c], v[c + 1])) c++;
        if (!special_before(t, v[i], v[c])) return;
        uint32_t x = v[i];
        v[i] = v[c];
        v[c] = x;
        i = c;
    }
}

/* Heap sort (no scratch memory) of the special ids into special_before order. */
static void sort_specials(const tokenizer_t *t, uint32_t *v, uint32_t n) {
    for (uint32_t i = n / 2; i-- > 0;) sift_down(t, v, i, n);
    for (uint32_t end = n; end > 1; end--) {
        uint32_t x = v[0];
        v[0] = v[end - 1];
        v[end - 1] = x;
        sift_down(t, v, 0, end - 1);
    }
}

static uint32_t table_cap(uint32_t n) {
    uint32_t cap = 16;
    while (cap < 2 * n) cap *= 2; /* load factor <= 1/2 */
    return cap;
}

static int32_t build_merge_table(tokenizer_t *t) {
    if (t->n_merges == 0) return REALM_OK;
    if (t->n_merges > 0x10000000u) return bad_blob("too many merges");
    uint32_t cap = table_cap(t->n_merges), base = t->ends[t->n_tokens - 1];
    t->merge_table = realm_alloc(cap * 4);
    if (!t->merge_table) return REALM_ERR_NOMEM;
    memset(t->merge_table, 0, cap * 4);
    t->merge_mask = cap - 1;
    for (uint32_t m = 0; m < t->n_merges; m++) {
        uint32_t start = m ? t->merge_ends[m - 1] : base, n = t->merge_ends[m] - start;
        const uint8_t *s = t->text + start;
        uint32_t i = fnv1a(s, n) & t->merge_mask;
        for (; t->merge_table[i]; i = (i + 1) & t->merge_mask) { /* the first of equal merges wins */
            uint32_t e = t->merge_table[i] - 1, es = e ? t->merge_ends[e - 1] : base;
            if (t->merge_ends[e] - es == n && memcmp(t->text + es, s, n) == 0) break;
        }
        if (!t->merge_table[i]) t->merge_table[i] = m + 1;
    }
    return REALM_OK;
}

static int32_t build_specials(tokenizer_t *t) {
    uint32_t n = 0;
    for (uint32_t id = 0; id < t->n_tokens; id++) {
        n += (tokenizer_attr(t, id) & (REALM_ATTR_CONTROL | REALM_ATTR_USER_DEFINED | REALM_ATTR_UNKNOWN)) != 0;
    }
    if (n == 0) return REALM_OK;
    t->specials = realm_alloc(n * 4);
    if (!t->specials) return REALM_ERR_NOMEM;
    n = 0;
    for (uint32_t id = 0; id < t->n_tokens; id++) {
        if (tokenizer_attr(t, id) & (REALM_ATTR_CONTROL | REALM_ATTR_USER_DEFINED | REALM_ATTR_UNKNOWN))
            t->specials[n++] = id;
    }
    t->n_specials = n;
    sort_specials(t, t->specials, n);
    return REALM_OK;
}


static int32_t build_tables(tokenizer_t *t) {
    uint32_t n_pieces = 0;
    for (uint32_t i = 0; i < t->n_tokens; i++) n_pieces += in_table(t, i);
    uint32_t cap = table_cap(n_pieces);
    t->table = realm_alloc(cap * 4);
    if (!t->table) return REALM_ERR_NOMEM;
    memset(t->table, 0, cap * 4);
    t->table_mask = cap - 1;
    for (uint32_t id = 0; id < t->n_tokens; id++) {
        if (!in_table(t, id)) continue;
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
    for (uint32_t id = 0; id < t->n_tokens; id++) { /* the longest piece sizes the stream */
        uint64_t n = tokenizer_piece64(t, id, 0, 0);
        if (n > 0x1000000u) return bad_blob("a token whose piece is over 16 MiB");
        t->max_token_bytes = MAX(t->max_token_bytes, (uint32_t)n);
    }
    int32_t r = build_merge_table(t);
    return r < 0 ? r : build_specials(t);
}

static void tokenizer_free(tokenizer_t *t) {
    realm_free(t->specials);
    realm_free(t->merge_table);
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
