/* quants.cuh: per-format device functions for the matmul kernels (matmul.cu).
 *
 * Every quantized format is a struct `fmt_<type>` with
 *   block        the ggml_blocks.h struct of one weight block (QK elements)
 *   QK           elements per block
 *   act          the activation block it is multiplied with (block_q8_1 or block_q8_K)
 *   QK_ACT       elements per activation block (32 or 256)
 *   NPART        threads that share one block in a dot product; thread `part`
 *                (0 .. NPART-1) covers its own share of the block's elements
 *   dot(b, y, part)   partial dot product of weight block b with the QK / QK_ACT
 *                activation blocks y[0 ..] that cover the same columns; summed over
 *                part = 0 .. NPART-1 it is the whole block's dot product
 *   decode(b, i) element i of block b as float, bit-exact with csrc/cpu/dequant.c (and
 *                ggml): the same float operations in the same order, never fused
 *                (__fmul_rn / __fadd_rn are never contracted into an FMA)
 *
 * The activations are quantized once per call, rounded exactly as the CPU backend
 * (csrc/cpu/act_quant.c, llama.cpp's CPU backend) rounds them for the weight's type:
 *   Q4_0 Q5_0 Q8_0   Q8_0 blocks of 32: d = f16(max|x| / 127), q = rint(x * 127 / max|x|)
 *   Q4_1 Q5_1        Q8_1: the same d and q, and s = f16(d * sum(q)) from d before rounding
 *   K-quants         Q8_K blocks of 256: float d, q, and int16 bsums of 16 q each
 * The Q8_0 activations are stored as block_q8_1 too (d and qs as the CPU's Q8_0 bytes,
 * s unused), so that every 32-element activation block keeps its qs 4-byte aligned.
 * The weight quants are combined with the activation quants 4 at a time by __dp4a on
 * 32-bit words (llama.cpp's CUDA backend, vecdotq.cuh), in integers as far as the CPU
 * keeps integers: the float scales come in per block (per 32 or 256 elements). A block
 * whose size is a multiple of 4 bytes (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) is read in 4-byte
 * words; the others (18, 22, 34, 110, 210 bytes) only keep 2-byte alignment in a row,
 * so they are read as two 16-bit halves (load_b2).
 *
 * The float formats (F32, F16, BF16) are `fmt_f32` etc. with blocks of one element,
 * decode() and round_x(): they are multiplied in float against float activations,
 * rounded to f16 / bf16 first for F16 / BF16 weights (as the CPU does), no 8-bit step.
 *
 * This header is plain C++ apart from the CUDA intrinsics named above, so the tests
 * also compile it for the host with those intrinsics emulated (tests/backends/
 * cuda_host_harness.cpp) to check every formula against gguf's decoders and the CPU
 * backend's matmul on the CPU.
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

/* q8_1 (or Q8_0-rounded) activation block: scale d and s = d * sum(qs) */
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

/* sum over part `part` of (q - OFFSET) * q8, in integers (q - OFFSET fits a signed byte) */
template <bool ALIGNED4, bool FIFTH_BIT, int OFFSET>
QDEV int sumi_q4_q5(const uint8_t *qs, const uint8_t *qh, const block_q8_1 *y, int part) {
    const int h = FIFTH_BIT ? (ALIGNED4 ? load_b4(qh, 0) : load_b2(qh, 0)) : 0;
    const int off = OFFSET * 0x01010101;
    int sumi = 0;
#pragma unroll
    for (int k = 2 * part; k < 2 * part + 2; k++) {
        const int v = ALIGNED4 ? load_b4(qs, k) : load_b2(qs, k);
        sumi = __dp4a((int)__vsubss4(q5_word<0>(v, h, k), off), load_b4(y->qs, k), sumi);
        sumi = __dp4a((int)__vsubss4(q5_word<1>(v, h, k), off), load_b4(y->qs, k + 4), sumi);
    }
    return sumi;
}

/* element i's quant, fifth bit included when qh is given */
QDEV int q4_q5_element(const uint8_t *qs, const uint8_t *qh, int i) {
    const int lo = i < 16 ? (qs[i] & 0xF) : (qs[i - 16] >> 4);
    return qh ? lo | (((qh[i / 8] >> (i % 8)) & 1) << 4) : lo;
}

/* x = d * (q - 8), against Q8_0-rounded activations: d * d8 * sum (q - 8) q8 */
struct fmt_q4_0 {
    typedef block_q4_0 block;
    typedef block_q8_1 act;
    static constexpr int QK = 32, QK_ACT = 32, NPART = 2;
    QDEV float dot(const block *b, const act *y, int part) {
        const int sumi = sumi_q4_q5<false, false, 8>(b->qs, nullptr, y, part);
        return f16_to_f32(b->d) * q8_d(y) * (float)sumi;
    }
    QDEV float decode(const block *b, int i) {
        return __fmul_rn((float)(q4_q5_element(b->qs, nullptr, i) - 8), f16_to_f32(b->d));
    }
};

/* x = d * q + m, against q8_1 activations: the min meets s (the CPU's formula) */
struct fmt_q4_1 {
    typedef block_q4_1 block;
    typedef block_q8_1 act;
    static constexpr int QK = 32, QK_ACT = 32, NPART = 2;
    QDEV float dot(const block *b, const act *y, int part) {
        const int sumi = sumi_q4_q5<true, false, 0>(b->qs, nullptr, y, part);
        return f16_to_f32(b->d) * q8_d(y) * sumi + f16_to_f32(b->m) * q8_s(y) * (1.0f / NPART);
    }
    QDEV float decode(const block *b, int i) {
        return __fadd_rn(__fmul_rn((float)q4_q5_element(b->qs, nullptr, i), f16_to_f32(b->d)), f16_to_f32(b->m));
    }
};

/* x = d * (q - 16), against Q8_0-rounded activations */
struct fmt_q5_0 {
    typedef block_q5_0 block;
    typedef block_q8_1 act;
    static constexpr int QK = 32, QK_ACT = 32, NPART = 2;
    QDEV float dot(const block *b, const act *y, int part) {
        const int sumi = sumi_q4_q5<false, true, 16>(b->qs, b->qh, y, part);
        return f16_to_f32(b->d) * q8_d(y) * (float)sumi;
    }
    QDEV float decode(const block *b, int i) {
        return __fmul_rn((float)(q4_q5_element(b->qs, b->qh, i) - 16), f16_to_f32(b->d));
    }
};

/* x = d * q + m, against q8_1 activations */
struct fmt_q5_1 {
    typedef block_q5_1 block;
    typedef block_q8_1 act;
    static constexpr int QK = 32, QK_ACT = 32, NPART = 2;
    QDEV float dot(const block *b, const act *y, int part) {
        const int sumi = sumi_q4_q5<true, true, 0>(b->qs, b->qh, y, part);
        return f16_to_f32(b->d) * q8_d(y) * sumi + f16_to_f32(b->m) * q8_s(y) * (1.0f / NPART);
    }
    QDEV float decode(const block *b, int i) {
        return __fadd_rn(__fmul_rn((float)q4_q5_element(b->qs, b->qh, i), f16_to_f32(b->d)), f16_to_f32(b->m));
    }
};

/* ---- Q8_0: x = d * q. Part p (0..3) takes words 2p, 2p+1 (elements 8p .. 8p+7);
 * Q8_0-rounded activations ----------------------------------------------------------- */
struct fmt_q8_0 {
    typedef block_q8_0 block;
    typedef block_q8_1 act;
    static constexpr int QK = 32, QK_ACT = 32, NPART = 4;
    QDEV float dot(const block *b, const act *y, int part) {
        int sumi = 0;
#pragma unroll
        for (int k = 2 * part; k < 2 * part + 2; k++) sumi = __dp4a(load_b2(b->qs, k), load_b4(y->qs, k), sumi);
        return f16_to_f32(b->d) * q8_d(y) * sumi;
    }
    QDEV float decode(const block *b, int i) { return __fmul_rn((float)b->qs[i], f16_to_f32(b->d)); }
};

/* ---- K-quants against Q8_K activations ---------------------------------------------
 * block_q8_K (ggml_blocks.h): float d at byte 0, int8 qs[256] at byte 4 (4-byte aligned
 * words: word j holds elements 4j .. 4j+3), int16 bsums[16] at byte 260 (bsums[j] = sum
 * of qs[16j .. 16j+15]). Each part sums its quants times the Q8_K quants in integers,
 * with the integer sub-block scales, and multiplies by the float scales once (as the
 * CPU's dot_*_K do per 256-block); a min term meets bsums (sum of q8 per 16) instead
 * of the quants. Part p of the formats with mins (16 parts) takes bsums[p]. */
QDEV float q8k_d(const block_q8_K *y) { return y->d; }

/* ---- Q2_K: qs byte 32h + l holds in bit pair s the element 128h + 32s + l, whose
 * scale byte is scales[8h + 2s + l / 16] (scale low nibble, min high nibble), i.e.
 * scales[element / 16]; x = d * scale * q - dmin * min. Part p (0..15) takes qs word
 * p: h = p / 8, l = 4 (p % 8) .. +3, for all four s: Q8_K word 32h + 8s + p % 8; its
 * min term is min[p] * bsums[p]. ---------------------------------------------------- */
struct fmt_q2_K {
    typedef block_q2_K block;
    typedef block_q8_K act;
    static constexpr int QK = QK_K, QK_ACT = QK_K, NPART = 16;
    QDEV float dot(const block *b, const act *y, int part) {
        const int h = part / 8, w = part % 8;
        const uint8_t *sc = b->scales + 8 * h + w / 4;
        const int v = load_b4(b->qs, part);
        int sumi = 0;
#pragma unroll
        for (int s = 0; s < 4; s++)
            sumi += __dp4a((v >> (2 * s)) & 0x03030303, load_b4(y->qs, 32 * h + 8 * s + w), 0) * (sc[2 * s] & 0xF);
        const int summs = (b->scales[part] >> 4) * (int)y->bsums[part];
        return q8k_d(y) * (f16_to_f32(b->d) * (float)sumi - f16_to_f32(b->dmin) * (float)summs);
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
 * 8h + 2s + l / 16; x = d * scale * q. Parts as Q2_K (32 parts would halve the
 * hmask loads' use; 16 keep one qs word per part). ---------------------------------- */
struct fmt_q3_K {
    typedef block_q3_K block;
    typedef block_q8_K act;
    static constexpr int QK = QK_K, QK_ACT = QK_K, NPART = 16;
    QDEV float dot(const block *b, const act *y, int part) {
        const int h = part / 8, w = part % 8;
        const int vl = load_b2(b->qs, part);
        const int vh = ~load_b2(b->hmask, w) >> (4 * h); /* set bit: subtract 4 */
        int sumi = 0;
#pragma unroll
        for (int s = 0; s < 4; s++) {
            const int vi = (int)__vsubss4((vl >> (2 * s)) & 0x03030303, ((vh >> s) << 2) & 0x04040404);
            const int scale = realm_q3_K_scale(b->scales, 8 * h + 2 * s + w / 4);
            sumi += __dp4a(vi, load_b4(y->qs, 32 * h + 8 * s + w), 0) * scale;
        }
        return f16_to_f32(b->d) * q8k_d(y) * (float)sumi;
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
 * (l = 4k .. 4k+3 and 16 + 4k ..), against Q8_K words 16g + 8i + k and + 4 for
 * sub-block 2g + i (i = 0, 1); its min term: bsums[p], of sub-block 2g + k / 2. */
template <bool HIGH_BIT>
QDEV float dot_k4(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales, realm_f16 d, realm_f16 dmin,
                  const block_q8_K *y, int part) {
    const int g = part / 4, k = part % 4;
    const int v0 = load_b4(qs, 8 * g + k), v1 = load_b4(qs, 8 * g + k + 4);
    const int h0 = HIGH_BIT ? load_b4(qh, k) >> (2 * g) : 0, h1 = HIGH_BIT ? load_b4(qh, k + 4) >> (2 * g) : 0;
    int sumi = 0, min_p = 0;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int u0 = load_b4(y->qs, 16 * g + 8 * i + k), u1 = load_b4(y->qs, 16 * g + 8 * i + k + 4);
        int w0 = (v0 >> (4 * i)) & 0x0F0F0F0F, w1 = (v1 >> (4 * i)) & 0x0F0F0F0F;
        if (HIGH_BIT) {
            w0 |= ((h0 >> i) << 4) & 0x10101010;
            w1 |= ((h1 >> i) << 4) & 0x10101010;
        }
        uint8_t sc, m;
        realm_k4_scale_min(2 * g + i, scales, &sc, &m);
        sumi += __dp4a(w1, u1, __dp4a(w0, u0, 0)) * (int)sc;
        if (i == k / 2) min_p = m;
    }
    const int summs = min_p * (int)y->bsums[part];
    return q8k_d(y) * (f16_to_f32(d) * (float)sumi - f16_to_f32(dmin) * (float)summs);
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
    typedef block_q8_K act;
    static constexpr int QK = QK_K, QK_ACT = QK_K, NPART = 16;
    QDEV float dot(const block *b, const act *y, int part) {
        return dot_k4<false>(b->qs, nullptr, b->scales, b->d, b->dmin, y, part);
    }
    QDEV float decode(const block *b, int i) { return decode_k4(b->qs, nullptr, b->scales, b->d, b->dmin, i); }
};

struct fmt_q5_K {
    typedef block_q5_K block;
    typedef block_q8_K act;
    static constexpr int QK = QK_K, QK_ACT = QK_K, NPART = 16;
    QDEV float dot(const block *b, const act *y, int part) {
        return dot_k4<true>(b->qs, b->qh, b->scales, b->d, b->dmin, y, part);
    }
    QDEV float decode(const block *b, int i) { return decode_k4(b->qs, b->qh, b->scales, b->d, b->dmin, i); }
};

/* ---- Q6_K: in half h (128 elements), element 128h + 32c + l (c = 0..3, l = 0..31)
 * has its low 4 bits in ql[64h + 32 (c % 2) + l] (low nibble for c < 2, high nibble
 * otherwise), its high 2 bits in qh[32h + l] bits 2c, 2c+1, and the int8 scale
 * scales[8h + 2c + l / 16]; x = d * scale * (q - 32).
 * Part p (0..31): h = p / 16, c0 = (p % 16) / 8 takes ql word p (l = 4 (p % 8) ..)
 * for c = c0 (low nibbles) and c0 + 2 (high nibbles), qh word 8h + p % 8, against
 * Q8_K words 32h + 8c + p % 8. --------------------------------------------------- */
struct fmt_q6_K {
    typedef block_q6_K block;
    typedef block_q8_K act;
    static constexpr int QK = QK_K, QK_ACT = QK_K, NPART = 32;
    QDEV float dot(const block *b, const act *y, int part) {
        const int h = part / 16, c0 = (part % 16) / 8, w = part % 8;
        const int vl = load_b2(b->ql, part);
        const int vh = load_b2(b->qh, 8 * h + w) >> (2 * c0);
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = c0 + 2 * i;
            const int q = ((vl >> (4 * i)) & 0x0F0F0F0F) | (((vh >> (4 * i)) << 4) & 0x30303030);
            const int scale = b->scales[8 * h + 2 * c + w / 4];
            sumi += __dp4a((int)__vsubss4(q, 0x20202020), load_b4(y->qs, 32 * h + 8 * c + w), 0) * scale;
        }
        return f16_to_f32(b->d) * q8k_d(y) * (float)sumi;
    }
    QDEV float decode(const block *b, int i) {
        const int h = i / 128, c = (i % 128) / 32, l = i % 32;
        const int lo = b->ql[64 * h + 32 * (c % 2) + l];
        const int q = ((c < 2 ? lo & 0xF : lo >> 4) | (((b->qh[32 * h + l] >> (2 * c)) & 3) << 4)) - 32;
        const float ds = __fmul_rn(f16_to_f32(b->d), (float)b->scales[8 * h + 2 * c + l / 16]);
        return __fmul_rn(ds, (float)q);
    }
};

/* ---- float weights: "blocks" of one element, decode(b, i) = b[i] as float;
 * round_x(x): an activation as the CPU rounds it for this weight type (to f16 for F16
 * weights, to bf16 for BF16, unchanged for F32), as float ----------------------------- */
struct fmt_f32 {
    typedef float block;
    static constexpr int QK = 1;
    QDEV float decode(const block *b, int i) { return b[i]; }
    QDEV float round_x(float x) { return x; }
};
struct fmt_f16 {
    typedef realm_f16 block;
    static constexpr int QK = 1;
    QDEV float decode(const block *b, int i) { return f16_to_f32(b[i]); }
    QDEV float round_x(float x) { return f16_to_f32(f32_to_f16(x)); }
};
struct fmt_bf16 {
    typedef realm_bf16 block;
    static constexpr int QK = 1;
    QDEV float decode(const block *b, int i) { return bf16_to_f32(b[i]); }
    QDEV float round_x(float x) { return bf16_to_f32(f32_to_bf16(x)); }
};

#endif /* REALM_CUDA_QUANTS_CUH */
