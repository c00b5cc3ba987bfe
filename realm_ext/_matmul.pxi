# Matmul and activation-rounding wrappers (included by _kernels.pyx).
import operator
import os as _os

cdef extern from "vec_dot.h":
    int realm_cpu_isa() nogil
    int realm_active_isa() nogil
    int realm_set_isa(int isa) nogil

cdef extern from "act_quant.h":
    int realm_vec_dot_type(int wtype) nogil
    int64_t realm_act_row_bytes(int act_type, int64_t n) nogil

cdef extern from "matmul.h":
    int64_t realm_matmul_scratch_bytes(int wtype, int64_t n_cols, int64_t n_tokens) nogil
    int realm_quantize_acts(int wtype, const float *x, int64_t n_cols, int64_t n_tokens, void *xq,
                            int n_threads) nogil
    int realm_matmul(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const float *x,
                     int64_t n_tokens, float *y, int64_t ldy, void *scratch, int n_threads) nogil

cdef extern from "repack.h":
    int realm_repack_type(int wtype, int64_t n_rows, int64_t n_cols) nogil
    int realm_repack(int wtype, int packed_type, const void *src, void *dst, int64_t n_rows,
                     int64_t n_cols) nogil

cdef extern from "ggml_blocks.h":
    enum: REALM_TYPE_Q4_0_X16
    enum: REALM_TYPE_Q4_K_X16

ISA_NAMES = ("scalar", "avx2", "avx512")
# the repacked types (ggml_blocks.h, csrc/cpu/repack.h)
TYPE_Q4_0_X16 = REALM_TYPE_Q4_0_X16
TYPE_Q4_K_X16 = REALM_TYPE_Q4_K_X16


def cpu_isa() -> str:
    """The best instruction set this CPU offers the kernels."""
    return ISA_NAMES[realm_cpu_isa()]


def active_isa() -> str:
    """The instruction set the kernels use now."""
    return ISA_NAMES[realm_active_isa()]


def set_isa(name) -> str:
    """Force the kernels to an instruction set ('scalar', 'avx2', 'avx512'), clamped to
    what the CPU has; None restores the best. Returns the one now active."""
    if name is None:
        return ISA_NAMES[realm_set_isa(-1)]
    if name not in ISA_NAMES:
        raise ValueError(f"unknown instruction set {name!r} (choose from {', '.join(ISA_NAMES)})")
    return ISA_NAMES[realm_set_isa(ISA_NAMES.index(name))]


def default_threads() -> int:
    return len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else (_os.cpu_count() or 1)


# More threads than this only queue up (the kernels' pool itself stops at 256).
MAX_THREADS = 1024


def _threads(n_threads) -> int:
    """n_threads for a kernel: 0 means every CPU we may run on; at most MAX_THREADS."""
    n = operator.index(n_threads)
    if n < 0:
        raise ValueError(f"n_threads must be >= 0, got {n}")
    return min(n or default_threads(), MAX_THREADS)


def vec_dot_type(int wtype) -> int:
    """The ggml type activations are rounded to before a dot with a `wtype` weight."""
    cdef int t = realm_vec_dot_type(wtype)
    if t < 0:
        raise ValueError(f"no dot product for ggml type id {wtype}")
    return t


def quantize_acts(int wtype, const float[:, ::1] x, n_threads=0):
    """x (n_tokens, n_cols) rounded to the vec dot type of `wtype`: raw uint8 rows."""
    cdef int64_t n_tokens = x.shape[0], n_cols = x.shape[1]
    cdef int64_t rb = realm_matmul_scratch_bytes(wtype, n_cols, 1)
    if rb < 0:
        raise ValueError(f"cannot round rows of {n_cols} for ggml type id {wtype}")
    out = np.empty((n_tokens, rb), dtype=np.uint8)
    cdef uint8_t[:, ::1] o = out
    cdef int nt = _threads(n_threads)
    cdef int rc = 0
    if n_tokens:
        with nogil:
            rc = realm_quantize_acts(wtype, &x[0, 0], n_cols, n_tokens, &o[0, 0], nt)
    if rc:
        raise ValueError("activation rounding failed")
    return out


def matmul(const uint8_t[:, ::1] w, int wtype, const float[:, ::1] x, float[:, ::1] out=None,
           n_threads=0):
    """out[t, r] = dot(W row r, x row t) for W raw (n_rows, row_bytes) of `wtype` and
    x (n_tokens, n_cols) float32; returns out (n_tokens, n_rows) float32."""
    cdef int64_t n_rows = w.shape[0], n_tokens = x.shape[0], n_cols = x.shape[1]
    cdef int64_t rb = _row_bytes(wtype, n_cols)
    if w.shape[1] != rb:
        raise ValueError(f"weight rows are {w.shape[1]} bytes, expected {rb} for {n_cols} columns")
    if out is None:
        out = np.empty((n_tokens, n_rows), dtype=np.float32)
    if out.shape[0] != n_tokens or out.shape[1] != n_rows:
        raise ValueError(f"out is {out.shape[0]}x{out.shape[1]}, expected {n_tokens}x{n_rows}")
    cdef int64_t sb = realm_matmul_scratch_bytes(wtype, n_cols, n_tokens)
    if sb < 0:
        raise ValueError(f"no matmul for ggml type id {wtype} with rows of {n_cols}")
    scratch = np.empty(max(sb, 1), dtype=np.uint8)
    cdef uint8_t[::1] s = scratch
    cdef int nt = _threads(n_threads)
    cdef int rc = 0
    if n_rows and n_tokens:
        with nogil:
            rc = realm_matmul(&w[0, 0], wtype, n_rows, n_cols, &x[0, 0], n_tokens, &out[0, 0], n_rows,
                              &s[0], nt)
    if rc:
        raise ValueError("matmul failed")
    return np.asarray(out)


def repack_type(int wtype, int64_t n_rows, int64_t n_cols) -> int:
    """The repacked type (TYPE_Q4_0_X16, TYPE_Q4_K_X16) the active ISA's kernels read faster than an
    n_rows x n_cols matrix of `wtype`, or -1 where there is none."""
    return realm_repack_type(wtype, n_rows, n_cols)


def repack(const uint8_t[:, ::1] w, int wtype, int packed_type, uint8_t[:, ::1] out=None):
    """W raw (n_rows, row_bytes) of `wtype` repacked to `packed_type` into out (a new
    array of W's shape by default); returns out, for matmul with packed_type."""
    cdef int64_t n_rows = w.shape[0], rb = w.shape[1]
    cdef int qk = realm_type_block_elems(wtype), bb = realm_type_block_bytes(wtype)
    if qk == 0 or bb == 0 or rb % bb:
        raise ValueError(f"rows of {rb} bytes are not whole blocks of ggml type id {wtype}")
    cdef int64_t n_cols = rb // bb * qk
    if out is None:
        out = np.empty((n_rows, rb), dtype=np.uint8)
    if out.shape[0] != n_rows or out.shape[1] != rb:
        raise ValueError(f"out is {out.shape[0]}x{out.shape[1]}, expected {n_rows}x{rb}")
    cdef const uint8_t *src = &w[0, 0] if n_rows and rb else NULL
    cdef uint8_t *dst = &out[0, 0] if n_rows and rb else NULL
    if dst != NULL and src + n_rows * rb > dst and dst + n_rows * rb > src:
        raise ValueError("out overlaps w")
    cdef int rc
    with nogil:
        rc = realm_repack(wtype, packed_type, src, dst, n_rows, n_cols)
    if rc:
        raise ValueError(
            f"cannot repack a {n_rows} x {n_cols} matrix of ggml type id {wtype} to type id {packed_type}"
        )
    return np.asarray(out)
