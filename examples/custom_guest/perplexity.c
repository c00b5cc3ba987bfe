/* perplexity.c: a custom realm-ext guest that scores text instead of generating it.
 *
 * Given n token ids, it runs them through the model n_batch at a time with the host's
 * imports (realm_forward_embedding, realm_forward_layers, realm_forward_lm_head; see
 * guest/include/realm.h and docs/ABI.md) and returns the mean negative log-likelihood
 * of each token given the ones before it, in nats:
 *
 *     nll = -1/(n-1) * sum_{i=1..n-1} log softmax(logits after token i-1)[token i]
 *
 * and the perplexity is exp(nll). The weights stay on the host: this module's memory
 * holds the ids, n_batch rows of activations and n_batch rows of logits.
 *
 * No libc: memory comes from a bump allocator over memory.grow, and exp and log are
 * written out below (double precision, to about 1e-16 relative).
 *
 * Exports:
 *   uint32_t ppl_tokens(uint32_t n)   room for n u32 token ids (a pointer; 0: no memory).
 *                                     The host writes the ids there, then calls:
 *   double   ppl_nll(uint32_t model_id, uint32_t n, uint32_t n_batch)
 *            the mean NLL of those n ids (n >= 2; n_batch 0: all at once), or a
 *            REALM_ERR_* code (< 0) after logging the host's message through realm_log.
 *
 * Build: examples/custom_guest/run.py (python -m ziglang cc --target=wasm32-freestanding ...).
 */
#include "realm.h"

/* ---- memory: a bump allocator from the end of the static data ------------------------ */

extern unsigned char __heap_base; /* set by the linker: where the heap starts */
static uintptr_t heap_top;

static void *alloc(uint64_t size) {
    uintptr_t start = (heap_top + 15) & ~(uintptr_t)15;
    uint64_t end = (uint64_t)start + size;
    if (end > 0xFFFF0000u) return 0; /* past what a 32-bit memory can hold */
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * 65536;
    if (end > have) {
        uint64_t pages = (end - have + 65535) / 65536;
        if (__builtin_wasm_memory_grow(0, (uintptr_t)pages) == (uintptr_t)-1) return 0; /* over the cap */
    }
    heap_top = (uintptr_t)end;
    return (void *)start;
}

/* ---- exp and log in double, freestanding --------------------------------------------- */

typedef union {
    double d;
    uint64_t u;
} bits64;

/* e^x for x <= 0 (softmax terms after subtracting the maximum) */
static double exp_neg(double x) {
    if (x < -745.0) return 0.0;
    /* x = k ln2 + r with |r| <= ln2/2; the two-part ln2 keeps k ln2 exact */
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    double kf = x * 1.44269504088896338700 - 0.5;
    int k = (int)kf; /* rounds toward zero: with the -0.5, to nearest for x <= 0 */
    double r = (x - k * ln2_hi) - k * ln2_lo;
    double p = 1.0, term = 1.0; /* Taylor to r^16: the rest is below 1e-19 for |r| <= 0.35 */
    for (int i = 1; i <= 16; i++) {
        term *= r / i;
        p += term;
    }
    bits64 two_k; /* 2^k, k >= -1075 here; below -1022 in two steps (subnormal results) */
    if (k < -1000) {
        two_k.u = (uint64_t)(k + 1000 + 1023) << 52;
        return p * two_k.d * 0x1p-1000;
    }
    two_k.u = (uint64_t)(k + 1023) << 52;
    return p * two_k.d;
}

/* natural log of a normal, positive, finite x */
static double log_pos(double x) {
    bits64 v = {x};
    int e = (int)((v.u >> 52) & 0x7FF) - 1023;
    v.u = (v.u & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull; /* mantissa m in [1, 2) */
    double m = v.d;
    if (m > 1.4142135623730951) { /* to [sqrt(1/2), sqrt(2)) */
        m *= 0.5;
        e += 1;
    }
    /* log m = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.172: odd powers to s^25 */
    double s = (m - 1.0) / (m + 1.0), s2 = s * s, sum = 0.0, pw = s;
    for (int i = 1; i <= 25; i += 2) {
        sum += pw / i;
        pw *= s2;
    }
    return 2.0 * sum + e * 0.69314718055994530942;
}

/* log(sum_j exp(row[j])) - row[target], without overflow */
static double token_nll(const float *row, uint32_t n_vocab, uint32_t target) {
    float mx = row[0];
    for (uint32_t j = 1; j < n_vocab; j++) mx = row[j] > mx ? row[j] : mx;
    double sum = 0.0;
    for (uint32_t j = 0; j < n_vocab; j++) sum += exp_neg((double)row[j] - mx);
    return (double)mx + log_pos(sum) - row[target]; /* sum >= 1: the maximum's term */
}

/* ---- the exports --------------------------------------------------------------------- */

static uint32_t *tokens;
static uint32_t n_tokens_room;

/* Pass the host's message for a failed call on to its log, and the code back. */
static double fail(int32_t code) {
    char msg[256];
    int32_t n = realm_last_error((uint32_t)msg, sizeof msg);
    if (n > (int32_t)sizeof msg) n = sizeof msg;
    if (n > 0) realm_log(3, (uint32_t)msg, (uint32_t)n);
    return code;
}

__attribute__((export_name("ppl_tokens"))) uint32_t ppl_tokens(uint32_t n) {
    heap_top = (uintptr_t)&__heap_base; /* a new text: everything before is dropped */
    tokens = alloc((uint64_t)n * 4);
    n_tokens_room = tokens ? n : 0;
    return (uint32_t)tokens;
}

__attribute__((export_name("ppl_nll"))) double ppl_nll(uint32_t model, uint32_t n, uint32_t n_batch) {
    if (n < 2 || n > n_tokens_room) return REALM_ERR_INVALID;
    realm_model_info_t info;
    int32_t rc = realm_model_info(model, (uint32_t)&info, sizeof info);
    if (rc < 0) return fail(rc);
    for (uint32_t i = 0; i < n; i++)
        if (tokens[i] >= info.n_vocab) return REALM_ERR_INVALID;
    if (n_batch == 0 || n_batch > n) n_batch = n;

    uintptr_t mark = heap_top;
    float *x = alloc((uint64_t)n_batch * info.n_embd * 4);       /* n_batch rows of activations */
    float *logits = alloc((uint64_t)n_batch * info.n_vocab * 4); /* and of logits */
    if (!x || !logits) {
        heap_top = mark;
        return REALM_ERR_NOMEM;
    }
    int64_t kv = realm_kv_create(model, n); /* room for every position: no sliding window */
    if (kv < 0) {
        heap_top = mark;
        return fail((int32_t)kv);
    }
    double total = 0.0;
    for (uint32_t p = 0; p < n && rc >= 0; p += n_batch) {
        uint32_t b = n - p < n_batch ? n - p : n_batch; /* tokens at positions p .. p+b-1 */
        uint32_t len = b * info.n_embd;
        rc = realm_forward_embedding(model, (uint32_t)(tokens + p), b, (uint32_t)x);
        if (rc >= 0)
            rc = realm_forward_layers(model, 0, info.n_layer, (uint32_t)x, len, p, (uint64_t)kv, (uint32_t)x);
        if (rc >= 0) rc = realm_forward_lm_head(model, (uint32_t)x, len, (uint32_t)logits);
        for (uint32_t t = 0; rc >= 0 && t < b && p + t + 1 < n; t++)
            total += token_nll(logits + (uint64_t)t * info.n_vocab, info.n_vocab, tokens[p + t + 1]);
    }
    double result = rc < 0 ? fail(rc) : total / (n - 1);
    realm_kv_free((uint64_t)kv);
    heap_top = mark;
    return result;
}
