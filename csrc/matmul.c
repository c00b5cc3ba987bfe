/* matmul.c: see matmul.h. */
#include "matmul.h"

#include <stddef.h>

#include "act_quant.h"
#include "ggml_blocks.h"
#include "vec_dot.h"

/* Output rows per work item: small enough to spread over threads, large enough that
 * the rows of a block stay in L1/L2 while every token passes over them. */
#define ROWS_PER_BLOCK 16
/* Tokens per pass of the multi-token kernel over a row block: their rounded
 * activations (a few KB each) stay in L1 while the block's weight rows go by. */
#define TOKENS_PER_PASS 4

static int64_t weight_row_bytes(int wtype, int64_t n_cols) {
    const int qk = realm_type_block_elems(wtype);
    if (qk == 0 || n_cols <= 0 || n_cols % qk) return -1;
    return n_cols / qk * realm_type_block_bytes(wtype);
}

int64_t realm_matmul_scratch_bytes(int wtype, int64_t n_cols, int64_t n_tokens) {
    const int at = realm_vec_dot_type(wtype);
    const int64_t rb = at < 0 ? -1 : realm_act_row_bytes(at, n_cols);
    if (rb < 0 || n_tokens < 0 || weight_row_bytes(wtype, n_cols) < 0) return -1;
    return rb * n_tokens;
}

int realm_quantize_acts(int wtype, const float *x, int64_t n_cols, int64_t n_tokens, void *xq, int n_threads) {
    const int at = realm_vec_dot_type(wtype);
    const int64_t rb = realm_matmul_scratch_bytes(wtype, n_cols, 1);
    if (rb < 0 || n_tokens < 0) return -1;
    int rc = 0;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_tokens > 1 && n_threads > 1) reduction(| : rc)
    for (int64_t t = 0; t < n_tokens; t++)
        rc |= realm_quantize_act_row(at, x + t * n_cols, (char *)xq + t * rb, n_cols);
    return rc ? -1 : 0;
}

int realm_matmul_q(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tokens,
                   float *y, int64_t ldy, int n_threads) {
    const int64_t wrb = weight_row_bytes(wtype, n_cols);
    const int64_t arb = realm_matmul_scratch_bytes(wtype, n_cols, 1);
    const int isa = realm_active_isa();
    const realm_vec_dot_fn dot = realm_get_vec_dot(wtype, isa);
    const realm_vec_dot_nx_fn dot_nx = n_tokens > 1 ? realm_get_vec_dot_nx(wtype, isa) : NULL;
    if (wrb < 0 || arb < 0 || !dot || n_rows < 0 || n_tokens < 0 || ldy < n_rows) return -1;
    const int64_t n_blocks = (n_rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t b = 0; b < n_blocks; b++) {
        const int64_t r0 = b * ROWS_PER_BLOCK;
        const int64_t r1 = r0 + ROWS_PER_BLOCK < n_rows ? r0 + ROWS_PER_BLOCK : n_rows;
        if (dot_nx) {
            for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKENS_PER_PASS) {
                const int nt = n_tokens - t0 < TOKENS_PER_PASS ? (int)(n_tokens - t0) : TOKENS_PER_PASS;
                const char *a = (const char *)xq + t0 * arb;
                for (int64_t r = r0; r < r1; r++) dot_nx(n_cols, &y[t0 * ldy + r], ldy, (const char *)w + r * wrb, a, arb, nt);
            }
            continue;
        }
        for (int64_t t = 0; t < n_tokens; t++) {
            const char *a = (const char *)xq + t * arb;
            for (int64_t r = r0; r < r1; r++) dot(n_cols, &y[t * ldy + r], (const char *)w + r * wrb, a);
        }
    }
    return 0;
}

int realm_matmul(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const float *x, int64_t n_tokens,
                 float *y, int64_t ldy, void *scratch, int n_threads) {
    if (realm_quantize_acts(wtype, x, n_cols, n_tokens, scratch, n_threads)) return -1;
    return realm_matmul_q(w, wtype, n_rows, n_cols, scratch, n_tokens, y, ldy, n_threads);
}
