/* vec_dot_avx512.c: the dot kernels for AVX-512 F/BW/VL/DQ + VNNI: the 256-bit
 * kernels of vec_dot_x86.h with vpdpbusd / vpdpwssd. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#define REALM_X86_VNNI 1
#include "vec_dot_x86.h"
#endif

#include <stddef.h>

#include "vec_dot.h"

static const realm_vec_dot_fn table[REALM_N_TYPES] = {
#if defined(__x86_64__) || defined(__i386__)
    REALM_X86_TABLE_ENTRIES,
#else
    NULL
#endif
};

static const realm_vec_dot_nx_fn nx_table[REALM_N_TYPES] = {
#if defined(__x86_64__) || defined(__i386__)
    REALM_X86_NX_TABLE_ENTRIES,
#else
    NULL
#endif
};

static const realm_vec_dot_8r_fn r8_table[REALM_N_TYPES] = {
#if defined(__x86_64__) || defined(__i386__)
    REALM_X86_8R_TABLE_ENTRIES,
#else
    NULL
#endif
};

const realm_vec_dot_fn *realm_vec_dot_table_avx512(void) { return table; }
const realm_vec_dot_nx_fn *realm_vec_dot_nx_table_avx512(void) { return nx_table; }
const realm_vec_dot_8r_fn *realm_vec_dot_8r_table_avx512(void) { return r8_table; }
