# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""One guest's import state, and the hot host imports in C.

`GuestTable` holds what both import paths read and write: the guest's KV rings, its
last error and its call count (realm_ext/host.py's GuestState keeps them here, one
table for both paths). When the backend offers native imports (`native_runtime`, the
CPU backend), the table also holds the granted models' C runtimes, and four imports,
realm_forward_embedding, realm_forward_layer(s) and realm_forward_lm_head, run as the C
functions below: the same checks, in the same order, with the same codes as host.py's
Python versions, as wasmtime "unchecked" callbacks that never touch Python (no GIL, no
objects: a fraction of a Python import's crossing, docs/PERF.md).

wasmtime calls them with `env` = this table's native_env, the caller, and the raw
argument slots (16 bytes each; the i32 result goes back in slot 0). The guest's memory
is looked up through the caller on every call (it can grow and move). Until the host
binds a fully made instance (and again once it unbinds it, before the instance closes)
`memory` is NULL and every callback fails with REALM_ERR_INVALID.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

from realm_ext._kernels cimport (
    REALM_ERR_BOUNDS,
    REALM_ERR_CANCELLED,
    REALM_ERR_INTERNAL,
    REALM_ERR_INVALID,
    REALM_ERR_KV,
    REALM_ERR_MODEL,
    REALM_ERR_RANGE,
    REALM_ERR_ROWS,
    CallControl,
    KVRing,
    LlamaRuntime,
    kernel_call_stopped,
    kernel_forward_layers,
    kernel_embed,
    kernel_lm_head,
    realm_call_control,
    realm_step_queue,
    realm_kv_ring,
    realm_llama_dims,
    realm_llama_layer,
    realm_llama_scratch,
    realm_tensor,
)


ctypedef void *(*caller_context_fn)(void *caller) noexcept nogil
ctypedef uint8_t *(*memory_data_fn)(void *context, const void *memory) noexcept nogil
ctypedef size_t (*memory_size_fn)(void *context, const void *memory) noexcept nogil

cdef enum:
    ERROR_BYTES = 512

ctypedef unsigned long long ull  # for printf


cdef struct native_model:
    uint32_t id
    realm_llama_dims *dims
    realm_llama_layer *layers
    int32_t n_layer
    realm_tensor *output
    realm_tensor *token_embd
    const float *output_norm
    realm_llama_scratch *scratch
    realm_step_queue *steps
    int n_threads


cdef struct native_kv:
    uint64_t id
    uint32_t model_id
    realm_kv_ring *ring


cdef struct native_env:
    # the guest's memory, through wasmtime's C API (set by the engine)
    caller_context_fn caller_context
    memory_data_fn memory_data
    memory_size_fn memory_size
    const void *memory  # the wasmtime_memory_t
    native_model *models
    int n_models
    native_kv *kvs
    int n_kvs
    realm_call_control *control  # the running call's stop signals (the guest's CallControl)
    uint64_t calls
    char error[ERROR_BYTES]  # the C imports' last error (truncated to ERROR_BYTES - 1)
    int error_len  # its length; -1 when the Python path set the last error (GuestTable.py_error)


cdef struct guest_mem:
    uint8_t *base
    uint64_t size


cdef inline uint32_t arg32(const uint8_t *slots, int i) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, slots + 16 * i, 4)  # the engine passes i32s signed: the bits are the u32
    return v


cdef inline uint64_t arg64(const uint8_t *slots, int i) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, slots + 16 * i, 8)
    return v


cdef inline void put_result(uint8_t *slots, int32_t r) noexcept nogil:
    memcpy(slots, &r, 4)


cdef int fail(native_env *e, int code, const char *what, const char *why) noexcept nogil:
    e.error_len = snprintf(e.error, ERROR_BYTES, "%s: %s", what, why)
    return code


cdef const char *NOT_SET_UP = (b"the guest's instance is not set up yet (an import that touches memory ran "
                               b"in its start function)")


NOT_SET_UP_MESSAGE = (<bytes>NOT_SET_UP).decode()  # host.py's message for the same case


cdef inline bint set_up(native_env *e, uint8_t *slots, const char *what) noexcept nogil:
    """Is an instance bound? If not, the call fails with REALM_ERR_INVALID (host.py's NOT_SET_UP)."""
    if e.memory != NULL:
        return True
    put_result(slots, fail(e, REALM_ERR_INVALID, what, NOT_SET_UP))
    return False


cdef guest_mem memory_of(native_env *e, void *caller) noexcept nogil:
    cdef guest_mem m
    cdef void *ctx = e.caller_context(caller)
    m.base = e.memory_data(ctx, e.memory)
    m.size = e.memory_size(ctx, e.memory)
    return m


cdef int span(native_env *e, guest_mem *m, uint64_t ptr, uint64_t nbytes, const char *what) noexcept nogil:
    """[ptr, ptr + nbytes) of 4-byte elements inside guest memory: 0, or the code."""
    if ptr + nbytes > m.size:
        e.error_len = snprintf(e.error, ERROR_BYTES, "%s: [%llu, %llu) is outside guest memory (%llu bytes)",
                               what, <ull>ptr, <ull>(ptr + nbytes), <ull>m.size)
        return REALM_ERR_BOUNDS
    if ptr % 4:
        e.error_len = snprintf(e.error, ERROR_BYTES, "%s: pointer %llu is not 4-byte aligned", what, <ull>ptr)
        return REALM_ERR_INVALID
    return 0


cdef int no_overlap(native_env *e, uint64_t a, uint64_t na, uint64_t b, uint64_t nb, bint allow_equal,
                    const char *what) noexcept nogil:
    if allow_equal and a == b and na == nb:
        return 0
    if a < b + nb and b < a + na:
        return fail(e, REALM_ERR_INVALID, what, "the output overlaps the input (only out == input is allowed)")
    return 0


cdef native_model *find_model(native_env *e, uint32_t model_id, const char *what) noexcept nogil:
    cdef int i
    for i in range(e.n_models):
        if e.models[i].id == model_id:
            return &e.models[i]
    e.error_len = snprintf(e.error, ERROR_BYTES, "%s: model %u is unknown or not granted to this guest", what,
                           model_id)
    return NULL


cdef int rows_of(native_env *e, uint64_t length, uint64_t width, const char *what) noexcept nogil:
    """length / width, or a negative code when empty or not whole rows."""
    if length == 0:
        return fail(e, REALM_ERR_INVALID, what, "hidden_states_len is empty")
    if length % width:
        e.error_len = snprintf(e.error, ERROR_BYTES, "%s: hidden_states_len %llu is not a whole number of rows of %llu",
                               what, <ull>length, <ull>width)
        return REALM_ERR_ROWS
    return <int>(length // width)


# ---- the callbacks --------------------------------------------------------------------

cdef void *cb_forward_embedding(void *env, void *caller, uint8_t *slots, size_t n) noexcept nogil:
    cdef native_env *e = <native_env *>env
    e.calls += 1
    if not set_up(e, slots, "realm_forward_embedding"):
        return NULL
    put_result(slots, forward_embedding(e, memory_of(e, caller), arg32(slots, 0), arg32(slots, 1),
                                        arg32(slots, 2), arg32(slots, 3)))
    return NULL


cdef int32_t forward_embedding(native_env *e, guest_mem m, uint32_t model_id, uint32_t ids_ptr, uint32_t n_tokens,
                               uint32_t out_ptr) noexcept nogil:
    cdef const char *what = "realm_forward_embedding"
    cdef native_model *md = find_model(e, model_id, what)
    if md == NULL:
        return REALM_ERR_MODEL
    if n_tokens == 0:
        return fail(e, REALM_ERR_INVALID, what, "n_tokens is 0")
    cdef uint64_t out_bytes = 4 * <uint64_t>n_tokens * md.dims.n_embd
    cdef int rc = span(e, &m, ids_ptr, 4 * <uint64_t>n_tokens, what)
    if rc == 0:
        rc = span(e, &m, out_ptr, out_bytes, what)
    if rc == 0:
        rc = no_overlap(e, ids_ptr, 4 * <uint64_t>n_tokens, out_ptr, out_bytes, False, what)
    if rc:
        return rc
    rc = kernel_embed(md.dims, md.token_embd, <const int32_t *>(m.base + ids_ptr), n_tokens,
                      <float *>(m.base + out_ptr))
    if rc == REALM_ERR_RANGE:
        e.error_len = snprintf(e.error, ERROR_BYTES, "%s: a token id is outside the vocabulary 0..%d", what,
                               md.dims.n_vocab - 1)
        return REALM_ERR_INVALID
    return fail(e, REALM_ERR_INTERNAL, what, "the embedding kernel failed") if rc else 0


cdef void *cb_forward_layer(void *env, void *caller, uint8_t *slots, size_t n) noexcept nogil:
    cdef native_env *e = <native_env *>env
    e.calls += 1
    if not set_up(e, slots, "realm_forward_layer"):
        return NULL
    put_result(slots, forward_layers(e, memory_of(e, caller), arg32(slots, 0), arg32(slots, 1), 1, arg32(slots, 2),
                                     arg32(slots, 3), arg32(slots, 4), arg64(slots, 5), arg32(slots, 6),
                                     "realm_forward_layer"))
    return NULL


cdef void *cb_forward_layers(void *env, void *caller, uint8_t *slots, size_t n) noexcept nogil:
    cdef native_env *e = <native_env *>env
    e.calls += 1
    if not set_up(e, slots, "realm_forward_layers"):
        return NULL
    put_result(slots, forward_layers(e, memory_of(e, caller), arg32(slots, 0), arg32(slots, 1), arg32(slots, 2),
                                     arg32(slots, 3), arg32(slots, 4), arg32(slots, 5), arg64(slots, 6),
                                     arg32(slots, 7), "realm_forward_layers"))
    return NULL


cdef int32_t forward_layers(native_env *e, guest_mem m, uint32_t model_id, uint32_t first, uint32_t count,
                            uint32_t hs_ptr, uint32_t hs_len, uint32_t position, uint64_t kv_id, uint32_t out_ptr,
                            const char *what) noexcept nogil:
    cdef native_model *md = find_model(e, model_id, what)
    if md == NULL:
        return REALM_ERR_MODEL
    if count == 0:
        return fail(e, REALM_ERR_INVALID, what, "layer_count is 0")
    if first >= <uint32_t>md.n_layer or count > <uint32_t>md.n_layer - first:
        e.error_len = snprintf(e.error, ERROR_BYTES, "%s: layers %u..%llu are outside 0..%d", what, first,
                               <ull>first + count - 1, md.n_layer - 1)
        return REALM_ERR_RANGE
    cdef int n = rows_of(e, hs_len, md.dims.n_embd, what)
    if n < 0:
        return n
    cdef realm_kv_ring *ring = NULL
    cdef int i
    for i in range(e.n_kvs):
        if e.kvs[i].id == kv_id:
            ring = e.kvs[i].ring if e.kvs[i].model_id == model_id else NULL
            break
    if ring == NULL:
        e.error_len = snprintf(e.error, ERROR_BYTES, "%s: KV cache %llu is unknown, not owned by this guest, "
                               "or of another model", what, <ull>kv_id)
        return REALM_ERR_KV
    cdef uint64_t nbytes = 4 * <uint64_t>hs_len
    cdef int rc = span(e, &m, hs_ptr, nbytes, what)
    if rc == 0:
        rc = span(e, &m, out_ptr, nbytes, what)
    if rc == 0:
        rc = no_overlap(e, hs_ptr, nbytes, out_ptr, nbytes, True, what)
    if rc:
        return rc
    cdef uint32_t layer
    for layer in range(first, first + count):
        if ring.n_pos[layer] != position:
            e.error_len = snprintf(e.error, ERROR_BYTES, "%s: layer %u: position %u is not the ring's next "
                                   "position %lld", what, layer, position, <long long>ring.n_pos[layer])
            return REALM_ERR_RANGE
    # the scratch fits the ring: it was reserved for it when the ring was registered
    cdef int64_t done = 0
    rc = kernel_forward_layers(md.dims, md.layers, first, count, ring, position, n,
                               <const float *>(m.base + hs_ptr), <float *>(m.base + out_ptr), md.scratch,
                               md.n_threads, md.steps, e.control, &done)
    if rc == REALM_ERR_CANCELLED:
        return stopped(e, what, done, n)
    if rc:
        e.error_len = snprintf(e.error, ERROR_BYTES, "%s: the layer kernel failed with code %d", what, rc)
        return rc if REALM_ERR_INTERNAL <= rc < 0 else REALM_ERR_INTERNAL
    return 0


cdef int stopped(native_env *e, const char *what, int64_t done, int64_t total) noexcept nogil:
    """REALM_ERR_CANCELLED, with CallStopped's message."""
    e.error_len = snprintf(e.error, ERROR_BYTES, "%s: stopped after %lld of %lld tokens: %s", what,
                           <long long>done, <long long>total,
                           "it was cancelled" if kernel_call_stopped(e.control) == 1 else "its time limit passed")
    return REALM_ERR_CANCELLED


cdef void *cb_forward_lm_head(void *env, void *caller, uint8_t *slots, size_t n) noexcept nogil:
    cdef native_env *e = <native_env *>env
    e.calls += 1
    if not set_up(e, slots, "realm_forward_lm_head"):
        return NULL
    put_result(slots, forward_lm_head(e, memory_of(e, caller), arg32(slots, 0), arg32(slots, 1), arg32(slots, 2),
                                      arg32(slots, 3)))
    return NULL


cdef int32_t forward_lm_head(native_env *e, guest_mem m, uint32_t model_id, uint32_t hs_ptr, uint32_t hs_len,
                             uint32_t out_ptr) noexcept nogil:
    cdef const char *what = "realm_forward_lm_head"
    cdef native_model *md = find_model(e, model_id, what)
    if md == NULL:
        return REALM_ERR_MODEL
    cdef int n = rows_of(e, hs_len, md.dims.n_embd, what)
    if n < 0:
        return n
    cdef uint64_t x_bytes = 4 * <uint64_t>hs_len, out_bytes = 4 * <uint64_t>n * md.dims.n_vocab
    cdef int rc = span(e, &m, hs_ptr, x_bytes, what)
    if rc == 0:
        rc = span(e, &m, out_ptr, out_bytes, what)
    if rc == 0:
        rc = no_overlap(e, hs_ptr, x_bytes, out_ptr, out_bytes, False, what)
    if rc:
        return rc
    cdef int64_t done = 0
    rc = kernel_lm_head(md.dims, md.output_norm, md.output, <const float *>(m.base + hs_ptr), n,
                        <float *>(m.base + out_ptr), md.scratch, md.n_threads, md.steps, e.control, &done)
    if rc == REALM_ERR_CANCELLED:
        return stopped(e, what, done, n)
    return fail(e, REALM_ERR_INTERNAL, what, "the LM head kernel failed") if rc else 0


# ---- the Python side --------------------------------------------------------------------

cdef class GuestTable:
    """One guest's import state, read by both import paths: its KV rings (`kv`: its
    own ids -> host.KVEntry), its last error, its call count, its stop signals; and, for
    native imports, its granted models' C runtimes. realm_ext.host changes it through
    these methods only, so the C arrays the callbacks read and the `kv` dict Python
    reads are one table. The wasmtime engine takes `functions` and `env_address`, and
    calls `bind_wasmtime_memory` once the guest's memory exists."""

    cdef native_env env
    cdef dict runtimes  # model id -> LlamaRuntime (kept alive: env points into them)
    cdef readonly dict kv  # kv id -> KVEntry (its ring kept alive: env may point into it)
    cdef CallControl control  # kept alive: env.control points into it
    cdef bytes py_error  # the last error when the Python path set it (whole, not truncated)

    def __cinit__(self):
        memset(&self.env, 0, sizeof(native_env))
        self.runtimes = {}
        self.kv = {}

    def __dealloc__(self):
        free(self.env.models)
        free(self.env.kvs)

    @property
    def env_address(self) -> int:
        return <uintptr_t>&self.env

    @property
    def functions(self) -> dict:
        """The C callbacks by import name (addresses)."""
        return {
            "realm_forward_embedding": <uintptr_t>cb_forward_embedding,
            "realm_forward_layer": <uintptr_t>cb_forward_layer,
            "realm_forward_layers": <uintptr_t>cb_forward_layers,
            "realm_forward_lm_head": <uintptr_t>cb_forward_lm_head,
        }

    def bind_wasmtime_memory(self, uintptr_t memory, uintptr_t caller_context, uintptr_t memory_data,
                             uintptr_t memory_size):
        """Where the guest's memory is: a wasmtime_memory_t and the C API to read it."""
        self.env.memory = <const void *>memory
        self.env.caller_context = <caller_context_fn>caller_context
        self.env.memory_data = <memory_data_fn>memory_data
        self.env.memory_size = <memory_size_fn>memory_size

    def set_control(self, CallControl control not None):
        """The guest's stop signals, checked between the chunks of a long call."""
        self.control = control
        self.env.control = control.ptr()

    def unbind_memory(self):
        """No instance: every callback fails with REALM_ERR_INVALID until the next bind
        (the memory the old pointers named may be freed)."""
        self.env.memory = NULL
        self.env.caller_context = NULL
        self.env.memory_data = NULL
        self.env.memory_size = NULL

    @property
    def calls(self) -> int:
        """Imports served, by either path."""
        return self.env.calls

    def count_call(self):
        """One import served by the Python path."""
        self.env.calls += 1

    @property
    def last_error(self) -> bytes:
        """The message of the guest's last failed call, from either path."""
        if self.env.error_len < 0:
            return self.py_error
        return self.env.error[:min(self.env.error_len, ERROR_BYTES - 1)]

    @last_error.setter
    def last_error(self, bytes msg not None):
        self.py_error = msg
        self.env.error_len = -1

    # -- models (native imports only) --------------------------------------------------

    def add_model(self, uint32_t model_id, LlamaRuntime rt not None, int n_threads):
        """Serve model_id's forward imports in C, from rt with n_threads."""
        if model_id in self.runtimes:
            return
        cdef native_model *grown = <native_model *>realloc(self.env.models, (self.env.n_models + 1) * sizeof(native_model))
        if grown == NULL:
            raise MemoryError()
        self.env.models = grown
        cdef native_model *md = &grown[self.env.n_models]
        md.id = model_id
        md.dims = &rt.dims
        md.layers = rt.layers
        md.n_layer = rt.n_layer
        md.output = &rt.output
        md.token_embd = &rt.token_embd
        md.output_norm = rt.output_norm
        md.scratch = &rt.scratch
        md.steps = &rt.steps
        md.n_threads = n_threads
        self.env.n_models += 1
        self.runtimes[model_id] = rt

    def remove_model(self, uint32_t model_id):
        cdef int i
        for i in range(self.env.n_models):
            if self.env.models[i].id == model_id:
                self.env.models[i] = self.env.models[self.env.n_models - 1]
                self.env.n_models -= 1
                break
        self.runtimes.pop(model_id, None)

    # -- KV rings ----------------------------------------------------------------------

    def add_kv(self, uint64_t kv_id, entry):
        """Hold entry (a host.KVEntry) as kv_id. A ring of a model served in C must be a
        KVRing: it is registered for the callbacks too (the model's scratch grown for it
        first)."""
        cdef LlamaRuntime rt = self.runtimes.get(entry.model_id)
        if rt is not None:
            self._add_native_kv(kv_id, entry.model_id, rt, entry.ring)
        self.kv[kv_id] = entry

    cdef _add_native_kv(self, uint64_t kv_id, uint32_t model_id, LlamaRuntime rt, KVRing ring):
        if ring is None:
            raise TypeError("a natively served model's KV ring must be a KVRing")
        cdef int i
        for i in range(self.env.n_models):
            if self.env.models[i].id == model_id:
                rt.reserve(ring, self.env.models[i].n_threads)
        cdef native_kv *grown = <native_kv *>realloc(self.env.kvs, (self.env.n_kvs + 1) * sizeof(native_kv))
        if grown == NULL:
            raise MemoryError()
        self.env.kvs = grown
        grown[self.env.n_kvs].id = kv_id
        grown[self.env.n_kvs].model_id = model_id
        grown[self.env.n_kvs].ring = ring.ptr()
        self.env.n_kvs += 1

    def remove_kv(self, uint64_t kv_id):
        """Forget kv_id; returns its entry."""
        cdef int i
        for i in range(self.env.n_kvs):
            if self.env.kvs[i].id == kv_id:
                self.env.kvs[i] = self.env.kvs[self.env.n_kvs - 1]
                self.env.n_kvs -= 1
                break
        return self.kv.pop(kv_id)
