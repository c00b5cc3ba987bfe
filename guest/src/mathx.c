/* mathx.c: the one transcendental function the sampler needs. */
#include "guest.h"

/* 2^k for -1074 <= k <= 1023, built from the exponent bits (subnormals in two steps). */
static double pow2i(int k) {
    union {
        uint64_t u;
        double d;
    } v;
    if (k < -1022) {
        v.u = (uint64_t)(k + 1022 + 1023) << 52;
        return v.d * 0x1p-1022;
    }
    v.u = (uint64_t)(k + 1023) << 52;
    return v.d;
}

double gexp(double x) {
    if (is_nan(x)) return x;
    if (x > 709.0) return __builtin_inf();
    if (x < -745.0) return 0.0;
    /* x = k ln2 + r, |r| <= ln2 / 2; the split of ln2 keeps k ln2 exact */
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    double kf = x * 1.44269504088896338700;
    int k = (int)(kf >= 0 ? kf + 0.5 : kf - 0.5); /* |kf| < 1076: no trap */
    double r = (x - k * ln2_hi) - k * ln2_lo;
    /* Taylor to r^13: the remainder is below 1e-17 relative for |r| <= 0.35 */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    if (k > 1023) return p * pow2i(1023) * 2.0;
    return p * pow2i(k);
}
