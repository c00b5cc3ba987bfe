/* sampler.c: llama.cpp's sampling chain: repetition penalty, then greedy, or top-k,
 * top-p, min-p, temperature, softmax and a draw from a seeded splitmix64.
 *
 * Candidates live in one buffer sized once for the vocabulary. Top-k and top-p take
 * their survivors best first from a max-heap (O(n + m log n) for m survivors), so the
 * whole vocabulary is never sorted.
 */
#include "sampler.h"

typedef struct {
    uint32_t id;
    float logit;
} cand_t;

static cand_t *cands;    /* [cap] */
static uint32_t *marks;  /* [cap / 32] bits: history tokens already penalized */
static uint32_t cap;

int32_t params_read(const void *ptr, uint32_t len, realm_params_t *p) {
    if (len < sizeof *p) return guest_log_error("realm params", "shorter than 56 bytes", REALM_ERR_INVALID);
    memcpy(p, ptr, sizeof *p);
    if (p->version < 1) return guest_log_error("realm params", "bad version", REALM_ERR_INVALID);
    if (is_nan(p->temperature) || is_nan(p->top_p) || is_nan(p->min_p) || !(p->repeat_penalty > 0) ||
        p->repeat_penalty > 3.0e38f)
        return guest_log_error("realm params", "a NaN, or a repeat_penalty that is not > 0",
                               REALM_ERR_INVALID);
    return REALM_OK;
}

int32_t sampler_reserve(uint32_t n_vocab) {
    if (n_vocab <= cap) return REALM_OK;
    if (n_vocab > 0x08000000u) return REALM_ERR_NOMEM;
    realm_free(cands);
    realm_free(marks);
    cap = 0;
    cands = realm_alloc(n_vocab * sizeof(cand_t));
    marks = realm_alloc((n_vocab + 31) / 32 * 4);
    if (!cands || !marks) {
        realm_free(cands);
        realm_free(marks);
        cands = 0;
        marks = 0;
        return REALM_ERR_NOMEM;
    }
    memset(marks, 0, (n_vocab + 31) / 32 * 4);
    cap = n_vocab;
    return REALM_OK;
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) from the top 53 bits */
static double uniform(uint64_t *state) { return (double)(splitmix64(state) >> 11) * 0x1p-53; }

/* ---- a max-heap on the logit, for survivors in order ------------------------------ */

static void sift_down(cand_t *c, uint32_t n, uint32_t i) {
    cand_t v = c[i];
    for (;;) {
        uint32_t k = 2 * i + 1;
        if (k >= n) break;
        if (k + 1 < n && c[k + 1].logit > c[k].logit) k++;
        if (!(c[k].logit > v.logit)) break;
        c[i] = c[k];
        i = k;
    }
    c[i] = v;
}

static void heapify(cand_t *c, uint32_t n) {
    for (uint32_t i = n / 2; i-- > 0;) sift_down(c, n, i);
}

/* Moves the largest of the heap c[0 .. *n) to c[*n - 1] and shrinks the heap. The
 * popped candidates pile up at the end of the array: the best at c[n0 - 1]. */
static void heap_pop(cand_t *c, uint32_t *n) {
    cand_t top = c[0];
    c[0] = c[--*n];
    c[*n] = top;
    if (*n > 1) sift_down(c, *n, 0);
}

static void reverse(cand_t *c, uint32_t n) {
    for (uint32_t i = 0, j = n ? n - 1 : 0; i < j; i++, j--) {
        cand_t t = c[i];
        c[i] = c[j];
        c[j] = t;
    }
}

/* ---- the chain -------------------------------------------------------------------- */

static int penalty_applies(const realm_params_t *p, uint32_t nh) {
    return !(p->repeat_last_n == 0 || p->repeat_penalty == 1.0f || nh == 0);
}

static void apply_penalty(uint32_t n, const realm_params_t *p, const uint32_t *hist, uint32_t nh) {
    if (!penalty_applies(p, nh)) return;
    uint32_t from = nh > p->repeat_last_n ? nh - p->repeat_last_n : 0;
    for (uint32_t i = from; i < nh; i++) {
        uint32_t id = hist[i];
        if (id >= n || (marks[id / 32] >> (id % 32) & 1)) continue; /* each token once */
        marks[id / 32] |= 1u << (id % 32);
        float l = cands[id].logit;
        cands[id].logit = l > 0 ? l / p->repeat_penalty : l * p->repeat_penalty;
    }
    for (uint32_t i = from; i < nh; i++) {
        if (hist[i] < n) marks[hist[i] / 32] = 0;
    }
}

/* The survivors of the stages so far, as llama.cpp's llama_token_data_array: c[0 .. m),
 * best first once `sorted`. Each stage narrows them; the last one draws. */
typedef struct {
    cand_t *c;
    uint32_t m;
    int sorted;
} survivors_t;

/* greedy: the first of the largest */
static int32_t sample_greedy(uint32_t n) {
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++) {
        if (cands[i].logit > cands[best].logit) best = i;
    }
    return (int32_t)best;
}

/* the k best, best first (s holds all n candidates, unsorted) */
static void sample_top_k(survivors_t *s, uint32_t k) {
    uint32_t n = s->m, h = n;
    heapify(cands, h);
    for (uint32_t i = 0; i < k; i++) heap_pop(cands, &h);
    s->c = cands + n - k;
    s->m = k;
    reverse(s->c, s->m);
    s->sorted = 1;
}

/* the softmax over the survivors (at temperature 1), then the smallest best-first
 * prefix whose probability reaches top_p */
static void sample_top_p(survivors_t *s, float top_p) {
    cand_t *c = s->c;
    uint32_t m = s->m;
    float max = c[0].logit;
    for (uint32_t i = 1; i < m; i++) max = c[i].logit > max ? c[i].logit : max;
    double sum = 0;
    for (uint32_t i = 0; i < m; i++) sum += gexp((double)c[i].logit - max);
    double target = (double)top_p * sum, cum = 0;
    uint32_t keep = 0;
    if (s->sorted) {
        while (keep < m) {
            cum += gexp((double)c[keep++].logit - max);
            if (cum >= target) break;
        }
    } else {
        uint32_t h = m;
        heapify(c, h);
        while (keep < m) {
            heap_pop(c, &h);
            cum += gexp((double)c[h].logit - max);
            keep++;
            if (cum >= target) break;
        }
        s->c = c + m - keep;
        reverse(s->c, keep);
        s->sorted = 1;
    }
    s->m = keep ? keep : 1;
}

/* keep p >= min_p * p_max, i.e. e^(logit - max) >= min_p (in place, order kept) */
static void sample_min_p(survivors_t *s, float min_p) {
    cand_t *c = s->c;
    float max = c[0].logit;
    for (uint32_t i = 1; i < s->m; i++) max = c[i].logit > max ? c[i].logit : max;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < s->m; i++) {
        if (c[i].logit == max || gexp((double)c[i].logit - max) >= min_p) c[keep++] = c[i];
    }
    s->m = keep;
}

/* temperature, softmax, draw */
static int32_t sample_dist(const survivors_t *s, float temperature, uint64_t *rng) {
    const cand_t *c = s->c;
    uint32_t m = s->m;
    float max = c[0].logit;
    uint32_t arg = 0;
    for (uint32_t i = 1; i < m; i++) {
        if (c[i].logit > max) max = c[i].logit, arg = i;
    }
    if (max == __builtin_inff() || max == -__builtin_inff() || is_nan(max)) return (int32_t)c[arg].id;
    double inv_t = 1.0 / temperature, sum = 0;
    for (uint32_t i = 0; i < m; i++) sum += gexp(((double)c[i].logit - max) * inv_t);
    double u = uniform(rng) * sum, cum = 0;
    for (uint32_t i = 0; i < m; i++) {
        cum += gexp(((double)c[i].logit - max) * inv_t);
        if (u < cum) return (int32_t)c[i].id;
    }
    return (int32_t)c[arg].id; /* rounding left u past the end */
}

int32_t sampler_sample(const float *logits, uint32_t n, const realm_params_t *p,
                       const uint32_t *hist, uint32_t nh, uint64_t *rng) {
    if (n == 0) return REALM_ERR_INVALID;
    if (!(p->temperature > 0) && !penalty_applies(p, nh)) { /* greedy, nothing to change: the row itself */
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++) {
            if (logits[i] > logits[best]) best = i;
        }
        return (int32_t)best;
    }
    int32_t r = sampler_reserve(n);
    if (r < 0) return r;
    for (uint32_t i = 0; i < n; i++) {
        cands[i].id = i;
        cands[i].logit = logits[i];
    }
    apply_penalty(n, p, hist, nh);
    if (!(p->temperature > 0)) return sample_greedy(n);

    survivors_t s = {cands, n, 0};
    if (p->top_k > 0 && (uint32_t)p->top_k < n) sample_top_k(&s, (uint32_t)p->top_k);
    if (p->top_p < 1.0f) sample_top_p(&s, p->top_p);
    if (p->min_p > 0.0f) sample_min_p(&s, p->min_p);
    return sample_dist(&s, p->temperature, rng);
}

int32_t realm_sample(uint32_t logits, uint32_t n_vocab, uint32_t params, uint32_t params_len,
                     uint32_t history, uint32_t n_history, uint32_t rng_state) EXPORT(realm_sample);
int32_t realm_sample(uint32_t logits, uint32_t n_vocab, uint32_t params, uint32_t params_len,
                     uint32_t history, uint32_t n_history, uint32_t rng_state) {
    if (!mem_in_bounds(logits, (uint64_t)n_vocab * 4) || !mem_in_bounds(params, params_len) ||
        !mem_in_bounds(history, (uint64_t)n_history * 4) || !mem_in_bounds(rng_state, 8))
        return REALM_ERR_BOUNDS;
    realm_params_t p;
    int32_t r = params_read(PTR(params), params_len, &p);
    if (r < 0) return r;
    uint64_t state;
    memcpy(&state, PTR(rng_state), 8);
    r = sampler_sample(PTR(logits), n_vocab, &p, PTR(history), n_history, &state);
    memcpy(PTR(rng_state), &state, 8);
    return r;
}
