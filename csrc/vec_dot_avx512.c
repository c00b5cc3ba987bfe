/* vec_dot_avx512.c: avx512 kernels (in progress). */
#include <stddef.h>

#include "vec_dot.h"

static const realm_vec_dot_fn table[REALM_N_TYPES] = {NULL};

const realm_vec_dot_fn *realm_vec_dot_table_avx512(void) { return table; }
