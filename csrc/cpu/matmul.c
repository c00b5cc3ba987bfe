/* matmul.c: see matmul.h. */
#include "matmul.h"
#include "realm_errors.h"

#include <stdatomic.h>
#include <stddef.h>

#include "act_quant.h"
#include "ggml_blocks.h"
#include "threadpool.h"
#include "vec_dot.h"

/* Output rows per work item (a multiple of 8, the rows of the 8-row kernels): small
 * enough to spread over threads, large enough that the rows of a block stay in L1/L2
 * while every token passes over them. Every block reads all tokens' activations again,
 * so prefill takes larger blocks where there are enough of them for the threads. */
#define ROWS_PER_BLOCK 16
#define ROWS_PER_BLOCK_PREFILL 64
/* Tokens per pass of the multi-token kernels over a row block: their rounded
 * activations (a few KB each) stay in L1/L2 while the block's weight rows go by. */
#define TOKENS_PER_PASS 16

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

struct round_job {
    int act_type;
    const float *x;
    int64_t n_cols, row_bytes;
    char *xq;
    atomic_int failed;
};

static void round_rows(void *ctx, int64_t t0, int64_t t1, int thread) {
    struct round_job *j = ctx;
    (void)thread;
    for (int64_t t = t0; t < t1; t++)
        if (realm_quantize_act_row(j->act_type, j->x + t * j->n_cols, j->xq + t * j->row_bytes, j->n_cols))
            atomic_store(&j->failed, 1);
}

int realm_quantize_acts(int wtype, const float *x, int64_t n_cols, int64_t n_tokens, void *xq, int n_threads) {
    const int64_t rb = realm_matmul_scratch_bytes(wtype, n_cols, 1);
    if (rb < 0 || n_tokens < 0) return REALM_ERR_INVALID;
    struct round_job j = {realm_vec_dot_type(wtype), x, n_cols, rb, xq, 0};
    realm_parallel_for(n_tokens, n_threads, round_rows, &j);
    return atomic_load(&j.failed) ? REALM_ERR_INVALID : 0;
}

struct kernels {
    realm_vec_dot_fn dot;
    realm_vec_dot_nx_fn dot_nx; /* NULL: loop over dot */
    realm_vec_dot_8r_fn dot_8r; /* NULL: row by row */
    realm_vec_dot_8r_fn dot_16r; /* 16 rows; NULL: by 8 */
};

/* Rows [r0, r1) times nt tokens (nt <= TOKENS_PER_PASS) at a, outputs at y: groups of
 * 16 and of 8 rows through the 16- and 8-row kernels where there are some, the rest row
 * by row. */
static void tile(const struct kernels *k, int64_t n_cols, const char *w, int64_t wrb, int64_t r0, int64_t r1,
                 const char *a, int64_t arb, int nt, float *y, int64_t ldy) {
    int64_t r = r0;
    if (k->dot_16r)
        for (; r + 16 <= r1; r += 16) k->dot_16r(n_cols, &y[r], ldy, w + r * wrb, wrb, a, arb, nt);
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

struct matmul_job {
    const struct kernels *k;
    const char *w;
    int64_t wrb;
    const char *xq;
    int64_t arb, n_rows, n_cols, n_tokens, rows_per_block;
    float *y;
    int64_t ldy;
    int64_t n_blocks;
    atomic_llong next_block; /* matmul_blocks_dealt's counter */
};

/* row blocks [b0, b1): every token over each block, TOKENS_PER_PASS at a time */
static void matmul_blocks(void *ctx, int64_t b0, int64_t b1, int thread) {
    const struct matmul_job *j = ctx;
    (void)thread;
    for (int64_t b = b0; b < b1; b++) {
        const int64_t r0 = b * j->rows_per_block;
        const int64_t r1 = r0 + j->rows_per_block < j->n_rows ? r0 + j->rows_per_block : j->n_rows;
        for (int64_t t0 = 0; t0 < j->n_tokens; t0 += TOKENS_PER_PASS) {
            const int nt = j->n_tokens - t0 < TOKENS_PER_PASS ? (int)(j->n_tokens - t0) : TOKENS_PER_PASS;
            tile(j->k, j->n_cols, j->w, j->wrb, r0, r1, j->xq + t0 * j->arb, j->arb, nt, j->y + t0 * j->ldy, j->ldy);
        }
    }
}

/* Prefill: each thread takes the next row block from a shared counter instead of a
 * fixed range, so a thread the VM or the OS slows down does not hold the others up at
 * the end (a block is 64 rows x every token: the counter's cost is nothing beside it).
 * A block's result does not depend on which thread computes it. Decode, and a batched
 * step of up to REALM_DECODE_TOKENS_MAX rows, keep the fixed ranges: there a block is
 * only 16 rows, and dealt blocks decoded slower (docs/PERF.md): the threads' blocks
 * interleave, and each one's prefetch of the next rows runs into the other's. */
static void matmul_blocks_dealt(void *ctx, int64_t b0, int64_t b1, int thread) {
    struct matmul_job *j = ctx;
    (void)b0, (void)b1;
    for (int64_t b; (b = atomic_fetch_add(&j->next_block, 1)) < j->n_blocks;) matmul_blocks(ctx, b, b + 1, thread);
}

int realm_matmul_q_order(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tokens,
                         int batched, float *y, int64_t ldy, int n_threads) {
    const int64_t wrb = weight_row_bytes(wtype, n_cols);
    const int64_t arb = realm_matmul_scratch_bytes(wtype, n_cols, 1);
    const int isa = realm_active_isa();
    struct kernels k = {realm_get_vec_dot(wtype, isa), realm_get_vec_dot_nx(wtype, isa),
                        realm_get_vec_dot_8r(wtype, isa), realm_get_vec_dot_16r(wtype, isa)};
    const int repacked = realm_repacked_from(wtype) != wtype;
    const realm_vec_dot_8r_fn x16 = repacked ? realm_get_vec_dot_x16(wtype, isa, batched) : NULL;
    if (repacked) k = (struct kernels){.dot_16r = x16}; /* whole groups of 16 rows only */
    if (wrb < 0 || arb < 0 || !(repacked ? x16 && n_rows % 16 == 0 : k.dot != NULL) || n_rows < 0 ||
        n_tokens < 0 || ldy < n_rows)
        return REALM_ERR_INVALID;
    const realm_vec_dot_fn gemm = realm_get_vec_dot_gemm(wtype, isa);
    if (gemm && batched && n_cols % 16 == 0)
        k = (struct kernels){gemm, realm_get_vec_dot_gemm_nx(wtype, isa), realm_get_vec_dot_gemm_8r(wtype, isa),
                             realm_get_vec_dot_gemm_16r(wtype, isa)}; /* llama.cpp's batched order */
    const int64_t rpb = rows_per_block(n_rows, n_tokens, n_threads);
    const int64_t nb = (n_rows + rpb - 1) / rpb;
    struct matmul_job j = {&k, w, wrb, (const char *)xq, arb, n_rows, n_cols, n_tokens, rpb, y, ldy, nb, 0};
    realm_parallel_for(nb, n_threads, n_tokens > REALM_DECODE_TOKENS_MAX ? matmul_blocks_dealt : matmul_blocks, &j);
    return 0;
}

int realm_matmul_q(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tokens,
                   float *y, int64_t ldy, int n_threads) {
    const int64_t n_batched = realm_vec_dot_gemm_tokens(wtype, n_rows, n_cols, n_tokens, 0, n_tokens);
    const int64_t arb = realm_matmul_scratch_bytes(wtype, n_cols, 1);
    if (arb < 0 || n_tokens < 0) return REALM_ERR_INVALID;
    int rc = 0;
    if (n_batched > 0) rc = realm_matmul_q_order(w, wtype, n_rows, n_cols, xq, n_batched, 1, y, ldy, n_threads);
    if (!rc && (n_tokens > n_batched || n_tokens == 0))
        rc = realm_matmul_q_order(w, wtype, n_rows, n_cols, (const char *)xq + n_batched * arb, n_tokens - n_batched,
                                  0, y + n_batched * ldy, ldy, n_threads);
    return rc;
}

int realm_matmul(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const float *x, int64_t n_tokens,
                 float *y, int64_t ldy, void *scratch, int n_threads) {
    if (realm_quantize_acts(wtype, x, n_cols, n_tokens, scratch, n_threads)) return REALM_ERR_INVALID;
    return realm_matmul_q(w, wtype, n_rows, n_cols, scratch, n_tokens, y, ldy, n_threads);
}
