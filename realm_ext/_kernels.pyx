# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Cython wrappers over the C kernels in csrc/.

Every wrapper checks shapes and dtypes before a pointer reaches C (the typed
memoryviews enforce dtype and C-contiguity) and releases the GIL around the C call.
The rows of a tensor are C-contiguous: a quantized tensor is an (n_rows, row_bytes)
uint8 array, its decoded form an (n_rows, n_cols) float32 array.
"""
from libc.math cimport sqrtf
from libc.stdint cimport int32_t, int64_t, uint8_t

import numpy as np


cdef extern from "ggml_blocks.h":
    int realm_type_block_elems(int type) nogil
    int realm_type_block_bytes(int type) nogil


cdef extern from "dequant.h":
    int realm_dequantize_row(int type, const void *src, float *dst, int64_t n) nogil


cdef extern from "quantize.h":
    int realm_quantize_row_k(int type, const float *src, void *dst, int64_t n) nogil


def block_elems(int ggml_type) -> int:
    """Elements per block of a ggml type (1 for F32/F16/BF16), 0 if unsupported."""
    return realm_type_block_elems(ggml_type)


def block_bytes(int ggml_type) -> int:
    """Bytes per block of a ggml type, 0 if unsupported."""
    return realm_type_block_bytes(ggml_type)


cdef int64_t _row_bytes(int ggml_type, int64_t n_cols) except -1:
    cdef int qk = realm_type_block_elems(ggml_type)
    if qk == 0:
        raise ValueError(f"unsupported ggml type id {ggml_type}")
    if n_cols % qk != 0:
        raise ValueError(f"row of {n_cols} elements is not a multiple of the block size {qk} of type id {ggml_type}")
    return n_cols // qk * realm_type_block_bytes(ggml_type)


def dequantize_rows(const uint8_t[:, ::1] src, int ggml_type, float[:, ::1] dst) -> None:
    """Decode src (n_rows, row_bytes) of ggml_type into dst (n_rows, n_cols) float32."""
    cdef int64_t n_rows = dst.shape[0], n_cols = dst.shape[1], rb
    rb = _row_bytes(ggml_type, n_cols)
    if src.shape[0] != n_rows or src.shape[1] != rb:
        raise ValueError(f"source is {src.shape[0]}x{src.shape[1]} bytes, expected {n_rows}x{rb} for {n_cols} columns")
    cdef int64_t r
    cdef int rc = 0
    if n_rows == 0 or n_cols == 0:
        return
    with nogil:
        for r in range(n_rows):
            rc |= realm_dequantize_row(ggml_type, &src[r, 0], &dst[r, 0], n_cols)
    if rc != 0:
        raise ValueError(f"no row decoder for ggml type id {ggml_type}")


def quantize_rows_k(const float[:, ::1] src, int ggml_type, uint8_t[:, ::1] dst) -> None:
    """Encode src (n_rows, n_cols) float32 into dst (n_rows, row_bytes) as a K-quant."""
    cdef int64_t n_rows = src.shape[0], n_cols = src.shape[1], rb
    rb = _row_bytes(ggml_type, n_cols)
    if dst.shape[0] != n_rows or dst.shape[1] != rb:
        raise ValueError(f"destination is {dst.shape[0]}x{dst.shape[1]} bytes, expected {n_rows}x{rb}")
    cdef int64_t r
    cdef int rc = 0
    if n_rows == 0 or n_cols == 0:
        return
    with nogil:
        for r in range(n_rows):
            rc |= realm_quantize_row_k(ggml_type, &src[r, 0], &dst[r, 0], n_cols)
    if rc != 0:
        raise ValueError(f"no K-quant encoder for ggml type id {ggml_type}")


include "_matmul.pxi"
include "_kv_ring.pxi"
include "_llama.pxi"


# ---- the C-API table of _kernels.pxd, for realm_ext/_host_native.pyx ----------------

cdef int kernel_embed(const realm_llama_dims *d, const realm_tensor *w, const int32_t *ids, int64_t n_ids,
                      float *out) noexcept nogil:
    return realm_llama_embed(d, w, ids, n_ids, out)


cdef int kernel_forward_layers(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                               int32_t count, realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x,
                               float *out, realm_llama_scratch *s, int n_threads, realm_step_queue *q,
                               realm_call_control *ctl, int64_t *done) noexcept nogil:
    return realm_llama_forward_layers(d, layers, first, count, kv, pos, n_tokens, x, out, s, n_threads, q, ctl,
                                      done)


cdef int kernel_lm_head(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                        const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s, int n_threads,
                        realm_step_queue *q, realm_call_control *ctl, int64_t *done) noexcept nogil:
    return realm_llama_lm_head_chunked(d, output_norm, output, x, n_tokens, logits, s, n_threads, q, ctl, done)


cdef int kernel_call_stopped(const realm_call_control *c) noexcept nogil:
    return realm_call_stopped(c)
