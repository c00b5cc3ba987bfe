/* bpe.c: GPT-2 byte-level BPE (llama.cpp's llm_tokenizer_bpe_session) for one word, and
 * the way back from a token's text to its bytes.
 *
 * GPT-2 writes every byte as a printable character: the bytes '!'..'~', 0xA1..0xAC and
 * 0xAE..0xFF as the code points of the same value, the other 68 (controls, space, 0x7F..
 * 0xA0, 0xAD) as U+0100.. in byte order. A word (one pre-tokenizer span) is read as
 * llama.cpp reads it (each invalid byte U+FFFD), written back as UTF-8, each byte
 * mapped (unicode.h); then the merge loop joins the adjacent pair of lowest merge rank, leftmost
 * first. Under REALM_MODEL_IGNORE_MERGES a word that is a token is that token. A final
 * symbol that is not a token falls back to the tokens of its single bytes, where those
 * exist (as llama.cpp: a byte whose mapped text is not one byte has none).
 */
#include "tokenizer.h"
#include "unicode.h"

static uint16_t byte_cpt[256]; /* byte -> its GPT-2 code point */
static uint8_t cpt_byte[324];  /* code point (< 324) -> byte, for those that map back */
static uint8_t cpt_maps[324];  /* 1 where cpt_byte holds one */

static int direct(uint32_t b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); }

static void init_maps(void) {
    if (byte_cpt['A']) return;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t cpt = direct(b) ? b : next++;
        byte_cpt[b] = (uint16_t)cpt;
        cpt_byte[cpt] = (uint8_t)b;
        cpt_maps[cpt] = 1;
    }
}

/* UTF-8 of a code point, U+FFFD for one past U+10FFFF (where llama.cpp aborts); returns
 * its length. */
static uint32_t write_cpt(uint32_t cpt, uint8_t *out) {
    uint32_t n = unicode_encode(cpt, out);
    return n ? n : unicode_encode(0xFFFD, out);
}

/* The code point at s[*at] as llama.cpp decodes it; moves *at past it. */
static uint32_t read_cpt(const uint8_t *s, uint32_t n, uint32_t *at) {
    uint32_t cpt;
    *at += unicode_decode(s + *at, n - *at, &cpt);
    return cpt;
}

/* word's bytes, re-read and mapped, into out (6 bytes per byte of word at most: an
 * invalid byte is U+FFFD, 3 bytes, each mapped to 2); returns the length. */
static uint32_t map_word(const uint8_t *word, uint32_t len, uint8_t *out) {
    uint32_t k = 0;
    for (uint32_t at = 0; at < len;) {
        uint8_t utf8[4];
        uint32_t n = write_cpt(read_cpt(word, len, &at), utf8);
        for (uint32_t j = 0; j < n; j++) k += write_cpt(byte_cpt[utf8[j]], out + k);
    }
    return k;
}

void bpe_encode_word(const tokenizer_t *t, const uint8_t *word, uint32_t len, bpe_work_t *w, ids_t *ids) {
    init_maps();
    uint32_t n = map_word(word, len, w->mapped);
    if (n == 0) return;
    if (t->flags & REALM_MODEL_IGNORE_MERGES) {
        uint32_t id = tokenizer_lookup(t, w->mapped, n);
        if (id != REALM_NO_TOKEN) {
            put_id(ids, id);
            return;
        }
    }
    merger_t m = {t, w->mapped, w->sym, w->heap, 0};
    merger_run(&m, n);
    for (int32_t i = 0; i != -1; i = m.sym[i].next) {
        const symbol_t *s = &m.sym[i];
        uint32_t id = tokenizer_lookup(t, w->mapped + s->start, s->n);
        if (id != REALM_NO_TOKEN) {
            put_id(ids, id);
            continue;
        }
        for (uint32_t j = 0; j < s->n; j++) { /* the tokens of single bytes, where they exist */
            uint32_t bid = tokenizer_lookup(t, w->mapped + s->start + j, 1);
            if (bid != REALM_NO_TOKEN) put_id(ids, bid);
        }
    }
}

static void put_byte(uint8_t *out, uint64_t cap, uint64_t *k, uint8_t b) {
    if (*k < cap) out[*k] = b;
    (*k)++;
}

uint64_t bpe_decode_text(const uint8_t *s, uint32_t n, uint8_t *out, uint64_t cap) {
    static const char hex[] = "0123456789abcdef", unk[] = "[UNK_BYTE_0x";
    init_maps();
    uint64_t k = 0;
    for (uint32_t at = 0; at < n;) {
        uint32_t cpt = read_cpt(s, n, &at);
        if (cpt < 324 && cpt_maps[cpt]) {
            put_byte(out, cap, &k, cpt_byte[cpt]);
            continue;
        }
        /* llama.cpp's marker for a character outside the map: its UTF-8 in hex, then
         * the whole token text */
        uint8_t utf8[4];
        uint32_t len = write_cpt(cpt, utf8);
        for (const char *p = unk; *p; p++) put_byte(out, cap, &k, (uint8_t)*p);
        for (uint32_t j = 0; j < len; j++) {
            put_byte(out, cap, &k, (uint8_t)hex[utf8[j] >> 4]);
            put_byte(out, cap, &k, (uint8_t)hex[utf8[j] & 15]);
        }
        for (uint32_t j = 0; j < n; j++) put_byte(out, cap, &k, s[j]);
        put_byte(out, cap, &k, ']');
    }
    return k;
}
