/* repack.c: see repack.h. */
#include "repack.h"
#include "realm_errors.h"

#include <string.h>

#include "ggml_blocks.h"
#include "vec_dot.h"

/* The repacked form of wtype, or -1 */
static int packed_type_of(int wtype) {
    switch (wtype) {
    case REALM_TYPE_Q4_0: return REALM_TYPE_Q4_0_X16;
    case REALM_TYPE_Q4_K: return REALM_TYPE_Q4_K_X16;
    default: return -1;
    }
}

/* wtype, packed_type and the shape make a repack realm_repack does */
static int repackable(int wtype, int packed_type, int64_t n_rows, int64_t n_cols) {
    const int qk = realm_type_block_elems(wtype);
    return packed_type >= 0 && packed_type == packed_type_of(wtype) && n_rows > 0 && n_rows % 16 == 0 &&
           n_cols > 0 && n_cols % qk == 0;
}

int realm_repack_type(int wtype, int64_t n_rows, int64_t n_cols) {
    const int packed = packed_type_of(wtype);
    if (!repackable(wtype, packed, n_rows, n_cols)) return -1;
    /* where the active ISA's kernel is the scalar one, the file's layout reads faster */
    const realm_vec_dot_8r_fn x16 = realm_get_vec_dot_x16(packed, realm_active_isa(), 0);
    return x16 && x16 != realm_vec_dot_x16_scalar[packed] ? packed : -1;
}

/* 16 Q4_0 rows (row r at rows + r * nb blocks) into nb blocks at out */
static void pack_q4_0_x16(const block_q4_0 *rows, int64_t nb, block_q4_0_x16 *out) {
    for (int64_t i = 0; i < nb; i++)
        for (int r = 0; r < 16; r++) {
            const block_q4_0 *b = rows + r * nb + i;
            out[i].d[r] = b->d;
            for (int k = 0; k < 4; k++) memcpy(out[i].qs[k][r], b->qs + 4 * k, 4);
        }
}

/* 16 Q4_K rows (row r at rows + r * nb blocks) into nb blocks at out: a transpose of
 * 32-bit words, block by block */
static void pack_q4_K_x16(const block_q4_K *rows, int64_t nb, block_q4_K_x16 *out) {
    for (int64_t i = 0; i < nb; i++)
        for (int r = 0; r < 16; r++)
            for (size_t k = 0; k < sizeof(block_q4_K) / 4; k++)
                memcpy(&out[i].w[k][r], (const char *)(rows + r * nb + i) + 4 * k, 4);
}

int realm_repack(int wtype, int packed_type, const void *src, void *dst, int64_t n_rows, int64_t n_cols) {
    if (!src || !dst || !repackable(wtype, packed_type, n_rows, n_cols)) return REALM_ERR_INVALID;
    const int64_t nb = n_cols / realm_type_block_elems(wtype);
    for (int64_t g = 0; g < n_rows / 16; g++) {
        if (wtype == REALM_TYPE_Q4_0)
            pack_q4_0_x16((const block_q4_0 *)src + g * 16 * nb, nb, (block_q4_0_x16 *)dst + g * nb);
        else
            pack_q4_K_x16((const block_q4_K *)src + g * 16 * nb, nb, (block_q4_K_x16 *)dst + g * nb);
    }
    return 0;
}
