/* ggml_blocks.h: the one definition of the GGUF block formats.
 *
 * Every block struct is laid out byte for byte as ggml writes it to a GGUF file
 * (little-endian, packed, no padding), and its size is asserted below. The C kernels,
 * the Cython wrappers and the CUDA kernels (through NVRTC) all include this file.
 *
 * Conventions: a "row" is ne0 consecutive elements (the GGUF innermost dimension).
 * A row of n elements of a block format is n / QK blocks, back to back.
 * f16 scales are stored as raw IEEE half bits (uint16_t); see fp16.h for conversion.
 */
#ifndef REALM_GGML_BLOCKS_H
#define REALM_GGML_BLOCKS_H

#if defined(__CUDACC_RTC__)
/* NVRTC has no libc headers: the fixed-width types come from the CUDA built-ins. */
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned short uint16_t;
typedef short int16_t;
typedef unsigned int uint32_t;
typedef int int32_t;
#define REALM_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#include <stdint.h>
#if defined(__cplusplus)
#define REALM_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define REALM_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
#endif

/* helpers on the formats are usable from host C and from CUDA device code */
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define REALM_FMT_FN static __host__ __device__ inline
#else
#define REALM_FMT_FN static inline
#endif

typedef uint16_t realm_f16;  /* IEEE 754 binary16 bits */
typedef uint16_t realm_bf16; /* bfloat16 bits (the top half of an f32) */

/* ggml_type ids, as stored in a GGUF tensor info. */
enum realm_ggml_type {
    REALM_TYPE_F32 = 0,
    REALM_TYPE_F16 = 1,
    REALM_TYPE_Q4_0 = 2,
    REALM_TYPE_Q4_1 = 3,
    REALM_TYPE_Q5_0 = 6,
    REALM_TYPE_Q5_1 = 7,
    REALM_TYPE_Q8_0 = 8,
    REALM_TYPE_Q8_1 = 9,
    REALM_TYPE_Q2_K = 10,
    REALM_TYPE_Q3_K = 11,
    REALM_TYPE_Q4_K = 12,
    REALM_TYPE_Q5_K = 13,
    REALM_TYPE_Q6_K = 14,
    REALM_TYPE_Q8_K = 15,
    REALM_TYPE_BF16 = 30,
    /* Repacked layouts below: made from a file's tensor at load (csrc/cpu/repack.h),
     * never stored in a file; their ids lie past every ggml type. */
    REALM_TYPE_Q4_0_X16 = 64,
    REALM_TYPE_Q4_K_X16 = 65,
};

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

/* ---- 32-element block formats -------------------------------------------------- */

/* Q4_0: x = d * (q - 8); qs[i] holds element i (low nibble) and i + 16 (high nibble). */
typedef struct {
    realm_f16 d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;
REALM_STATIC_ASSERT(sizeof(block_q4_0) == 18, "block_q4_0 must be 18 bytes");

/* Q4_0_X16: block i of 16 consecutive Q4_0 rows, interleaved for the 16-row kernels
 * (one row per 32-bit lane of a 512-bit register): d[r] is row r's d, qs[k][r] holds
 * row r's qs bytes 4k .. 4k+3. A matrix of n_rows (a multiple of 16) is n_rows / 16
 * groups back to back, each the group's blocks in order: the same bytes as Q4_0,
 * 18 per row and block. */
typedef struct {
    realm_f16 d[16];
    uint8_t qs[4][16][4];
} block_q4_0_x16;
REALM_STATIC_ASSERT(sizeof(block_q4_0_x16) == 16 * sizeof(block_q4_0), "block_q4_0_x16 must be 16 Q4_0 blocks");

/* Q4_1: x = d * q + m; nibble order as Q4_0. */
typedef struct {
    realm_f16 d;
    realm_f16 m;
    uint8_t qs[QK4_1 / 2];
} block_q4_1;
REALM_STATIC_ASSERT(sizeof(block_q4_1) == 20, "block_q4_1 must be 20 bytes");

/* Q5_0: x = d * (q - 16); bit 4 of element i is bit i of qh (little-endian u32). */
typedef struct {
    realm_f16 d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
REALM_STATIC_ASSERT(sizeof(block_q5_0) == 22, "block_q5_0 must be 22 bytes");

/* Q5_1: x = d * q + m; bits as Q5_0. */
typedef struct {
    realm_f16 d;
    realm_f16 m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;
REALM_STATIC_ASSERT(sizeof(block_q5_1) == 24, "block_q5_1 must be 24 bytes");

/* Q8_0: x = d * q. Also the activation format for Q4_0/Q5_0/Q8_0 dot products. */
typedef struct {
    realm_f16 d;
    int8_t qs[QK8_0];
} block_q8_0;
REALM_STATIC_ASSERT(sizeof(block_q8_0) == 34, "block_q8_0 must be 34 bytes");

/* Q8_1: activation format for Q4_1/Q5_1 dot products; s = d * sum(qs). */
typedef struct {
    realm_f16 d;
    realm_f16 s;
    int8_t qs[QK8_1];
} block_q8_1;
REALM_STATIC_ASSERT(sizeof(block_q8_1) == 36, "block_q8_1 must be 36 bytes");

/* ---- 256-element "K" super-block formats ------------------------------------------ */

/* Q2_K: 16 sub-blocks of 16. scales[j] = scale (low 4 bits) | min (high 4 bits);
 * x = d * scale * q - dmin * min, q in 0..3. qs: 2-bit values, see dequant.c. */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    realm_f16 d;
    realm_f16 dmin;
} block_q2_K;
REALM_STATIC_ASSERT(sizeof(block_q2_K) == 84, "block_q2_K must be 84 bytes");

/* Q3_K: 16 sub-blocks of 16 with 6-bit signed scales (offset 32) packed in 12 bytes;
 * x = d * (scale - 32) * (q - 4 * !hbit), q the low 2 bits. */
typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    realm_f16 d;
} block_q3_K;
REALM_STATIC_ASSERT(sizeof(block_q3_K) == 110, "block_q3_K must be 110 bytes");

/* The 6-bit scale j (0..15) of a Q3_K block, offset of 32 removed: low 4 bits in
 * scales[0..7] (two per byte), high 2 bits in scales[8..11]. */
REALM_FMT_FN int realm_q3_K_scale(const uint8_t *scales, int j) {
    const int lo = j < 8 ? (scales[j] & 0xF) : (scales[j - 8] >> 4);
    const int hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

/* Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes;
 * x = d * scale * q - dmin * min, q in 0..15. */
typedef struct {
    realm_f16 d;
    realm_f16 dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;
REALM_STATIC_ASSERT(sizeof(block_q4_K) == 144, "block_q4_K must be 144 bytes");

/* Q4_K_X16: block i of 16 consecutive Q4_K rows, interleaved for the 16-row kernels:
 * w[k][r] is 32-bit word k of row r's block (words 0-3: d, dmin and the 12 scale
 * bytes; 4 + 8j .. 11 + 8j: qs bytes 32j .. 32j + 31). Groups as Q4_0_X16's, the same
 * bytes as Q4_K, 144 per row and block. */
typedef struct {
    uint32_t w[sizeof(block_q4_K) / 4][16];
} block_q4_K_x16;
REALM_STATIC_ASSERT(sizeof(block_q4_K_x16) == 16 * sizeof(block_q4_K), "block_q4_K_x16 must be 16 Q4_K blocks");

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block: j < 4 in the
 * low 6 bits of bytes j and j+4; j >= 4 in the nibbles of byte j+4 plus the top two
 * bits of bytes j-4 (scale) and j (min). */
REALM_FMT_FN void realm_k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Q5_K: as Q4_K with a fifth bit per element in qh. */
typedef struct {
    realm_f16 d;
    realm_f16 dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
REALM_STATIC_ASSERT(sizeof(block_q5_K) == 176, "block_q5_K must be 176 bytes");

/* Q6_K: 16 sub-blocks of 16 with int8 scales; x = d * scale * (q - 32), q 6 bits
 * (low 4 in ql, high 2 in qh). */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    realm_f16 d;
} block_q6_K;
REALM_STATIC_ASSERT(sizeof(block_q6_K) == 210, "block_q6_K must be 210 bytes");

/* Q8_K: activation format for the K-quant dot products. d is a float (not f16);
 * bsums[j] = sum of qs[16j .. 16j+15]. */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
REALM_STATIC_ASSERT(sizeof(block_q8_K) == 292, "block_q8_K must be 292 bytes");

/* Elements per block and bytes per block of a type (of one row's block for a repacked
 * type, whose rows hold the same bytes interleaved); 0 for a type this project does
 * not handle. */
REALM_FMT_FN int realm_type_block_elems(int type) {
    switch (type) {
    case REALM_TYPE_F32: case REALM_TYPE_F16: case REALM_TYPE_BF16: return 1;
    case REALM_TYPE_Q4_0: case REALM_TYPE_Q4_1: case REALM_TYPE_Q5_0:
    case REALM_TYPE_Q5_1: case REALM_TYPE_Q8_0: case REALM_TYPE_Q8_1: return 32;
    case REALM_TYPE_Q4_0_X16: return QK4_0; /* per row, as Q4_0 */
    case REALM_TYPE_Q4_K_X16: return QK_K;
    case REALM_TYPE_Q2_K: case REALM_TYPE_Q3_K: case REALM_TYPE_Q4_K:
    case REALM_TYPE_Q5_K: case REALM_TYPE_Q6_K: case REALM_TYPE_Q8_K: return QK_K;
    default: return 0;
    }
}

REALM_FMT_FN int realm_type_block_bytes(int type) {
    switch (type) {
    case REALM_TYPE_F32: return 4;
    case REALM_TYPE_F16: case REALM_TYPE_BF16: return 2;
    case REALM_TYPE_Q4_0: case REALM_TYPE_Q4_0_X16: return (int)sizeof(block_q4_0);
    case REALM_TYPE_Q4_1: return (int)sizeof(block_q4_1);
    case REALM_TYPE_Q5_0: return (int)sizeof(block_q5_0);
    case REALM_TYPE_Q5_1: return (int)sizeof(block_q5_1);
    case REALM_TYPE_Q8_0: return (int)sizeof(block_q8_0);
    case REALM_TYPE_Q8_1: return (int)sizeof(block_q8_1);
    case REALM_TYPE_Q2_K: return (int)sizeof(block_q2_K);
    case REALM_TYPE_Q3_K: return (int)sizeof(block_q3_K);
    case REALM_TYPE_Q4_K: case REALM_TYPE_Q4_K_X16: return (int)sizeof(block_q4_K);
    case REALM_TYPE_Q5_K: return (int)sizeof(block_q5_K);
    case REALM_TYPE_Q6_K: return (int)sizeof(block_q6_K);
    case REALM_TYPE_Q8_K: return (int)sizeof(block_q8_K);
    default: return 0;
    }
}

/* The file type a repacked type was made from (its rows' blocks, reordered), or the
 * type itself for one that is not repacked. */
REALM_FMT_FN int realm_repacked_from(int type) {
    switch (type) {
    case REALM_TYPE_Q4_0_X16: return REALM_TYPE_Q4_0;
    case REALM_TYPE_Q4_K_X16: return REALM_TYPE_Q4_K;
    default: return type;
    }
}

#endif /* REALM_GGML_BLOCKS_H */
