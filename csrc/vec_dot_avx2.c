/* vec_dot_avx2.c: avx2 kernels (in progress). */
#include <stddef.h>

#include "vec_dot.h"

static const realm_vec_dot_fn table[REALM_N_TYPES] = {NULL};

const realm_vec_dot_fn *realm_vec_dot_table_avx2(void) { return table; }
