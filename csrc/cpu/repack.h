/* repack.h: a weight matrix's bytes interleaved for the 16-row kernels, made once per
 * model at load (the CPU backend's weights="repack" mode), as llama.cpp repacks Q4_0
 * and Q4_K on x86. The copy stays quantized: the same blocks, reordered (ggml_blocks.h:
 * block_q4_0_x16, block_q4_K_x16); the kernels read one stream per group of 16 rows,
 * with no transpose or gather per block.
 */
#ifndef REALM_REPACK_H
#define REALM_REPACK_H

#include <stdint.h>

/* The repacked type the kernels of the active ISA read faster than an n_rows x n_cols
 * matrix of `wtype`, or -1 where there is none (another format, n_rows not a multiple
 * of 16, or an ISA without a 16-row kernel for it). */
int realm_repack_type(int wtype, int64_t n_rows, int64_t n_cols);

/* dst = the n_rows x n_cols matrix src of `wtype` as `packed_type` (from
 * realm_repack_type; dst holds as many bytes as src, and must not overlap it).
 * Returns 0, or REALM_ERR_INVALID for a pair of types or a shape it cannot repack. */
int realm_repack(int wtype, int packed_type, const void *src, void *dst, int64_t n_rows, int64_t n_cols);

#endif
