/* kv_ring.c: bookkeeping and f16 storage of the KV ring (see kv_ring.h).
 *
 * Layout of k and v (borrowed, f16): each layer's slots[l] rows from row row0[l]; a
 * "row" is the n_head_kv * head_dim values of one position. Position p of layer l is in
 * slot p % slots[l]. Below, "capacity" is the layer's slots and "window" its window.
 *
 * Which positions a layer still holds. Appends only ever go to n_pos, so the intact
 * positions of a layer are always one contiguous run held_from .. n_pos-1:
 *   - appending position p overwrites slot p % capacity, i.e. position p - capacity,
 *     so held_from becomes at least p + 1 - capacity (a layer that never wrapped, and
 *     any layer right after appends, holds max(0, n_pos - capacity) .. n_pos-1);
 *   - truncating to n keeps held_from (lowered to n only when the run becomes empty).
 * The second point is why held_from is stored rather than derived from n_pos: after
 * capacity 4 holds 0..5 (slots 0..3 = positions 4, 5, 2, 3) and a truncate to 5, the
 * naive run 5-4 .. 4 = 1..4 would claim position 1, whose slot holds position 5.
 *
 * Truncate rule: truncate(n) needs, in every layer that it shortens (n < n_pos), the
 * window of position n minus n itself, max(0, n - capacity + 1) .. n-1, to be intact
 * (the next append writes n and attention at n reads that window). If any layer lacks
 * a position of it, truncate returns -5 and changes nothing. Consequences: truncate(0)
 * always works; a layer that never wrapped can be truncated anywhere; once a layer
 * has wrapped, only the newest position can be dropped (n = n_pos - 1), once.
 */
#include "kv_ring.h"
#include "realm_errors.h"

#include <stdlib.h>

#include "fp16.h"

static int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

/* f16 elements of one position's row, and of the whole k (or v) storage */
static int64_t row_elems(const realm_kv_ring *kv) { return (int64_t)kv->n_head_kv * kv->head_dim; }

realm_kv_ring *realm_kv_create_layers(int32_t n_layer, const int64_t *slots, const int64_t *window, int32_t n_head_kv,
                                      int32_t head_dim, realm_f16 *k, realm_f16 *v) {
    if (n_layer < 1 || n_head_kv < 1 || head_dim < 1 || slots == NULL || window == NULL) return NULL;
    if ((k == NULL) != (v == NULL)) return NULL; /* both on the host, or neither */
    int64_t rows = 0, most = 0;
    for (int32_t l = 0; l < n_layer; l++) {
        if (slots[l] < 1 || slots[l] > REALM_KV_RING_MAX_CAPACITY || window[l] < 1 || window[l] > slots[l])
            return NULL;
        rows += slots[l]; /* <= 2^31 * 2^24: no overflow */
        most = max_i64(most, slots[l]);
    }
    /* the storage size in bytes must fit a signed 64-bit (and so a ptrdiff_t and size_t
     * on the 64-bit hosts we build for) */
    int64_t limit = INT64_MAX / (int64_t)sizeof(realm_f16);
    if (PTRDIFF_MAX / (int64_t)sizeof(realm_f16) < limit) limit = PTRDIFF_MAX / (int64_t)sizeof(realm_f16);
    const int64_t elems = (int64_t)n_head_kv * head_dim; /* < 2^62: no overflow */
    if (elems > limit / rows) return NULL;

    realm_kv_ring *kv = calloc(1, sizeof(*kv));
    if (kv == NULL) return NULL;
    int64_t **arrays[] = {&kv->n_pos, &kv->held_from, &kv->slots, &kv->window, &kv->row0};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) {
        *arrays[i] = calloc((size_t)n_layer, sizeof(int64_t));
        if (*arrays[i] == NULL) {
            realm_kv_free(kv);
            return NULL;
        }
    }
    for (int32_t l = 0; l < n_layer; l++) {
        kv->slots[l] = slots[l];
        kv->window[l] = window[l];
        kv->row0[l] = l ? kv->row0[l - 1] + slots[l - 1] : 0;
    }
    kv->n_layer = n_layer;
    kv->n_head_kv = n_head_kv;
    kv->head_dim = head_dim;
    kv->capacity = most;
    kv->k = k;
    kv->v = v;
    return kv;
}

realm_kv_ring *realm_kv_create(int32_t n_layer, int64_t capacity, int32_t n_head_kv, int32_t head_dim,
                               realm_f16 *k, realm_f16 *v) {
    if (n_layer < 1) return NULL;
    int64_t *each = malloc((size_t)n_layer * sizeof(int64_t));
    if (each == NULL) return NULL;
    for (int32_t l = 0; l < n_layer; l++) each[l] = capacity;
    realm_kv_ring *kv = realm_kv_create_layers(n_layer, each, each, n_head_kv, head_dim, k, v);
    free(each);
    return kv;
}

void realm_kv_free(realm_kv_ring *kv) {
    if (kv == NULL) return;
    free(kv->n_pos);
    free(kv->held_from);
    free(kv->slots);
    free(kv->window);
    free(kv->row0);
    free(kv);
}

int realm_kv_uniform(const realm_kv_ring *kv) {
    if (kv == NULL) return 0;
    for (int32_t l = 0; l < kv->n_layer; l++)
        if (kv->slots[l] != kv->capacity || kv->window[l] != kv->capacity) return 0;
    return 1;
}

int64_t realm_kv_storage_elems(const realm_kv_ring *kv) {
    if (kv == NULL) return -1;
    const int32_t last = kv->n_layer - 1;
    return (kv->row0[last] + kv->slots[last]) * row_elems(kv); /* checked in create */
}

int realm_kv_reserve(realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens) {
    if (kv == NULL) return REALM_ERR_INVALID;
    if (layer < 0 || layer >= kv->n_layer) return REALM_ERR_RANGE;
    if (n_tokens < 1 || n_tokens > kv->slots[layer]) return REALM_ERR_INVALID;
    if (pos != kv->n_pos[layer]) return REALM_ERR_RANGE; /* no gap, no rewrite without truncate */
    if (pos > INT64_MAX - n_tokens) return REALM_ERR_RANGE;
    kv->n_pos[layer] = pos + n_tokens;
    kv->held_from[layer] = max_i64(kv->held_from[layer], pos + n_tokens - kv->slots[layer]);
    return 0;
}

int realm_kv_append(realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, const float *k_rows,
                    const float *v_rows) {
    if (kv == NULL || kv->k == NULL || kv->v == NULL || k_rows == NULL || v_rows == NULL) return REALM_ERR_INVALID;
    int rc = realm_kv_reserve(kv, layer, pos, n_tokens);
    if (rc != 0) return rc;
    const int64_t n = row_elems(kv);
    for (int64_t t = 0; t < n_tokens; t++) {
        realm_f16 *k = realm_kv_k_row(kv, layer, pos + t);
        realm_f16 *v = realm_kv_v_row(kv, layer, pos + t);
        const float *ks = k_rows + t * n, *vs = v_rows + t * n;
        for (int64_t i = 0; i < n; i++) k[i] = realm_f32_to_f16(ks[i]);
        for (int64_t i = 0; i < n; i++) v[i] = realm_f32_to_f16(vs[i]);
    }
    return 0;
}

int64_t realm_kv_window_start(const realm_kv_ring *kv, int32_t layer, int64_t pos) {
    if (kv == NULL || pos < 0 || layer < 0 || layer >= kv->n_layer) return -1;
    return max_i64(0, pos - kv->window[layer] + 1);
}

int64_t realm_kv_chunk_limit(const realm_kv_ring *kv, int64_t pos) {
    /* a chunk of n at pos overwrites positions below pos + n - slots; its first token's
     * window starts at max(0, pos - window + 1): n <= slots - pos + that start */
    int64_t n = INT64_MAX;
    if (kv == NULL || pos < 0) return 1;
    for (int32_t l = 0; l < kv->n_layer; l++)
        n = min_i64(n, kv->slots[l] - pos + max_i64(0, pos - kv->window[l] + 1));
    return max_i64(n, 1);
}

int realm_kv_truncate(realm_kv_ring *kv, int64_t n_pos) {
    if (kv == NULL || n_pos < 0) return REALM_ERR_INVALID;
    /* check every layer first, so that a failure changes nothing */
    for (int32_t l = 0; l < kv->n_layer; l++) {
        const int window_empty = n_pos == 0; /* need_from .. n_pos-1 */
        const int64_t need_from = realm_kv_window_start(kv, l, n_pos);
        if (n_pos < kv->n_pos[l] && !window_empty && need_from < kv->held_from[l]) return REALM_ERR_RANGE;
    }
    for (int32_t l = 0; l < kv->n_layer; l++) {
        kv->n_pos[l] = min_i64(kv->n_pos[l], n_pos);
        kv->held_from[l] = min_i64(kv->held_from[l], kv->n_pos[l]);
    }
    return 0;
}

/* The slot's row, or NULL for a bad layer, a negative position or host-less storage.
 * (Whether the slot still holds `pos` is the caller's business: see held_from.) */
static realm_f16 *row_of(const realm_kv_ring *kv, realm_f16 *base, int32_t layer, int64_t pos) {
    if (kv == NULL || base == NULL || layer < 0 || layer >= kv->n_layer || pos < 0) return NULL;
    const int64_t slot = pos % kv->slots[layer];
    return base + (kv->row0[layer] + slot) * row_elems(kv);
}

realm_f16 *realm_kv_k_row(const realm_kv_ring *kv, int32_t layer, int64_t pos) {
    return kv == NULL ? NULL : row_of(kv, kv->k, layer, pos);
}

realm_f16 *realm_kv_v_row(const realm_kv_ring *kv, int32_t layer, int64_t pos) {
    return kv == NULL ? NULL : row_of(kv, kv->v, layer, pos);
}
