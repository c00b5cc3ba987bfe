/* vec_dot_avx2.c: the dot kernels for AVX2 + FMA + F16C (see vec_dot_x86.inc, where
 * they are written once for this file and vec_dot_avx512.c). */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#define REALM_X86_VNNI 0
#include "vec_dot_x86.inc"

REALM_X86_DEFINE_TABLES(avx2)
#else
/* not an x86 build: vec_dot.c never asks for these tables */
typedef int realm_vec_dot_avx2_unused;
#endif
