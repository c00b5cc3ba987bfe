/* vec_dot_avx512.c: the dot kernels for AVX-512 F/BW/VL/DQ + VNNI: the 256-bit
 * kernels of vec_dot_x86.inc with vpdpbusd / vpdpwssd (and 512-bit paths where they pay). */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#define REALM_X86_VNNI 1
#define REALM_X86_GGML16 1 /* float rows in an AVX-512 llama.cpp build's order */
#include "vec_dot_x86.inc"

REALM_X86_DEFINE_TABLES(avx512)

static const realm_vec_dot_8r_fn x16_table[REALM_N_TYPES] = {[REALM_TYPE_Q4_0_X16] = x86_dot_x16_q4_0,
                                                              [REALM_TYPE_Q4_K_X16] = x86_dot_x16_q4_K};
static const realm_vec_dot_8r_fn x16_gemm_table[REALM_N_TYPES] = {[REALM_TYPE_Q4_K_X16] = x86_dot_x16_q4_K_gemm4};
const realm_vec_dot_8r_fn *realm_vec_dot_x16_table_avx512(void) { return x16_table; }
const realm_vec_dot_8r_fn *realm_vec_dot_x16_gemm_table_avx512(void) { return x16_gemm_table; }
#else
/* not an x86 build: vec_dot.c never asks for these tables */
typedef int realm_vec_dot_avx512_unused;
#endif
