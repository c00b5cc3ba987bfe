/* tokenizer.h: the tokenizers built from the host's vocabulary blob: SentencePiece
 * (SPM, tokenizer.c) and GPT-2 byte-level BPE (bpe.c), the special-token partition they
 * share, and the detokenizer. */
#ifndef GUEST_TOKENIZER_H
#define GUEST_TOKENIZER_H

#include "guest.h"

/* Everything points into the blob or into tables this tokenizer owns (table,
 * merge_table, specials); tokenizer_get builds them once per model and frees them with
 * the tokenizer. */
typedef struct tokenizer {
    uint32_t model_id;
    uint8_t *blob; /* the vocabulary blob, as realm_vocab_read wrote it */
    uint32_t blob_bytes;
    uint32_t kind; /* REALM_VOCAB_SPM or REALM_VOCAB_GPT2 */
    uint32_t pre;  /* REALM_PRE_* (GPT2) */
    const float *scores;
    const uint32_t *types;
    const uint32_t *ends; /* token i's text: text[ends[i-1] .. ends[i]) */
    const uint8_t *text;
    const uint32_t *attrs; /* REALM_ATTR_* per token (v2), or 0: derived from types */
    const uint32_t *merge_ends; /* merge i's "a b" text: text[merge_ends[i-1] .. merge_ends[i]),
                                   merge_ends[-1] = ends[n_tokens - 1] */
    const uint32_t *eog;        /* ascending end-of-generation ids (v2) */
    uint32_t n_tokens, n_merges, n_eog;
    uint32_t flags; /* REALM_MODEL_* */
    uint32_t bos_id, eos_id, unk_id;
    uint32_t max_token_bytes; /* the longest token text or tokenizer_piece, in bytes */
    uint32_t *table; /* open addressing: id + 1 of the tokens text -> id finds (SPM:
                        NORMAL / USER_DEFINED; GPT2: all), 0 empty */
    uint32_t table_mask;
    uint32_t *merge_table; /* open addressing: merge index (its rank) + 1, 0 empty */
    uint32_t merge_mask;
    uint32_t *specials; /* ids of the CONTROL / USER_DEFINED / UNKNOWN tokens, the
                           longest text first (ties: lower id first) */
    uint32_t n_specials;
    uint32_t byte_ids[256]; /* the BYTE token "<0xNN>" of each byte, REALM_NO_TOKEN if none */
    struct tokenizer *next;
} tokenizer_t;

/* The tokenizer of a model, built on first use and cached. Returns REALM_OK or an
 * error code (the import's, REALM_ERR_INVALID for a bad blob, REALM_ERR_NOMEM). */
int32_t tokenizer_get(uint32_t model_id, tokenizer_t **out);

/* Token ids of text (no BOS); writes the first `cap` into out and returns the count,
 * or REALM_ERR_NOMEM. parse_special: the text of CONTROL / UNKNOWN tokens becomes those
 * tokens (USER_DEFINED tokens always do), as llama.cpp's parse_special. */
int32_t tokenizer_encode(const tokenizer_t *t, const uint8_t *text, uint32_t len, uint32_t *out,
                         uint32_t cap, int parse_special);

/* The piece of one token as generation streams it (llama.cpp's token_to_piece without
 * special): nothing for CONTROL / UNKNOWN / UNUSED tokens, a USER_DEFINED token's text,
 * a BYTE token's byte, a NORMAL token's text with U+2581 as ' ' (SPM) or mapped back to
 * its bytes (GPT2). Writes at most cap bytes and returns the piece's full length
 * (<= max_token_bytes). */
uint32_t tokenizer_piece(const tokenizer_t *t, uint32_t id, uint8_t *out, uint32_t cap);

/* 1 when id ends generation (llama.cpp's end-of-generation set: EOS, EOT, EOM, ...). */
int tokenizer_is_eog(const tokenizer_t *t, uint32_t id);

/* The REALM_ATTR_* of a token id < n_tokens. */
uint32_t tokenizer_attr(const tokenizer_t *t, uint32_t id);

/* Streaming detokenizer: pieces go out only as whole UTF-8 characters. */
typedef struct {
    uint8_t *buf; /* held bytes, then the newest piece; max_token_bytes + 4 bytes */
    uint32_t len;
} detok_stream_t;

/* Appends the piece of id; returns how many leading bytes of s->buf are ready to go
 * out (the rest is an unfinished character). Call detok_stream_consume after. */
uint32_t detok_stream_add(detok_stream_t *s, const tokenizer_t *t, uint32_t id);
void detok_stream_consume(detok_stream_t *s, uint32_t n);

/* ---- shared by tokenizer.c, bpe.c and vocab.c ------------------------------------- */

/* Id of the token whose text is s[0 .. n) (of those in t->table), or REALM_NO_TOKEN. */
uint32_t tokenizer_lookup(const tokenizer_t *t, const uint8_t *s, uint32_t n);
/* The byte of a "<0xNN>" token, or -1. */
int tokenizer_byte_value(const tokenizer_t *t, uint32_t id);
uint32_t fnv1a_more(uint32_t h, const uint8_t *s, uint32_t n);
/* tokenizer_piece with a 64-bit length, for vocab.c's check of every token. */
uint64_t tokenizer_piece64(const tokenizer_t *t, uint32_t id, uint8_t *out, uint64_t cap);
#define FNV1A_INIT 2166136261u

/* Output ids: the first cap written, all counted. */
typedef struct {
    uint32_t *out;
    uint32_t cap, count;
} ids_t;

static inline void put_id(ids_t *ids, uint32_t id) {
    if (ids->count < ids->cap) ids->out[ids->count] = id;
    ids->count++;
}

/* The pair-merging loop both BPE flavours share. The text is split into symbols, one
 * per UTF-8 character; the adjacent pair with the highest score merges first (ties:
 * the leftmost), until no pair has a score. SPM scores a pair by the score of the
 * token it makes; GPT2 by -rank of the merge "left right". The caller provides the
 * buffers: sym for len symbols, heap for 3 * len pairs. */
typedef struct {
    int32_t prev, next; /* neighbouring symbols, -1 at the ends */
    uint32_t start, n;  /* bytes in the text; n == 0 once merged away */
} symbol_t;

typedef struct {
    float score;
    int32_t left, right;
    uint32_t size; /* bytes of the merged text when the pair was made */
} bigram_t;

typedef struct {
    const tokenizer_t *t;
    const uint8_t *text;
    symbol_t *sym;
    bigram_t *heap;
    uint32_t n_heap;
} merger_t;

/* Merges text[0 .. len) (len >= 1) into m->sym; returns the first symbol's index (0);
 * follow .next to -1 for the result. */
void merger_run(merger_t *m, uint32_t len);

/* bpe.c: byte-level BPE of one word (GPT2), and a NORMAL token's bytes. */
typedef struct {
    uint8_t *mapped;   /* 6 * max_word bytes */
    symbol_t *sym;     /* 3 * max_word */
    bigram_t *heap;    /* 9 * max_word */
} bpe_work_t;

/* Bytes of work per byte of the longest word. */
#define BPE_WORK_PER_BYTE (6u + 3u * sizeof(symbol_t) + 9u * sizeof(bigram_t))

void bpe_encode_word(const tokenizer_t *t, const uint8_t *word, uint32_t len, bpe_work_t *w, ids_t *ids);
/* The bytes of a NORMAL GPT2 token's text (llama.cpp's llama_decode_text); writes at
 * most cap, returns the full length. */
uint64_t bpe_decode_text(const uint8_t *s, uint32_t n, uint8_t *out, uint64_t cap);

#endif /* GUEST_TOKENIZER_H */
