/* sampler.h: one token from a row of logits, in llama.cpp's order. */
#ifndef GUEST_SAMPLER_H
#define GUEST_SAMPLER_H

#include "guest.h"

/* Copies and checks a realm_params_t (params_len >= 56, version >= 1). */
int32_t params_read(const void *ptr, uint32_t len, realm_params_t *out);

/* Sizes the sampler's buffers for n_vocab once (they are reused, never per token). */
int32_t sampler_reserve(uint32_t n_vocab);

/* A token id, or an error code. logits are not modified. */
int32_t sampler_sample(const float *logits, uint32_t n_vocab, const realm_params_t *p,
                       const uint32_t *history, uint32_t n_history, uint64_t *rng_state);

#endif /* GUEST_SAMPLER_H */
