/* quantize.h: encoders for the K-quant weight formats (Q2_K .. Q6_K).
 *
 * Same algorithms as ggml's reference quantizers (quantize_row_q*_K_ref): per
 * sub-block scale (and min) search weighted toward large elements, then 6- or 8-bit
 * quantization of those scales against one f16 super-block scale. Single-threaded;
 * the caller splits a tensor by rows. Returns 0, or -1 on a bad type or length.
 */
#ifndef REALM_QUANTIZE_H
#define REALM_QUANTIZE_H

#include <stdint.h>

int realm_quantize_row_k(int type, const float *src, void *dst, int64_t n);

#endif
