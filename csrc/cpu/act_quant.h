/* act_quant.h: round activations to the weight's "vec dot type", as ggml's CPU
 * backend does before every matmul (see NUMERICS.md).
 *
 *   weight type            activation type   rounding
 *   F32                    F32               none
 *   F16 / BF16             F16 / BF16        to nearest even
 *   Q4_0, Q5_0, Q8_0       Q8_0              d = amax/127 (f16), q = rint(x * (127/amax))
 *   Q4_1, Q5_1             Q8_1              as Q8_0, plus s = f16(d * sum(q))
 *   Q2_K .. Q6_K           Q8_K              mx = max-magnitude element (signed),
 *                                            iscale = -127/mx, q = min(rint(x*iscale), 127),
 *                                            d = 1/iscale (f32), bsums of 16
 * rint is round-half-to-even, as ggml's x86 paths (_mm256_round_ps, nearest_int).
 */
#ifndef REALM_ACT_QUANT_H
#define REALM_ACT_QUANT_H

#include <stdint.h>

/* The activation type a weight of `wtype` is multiplied with; -1 if unsupported. */
int realm_vec_dot_type(int wtype);

/* Bytes of one activation row of n elements in act_type; -1 if n is not whole blocks. */
int64_t realm_act_row_bytes(int act_type, int64_t n);

/* Round one f32 row of n elements into act_type. Returns 0 or -1. */
int realm_quantize_act_row(int act_type, const float *x, void *dst, int64_t n);

#endif
