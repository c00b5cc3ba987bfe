/* fp16.h: exact scalar conversions between f32 and the 16-bit float formats.
 *
 * Portable bit manipulation (no F16C needed): f16 -> f32 and bf16 -> f32 are exact;
 * f32 -> f16 and f32 -> bf16 round to nearest, ties to even, as ggml does.
 */
#ifndef REALM_FP16_H
#define REALM_FP16_H

#include <stdint.h>
#include <string.h>

static inline float realm_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t realm_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float realm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) /* inf / nan: keep the payload */
        return realm_bits_to_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return realm_bits_to_f32(sign);
        /* subnormal: man * 2^-24, exact in f32 */
        float f = (float)man * 5.9604644775390625e-08f;
        return sign ? -f : f;
    }
    return realm_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t realm_f32_to_f16(float f) {
    uint32_t x = realm_f32_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan (nan stays quiet) */
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u | ((absx >> 13) & 0x3ffu) : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* below the smallest normal f16 (2^-14): subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25 rounds to zero */
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24: bits to drop to reach units of 2^-24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even */
    uint32_t r = absx - 0x38000000u;
    uint32_t q = r >> 13;
    uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

static inline float realm_bf16_to_f32(uint16_t h) { return realm_bits_to_f32((uint32_t)h << 16); }

static inline uint16_t realm_f32_to_bf16(float f) {
    uint32_t u = realm_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u); /* quiet nan */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

#endif /* REALM_FP16_H */
