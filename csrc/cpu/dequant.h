/* dequant.h: decode rows of any GGUF block format to f32.
 *
 * These are the reference decoders: plain scalar C, bit-exact with ggml's
 * dequantize_row_* and with gguf.quants.dequantize. They are used by the model
 * store (embedding rows, inspection) and as the truth the fused kernels are tested
 * against; the kernels themselves never call them on a whole weight matrix.
 */
#ifndef REALM_DEQUANT_H
#define REALM_DEQUANT_H

#include <stdint.h>

/* Decode n elements (a whole number of blocks) of `type` from src into dst.
 * Returns 0, or -1 when the type is unknown or n is not a multiple of its block. */
int realm_dequantize_row(int type, const void *src, float *dst, int64_t n);

#endif
