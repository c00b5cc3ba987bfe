# The CPU forward pass of a llama model (included by _kernels.pyx, after _kv_ring.pxi).
from libc.stdlib cimport calloc, free
from libc.stdint cimport uint64_t
from libc.string cimport memset


import weakref


cdef extern from "fair_lock.h" nogil:  # realm_fair_lock: _kernels.pxd
    int realm_fair_lock_init(realm_fair_lock *l)
    void realm_fair_lock_destroy(realm_fair_lock *l)
    uint64_t realm_fair_lock_acquire(realm_fair_lock *l, uint64_t *ahead)
    void realm_fair_lock_release(realm_fair_lock *l)
    uint64_t realm_fair_lock_grants(realm_fair_lock *l)

cdef extern from "ops.h":
    int realm_get_rows(const void *w, int wtype, int64_t n_rows, int64_t n_cols, const int32_t *ids,
                       int64_t n_ids, float *out) nogil

cdef extern from "llama_steps.h":  # the structs: _kernels.pxd
    enum:
        REALM_STEP_TOKENS_DEFAULT
    int realm_step_queue_init(realm_step_queue *q) nogil
    void realm_step_queue_destroy(realm_step_queue *q) nogil
    void realm_step_queue_forget(realm_step_queue *q, const void *ring) nogil

cdef extern from "llama.h":  # the structs: _kernels.pxd
    int realm_llama_check_layer(const realm_llama_dims *d, const realm_llama_layer *L) nogil
    int64_t realm_llama_scratch_init(realm_llama_scratch *s, const realm_llama_dims *d,
                                     const realm_llama_layer *layers, int32_t n_layer,
                                     const realm_tensor *output, int64_t max_tokens, int64_t att_floats,
                                     void *buf, int64_t buf_bytes) nogil
    int realm_llama_layer_forward(const realm_llama_dims *d, const realm_llama_layer *L, int32_t layer,
                                  realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x, float *out,
                                  realm_llama_scratch *s, int n_threads) nogil
    int realm_llama_embed(const realm_llama_dims *d, const realm_tensor *token_embd, const int32_t *ids,
                          int64_t n_ids, float *out) nogil
    int realm_llama_lm_head(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                            const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s,
                            int n_threads) nogil


cdef extern from "llama_steps.h":
    void realm_call_cancel(realm_call_control *c) nogil
    void realm_call_arm(realm_call_control *c, int64_t deadline_ns) nogil
    int realm_call_stopped(const realm_call_control *c) nogil
    void realm_llama_chunk_shape(const realm_llama_dims *d, const realm_kv_ring *kv, int64_t max_tokens,
                                 int64_t pos, int64_t n_tokens, int32_t n_layers, int64_t *tokens,
                                 int32_t *layers) nogil
    int realm_llama_forward_layers(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                                   int32_t count, realm_kv_ring *kv, int64_t pos, int64_t n_tokens,
                                   const float *x, float *out, realm_llama_scratch *s, int n_threads,
                                   realm_step_queue *q, realm_call_control *ctl, int64_t *done) nogil
    int realm_llama_lm_head_chunked(const realm_llama_dims *d, const float *output_norm,
                                    const realm_tensor *output, const float *x, int64_t n_tokens, float *logits,
                                    realm_llama_scratch *s, int n_threads, realm_step_queue *q,
                                    realm_call_control *ctl, int64_t *done) nogil

cdef extern from "attention.h":
    int64_t realm_attention_scratch_floats(const realm_kv_ring *kv, int32_t n_head, int n_threads) nogil


STEP_TOKENS_DEFAULT = REALM_STEP_TOKENS_DEFAULT  # csrc/cpu/llama_steps.h


class KernelError(RuntimeError):
    """A kernel returned an error code (the host ABI's codes, DESIGN.md)."""

    def __init__(self, code: int, what: str):
        super().__init__(f"{what} failed with code {code}")
        self.code = code


class CallStopped(KernelError):
    """A chunked call stopped between chunks (REALM_ERR_CANCELLED): cancelled, or past its deadline.
    `done`: the tokens (or LM head rows) that every layer finished."""

    def __init__(self, reason: int, done: int, total: int):
        why = "it was cancelled" if reason == 1 else "its time limit passed"
        RuntimeError.__init__(self, f"stopped after {done} of {total} tokens: {why}")
        self.code, self.done = REALM_ERR_CANCELLED, done


cdef class CallControl:
    """One guest's stop signals for its running call (csrc/cpu/llama_steps.h's realm_call_control):
    the host arms it before each call into the guest (clearing `cancel`, setting the
    deadline), any thread may cancel; the chunked drivers check it between chunks."""

    # attributes: _kernels.pxd

    def arm(self, deadline_s=None):
        """A new call: not cancelled; deadline_s is a time.monotonic() value or None."""
        realm_call_arm(&self.ctl, 0 if deadline_s is None else max(1, <int64_t>(deadline_s * 1e9)))

    def cancel(self):
        realm_call_cancel(&self.ctl)

    @property
    def stopped(self) -> int:
        """0 (go on), 1 (cancelled) or 2 (past the deadline)."""
        return realm_call_stopped(&self.ctl)

    @property
    def chunks(self) -> dict:
        """What the last call's steps met (csrc/cpu/llama_steps.h): how many it took part
        in (`grants` of the model's lock), the first and last grant numbers, and the most
        steps of other calls that ran while it waited for one of its own (`max_ahead`)."""
        c = &self.ctl
        return {"grants": c.chunks, "first": c.first_grant, "last": c.last_grant, "max_ahead": c.max_ahead}

    cdef realm_call_control *ptr(self):
        return &self.ctl


cdef realm_tensor _tensor(entry, str name) except *:
    """entry: (raw uint8 (rows, row_bytes) array, ggml type id, n_rows, n_cols), checked:
    the C code reads n_rows rows of n_cols elements of that type from raw."""
    raw, ggml_type, n_rows, n_cols = entry
    cdef const uint8_t[:, ::1] view = raw
    n_rows, n_cols = operator.index(n_rows), operator.index(n_cols)
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"tensor {name}: {n_rows} x {n_cols} is empty")
    rb = _row_bytes(ggml_type, n_cols)
    if view.shape[0] != n_rows or view.shape[1] != rb:
        raise ValueError(
            f"tensor {name}: raw is {view.shape[0]} x {view.shape[1]} bytes, "
            f"expected {n_rows} x {rb} for {n_rows} rows of {n_cols} elements of type id {ggml_type}"
        )
    cdef realm_tensor t
    t.data = &view[0, 0]
    t.type = ggml_type
    t.n_rows = n_rows
    t.n_cols = n_cols
    return t


cdef const float *_vector(dict norms, str name, int64_t n, bint required) except? NULL:
    """A pointer to norms[name], a float32 [n] vector (kept alive by the caller), or NULL
    when it is absent and not required."""
    arr = norms.get(name)
    if arr is None:
        if required:
            raise KeyError(f"missing {name}")
        return NULL
    if arr.dtype != np.float32 or arr.ndim != 1 or arr.shape[0] != n or not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be float32 [{n}]")
    cdef const float[::1] v = arr
    return &v[0]


SCRATCH_SLACK = 1 << 20  # bytes of attention scratch a closed ring may leave behind


cdef class LlamaRuntime:
    """The C view of a loaded llama model for the CPU kernels: borrowed pointers into
    the memory-mapped weights (kept alive by holding the arrays), f32 copies of the
    norm vectors, and one scratch buffer reused by every call.

    `tensors` maps names to (raw uint8 (rows, row_bytes) array, ggml type id, n_rows,
    n_cols); `norms` maps the names of the 1-D tensors (norms, biases) to float32
    vectors; `dims` is a dict of realm_llama_dims' fields (the family's: rope_neox,
    ffn_act, embd_scale, q_scale, default off) and `layer_rope`, per layer (base, freq
    scale), default the dims'. Built by realm_ext.backends.cpu, not by hand.

    Thread-safe: every forward call, from any thread, is a job of the model's step queue
    (`steps`, csrc/cpu/llama_steps.h, in C so the host's native imports use it without
    the GIL), which runs the calls' rows in batched steps; a step holds the model's fair
    lock (csrc/cpu/fair_lock.h), which guards the scratch buffer. The scratch's attention
    part is sized for the largest ring `reserve`d and not yet `release`d (or dropped)."""

    # attributes: _kernels.pxd

    def __cinit__(self):
        self.layers = NULL
        if realm_step_queue_init(&self.steps):
            raise MemoryError()
        self.ring_needs = weakref.WeakKeyDictionary()

    def __init__(self, dict dims, int n_layer, dict tensors, dict norms, int max_tokens=64):
        if self.layers != NULL:
            # the native host may hold pointers into this runtime: never rebuild one
            raise ValueError("LlamaRuntime is already initialized")
        d = &self.dims
        d.n_embd, d.n_head, d.n_head_kv = dims["n_embd"], dims["n_head"], dims["n_head_kv"]
        d.head_dim, d.n_ff, d.rope_dim, d.n_vocab = dims["head_dim"], dims["n_ff"], dims["rope_dim"], dims["n_vocab"]
        d.rms_eps, d.rope_base = dims["rms_eps"], dims["rope_freq_base"]
        d.rope_freq_scale = dims.get("rope_freq_scale", 1.0)
        d.rope_neox, d.ffn_act = dims.get("rope_neox", 0), dims.get("ffn_act", 0)
        d.embd_scale, d.q_scale = dims.get("embd_scale", 1.0), dims.get("q_scale", 0.0)
        layer_rope = dims.get("layer_rope") or [(d.rope_base, d.rope_freq_scale)] * n_layer
        freqs = _rope_freqs(dims.get("rope_freqs"), d.rope_dim)
        cdef const float[::1] fv
        if freqs is not None:
            fv = freqs
            d.rope_freqs = &fv[0]
        self.n_layer = n_layer
        self.max_tokens = max_tokens
        self.keep = [tensors, norms, freqs]
        if n_layer < 0:
            raise ValueError(f"n_layer must be >= 0, got {n_layer}")
        self.layers = <realm_llama_layer *>calloc(max(n_layer, 1), sizeof(realm_llama_layer))
        if self.layers == NULL:
            raise MemoryError()
        if len(layer_rope) != n_layer:
            raise ValueError(f"layer_rope has {len(layer_rope)} entries for {n_layer} layers")
        for name, arr in norms.items():
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"norm {name} must be a numpy array, got {type(arr).__name__}")
        q_dim, kv_dim = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
        for i in range(n_layer):
            L = &self.layers[i]
            b = f"blk.{i}."
            L.attn_norm = _vector(norms, b + "attn_norm.weight", d.n_embd, True)
            L.ffn_norm = _vector(norms, b + "ffn_norm.weight", d.n_embd, True)
            L.bq = _vector(norms, b + "attn_q.bias", q_dim, False)
            L.bk = _vector(norms, b + "attn_k.bias", kv_dim, False)
            L.bv = _vector(norms, b + "attn_v.bias", kv_dim, False)
            L.q_norm = _vector(norms, b + "attn_q_norm.weight", d.head_dim, False)
            L.k_norm = _vector(norms, b + "attn_k_norm.weight", d.head_dim, False)
            L.attn_post_norm = _vector(norms, b + "post_attention_norm.weight", d.n_embd, False)
            L.ffn_post_norm = _vector(norms, b + "post_ffw_norm.weight", d.n_embd, False)
            L.rope_base, L.rope_freq_scale = layer_rope[i]
            L.wq = _tensor(tensors[f"blk.{i}.attn_q.weight"], f"blk.{i}.attn_q.weight")
            L.wk = _tensor(tensors[f"blk.{i}.attn_k.weight"], f"blk.{i}.attn_k.weight")
            L.wv = _tensor(tensors[f"blk.{i}.attn_v.weight"], f"blk.{i}.attn_v.weight")
            L.wo = _tensor(tensors[f"blk.{i}.attn_output.weight"], f"blk.{i}.attn_output.weight")
            L.w_gate = _tensor(tensors[f"blk.{i}.ffn_gate.weight"], f"blk.{i}.ffn_gate.weight")
            L.w_up = _tensor(tensors[f"blk.{i}.ffn_up.weight"], f"blk.{i}.ffn_up.weight")
            L.w_down = _tensor(tensors[f"blk.{i}.ffn_down.weight"], f"blk.{i}.ffn_down.weight")
            if realm_llama_check_layer(&self.dims, L):
                raise ValueError(f"layer {i}: tensors do not match the model's dimensions")
        self.output_norm = _vector(norms, "output_norm.weight", d.n_embd, True)
        self.output = _tensor(tensors["output.weight"], "output.weight")
        self.token_embd = _tensor(tensors["token_embd.weight"], "token_embd.weight")
        # the C code checks the layers and the output against dims; embedding() writes
        # n_cols floats per token into rows of n_embd
        if self.token_embd.n_rows != d.n_vocab or self.token_embd.n_cols != d.n_embd:
            raise ValueError(f"token_embd.weight must be {d.n_vocab} x {d.n_embd} elements")
        self._ensure_scratch(0)

    def __dealloc__(self):
        free(self.layers)
        realm_step_queue_destroy(&self.steps)

    cdef void acquire(self):
        with nogil:  # wait without holding the GIL: the holder may need it to finish
            realm_fair_lock_acquire(&self.steps.lock, NULL)

    cdef void release_lock(self):
        realm_fair_lock_release(&self.steps.lock)

    @property
    def step_stats(self) -> dict:
        """What the model's step queue has run (csrc/cpu/llama_steps.h): `steps`, the
        `rows` and `jobs` (calls' chunks) in them, `max_jobs`, the most in one step, and
        the seconds spent running steps (`run_s`) and gathering jobs for them (`gather_s`)."""
        q = &self.steps
        return {"steps": q.steps, "rows": q.rows, "jobs": q.jobs, "max_jobs": q.max_jobs,
                "run_s": q.run_ns * 1e-9, "gather_s": q.gather_ns_spent * 1e-9}

    @property
    def step_tokens(self) -> int:
        """Prefill rows a call adds to a step it shares with other guests' decode rows."""
        return self.steps.step_tokens

    @step_tokens.setter
    def step_tokens(self, int64_t n):
        if n < 1:
            raise ValueError(f"step_tokens must be >= 1, got {n}")
        self.steps.step_tokens = n

    @property
    def gather_wait_s(self) -> float:
        """The longest a step waits for the calls it expects (csrc/cpu/llama_steps.h)."""
        return self.steps.gather_ns * 1e-9

    @gather_wait_s.setter
    def gather_wait_s(self, double seconds):
        if not 0 <= seconds <= 10:
            raise ValueError(f"gather_wait_s must be 0 to 10 seconds, got {seconds}")
        self.steps.gather_ns = <int64_t>(seconds * 1e9)

    @property
    def lock_grants(self) -> int:
        """How many times the model's lock was taken: once per chunk of every call."""
        return realm_fair_lock_grants(&self.steps.lock)

    cdef int _check_ring(self, KVRing kv) except -1:
        cdef realm_kv_ring *r = kv.ptr()
        if r.n_head_kv != self.dims.n_head_kv or r.head_dim != self.dims.head_dim:
            raise ValueError(
                f"the KV ring holds {r.n_head_kv} heads of {r.head_dim}, the model "
                f"{self.dims.n_head_kv} of {self.dims.head_dim}"
            )
        return 0

    cdef int _ready(self) except -1:
        if self.scratch_buf is None:
            raise ValueError("LlamaRuntime is not initialized")
        return 0

    def attention_scratch_bytes(self, int64_t n_ctx, n_threads) -> int:
        """Bytes of scratch that attention over a ring of n_ctx positions needs."""
        cdef realm_kv_ring shape  # only the sizes are read
        memset(&shape, 0, sizeof(shape))
        shape.n_head_kv, shape.head_dim, shape.capacity = self.dims.n_head_kv, self.dims.head_dim, n_ctx
        return 4 * realm_attention_scratch_floats(&shape, self.dims.n_head, _threads(n_threads))

    def reserve(self, KVRing kv not None, n_threads):
        """Grow the scratch now for attention over kv with n_threads (so calls that
        cannot allocate, the native imports, find it big enough), and keep it so until
        `release(kv)` or kv is dropped."""
        self._ready()
        cdef int nt = _threads(n_threads)
        self._check_ring(kv)
        cdef int64_t need = realm_attention_scratch_floats(kv.ptr(), self.dims.n_head, nt)
        self.acquire()
        try:
            self._ensure_scratch(need)
            self.ring_needs[kv] = max(need, self.ring_needs.get(kv, 0))
        finally:
            self.release_lock()

    def release(self, KVRing kv not None):
        """kv is closed: when the attention scratch is over twice what the rings still
        reserved need, and by more than SCRATCH_SLACK bytes, shrink it to that (so a
        large ring's scratch goes with it, and small rings coming and going cost no
        reallocation). The step queue stops expecting its calls."""
        self._ready()
        realm_step_queue_forget(&self.steps, kv.ptr())
        self.acquire()
        try:
            self.ring_needs.pop(kv, None)
            need = max(self.ring_needs.values(), default=0)
            if self.scratch.att_scratch_floats > 2 * need + SCRATCH_SLACK // 4:
                self._carve_scratch(need)
        finally:
            self.release_lock()

    cdef int _ensure_scratch(self, int64_t att_floats) except -1:
        """(Re)carve the scratch buffer when attention needs more than it has: this
        allocates only when a ring of a larger capacity (or more threads) shows up."""
        if self.scratch_buf is not None and att_floats <= self.scratch.att_scratch_floats:
            return 0
        return self._carve_scratch(att_floats)

    cdef int _carve_scratch(self, int64_t att_floats) except -1:
        """A scratch buffer of exactly what max_tokens and att_floats need (the lock held)."""
        cdef int64_t need = realm_llama_scratch_init(&self.scratch, &self.dims, self.layers, self.n_layer,
                                                     &self.output, self.max_tokens, att_floats, NULL, 0)
        if need < 0:
            raise ValueError("bad model dimensions for the CPU kernels")
        buf = np.empty(need + 64, dtype=np.uint8)
        cdef uint8_t[::1] b = buf
        cdef size_t addr = <size_t>&b[0]
        cdef int64_t pad = (64 - addr % 64) % 64  # 64-byte aligned
        if realm_llama_scratch_init(&self.scratch, &self.dims, self.layers, self.n_layer, &self.output,
                                    self.max_tokens, att_floats, &b[pad], need) < 0:
            raise ValueError("scratch carving failed")
        self.scratch_buf = buf
        return 0

    def chunk_shape(self, KVRing kv not None, int64_t pos, int64_t n_tokens, int32_t n_layers):
        """(tokens, layers) of the next chunk of a long call at pos (csrc/cpu/llama_steps.h)."""
        cdef int64_t t
        cdef int32_t g
        realm_llama_chunk_shape(&self.dims, kv.ptr(), self.max_tokens, pos, n_tokens, n_layers, &t, &g)
        return t, g

    @property
    def scratch_bytes(self) -> int:
        return 0 if self.scratch_buf is None else int(self.scratch_buf.nbytes)

    def embedding(self, const int32_t[::1] token_ids, float[:, ::1] out):
        """out[i] = the embedding row of token_ids[i] (times the family's embedding scale)."""
        self._ready()
        cdef int64_t n = token_ids.shape[0]
        if out.shape[0] != n or out.shape[1] != self.dims.n_embd:
            raise ValueError(f"out is {out.shape[0]}x{out.shape[1]}, expected {n}x{self.dims.n_embd}")
        if n == 0:
            return
        cdef int rc
        with nogil:
            rc = realm_llama_embed(&self.dims, &self.token_embd, &token_ids[0], n, &out[0, 0])
        if rc == REALM_ERR_RANGE:
            raise IndexError(f"a token id is outside the vocabulary 0..{self.dims.n_vocab - 1}")
        if rc:
            raise KernelError(rc, "embedding")

    def layer(self, int layer, const float[:, ::1] x, int64_t pos, KVRing kv not None, float[:, ::1] out,
              n_threads):
        """One whole layer on x (n_tokens, n_embd) at positions pos.., into out (may be x)."""
        self.forward_layers(layer, 1, x, pos, kv, out, n_threads)

    def forward_layers(self, int first, int count, const float[:, ::1] x, int64_t pos, KVRing kv not None,
                       float[:, ::1] out, n_threads, CallControl control=None):
        """Layers first .. first+count-1 on x (n_tokens, n_embd) at positions pos.., into
        out (may be x), as jobs of the model's step queue (csrc/cpu/llama_steps.h). With `control`, a stop
        between chunks raises CallStopped (the ring then holds the tokens it reports)."""
        self._ready()
        cdef int nt = _threads(n_threads)
        cdef int64_t n = x.shape[0], done = 0
        if x.shape[1] != self.dims.n_embd or out.shape[0] != n or out.shape[1] != self.dims.n_embd:
            raise ValueError(f"x and out must both be (n_tokens, {self.dims.n_embd})")
        if count < 1 or first < 0 or first + count > self.n_layer:
            raise IndexError(f"layers {first}..{first + count - 1} outside 0..{self.n_layer - 1}")
        if pos < 0:
            raise IndexError(f"position {pos} is negative")
        self._check_ring(kv)
        if n == 0:
            return
        cdef realm_kv_ring *ring = kv.ptr()
        cdef realm_call_control *ctl = NULL if control is None else control.ptr()
        cdef int rc
        if self.ring_needs.get(kv, -1) < realm_attention_scratch_floats(ring, self.dims.n_head, nt):
            self.reserve(kv, nt)  # so that no release shrinks the scratch under this call
        with nogil:
            rc = realm_llama_forward_layers(&self.dims, self.layers, first, count, ring, pos, n, &x[0, 0],
                                            &out[0, 0], &self.scratch, nt, &self.steps, ctl, &done)
        if rc == REALM_ERR_CANCELLED:
            raise CallStopped(realm_call_stopped(ctl), done, n)
        if rc == REALM_ERR_RANGE:
            raise IndexError(f"layers {first}..{first + count - 1}, position {pos}: out of range for the KV "
                             f"ring (next positions {kv.n_pos}, capacity {kv.capacity})")
        if rc:
            raise KernelError(rc, f"layers {first}..{first + count - 1}")

    def lm_head(self, const float[:, ::1] x, float[:, ::1] out, n_threads, CallControl control=None):
        """Final norm and output projection: out (n_tokens, n_vocab) logits, in chunks of
        rows under the lock; a stop of `control` between them raises CallStopped."""
        self._ready()
        cdef int nt = _threads(n_threads)
        cdef int64_t n = x.shape[0], done = 0
        if x.shape[1] != self.dims.n_embd or out.shape[0] != n or out.shape[1] != self.dims.n_vocab:
            raise ValueError(f"x must be (n, {self.dims.n_embd}) and out (n, {self.dims.n_vocab})")
        if n == 0:
            return
        cdef realm_call_control *ctl = NULL if control is None else control.ptr()
        cdef int rc
        with nogil:
            rc = realm_llama_lm_head_chunked(&self.dims, self.output_norm, &self.output, &x[0, 0], n, &out[0, 0],
                                             &self.scratch, nt, &self.steps, ctl, &done)
        if rc == REALM_ERR_CANCELLED:
            raise CallStopped(realm_call_stopped(ctl), done, n)
        if rc:
            raise KernelError(rc, "lm_head")


cdef extern from "ops.h":
    void realm_rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps) nogil
    void realm_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, int64_t pos, float base,
                    float freq_scale, const float *freq_factors, int neox) nogil
    void realm_swiglu(const float *gate, const float *up, float *out, int64_t n) nogil
    void realm_geglu(const float *gate, const float *up, float *out, int64_t n) nogil
    void realm_expf_ggml_row(const float *x, float *y, int64_t n) nogil
    int realm_float_order() nogil
    int realm_set_float_order(int order) nogil
    int REALM_ROPE_MAX_DIM

# realm_float_order()'s values, by name: the llama.cpp build whose float order is followed
FLOAT_ORDERS = ("avx512", "avx2")


def float_order() -> str:
    """Whose float order the kernels follow ('avx512' or 'avx2': that llama.cpp build's,
    ops.h); the CPU's unless set_float_order forced one."""
    return FLOAT_ORDERS[realm_float_order()]


def set_float_order(name) -> str:
    """Force a float order ('avx512', 'avx2'), portable and SIMD alike; None restores
    the CPU's. Returns the one now in use."""
    if name is None:
        return FLOAT_ORDERS[realm_set_float_order(-1)]
    if name not in FLOAT_ORDERS:
        raise ValueError(f"unknown float order {name!r} (choose from {', '.join(FLOAT_ORDERS)})")
    return FLOAT_ORDERS[realm_set_float_order(FLOAT_ORDERS.index(name))]


def expf_ggml(const float[::1] x) -> np.ndarray:
    """e^x elementwise as ggml's vectorized expf computes it in the build of float_order()
    (ops.h), float32."""
    out = np.empty(x.shape[0], dtype=np.float32)
    cdef float[::1] o = out
    if x.shape[0]:
        with nogil:
            realm_expf_ggml_row(&x[0], &o[0], x.shape[0])
    return out


def rmsnorm(const float[:, ::1] x, const float[::1] w, float eps, float[:, ::1] out=None):
    """Each row of x (n, d) normalized by its RMS and scaled by w (d,), as ggml does."""
    cdef int64_t n = x.shape[0], d = x.shape[1], i
    if w.shape[0] != d or d == 0:
        raise ValueError(f"w has {w.shape[0]} elements, rows have {d}")
    if out is None:
        out = np.empty((n, d), dtype=np.float32)
    if out.shape[0] != n or out.shape[1] != d:
        raise ValueError("out must have x's shape")
    with nogil:
        for i in range(n):
            realm_rmsnorm(&x[i, 0], &w[0], &out[i, 0], d, eps)
    return np.asarray(out)


def _rope_freqs(freqs, int rope_dim):
    """freqs (None, or rope_dim / 2 positive finite float32 divisors) checked; None or the array."""
    if freqs is None:
        return None
    if not isinstance(freqs, np.ndarray) or freqs.dtype != np.float32 or freqs.shape != (rope_dim // 2,):
        raise ValueError(f"rope_freqs must be a float32 array of rope_dim / 2 = {rope_dim // 2} values")
    if not np.all(np.isfinite(freqs) & (freqs > 0)):
        raise ValueError("rope_freqs must be positive and finite")
    return np.ascontiguousarray(freqs)


def rope(float[:, :, ::1] x, const int64_t[::1] positions, int rope_dim, float base, float freq_scale=1.0,
         freq_factors=None, bint neox=False):
    """RoPE in place on x (n_tokens, n_heads, head_dim): pairs of the first rope_dim dims
    of each head, adjacent or (neox) i and i + rope_dim / 2, token t at positions[t]; the
    angle of pair i is freq_scale * (theta_i / freq_factors[i]) (ops.h)."""
    cdef int64_t n = x.shape[0], h = x.shape[1], hd = x.shape[2], t
    if positions.shape[0] != n:
        raise ValueError(f"{positions.shape[0]} positions for {n} tokens")
    if rope_dim <= 0 or rope_dim % 2 or rope_dim > hd or rope_dim > REALM_ROPE_MAX_DIM:
        raise ValueError(f"rope_dim {rope_dim} must be even and at most head_dim {hd}")
    if not freq_scale > 0:
        raise ValueError(f"freq_scale {freq_scale} must be > 0")
    ff = _rope_freqs(freq_factors, rope_dim)
    cdef const float[::1] fv
    cdef const float *fp = NULL
    if ff is not None:
        fv = ff
        fp = &fv[0]
    with nogil:
        for t in range(n):
            realm_rope(&x[t, 0, 0], h, hd, rope_dim, positions[t], base, freq_scale, fp, neox)
    return np.asarray(x)


def swiglu(const float[::1] gate, const float[::1] up, float[::1] out=None):
    """silu(gate) * up, elementwise."""
    cdef int64_t n = gate.shape[0]
    if up.shape[0] != n:
        raise ValueError("gate and up differ in length")
    if out is None:
        out = np.empty(n, dtype=np.float32)
    if out.shape[0] != n:
        raise ValueError("out differs in length")
    if n:
        with nogil:
            realm_swiglu(&gate[0], &up[0], &out[0], n)
    return np.asarray(out)


def geglu(const float[::1] gate, const float[::1] up, float[::1] out=None):
    """gelu(gate) * up, elementwise, GELU in ggml's tanh-form table (ops.h)."""
    cdef int64_t n = gate.shape[0]
    if up.shape[0] != n:
        raise ValueError("gate and up differ in length")
    if out is None:
        out = np.empty(n, dtype=np.float32)
    if out.shape[0] != n:
        raise ValueError("out differs in length")
    if n:
        with nogil:
            realm_geglu(&gate[0], &up[0], &out[0], n)
    return np.asarray(out)
