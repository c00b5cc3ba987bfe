# The kernels' C types and extension types, for the Cython modules that use them:
# _kernels.pyx itself (which defines the classes) and the host's native imports,
# realm_ext/_host_native.pyx (which cimports them).
#
# The C sources are compiled into _kernels only, so another extension module cannot
# link to their symbols: it calls the few C functions it needs through the cdef
# functions at the end, which Cython exports in _kernels' C-API table.
from libc.stdint cimport int32_t, int64_t, uint16_t, uint64_t


cdef extern from "realm_errors.h":
    enum:
        REALM_OK
        REALM_ERR_INVALID
        REALM_ERR_BOUNDS
        REALM_ERR_MODEL
        REALM_ERR_KV
        REALM_ERR_RANGE
        REALM_ERR_ROWS
        REALM_ERR_NOMEM
        REALM_ERR_CANCELLED
        REALM_ERR_INTERNAL


cdef extern from "kv_ring.h":
    ctypedef uint16_t realm_f16
    ctypedef struct realm_kv_ring:
        int32_t n_layer
        int32_t n_head_kv
        int32_t head_dim
        int64_t capacity
        realm_f16 *k
        realm_f16 *v
        int64_t *n_pos
        int64_t *held_from
        int64_t *slots
        int64_t *window
        int64_t *row0


cdef extern from "fair_lock.h" nogil:
    ctypedef struct realm_fair_lock:
        pass


cdef extern from "llama_steps.h" nogil:
    ctypedef struct realm_step_queue:
        realm_fair_lock lock
        int64_t step_tokens, gather_ns
        uint64_t steps, rows, jobs, max_jobs, run_ns, gather_ns_spent

    ctypedef struct realm_call_control:
        int32_t cancel
        int64_t deadline_ns
        uint64_t chunks, first_grant, last_grant, max_ahead


cdef extern from "llama.h":
    ctypedef struct realm_tensor:
        const void *data
        int32_t type
        int64_t n_rows
        int64_t n_cols

    ctypedef struct realm_llama_dims:
        int32_t n_embd, n_head, n_head_kv, head_dim, n_ff, rope_dim, n_vocab
        float rms_eps, rope_base
        float rope_freq_scale
        const float *rope_freqs
        int32_t rope_neox, ffn_act
        float embd_scale, q_scale

    ctypedef struct realm_llama_layer:
        const float *attn_norm
        const float *ffn_norm
        realm_tensor wq, wk, wv, wo, w_gate, w_up, w_down
        const float *bq
        const float *bk
        const float *bv
        const float *q_norm
        const float *k_norm
        const float *attn_post_norm
        const float *ffn_post_norm
        float rope_base, rope_freq_scale

    ctypedef struct realm_llama_scratch:
        int64_t max_tokens
        int64_t att_scratch_floats


cdef class KVRing:
    cdef realm_kv_ring *_ring
    cdef object _k, _v  # the numpy storage that _ring borrows
    cdef object __weakref__  # LlamaRuntime keeps the rings it sized its scratch for weakly

    cdef realm_kv_ring *ptr(self)


cdef class CallControl:
    cdef realm_call_control ctl

    cdef realm_call_control *ptr(self)


cdef class LlamaRuntime:
    cdef realm_llama_dims dims
    cdef realm_llama_layer *layers
    cdef int32_t n_layer
    cdef realm_tensor output
    cdef realm_tensor token_embd
    cdef const float *output_norm
    cdef realm_llama_scratch scratch
    cdef object keep  # the arrays the pointers point into
    cdef object scratch_buf
    cdef int64_t max_tokens
    cdef realm_step_queue steps  # the model's step queue and its lock (csrc/cpu/llama_steps.h)
    cdef object ring_needs  # KVRing -> attention scratch floats it needs (weak keys)

    cdef void acquire(self)
    cdef void release_lock(self)
    cdef int _check_ring(self, KVRing kv) except -1
    cdef int _ready(self) except -1
    cdef int _ensure_scratch(self, int64_t att_floats) except -1
    cdef int _carve_scratch(self, int64_t att_floats) except -1


# The C kernels the native imports call: realm_llama_embed (csrc/cpu/llama.h),
# realm_llama_forward_layers, realm_llama_lm_head_chunked and realm_call_stopped
# (csrc/cpu/llama_steps.h), with the same arguments.
cdef int kernel_embed(const realm_llama_dims *d, const realm_tensor *w, const int32_t *ids, int64_t n_ids,
                      float *out) noexcept nogil
cdef int kernel_forward_layers(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                               int32_t count, realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x,
                               float *out, realm_llama_scratch *s, int n_threads, realm_step_queue *q,
                               realm_call_control *ctl, int64_t *done) noexcept nogil
cdef int kernel_lm_head(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                        const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s, int n_threads,
                        realm_step_queue *q, realm_call_control *ctl, int64_t *done) noexcept nogil
cdef int kernel_call_stopped(const realm_call_control *c) noexcept nogil
