/* vec_dot.h: dot products of one quantized weight row with one activation row that
 * act_quant.c has rounded to the weight's vec dot type. The weight blocks are decoded
 * in registers inside the loop: no decoded copy of a row ever exists.
 *
 * Each format has a scalar kernel (always built, always tested) and SIMD kernels for
 * AVX2 and AVX-512 (VNNI where the CPU has it), compiled with per-file target pragmas
 * and chosen at run time by CPU feature detection.
 */
#ifndef REALM_VEC_DOT_H
#define REALM_VEC_DOT_H

#include <stdint.h>

/* *s = dot(weight row w, activation row a), both of n elements. */
typedef void (*realm_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);

/* One weight row times n_tokens activation rows (prefill): s[t * ls] = dot(w, a + t * la)
 * for t < n_tokens (ls in floats, la in bytes). Each weight block is decoded once for
 * several tokens. Its result for a token is bit for bit that of the single-row kernel
 * of the same ISA. */
typedef void (*realm_vec_dot_nx_fn)(int64_t n, float *s, int64_t ls, const void *w, const void *a, int64_t la,
                                    int n_tokens);

/* Eight consecutive weight rows times n_tokens activation rows (matmul tiles): row r at
 * w + r * lw, token t at a + t * la (both in bytes), s[t * ls + r] = dot(row r, token t)
 * for r < 8, t < n_tokens (ls in floats). Each output is bit for bit that of the
 * single-row kernel of the same ISA. The 16-row kernels (AVX-512, where 16 rows fill a
 * register's lanes) share this type, with r < 16. */
typedef void (*realm_vec_dot_8r_fn)(int64_t n, float *s, int64_t ls, const void *w, int64_t lw, const void *a,
                                    int64_t la, int n_tokens);

/* Up to this many tokens a matmul reads its weights from memory once, as decode does
 * (a batched step of several guests' decode rows): the kernels prefetch the rows ahead
 * and matmul.c gives each thread a fixed range of rows. */
#define REALM_DECODE_TOKENS_MAX 8

enum realm_isa {
    REALM_ISA_SCALAR = 0,
    REALM_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    REALM_ISA_AVX512 = 2, /* AVX-512 F/BW/VL/DQ + VNNI */
};

/* Number of type ids a dispatch table covers (the highest is REALM_TYPE_Q4_K_X16 = 65,
 * the ggml types end at BF16 = 30). */
#define REALM_N_TYPES 66

/* The best ISA this CPU supports. */
int realm_cpu_isa(void);
/* The ISA the kernels use: the best one unless forced lower (tests force scalar). */
int realm_active_isa(void);
/* Force an ISA (clamped to what the CPU supports); -1 restores the best. Returns the
 * ISA now active. Not thread-safe: call it between kernel calls. */
int realm_set_isa(int isa);

/* The kernel for weight type `wtype` at `isa` (falling back to a lower ISA where a
 * format has no kernel at that level); NULL for an unsupported type. */
realm_vec_dot_fn realm_get_vec_dot(int wtype, int isa);

/* The multi-token kernel of the same ISA that realm_get_vec_dot(wtype, isa) picks;
 * NULL where that ISA has none (the caller loops over the single-row kernel). */
realm_vec_dot_nx_fn realm_get_vec_dot_nx(int wtype, int isa);

/* The 8-row kernel of the same ISA that realm_get_vec_dot(wtype, isa) picks; NULL
 * where that ISA has none (the caller uses the single-row kernels). */
realm_vec_dot_8r_fn realm_get_vec_dot_8r(int wtype, int isa);

/* The 16-row kernel of that ISA (realm_vec_dot_8r_fn's signature, 16 rows); NULL where
 * it has none. */
realm_vec_dot_8r_fn realm_get_vec_dot_16r(int wtype, int isa);

/* For several tokens at once (those realm_vec_dot_gemm_tokens picks): the kernel in the
 * order llama.cpp's batched matmul sums, where this ISA level mirrors one: llamafile's
 * tinyBLAS for f32/f16/bf16 (AVX-512), ggml-cpu's tiled K-quant matmul for
 * Q3_K/Q5_K/Q6_K (AVX2, AVX-512), its repacked Q4_K kernel for 4 tokens (every ISA);
 * NULL elsewhere (use realm_get_vec_dot). The _nx, _8r and _16r getters give its
 * multi-token, 8-row and 16-row forms, or NULL. */
realm_vec_dot_fn realm_get_vec_dot_gemm(int wtype, int isa);
realm_vec_dot_nx_fn realm_get_vec_dot_gemm_nx(int wtype, int isa);
realm_vec_dot_8r_fn realm_get_vec_dot_gemm_8r(int wtype, int isa);
realm_vec_dot_8r_fn realm_get_vec_dot_gemm_16r(int wtype, int isa);
/* How many of rows first .. first+n_tokens-1 of a call of call_tokens rows, from the
 * first, llama.cpp multiplies in its batched order by an n_rows x n_cols weight of
 * wtype: every row of a call of 2 or more for the float types (n_cols a multiple of
 * 16), of 8 or more for the tiled K-quants; for Q4_K, which it repacks where n_rows is
 * a multiple of 8, the rows in the call's whole groups of 4 (the rest one by one); 0
 * where the active ISA has no batched kernel. */
int64_t realm_vec_dot_gemm_tokens(int wtype, int64_t n_rows, int64_t n_cols, int64_t call_tokens, int64_t first,
                                  int64_t n_tokens);

/* The kernel of a repacked type (ggml_blocks.h: Q4_0_X16, Q4_K_X16), in
 * realm_vec_dot_8r_fn's form with 16 rows: w is the group's first block, lw the bytes of
 * one row (a group spans 16 * lw), any n_tokens; `batched`: in the batched order of the
 * type it was made from (realm_get_vec_dot_gemm), NULL where that type has none. The
 * best at or below isa; a scalar one always exists. Its outputs are bit for bit those
 * of the type it was made from in the same order. NULL for a type that is not repacked. */
realm_vec_dot_8r_fn realm_get_vec_dot_x16(int wtype, int isa, int batched);

/* Per-ISA tables, indexed by type id; NULL entries fall back. */
extern const realm_vec_dot_fn realm_vec_dot_scalar[REALM_N_TYPES];
extern const realm_vec_dot_fn realm_vec_dot_gemm_scalar[REALM_N_TYPES];
extern const realm_vec_dot_8r_fn realm_vec_dot_x16_scalar[REALM_N_TYPES];
extern const realm_vec_dot_8r_fn realm_vec_dot_x16_gemm_scalar[REALM_N_TYPES];
const realm_vec_dot_8r_fn *realm_vec_dot_x16_table_avx512(void);
const realm_vec_dot_8r_fn *realm_vec_dot_x16_gemm_table_avx512(void);
const realm_vec_dot_fn *realm_vec_dot_table_avx2(void);
const realm_vec_dot_fn *realm_vec_dot_table_avx512(void);
const realm_vec_dot_nx_fn *realm_vec_dot_nx_table_avx2(void);
const realm_vec_dot_nx_fn *realm_vec_dot_nx_table_avx512(void);
const realm_vec_dot_8r_fn *realm_vec_dot_8r_table_avx2(void);
const realm_vec_dot_8r_fn *realm_vec_dot_8r_table_avx512(void);
const realm_vec_dot_8r_fn *realm_vec_dot_16r_table_avx2(void);
const realm_vec_dot_8r_fn *realm_vec_dot_16r_table_avx512(void);
const realm_vec_dot_8r_fn *realm_vec_dot_gemm_16r_table_avx2(void);
const realm_vec_dot_8r_fn *realm_vec_dot_gemm_16r_table_avx512(void);
const realm_vec_dot_fn *realm_vec_dot_gemm_table_avx2(void);
const realm_vec_dot_fn *realm_vec_dot_gemm_table_avx512(void);
const realm_vec_dot_nx_fn *realm_vec_dot_gemm_nx_table_avx2(void);
const realm_vec_dot_nx_fn *realm_vec_dot_gemm_nx_table_avx512(void);
const realm_vec_dot_8r_fn *realm_vec_dot_gemm_8r_table_avx2(void);
const realm_vec_dot_8r_fn *realm_vec_dot_gemm_8r_table_avx512(void);

#endif
