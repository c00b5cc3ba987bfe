/* pretokenize.h: byte-level BPE's pre-tokenizers, which split text into the words that
 * the merges then work inside, as llama.cpp splits them. */
#ifndef GUEST_PRETOKENIZE_H
#define GUEST_PRETOKENIZE_H

#include "guest.h"

typedef struct {
    uint32_t start, len; /* a word: bytes text[start .. start + len) */
} pretok_span_t;

/* Splits text[0 .. len) into words as llama.cpp's regex_exprs for `pre` (REALM_PRE_*)
 * split it. Writes the first `cap` spans into out and returns the total count (call
 * again with a bigger cap when it exceeds cap), REALM_ERR_INVALID for an unknown pre,
 * REALM_ERR_NOMEM. Spans are in order, non-empty, and cover the text exactly.
 *
 * The bytes llama.cpp hands its merges are a word's codepoints re-encoded
 * (unicode_decode, then unicode_encode): they differ from the span's where the text
 * is not well-formed UTF-8 (unicode.h). */
int32_t pretokenize(uint32_t pre, const uint8_t *text, uint32_t len, pretok_span_t *out, uint32_t cap);

#endif /* GUEST_PRETOKENIZE_H */
