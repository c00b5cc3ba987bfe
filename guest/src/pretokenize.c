/* pretokenize.c: the pre-tokenizers of REALM_PRE_*, as llama.cpp runs them.
 *
 * llama.cpp (unicode.cpp, unicode_regex_split) runs the gpt2, llama3 and qwen2
 * expressions through hand-written matchers (unicode_regex_split_custom_gpt2 / _llama3
 * / _qwen2), and smollm's first expression, \p{N}, through std::regex over a
 * "collapsed" text (one byte per codepoint, every number >= 0x80 the same byte), which
 * matches each \p{N} codepoint alone. These are the same matchers, over the same
 * codepoint classes (unicode.h):
 *   - \s is Unicode White_Space (U+0085, U+00A0, U+3000, ... too); \p{L} and \p{N} are
 *     Unicode 15.1's; every other codepoint, unassigned ones included, is [^\s\p{L}\p{N}].
 *   - codepoints are unicode_decode's: an invalid byte is one U+FFFD (a symbol), an
 *     overlong form is the codepoint it spells ("\xC0\xA0" is a space).
 * Where the matchers and the textbook expressions part, the matchers are followed:
 *   - gpt2's expression has no final |\s+, so a lone whitespace codepoint before a
 *     non-space one (a tab before a letter) matches nothing; the matcher makes it a word,
 *     as llama.cpp's regex path makes every unmatched stretch one.
 *   - llama3 / qwen2's (?i:...) contractions lower-case with Unicode's mapping; only
 *     ASCII letters lower-case into s, t, r, e, v, m, l, d, so ASCII's is enough.
 * Each matcher sees one piece of the text at a time (smollm: what the \p{N} split
 * left), and a piece's end is the end of its text: past it a codepoint has no class.
 *
 * Time is linear: a whitespace run is counted once and then left whole, or all but its
 * last codepoint, or up to its last \r / \n (whose rest, with none, goes the same way).
 */
#include "pretokenize.h"

#include "unicode.h"

#define UNI_NONE 4         /* the class past a piece's end */
#define CPT_NONE 0xFFFFFFFFu /* the codepoint past a piece's end */

/* The text as codepoints: value, class and first byte of each; off[n] = its length. */
typedef struct {
    uint32_t *cpt, *off;
    uint8_t *cls;
    uint32_t n;
} cpts_t;

/* The words found so far: spans of whole codepoints, the first `cap` in out. */
typedef struct {
    const cpts_t *c;
    pretok_span_t *out;
    uint32_t cap, count;
    uint32_t prev; /* the codepoint the next word starts at */
} words_t;

static void decode_all(cpts_t *c, const uint8_t *text, uint32_t len) {
    uint32_t i = 0;
    for (uint32_t at = 0; at < len; i++) {
        c->off[i] = at;
        at += unicode_decode(text + at, len - at, &c->cpt[i]);
        c->cls[i] = (uint8_t)unicode_class(c->cpt[i]);
    }
    c->off[i] = len;
    c->n = i;
}

/* Ends the word at codepoint end (nothing when it would be empty). */
static void word_end(words_t *w, uint32_t end) {
    if (end > w->prev) {
        if (w->count < w->cap) {
            w->out[w->count].start = w->c->off[w->prev];
            w->out[w->count].len = w->c->off[end] - w->c->off[w->prev];
        }
        w->count++;
    }
    w->prev = end;
}

static uint32_t cls_at(const cpts_t *c, uint32_t hi, uint32_t i) { return i < hi ? c->cls[i] : UNI_NONE; }
static uint32_t cpt_at(const cpts_t *c, uint32_t hi, uint32_t i) { return i < hi ? c->cpt[i] : CPT_NONE; }
static uint32_t ascii_lower(uint32_t cp) { return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp; }
static int is_newline(uint32_t cp) { return cp == '\r' || cp == '\n'; }

/* The length of a contraction ('s 't 're 've 'm 'll 'd) at pos, 0 if none. */
static uint32_t contraction(const cpts_t *c, uint32_t hi, uint32_t pos, int any_case) {
    if (c->cpt[pos] != '\'' || pos + 1 >= hi) return 0;
    uint32_t a = c->cpt[pos + 1], b = cpt_at(c, hi, pos + 2);
    if (any_case) {
        a = ascii_lower(a);
        b = ascii_lower(b);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 < hi && ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))) return 3;
    return 0;
}

/* gpt2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
 * (llama.cpp's unicode_regex_split_custom_gpt2) over the piece [lo, hi). */
static void split_gpt2(words_t *w, uint32_t lo, uint32_t hi) {
    const cpts_t *c = w->c;
    w->prev = lo;
    for (uint32_t pos = lo; pos < hi;) {
        uint32_t n = contraction(c, hi, pos, 0);
        if (n) {
            pos += n;
            word_end(w, pos);
            continue;
        }
        /* ' ?' then a run of letters, of numbers or of others */
        uint32_t cp = c->cpt[pos];
        uint32_t k = cp == ' ' ? cls_at(c, hi, pos + 1) : c->cls[pos];
        if (k == UNI_LETTER || k == UNI_NUMBER || k == UNI_OTHER) {
            pos += cp == ' ';
            while (cls_at(c, hi, pos) == k) pos++;
            word_end(w, pos);
            continue;
        }
        /* \s+(?!\S): a run before a non-space leaves its last codepoint to what
         * follows; a run at the piece's end, or a lone one, is a word (the matcher's \s+) */
        n = 0;
        while (cls_at(c, hi, pos + n) == UNI_SPACE) n++;
        pos += n > 1 && pos + n < hi ? n - 1 : MAX(n, 1);
        word_end(w, pos);
    }
}

/* llama3: (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|
 *         \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * and qwen2, the same with \p{N} for \p{N}{1,3} (max_digits 1): llama.cpp's
 * unicode_regex_split_custom_llama3 / _qwen2 over the piece [lo, hi). */
static void split_llama3(words_t *w, uint32_t lo, uint32_t hi, uint32_t max_digits) {
    const cpts_t *c = w->c;
    w->prev = lo;
    for (uint32_t pos = lo; pos < hi;) {
        uint32_t n = contraction(c, hi, pos, 1);
        if (n) {
            pos += n;
            word_end(w, pos);
            continue;
        }
        uint32_t cp = c->cpt[pos], k = c->cls[pos];
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        if (!is_newline(cp) && k != UNI_NUMBER && (k == UNI_LETTER || cls_at(c, hi, pos + 1) == UNI_LETTER)) {
            pos++;
            while (cls_at(c, hi, pos) == UNI_LETTER) pos++;
            word_end(w, pos);
            continue;
        }
        /* \p{N}{1,3}: a run of numbers in words of max_digits */
        if (k == UNI_NUMBER) {
            for (n = 0; cls_at(c, hi, pos) == UNI_NUMBER;) {
                pos++;
                if (++n == max_digits) {
                    word_end(w, pos);
                    n = 0;
                }
            }
            word_end(w, pos);
            continue;
        }
        /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
        if ((cp == ' ' ? cls_at(c, hi, pos + 1) : k) == UNI_OTHER) {
            pos += cp == ' ';
            while (cls_at(c, hi, pos) == UNI_OTHER) pos++;
            while (is_newline(cpt_at(c, hi, pos))) pos++;
            word_end(w, pos);
            continue;
        }
        /* \s*[\r\n]+ up to the run's last \r or \n; else \s+(?!\S); else \s+ */
        uint32_t newline_end = 0;
        for (n = 0; cls_at(c, hi, pos + n) == UNI_SPACE; n++) {
            if (is_newline(c->cpt[pos + n])) newline_end = pos + n + 1;
        }
        if (newline_end) pos = newline_end;
        else pos += n > 1 && pos + n < hi ? n - 1 : MAX(n, 1);
        word_end(w, pos);
    }
}

/* smollm: every \p{N} codepoint a piece of its own, the stretches between them the
 * others; then gpt2 in each piece. */
static void split_smollm(words_t *w) {
    const cpts_t *c = w->c;
    uint32_t start = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        if (c->cls[i] != UNI_NUMBER) continue;
        if (i > start) split_gpt2(w, start, i);
        split_gpt2(w, i, i + 1);
        start = i + 1;
    }
    if (c->n > start) split_gpt2(w, start, c->n);
}

int32_t pretokenize(uint32_t pre, const uint8_t *text, uint32_t len, pretok_span_t *out, uint32_t cap) {
    if (pre != REALM_PRE_GPT2 && pre != REALM_PRE_LLAMA3 && pre != REALM_PRE_QWEN2 && pre != REALM_PRE_SMOLLM)
        return REALM_ERR_INVALID;
    if (len == 0) return 0;
    /* cpt[len], off[len + 1], cls[len] */
    uint64_t bytes = (uint64_t)len * 9 + 4;
    if (bytes > 0xFFFFFF00u) return REALM_ERR_NOMEM;
    uint8_t *mem = realm_alloc((uint32_t)bytes);
    if (!mem) return REALM_ERR_NOMEM;
    cpts_t c = {(uint32_t *)mem, (uint32_t *)mem + len, mem + (uint64_t)len * 8 + 4, 0};
    decode_all(&c, text, len);
    words_t w = {&c, out, cap, 0, 0};
    switch (pre) {
    case REALM_PRE_GPT2: split_gpt2(&w, 0, c.n); break;
    case REALM_PRE_LLAMA3: split_llama3(&w, 0, c.n, 3); break;
    case REALM_PRE_QWEN2: split_llama3(&w, 0, c.n, 1); break;
    default: split_smollm(&w); break;
    }
    realm_free(mem);
    return w.count > 0x7FFFFFFFu ? REALM_ERR_INVALID : (int32_t)w.count;
}

/* Not part of realm.h: pretokenize for tests. Writes the first out_cap spans as u32
 * pairs (start, len) at out and returns the total count. */
int32_t realm_pretokenize(uint32_t pre, uint32_t text, uint32_t text_len, uint32_t out,
                          uint32_t out_cap) EXPORT(realm_pretokenize);
int32_t realm_pretokenize(uint32_t pre, uint32_t text, uint32_t text_len, uint32_t out,
                          uint32_t out_cap) {
    if (!mem_in_bounds(text, text_len) || !mem_in_bounds(out, (uint64_t)out_cap * 8)) return REALM_ERR_BOUNDS;
    return pretokenize(pre, PTR(text), text_len, PTR(out), out_cap);
}
