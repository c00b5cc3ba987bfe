/* matmul.c: see matmul.h. */
#include "matmul.h"

#include <stddef.h>

#include "act_quant.h"
#include "ggml_blocks.h"
#include "vec_dot.h"

/* Output rows per work item (a multiple of 8, the rows of the 8-row kernels): small
 * enough to spread over threads, large enough that the rows of a block stay in L1/L2
 * while every token passes over them. Every block reads all tokens' activations again,
 * so prefill takes larger blocks where there are enough of them for the threads. */
#define ROWS_PER_BLOCK 16
#define ROWS_PER_BLOCK_PREFILL 64
/* Tokens per pass of the multi-token kernels over a row block: their rounded
 * activations (a few KB each) stay in L1/L2 while the block's weight rows go by. */
#define TOKENS_PER_PASS 8

static int64_t weight_row_bytes(int wtype, int64_t n_cols) {
    const int qk = realm_type_block_elems(wtype);
    if (qk == 0 || n_cols <= 0 || n_cols % qk) return -1;
    return n_cols / qk * realm_type_block_bytes(wtype);
}

static int64_t rows_per_block(int64_t n_rows, int64_t n_tokens, int n_threads) {
    int64_t rows = n_tokens > TOKENS_PER_PASS ? ROWS_PER_BLOCK_PREFILL : ROWS_PER_BLOCK;
    while (rows > ROWS_PER_BLOCK && n_rows < rows * 4 * n_threads) rows /= 2;
    return rows;
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

struct kernels {
    realm_vec_dot_fn dot;
    realm_vec_dot_nx_fn dot_nx; /* NULL: loop over dot */
    realm_vec_dot_8r_fn dot_8r; /* NULL: row by row */
};

/* Rows [r0, r1) times nt tokens (nt <= TOKENS_PER_PASS) at a, outputs at y: groups of
 * 8 rows through the 8-row kernel where there is one, the rest row by row. */
static void tile(const struct kernels *k, int64_t n_cols, const char *w, int64_t wrb, int64_t r0, int64_t r1,
                 const char *a, int64_t arb, int nt, float *y, int64_t ldy) {
    int64_t r = r0;
    if (k->dot_8r)
        for (; r + 8 <= r1; r += 8) k->dot_8r(n_cols, &y[r], ldy, w + r * wrb, wrb, a, arb, nt);
    for (; r < r1; r++) {
        if (k->dot_nx) {
            k->dot_nx(n_cols, &y[r], ldy, w + r * wrb, a, arb, nt);
            continue;
        }
        for (int t = 0; t < nt; t++) k->dot(n_cols, &y[t * ldy + r], w + r * wrb, a + t * arb);
    }
}

int realm_matmul_q(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tokens,
                   float *y, int64_t ldy, int n_threads) {
    const int64_t wrb = weight_row_bytes(wtype, n_cols);
    const int64_t arb = realm_matmul_scratch_bytes(wtype, n_cols, 1);
    const int isa = realm_active_isa();
    const struct kernels k = {realm_get_vec_dot(wtype, isa), realm_get_vec_dot_nx(wtype, isa),
                              realm_get_vec_dot_8r(wtype, isa)};
    if (wrb < 0 || arb < 0 || !k.dot || n_rows < 0 || n_tokens < 0 || ldy < n_rows) return -1;
    const int64_t rpb = rows_per_block(n_rows, n_tokens, n_threads);
    const int64_t n_blocks = (n_rows + rpb - 1) / rpb;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t b = 0; b < n_blocks; b++) {
        const int64_t r0 = b * rpb;
        const int64_t r1 = r0 + rpb < n_rows ? r0 + rpb : n_rows;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKENS_PER_PASS) {
            const int nt = n_tokens - t0 < TOKENS_PER_PASS ? (int)(n_tokens - t0) : TOKENS_PER_PASS;
            tile(&k, n_cols, w, wrb, r0, r1, (const char *)xq + t0 * arb, arb, nt, y + t0 * ldy, ldy);
        }
    }
    return 0;
}

int realm_matmul(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const float *x, int64_t n_tokens,
                 float *y, int64_t ldy, void *scratch, int n_threads) {
    if (realm_quantize_acts(wtype, x, n_cols, n_tokens, scratch, n_threads)) return -1;
    return realm_matmul_q(w, wtype, n_rows, n_cols, scratch, n_tokens, y, ldy, n_threads);
}
