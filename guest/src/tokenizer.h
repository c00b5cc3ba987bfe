/* tokenizer.h: the SentencePiece (SPM) tokenizer built from the host's vocabulary blob. */
#ifndef GUEST_TOKENIZER_H
#define GUEST_TOKENIZER_H

#include "guest.h"

typedef struct tokenizer {
    uint32_t model_id;
    uint8_t *blob; /* the vocabulary blob, as realm_vocab_read wrote it */
    uint32_t blob_bytes;
    const float *scores;
    const uint32_t *types;
    const uint32_t *ends; /* token i's text: text[ends[i-1] .. ends[i]) */
    const uint8_t *text;
    uint32_t n_tokens;
    uint32_t flags; /* REALM_MODEL_* */
    uint32_t bos_id, eos_id, unk_id;
    uint32_t max_token_bytes;
    uint32_t *table; /* open addressing: id + 1 of NORMAL / USER_DEFINED tokens, 0 empty */
    uint32_t table_mask;
    uint32_t byte_ids[256]; /* the BYTE token "<0xNN>" of each byte, REALM_NO_TOKEN if none */
    struct tokenizer *next;
} tokenizer_t;

/* The tokenizer of a model, built on first use and cached. Returns REALM_OK or an
 * error code (the import's, REALM_ERR_INVALID for a bad blob, REALM_ERR_NOMEM). */
int32_t tokenizer_get(uint32_t model_id, tokenizer_t **out);

/* Token ids of text (no BOS); writes the first `cap` into out and returns the count,
 * or REALM_ERR_NOMEM. */
int32_t tokenizer_encode(const tokenizer_t *t, const uint8_t *text, uint32_t len, uint32_t *out,
                         uint32_t cap);

/* The piece of one token as generation streams it: NORMAL / USER_DEFINED text with
 * U+2581 turned into ' ', a BYTE token's byte, nothing for the others. Writes at most
 * cap bytes and returns the piece's full length. */
uint32_t tokenizer_piece(const tokenizer_t *t, uint32_t id, uint8_t *out, uint32_t cap);

/* Streaming detokenizer: pieces go out only as whole UTF-8 characters. */
typedef struct {
    uint8_t *buf; /* held bytes, then the newest piece; max_token_bytes + 4 bytes */
    uint32_t len;
} detok_stream_t;

/* Appends the piece of id; returns how many leading bytes of s->buf are ready to go
 * out (the rest is an unfinished character). Call detok_stream_consume after. */
uint32_t detok_stream_add(detok_stream_t *s, const tokenizer_t *t, uint32_t id);
void detok_stream_consume(detok_stream_t *s, uint32_t n);

#endif /* GUEST_TOKENIZER_H */
