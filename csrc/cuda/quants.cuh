/* quants.cuh: per-format device functions for the matmul kernels (matmul.cu).
 *
 * Every quantized format is a struct `fmt_<type>` with
 *   block        the ggml_blocks.h struct of one weight block (QK elements)
 *   QK           elements per block
 *   NPART        threads that share one block in a dot product; thread `part`
 *                (0 .. NPART-1) covers its own share of the block's elements
 *   dot(b, y, part)   partial dot product of weight block b with the QK / 32 q8_1
 *                activation blocks y[0 ..] that cover the same columns; summed over
 *                part = 0 .. NPART-1 it is the whole block's dot product
 *   decode(b, i) element i of block b as float, bit-exact with csrc/dequant.c (and
 *                ggml): the same float operations in the same order, never fused
 *                (__fmul_rn / __fadd_rn are never contracted into an FMA)
 *
 * The dot products follow llama.cpp's CUDA backend (vecdotq.cuh): the activations are
 * quantized once per call to q8_1 blocks of 32 (x ~= d * q, s = d * sum(q)), and the
 * weight quants are combined with them 4 at a time by __dp4a on 32-bit words. A block
 * whose size is a multiple of 4 bytes (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) is read in 4-byte
 * words; the others (18, 22, 34, 110, 210 bytes) only keep 2-byte alignment in a row,
 * so they are read as two 16-bit halves (load_b2).
 *
 * The float formats (F32, F16, BF16) are `fmt_f32` etc. with blocks of one element and
 * decode() only: they are multiplied in float against float activations, no q8_1 step.
 *
 * This header is plain C++ apart from the CUDA intrinsics named above, so the tests
 * also compile it for the host with those intrinsics emulated (tests/backends/
 * cuda_host_harness.cpp) to check every formula against gguf's decoders on the CPU.
 */
#ifndef REALM_CUDA_QUANTS_CUH
#define REALM_CUDA_QUANTS_CUH

#include "common.cuh"

#define QDEV static __device__ __forceinline__

/* 32-bit word i of a byte array that is only 2-byte aligned, and of a 4-byte aligned one */
QDEV int load_b2(const void *p, int i) {
    const uint16_t *h = (const uint16_t *)p;
    return (int)((uint32_t)h[2 * i] | ((uint32_t)h[2 * i + 1] << 16));
}
QDEV int load_b4(const void *p, int i) { return ((const int *)p)[i]; }

/* q8_1 activation block: scale d and s = d * sum(qs) */
QDEV float q8_d(const block_q8_1 *y) { return f16_to_f32(y->d); }
QDEV float q8_s(const block_q8_1 *y) { return f16_to_f32(y->s); }

/* ---- Q4_0, Q4_1, Q5_0, Q5_1: qs byte j holds element j (low nibble) and j + 16 (high
 * nibble); Q5's fifth bit of element i is bit i of qh (little-endian u32).
 * Part p (0, 1) takes qs words 2p, 2p+1: elements 8p .. 8p+7 (low nibbles, q8_1 words
 * 2p, 2p+1) and 16+8p .. 16+8p+7 (high nibbles, q8_1 words 2p+4, 2p+5). */

/* qs word k's low or high nibbles with (Q5) their fifth bits from qh moved to bit 4 of
 * each byte: elements 4k .. 4k+3 (HIGH = 0) or 16+4k .. 16+4k+3 (HIGH = 1) */
template <int HIGH>
QDEV int q5_word(int ql, int qh, int k) {
    const int h = (int)((uint32_t)qh >> (4 * k + 16 * HIGH));
    return ((ql >> (4 * HIGH)) & 0x0F0F0F0F) | ((h << 4) & 0x10) | ((h << 11) & 0x1000) | ((h << 18) & 0x100000) |
           ((h << 25) & 0x10000000);
}

/* sum over part `part` of q * q8 (q without its offset or min) */
template <bool ALIGNED4, bool FIFTH_BIT>
QDEV int sumi_q4_q5(const uint8_t *qs, const uint8_t *qh, const block_q8_1 *y, int part) {
    const int h = FIFTH_BIT ? (ALIGNED4 ? load_b4(qh, 0) : load_b2(qh, 0)) : 0;
    int sumi = 0;
#pragma unroll
    for (int k = 2 * part; k < 2 * part + 2; k++) {
        const int v = ALIGNED4 ? load_b4(qs, k) : load_b2(qs, k);
        sumi = __dp4a(q5_word<0>(v, h, k), load_b4(y->qs, k), sumi);
        sumi = __dp4a(q5_word<1>(v, h, k), load_b4(y->qs, k + 4), sumi);
    }
    return sumi;
}

/* element i's quant, fifth bit included when qh is given */
QDEV int q4_q5_element(const uint8_t *qs, const uint8_t *qh, int i) {
    const int lo = i < 16 ? (qs[i] & 0xF) : (qs[i - 16] >> 4);
    return qh ? lo | (((qh[i / 8] >> (i % 8)) & 1) << 4) : lo;
}

/* x = d * (q - 8); the -8 is spread evenly over the parts: their sum is -8 * s */
struct fmt_q4_0 {
    typedef block_q4_0 block;
    static constexpr int QK = 32, NPART = 2;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        const int sumi = sumi_q4_q5<false, false>(b->qs, nullptr, y, part);
        return f16_to_f32(b->d) * (sumi * q8_d(y) - (8.0f / NPART) * q8_s(y));
    }
    QDEV float decode(const block *b, int i) {
        return __fmul_rn((float)(q4_q5_element(b->qs, nullptr, i) - 8), f16_to_f32(b->d));
    }
};

/* x = d * q + m */
struct fmt_q4_1 {
    typedef block_q4_1 block;
    static constexpr int QK = 32, NPART = 2;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        const int sumi = sumi_q4_q5<true, false>(b->qs, nullptr, y, part);
        return f16_to_f32(b->d) * q8_d(y) * sumi + f16_to_f32(b->m) * q8_s(y) * (1.0f / NPART);
    }
    QDEV float decode(const block *b, int i) {
        return __fadd_rn(__fmul_rn((float)q4_q5_element(b->qs, nullptr, i), f16_to_f32(b->d)), f16_to_f32(b->m));
    }
};

/* x = d * (q - 16) */
struct fmt_q5_0 {
    typedef block_q5_0 block;
    static constexpr int QK = 32, NPART = 2;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        const int sumi = sumi_q4_q5<false, true>(b->qs, b->qh, y, part);
        return f16_to_f32(b->d) * (sumi * q8_d(y) - (16.0f / NPART) * q8_s(y));
    }
    QDEV float decode(const block *b, int i) {
        return __fmul_rn((float)(q4_q5_element(b->qs, b->qh, i) - 16), f16_to_f32(b->d));
    }
};

/* x = d * q + m */
struct fmt_q5_1 {
    typedef block_q5_1 block;
    static constexpr int QK = 32, NPART = 2;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        const int sumi = sumi_q4_q5<true, true>(b->qs, b->qh, y, part);
        return f16_to_f32(b->d) * q8_d(y) * sumi + f16_to_f32(b->m) * q8_s(y) * (1.0f / NPART);
    }
    QDEV float decode(const block *b, int i) {
        return __fadd_rn(__fmul_rn((float)q4_q5_element(b->qs, b->qh, i), f16_to_f32(b->d)), f16_to_f32(b->m));
    }
};

/* ---- Q8_0: x = d * q. Part p (0..3) takes words 2p, 2p+1 (elements 8p .. 8p+7) ---- */
struct fmt_q8_0 {
    typedef block_q8_0 block;
    static constexpr int QK = 32, NPART = 4;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        int sumi = 0;
#pragma unroll
        for (int k = 2 * part; k < 2 * part + 2; k++) sumi = __dp4a(load_b2(b->qs, k), load_b4(y->qs, k), sumi);
        return f16_to_f32(b->d) * q8_d(y) * sumi;
    }
    QDEV float decode(const block *b, int i) { return __fmul_rn((float)b->qs[i], f16_to_f32(b->d)); }
};

/* ---- Q2_K: qs byte 32h + l holds in bit pair s the element 128h + 32s + l, whose
 * scale byte is scales[8h + 2s + l / 16] (scale low nibble, min high nibble);
 * x = d * scale * q - dmin * min. Part p (0..15) takes qs word p: h = p / 8,
 * l = 4 (p % 8) .. +3, for all four s; q8_1 block 4h + s, word p % 8. ------------ */
struct fmt_q2_K {
    typedef block_q2_K block;
    static constexpr int QK = QK_K, NPART = 16;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        const int h = part / 8, w = part % 8;
        const uint8_t *sc = b->scales + 8 * h + w / 4;
        const int v = load_b4(b->qs, part);
        float sum_d = 0.0f, sum_m = 0.0f;
#pragma unroll
        for (int s = 0; s < 4; s++) {
            const block_q8_1 *ys = y + 4 * h + s;
            const int u = load_b4(ys->qs, w);
            const int scale = sc[2 * s] & 0xF, m = sc[2 * s] >> 4;
            const float d8 = q8_d(ys);
            sum_d += d8 * (__dp4a((v >> (2 * s)) & 0x03030303, u, 0) * scale);
            sum_m += d8 * (__dp4a(0x01010101, u, 0) * m);
        }
        return f16_to_f32(b->d) * sum_d - f16_to_f32(b->dmin) * sum_m;
    }
    QDEV float decode(const block *b, int i) {
        const int h = i / 128, s = (i % 128) / 32, l = i % 32;
        const int sc = b->scales[8 * h + 2 * s + l / 16];
        const float dl = __fmul_rn(f16_to_f32(b->d), (float)(sc & 0xF));
        const float ml = __fmul_rn(f16_to_f32(b->dmin), (float)(sc >> 4));
        const int q = (b->qs[32 * h + l] >> (2 * s)) & 3;
        return __fsub_rn(__fmul_rn(dl, (float)q), ml);
    }
};

/* ---- Q3_K: as Q2_K's bit pairs in qs, plus hmask byte l bit 4h + s: when clear, 4 is
 * subtracted; scales: realm_q3_K_scale (6-bit, offset 32 removed) of sub-block
 * 8h + 2s + l / 16; x = d * scale * q. Parts as Q2_K. ---------------------------- */
struct fmt_q3_K {
    typedef block_q3_K block;
    static constexpr int QK = QK_K, NPART = 16;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        const int h = part / 8, w = part % 8;
        const int vl = load_b2(b->qs, part);
        const int vh = ~load_b2(b->hmask, w) >> (4 * h); /* set bit: subtract 4 */
        float sum = 0.0f;
#pragma unroll
        for (int s = 0; s < 4; s++) {
            const block_q8_1 *ys = y + 4 * h + s;
            const int u = load_b4(ys->qs, w);
            const int vi = (int)__vsubss4((vl >> (2 * s)) & 0x03030303, ((vh >> s) << 2) & 0x04040404);
            const int scale = realm_q3_K_scale(b->scales, 8 * h + 2 * s + w / 4);
            sum += q8_d(ys) * (__dp4a(vi, u, 0) * scale);
        }
        return f16_to_f32(b->d) * sum;
    }
    QDEV float decode(const block *b, int i) {
        const int h = i / 128, s = (i % 128) / 32, l = i % 32;
        const float dl = __fmul_rn(f16_to_f32(b->d), (float)realm_q3_K_scale(b->scales, 8 * h + 2 * s + l / 16));
        const int q = ((b->qs[32 * h + l] >> (2 * s)) & 3) - ((b->hmask[l] >> (4 * h + s)) & 1 ? 0 : 4);
        return __fmul_rn(dl, (float)q);
    }
};

/* ---- Q4_K / Q5_K: qs byte 32g + l holds element 64g + l (low nibble, sub-block 2g)
 * and 64g + 32 + l (high nibble, sub-block 2g + 1); Q5_K's qh byte l bit 2g / 2g + 1
 * is their fifth bit. x = d * scale * q - dmin * min (realm_k4_scale_min).
 * Part p (0..15): g = p / 4, k = p % 4 takes qs words 8g + k and 8g + k + 4
 * (l = 4k .. 4k+3 and 16 + 4k ..), against q8_1 blocks 2g, 2g + 1, words k, k + 4. */
template <bool HIGH_BIT>
QDEV float dot_k4(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales, realm_f16 d, realm_f16 dmin,
                  const block_q8_1 *y, int part) {
    const int g = part / 4, k = part % 4;
    const int v0 = load_b4(qs, 8 * g + k), v1 = load_b4(qs, 8 * g + k + 4);
    const int h0 = HIGH_BIT ? load_b4(qh, k) >> (2 * g) : 0, h1 = HIGH_BIT ? load_b4(qh, k + 4) >> (2 * g) : 0;
    float sum_d = 0.0f, sum_m = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const block_q8_1 *yi = y + 2 * g + i;
        const int u0 = load_b4(yi->qs, k), u1 = load_b4(yi->qs, k + 4);
        int w0 = (v0 >> (4 * i)) & 0x0F0F0F0F, w1 = (v1 >> (4 * i)) & 0x0F0F0F0F;
        if (HIGH_BIT) {
            w0 |= ((h0 >> i) << 4) & 0x10101010;
            w1 |= ((h1 >> i) << 4) & 0x10101010;
        }
        uint8_t sc, m;
        realm_k4_scale_min(2 * g + i, scales, &sc, &m);
        const float d8 = q8_d(yi);
        sum_d += d8 * (__dp4a(w1, u1, __dp4a(w0, u0, 0)) * (int)sc);
        sum_m += d8 * (__dp4a(0x01010101, u1, __dp4a(0x01010101, u0, 0)) * (int)m);
    }
    return f16_to_f32(d) * sum_d - f16_to_f32(dmin) * sum_m;
}
QDEV float decode_k4(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales, realm_f16 d, realm_f16 dmin,
                     int i) {
    const int g = i / 64, hi = (i % 64) / 32, l = i % 32;
    uint8_t sc, m;
    realm_k4_scale_min(2 * g + hi, scales, &sc, &m);
    const float dl = __fmul_rn(f16_to_f32(d), (float)sc), ml = __fmul_rn(f16_to_f32(dmin), (float)m);
    int q = hi ? (qs[32 * g + l] >> 4) : (qs[32 * g + l] & 0xF);
    if (qh) q += ((qh[l] >> (2 * g + hi)) & 1) ? 16 : 0;
    return __fsub_rn(__fmul_rn(dl, (float)q), ml);
}

struct fmt_q4_K {
    typedef block_q4_K block;
    static constexpr int QK = QK_K, NPART = 16;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        return dot_k4<false>(b->qs, nullptr, b->scales, b->d, b->dmin, y, part);
    }
    QDEV float decode(const block *b, int i) { return decode_k4(b->qs, nullptr, b->scales, b->d, b->dmin, i); }
};

struct fmt_q5_K {
    typedef block_q5_K block;
    static constexpr int QK = QK_K, NPART = 16;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        return dot_k4<true>(b->qs, b->qh, b->scales, b->d, b->dmin, y, part);
    }
    QDEV float decode(const block *b, int i) { return decode_k4(b->qs, b->qh, b->scales, b->d, b->dmin, i); }
};

/* ---- Q6_K: in half h (128 elements), element 128h + 32c + l (c = 0..3, l = 0..31)
 * has its low 4 bits in ql[64h + 32 (c % 2) + l] (low nibble for c < 2, high nibble
 * otherwise), its high 2 bits in qh[32h + l] bits 2c, 2c+1, and the int8 scale
 * scales[8h + 2c + l / 16]; x = d * scale * (q - 32).
 * Part p (0..31): h = p / 16, c0 = (p % 16) / 8 takes ql word p (l = 4 (p % 8) ..)
 * for c = c0 (low nibbles) and c0 + 2 (high nibbles), qh word 8h + p % 8. ------- */
struct fmt_q6_K {
    typedef block_q6_K block;
    static constexpr int QK = QK_K, NPART = 32;
    QDEV float dot(const block *b, const block_q8_1 *y, int part) {
        const int h = part / 16, c0 = (part % 16) / 8, w = part % 8;
        const int vl = load_b2(b->ql, part);
        const int vh = load_b2(b->qh, 8 * h + w) >> (2 * c0);
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = c0 + 2 * i;
            const block_q8_1 *yc = y + 4 * h + c;
            const int q = ((vl >> (4 * i)) & 0x0F0F0F0F) | (((vh >> (4 * i)) << 4) & 0x30303030);
            const int scale = b->scales[8 * h + 2 * c + w / 4];
            sum += q8_d(yc) * (__dp4a((int)__vsubss4(q, 0x20202020), load_b4(yc->qs, w), 0) * scale);
        }
        return f16_to_f32(b->d) * sum;
    }
    QDEV float decode(const block *b, int i) {
        const int h = i / 128, c = (i % 128) / 32, l = i % 32;
        const int lo = b->ql[64 * h + 32 * (c % 2) + l];
        const int q = ((c < 2 ? lo & 0xF : lo >> 4) | (((b->qh[32 * h + l] >> (2 * c)) & 3) << 4)) - 32;
        const float ds = __fmul_rn(f16_to_f32(b->d), (float)b->scales[8 * h + 2 * c + l / 16]);
        return __fmul_rn(ds, (float)q);
    }
};

/* ---- float weights: "blocks" of one element, decode(b, i) = b[i] as float ---------- */
struct fmt_f32 {
    typedef float block;
    static constexpr int QK = 1;
    QDEV float decode(const block *b, int i) { return b[i]; }
};
struct fmt_f16 {
    typedef realm_f16 block;
    static constexpr int QK = 1;
    QDEV float decode(const block *b, int i) { return f16_to_f32(b[i]); }
};
struct fmt_bf16 {
    typedef realm_bf16 block;
    static constexpr int QK = 1;
    QDEV float decode(const block *b, int i) { return bf16_to_f32(b[i]); }
};

#endif /* REALM_CUDA_QUANTS_CUH */
