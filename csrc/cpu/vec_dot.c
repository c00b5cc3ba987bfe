/* vec_dot.c: run-time choice of the dot-product kernels. */
#include "vec_dot.h"

#include <stddef.h>

#include "ggml_blocks.h"

static int detect_isa(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        return REALM_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return REALM_ISA_AVX2;
#endif
    return REALM_ISA_SCALAR;
}

static int best_isa = -1;
static int forced_isa = -1;

int realm_cpu_isa(void) {
    if (best_isa < 0) best_isa = detect_isa();
    return best_isa;
}

int realm_active_isa(void) {
    const int best = realm_cpu_isa();
    return forced_isa >= 0 && forced_isa < best ? forced_isa : best;
}

int realm_set_isa(int isa) {
    forced_isa = isa < 0 ? -1 : isa;
    return realm_active_isa();
}

/* The ISA level whose single-row kernel serves `wtype` at `isa` (the highest level at
 * or below isa that has one), or -1 for an unsupported type. The multi-token and
 * 8-row kernels come from the same level, so all three agree bit for bit. */
static int kernel_level(int wtype, int isa) {
    if (wtype < 0 || wtype >= REALM_N_TYPES || !realm_vec_dot_scalar[wtype]) return -1;
    if (isa > realm_cpu_isa()) isa = realm_cpu_isa();
#if defined(__x86_64__) || defined(__i386__)
    if (isa >= REALM_ISA_AVX512 && realm_vec_dot_table_avx512()[wtype]) return REALM_ISA_AVX512;
    if (isa >= REALM_ISA_AVX2 && realm_vec_dot_table_avx2()[wtype]) return REALM_ISA_AVX2;
#endif
    return REALM_ISA_SCALAR;
}

realm_vec_dot_fn realm_get_vec_dot(int wtype, int isa) {
    switch (kernel_level(wtype, isa)) {
#if defined(__x86_64__) || defined(__i386__)
    case REALM_ISA_AVX512: return realm_vec_dot_table_avx512()[wtype];
    case REALM_ISA_AVX2: return realm_vec_dot_table_avx2()[wtype];
#endif
    case REALM_ISA_SCALAR: return realm_vec_dot_scalar[wtype];
    default: return NULL;
    }
}

/* The SIMD-only kernels: NULL where the level has none (the caller falls back to the
 * single-row kernel). One getter per table, all alike. */
#if defined(__x86_64__) || defined(__i386__)
#define SIMD_GETTER(fn_type, name, table)                                          \
    fn_type name(int wtype, int isa) {                                             \
        switch (kernel_level(wtype, isa)) {                                        \
        case REALM_ISA_AVX512: return realm_vec_dot_##table##_table_avx512()[wtype]; \
        case REALM_ISA_AVX2: return realm_vec_dot_##table##_table_avx2()[wtype];     \
        default: return NULL;                                                      \
        }                                                                          \
    }
#else
#define SIMD_GETTER(fn_type, name, table)     \
    fn_type name(int wtype, int isa) {        \
        (void)kernel_level(wtype, isa);       \
        return NULL;                          \
    }
#endif
SIMD_GETTER(realm_vec_dot_nx_fn, realm_get_vec_dot_nx, nx)
SIMD_GETTER(realm_vec_dot_8r_fn, realm_get_vec_dot_8r, 8r)
SIMD_GETTER(realm_vec_dot_8r_fn, realm_get_vec_dot_16r, 16r)
SIMD_GETTER(realm_vec_dot_nx_fn, realm_get_vec_dot_gemm_nx, gemm_nx)
SIMD_GETTER(realm_vec_dot_8r_fn, realm_get_vec_dot_gemm_8r, gemm_8r)
SIMD_GETTER(realm_vec_dot_8r_fn, realm_get_vec_dot_gemm_16r, gemm_16r)

realm_vec_dot_8r_fn realm_get_vec_dot_x16(int wtype, int isa, int batched) {
    if (wtype < 0 || wtype >= REALM_N_TYPES || !realm_vec_dot_x16_scalar[wtype]) return NULL;
    const realm_vec_dot_8r_fn *scalar = batched ? realm_vec_dot_x16_gemm_scalar : realm_vec_dot_x16_scalar;
#if defined(__x86_64__) || defined(__i386__)
    if (isa > realm_cpu_isa()) isa = realm_cpu_isa();
    const realm_vec_dot_8r_fn *avx512 =
        batched ? realm_vec_dot_x16_gemm_table_avx512() : realm_vec_dot_x16_table_avx512();
    if (isa >= REALM_ISA_AVX512 && avx512[wtype]) return avx512[wtype];
#else
    (void)isa;
#endif
    return scalar[wtype];
}

realm_vec_dot_fn realm_get_vec_dot_gemm(int wtype, int isa) {
    switch (kernel_level(wtype, isa)) {
#if defined(__x86_64__) || defined(__i386__)
    case REALM_ISA_AVX512: return realm_vec_dot_gemm_table_avx512()[wtype];
    case REALM_ISA_AVX2: return realm_vec_dot_gemm_table_avx2()[wtype];
#endif
    case REALM_ISA_SCALAR: return realm_vec_dot_gemm_scalar[wtype];
    default: return NULL;
    }
}

int64_t realm_vec_dot_gemm_tokens(int wtype, int64_t n_rows, int64_t n_cols, int64_t call_tokens, int64_t first,
                                  int64_t n_tokens) {
    wtype = realm_repacked_from(wtype); /* a repacked type's rows sum as its file type's */
    if (!realm_get_vec_dot_gemm(wtype, realm_active_isa()) || n_tokens <= 0) return 0;
    switch (wtype) {
    case REALM_TYPE_Q4_K: {
        const int64_t grouped = call_tokens - call_tokens % 4 - first; /* of these rows */
        return n_rows % 8 ? 0 : grouped < 0 ? 0 : grouped < n_tokens ? grouped : n_tokens;
    }
    case REALM_TYPE_Q3_K:
    case REALM_TYPE_Q5_K:
    case REALM_TYPE_Q6_K: return call_tokens >= 8 ? n_tokens : 0;
    default: return call_tokens >= 2 && n_cols % 16 == 0 ? n_tokens : 0;
    }
}
