/* kv_ring.h: the per-conversation KV cache, a ring buffer over positions.
 *
 * One ring covers every layer of a model. Each layer has its own number of slots and
 * its own attention window (window <= slots): a sliding-window layer (Gemma 3's local
 * layers) needs only its window plus the largest chunk, a full-attention layer the whole
 * context. Storage (not owned by the struct: a numpy array on the CPU, device memory
 * with the CUDA backend) is the layers' slots one after another,
 *     k, v: f16 [sum of slots[l]][n_head_kv][head_dim], layer l from row row0[l]
 * (a uniform ring, realm_kv_create, is [n_layer][capacity][n_head_kv][head_dim]).
 * Position p of layer l lives in slot p % slots[l]. n_pos[layer] is the next position
 * to append for that layer (positions 0 .. n_pos-1 have been appended). Attention at
 * position p of layer l sees the window max(0, p - window[l] + 1) .. p.
 *
 * Error returns use the host ABI's codes (DESIGN.md): -1 invalid argument,
 * -5 layer or position out of range, -7 out of memory.
 */
#ifndef REALM_KV_RING_H
#define REALM_KV_RING_H

#include <stdint.h>

#include "ggml_blocks.h"

typedef struct realm_kv_ring {
    int32_t n_layer;
    int32_t n_head_kv;
    int32_t head_dim;
    int64_t capacity; /* the most slots of any layer */
    realm_f16 *k;     /* borrowed storage, see above */
    realm_f16 *v;
    int64_t *n_pos; /* [n_layer], owned by the struct */
    /* [n_layer], owned: the oldest position of the layer whose slot still holds it
     * (positions held_from .. n_pos-1 are intact; older ones were overwritten by a
     * wrap). Appends keep it >= n_pos - capacity; a truncate does not lower it. */
    int64_t *held_from;
    /* [n_layer] each, owned: the layer's slots, its window, and its first row in k and v */
    int64_t *slots, *window, *row0;
} realm_kv_ring;

#define REALM_KV_RING_MAX_CAPACITY (1LL << 24)

/* A ring over borrowed storage (k and v may be NULL for a ring whose storage lives
 * elsewhere, e.g. on a GPU: then only the bookkeeping functions apply).
 * Returns NULL on a bad argument or when out of memory. */
realm_kv_ring *realm_kv_create(int32_t n_layer, int64_t capacity, int32_t n_head_kv, int32_t head_dim,
                               realm_f16 *k, realm_f16 *v);
void realm_kv_free(realm_kv_ring *kv);

/* A ring whose layer l has slots[l] slots and attends over window[l] positions
 * (1 <= window[l] <= slots[l] <= REALM_KV_RING_MAX_CAPACITY). NULL as above. */
realm_kv_ring *realm_kv_create_layers(int32_t n_layer, const int64_t *slots, const int64_t *window, int32_t n_head_kv,
                                      int32_t head_dim, realm_f16 *k, realm_f16 *v);

/* 1 when every layer has `capacity` slots and attends over all of them. */
int realm_kv_uniform(const realm_kv_ring *kv);

/* Number of f16 elements of the k (or v) storage. */
int64_t realm_kv_storage_elems(const realm_kv_ring *kv);

/* Reserve positions pos .. pos+n_tokens-1 of `layer` (bookkeeping only): pos must equal
 * n_pos[layer] and 1 <= n_tokens <= slots[layer]. Returns 0 or an error code. */
int realm_kv_reserve(realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens);

/* Append K and V rows of n_tokens tokens at positions pos .. pos+n_tokens-1, rounding
 * f32 to f16. k_rows, v_rows: f32 [n_tokens][n_head_kv * head_dim]. Same rules as
 * realm_kv_reserve, which it calls. */
int realm_kv_append(realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, const float *k_rows,
                    const float *v_rows);

/* First position of the attention window of `layer` at position pos (-1 on a bad argument). */
int64_t realm_kv_window_start(const realm_kv_ring *kv, int32_t layer, int64_t pos);

/* The most tokens a chunk at pos may append to every layer before it attends: more
 * would overwrite a slot that its first token's window still needs (>= 1). */
int64_t realm_kv_chunk_limit(const realm_kv_ring *kv, int64_t pos);

/* Forget positions >= n_pos in every layer. Fails with -5, changing nothing, when a
 * layer has wrapped so far that the window of position n_pos is no longer held
 * (some position of max(0, n_pos - window + 1) .. n_pos-1 is below held_from). */
int realm_kv_truncate(realm_kv_ring *kv, int64_t n_pos);

/* Pointers to the K / V row (n_head_kv * head_dim f16) of `pos` in `layer`. */
realm_f16 *realm_kv_k_row(const realm_kv_ring *kv, int32_t layer, int64_t pos);
realm_f16 *realm_kv_v_row(const realm_kv_ring *kv, int32_t layer, int64_t pos);

#endif
