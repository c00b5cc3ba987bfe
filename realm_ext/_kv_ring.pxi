# KV ring and attention wrappers (included by _kernels.pyx).
#
# A KVRing owns both halves of a ring: the f16 K/V storage, as two numpy arrays
# (n_layer, capacity, n_head_kv, head_dim), or (rows, n_head_kv, head_dim) when layers
# differ in slots, and the C struct (realm_kv_create_layers / realm_kv_free) that
# borrows them. The struct's rules (kv_ring.h) are the only rules:
# the wrappers check types, shapes and contiguity, let C decide the rest, and turn its
# error codes into exceptions: REALM_ERR_INVALID -> ValueError, REALM_ERR_RANGE ->
# IndexError, REALM_ERR_NOMEM -> MemoryError.
# A ring is not thread-safe: one conversation, one thread at a time.
from libc.stdint cimport int32_t, uint16_t, uintptr_t

import mmap
import operator
import os

import numpy as np


cdef extern from "kv_ring.h":  # realm_kv_ring: _kernels.pxd
    const int64_t REALM_KV_RING_MAX_CAPACITY
    realm_kv_ring *realm_kv_create_layers(int32_t n_layer, const int64_t *slots, const int64_t *window,
                                          int32_t n_head_kv, int32_t head_dim, realm_f16 *k, realm_f16 *v) nogil
    void realm_kv_free(realm_kv_ring *kv) nogil
    int realm_kv_append(realm_kv_ring *kv, int32_t layer, int64_t pos, int64_t n_tokens, const float *k_rows,
                        const float *v_rows) nogil
    int64_t realm_kv_window_start(const realm_kv_ring *kv, int32_t layer, int64_t pos) nogil
    int64_t realm_kv_chunk_limit(const realm_kv_ring *kv, int64_t pos) nogil
    int realm_kv_truncate(realm_kv_ring *kv, int64_t n_pos) nogil


cdef extern from "attention.h":
    ctypedef struct realm_attention_seq:
        const realm_kv_ring *kv
        int64_t pos, n_tokens, batch_tokens
        float kq_scale
    int realm_attention_seqs(const realm_attention_seq *seqs, int n_seqs, int32_t layer, int32_t n_head,
                             const float *q, float *out, float *scratch, int n_threads) nogil
    int64_t realm_attention_scratch_floats(const realm_kv_ring *kv, int32_t n_head, int n_threads) nogil


KV_RING_MAX_CAPACITY = REALM_KV_RING_MAX_CAPACITY
cdef int64_t _INT32_MAX = 2**31 - 1
cdef int64_t _INT64_MAX = 2**63 - 1


def _ring_storage(tuple shape):
    """A zeroed float16 array of `shape` in its own anonymous map, in small pages: a ring
    fills a position at a time, and a huge page (numpy advises them for large arrays)
    would zero 2 MiB at the first append into each region, per new conversation. The
    pages a ring never reaches are never committed. The array holds the map."""
    cdef int64_t nbytes = 2 * int(np.prod(shape, dtype=np.int64))
    try:
        mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as e:  # ENOMEM: as numpy's allocation failing would
        raise MemoryError(f"cannot map {nbytes} bytes for a KV ring: {e}") from e
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux; elsewhere the pages are the system's
        mem.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mem, np.float16).reshape(shape)


cdef _f32_array(a, str name, tuple shape, bint writable=False):
    """a, checked to be a float32 C-contiguous numpy array of `shape` (None: any length)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32 (native byte order), got {a.dtype}")
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        want = "(" + ", ".join("n" if w is None else str(w) for w in shape) + ")"
        raise ValueError(f"{name} has shape {a.shape}, expected {want}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return a


cdef class KVRing:
    """The KV cache of one conversation: K and V of every layer in a ring of slots.

    Layer l has slots[l] slots (`capacity` for all, unless `windows` says otherwise) and
    position p lives in its slot p % slots[l]; attention at p sees positions
    max(0, p - window[l] + 1) .. p. windows: None (every layer attends over all its
    `capacity` slots), or per layer None (the same) or a sliding window w, whose layer
    then holds min(capacity, w + chunk - 1) slots: enough for a chunk of `chunk` tokens
    after a wrap to keep every token's full window. Append positions in order
    (n_pos[layer] is the next one); truncate(n) forgets positions >= n in every layer.
    """

    # attributes: _kernels.pxd

    def __cinit__(self, n_layer, capacity, n_head_kv, head_dim, windows=None, chunk=1):
        dims = {"n_layer": n_layer, "capacity": capacity, "n_head_kv": n_head_kv, "head_dim": head_dim,
                "chunk": chunk}
        for name, value in dims.items():
            value = dims[name] = operator.index(value)
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
            if name not in ("capacity", "chunk") and value > _INT32_MAX:
                raise ValueError(f"{name} {value} is too large")
        cap = dims["capacity"]
        if cap > REALM_KV_RING_MAX_CAPACITY:
            raise ValueError(f"capacity {cap} exceeds the maximum {REALM_KV_RING_MAX_CAPACITY}")
        n = dims["n_layer"]
        win = np.full(n, cap, np.int64)
        if windows is not None:
            if len(windows) != n:
                raise ValueError(f"windows has {len(windows)} entries for {n} layers")
            for i, w in enumerate(windows):
                if w is not None:
                    w = operator.index(w)
                    if w < 1:
                        raise ValueError(f"layer {i}: window must be positive, got {w}")
                    win[i] = min(w, cap)
        slots = np.where(win < cap, np.minimum(win + min(dims["chunk"], cap) - 1, cap), cap).astype(np.int64)
        uniform = bool(np.all(slots == cap) and np.all(win == cap))
        rows = int(slots.sum())
        row_shape = (dims["n_head_kv"], dims["head_dim"])
        self._k = _ring_storage((rows, *row_shape))
        self._v = _ring_storage((rows, *row_shape))
        cdef uint16_t[:, :, ::1] k = self._k.view(np.uint16)
        cdef uint16_t[:, :, ::1] v = self._v.view(np.uint16)
        cdef const int64_t[::1] sv = slots
        cdef const int64_t[::1] wv = win
        self._ring = realm_kv_create_layers(n, &sv[0], &wv[0], row_shape[0], row_shape[1], &k[0, 0, 0],
                                            &v[0, 0, 0])
        if self._ring == NULL:
            raise MemoryError(f"cannot create a KV ring of {n} layers of {cap} positions of {row_shape}")
        if uniform:
            self._k = self._k.reshape(n, cap, *row_shape)
            self._v = self._v.reshape(n, cap, *row_shape)

    def __dealloc__(self):
        realm_kv_free(self._ring)  # the numpy storage goes after, with self's references
        self._ring = NULL

    cdef realm_kv_ring *ptr(self):
        """The C struct, for Cython code in this module (valid while self lives)."""
        return self._ring

    @property
    def address(self):
        """Address of the realm_kv_ring struct (valid while this object lives)."""
        return <uintptr_t>self._ring

    @property
    def k(self):
        """K storage, float16 (n_layer, capacity, n_head_kv, head_dim), or (rows, n_head_kv,
        head_dim) when the layers' slots differ (layer l from row row0[l]): a view the C code writes."""
        return self._k.view()

    @property
    def v(self):
        """V storage, shaped as `k`: a view the C code writes."""
        return self._v.view()

    @property
    def n_layer(self):
        return self._ring.n_layer

    @property
    def capacity(self):
        return self._ring.capacity

    @property
    def slots(self):
        """Per layer, its slots (a tuple of ints)."""
        return tuple(self._ring.slots[i] for i in range(self._ring.n_layer))

    @property
    def window(self):
        """Per layer, the positions attention sees (a tuple of ints)."""
        return tuple(self._ring.window[i] for i in range(self._ring.n_layer))

    @property
    def row0(self):
        """Per layer, its first row in the storage (a tuple of ints)."""
        return tuple(self._ring.row0[i] for i in range(self._ring.n_layer))

    @property
    def nbytes(self) -> int:
        """Bytes of K and V storage."""
        return int(self._k.nbytes + self._v.nbytes)

    @property
    def n_head_kv(self):
        return self._ring.n_head_kv

    @property
    def head_dim(self):
        return self._ring.head_dim

    @property
    def n_pos(self):
        """Per layer, the next position to append (a tuple of ints)."""
        return tuple(self._ring.n_pos[i] for i in range(self._ring.n_layer))

    @property
    def held_from(self):
        """Per layer, the oldest position whose slot still holds it (a tuple of ints)."""
        return tuple(self._ring.held_from[i] for i in range(self._ring.n_layer))

    def __repr__(self):
        r = self._ring
        return (
            f"KVRing(n_layer={r.n_layer}, capacity={r.capacity}, n_head_kv={r.n_head_kv}, "
            f"head_dim={r.head_dim}, n_pos={self.n_pos})"
        )

    def append(self, layer, pos, k_rows, v_rows):
        """Store K and V of n_tokens tokens at positions pos .. pos+n_tokens-1 of `layer`.

        k_rows, v_rows: float32 C-contiguous (n_tokens, n_head_kv * head_dim), rounded to f16.
        pos must be n_pos[layer] and 1 <= n_tokens <= slots[layer].
        """
        layer, pos = operator.index(layer), operator.index(pos)
        row = <int64_t>self._ring.n_head_kv * self._ring.head_dim  # in 64 bits: no int overflow
        _f32_array(k_rows, "k_rows", (None, row))
        _f32_array(v_rows, "v_rows", (k_rows.shape[0], row))
        n_tokens = k_rows.shape[0]
        # the count first, then the layer (the order the CUDA ring's bookkeeping checks in)
        cap = self._ring.slots[layer] if 0 <= layer < self._ring.n_layer else self._ring.capacity
        if not 1 <= n_tokens <= cap:
            raise ValueError(f"cannot append {n_tokens} tokens: 1 to capacity {cap} at a time")
        if not 0 <= layer < self._ring.n_layer:
            raise IndexError(f"layer {layer} out of range: the ring has {self._ring.n_layer} layers")
        if not 0 <= pos <= _INT64_MAX:
            raise IndexError(f"position {pos} out of range")
        cdef const float[:, ::1] k = k_rows
        cdef const float[:, ::1] v = v_rows
        cdef int rc
        cdef int32_t c_layer = layer
        cdef int64_t c_pos = pos, c_n = n_tokens
        with nogil:
            rc = realm_kv_append(self._ring, c_layer, c_pos, c_n, &k[0, 0], &v[0, 0])
        if rc == REALM_ERR_RANGE:
            n = self._ring.n_pos[c_layer]
            raise IndexError(
                f"cannot append at position {pos} of layer {layer}: the next position is n_pos={n} "
                f"(capacity {self._ring.slots[c_layer]}); truncate first to rewrite earlier positions"
            )
        if rc != 0:
            raise ValueError(f"realm_kv_append failed ({rc})")

    def truncate(self, n_pos):
        """Forget positions >= n_pos in every layer.

        Raises IndexError, changing nothing, when a layer has wrapped past the window of
        position n_pos (its oldest positions were overwritten).
        """
        n_pos = operator.index(n_pos)
        if n_pos < 0:
            raise ValueError(f"n_pos must be >= 0, got {n_pos}")
        cdef int64_t c_n = min(n_pos, _INT64_MAX)
        cdef int rc = realm_kv_truncate(self._ring, c_n)
        if rc == REALM_ERR_RANGE:
            for layer, (n, held) in enumerate(zip(self.n_pos, self.held_from)):
                start = realm_kv_window_start(self._ring, layer, c_n)
                if c_n < n and start < held:
                    raise IndexError(
                        f"cannot truncate to n_pos={n_pos}: its window starts at position {start}, but "
                        f"layer {layer} (n_pos={n}, capacity {self._ring.slots[layer]}) holds positions "
                        f"{held} .. {n - 1} only"
                    )
            raise IndexError(f"cannot truncate to n_pos={n_pos}")
        if rc != 0:
            raise ValueError(f"realm_kv_truncate failed ({rc})")

    def window_start(self, pos, layer=0):
        """First position of the attention window of `layer` at position pos."""
        pos, layer = operator.index(pos), operator.index(layer)
        if not 0 <= pos <= _INT64_MAX:
            raise ValueError(f"position must be >= 0, got {pos}")
        if not 0 <= layer < self._ring.n_layer:
            raise IndexError(f"layer {layer} out of range: the ring has {self._ring.n_layer} layers")
        return realm_kv_window_start(self._ring, layer, pos)

    def chunk_limit(self, pos):
        """The most tokens a chunk at pos may append before attending (kv_ring.h)."""
        pos = operator.index(pos)
        if not 0 <= pos <= _INT64_MAX:
            raise ValueError(f"position must be >= 0, got {pos}")
        return realm_kv_chunk_limit(self._ring, pos)

    def slot(self, pos, layer=0):
        """The slot of `layer` that holds position pos (for a uniform ring, an index
        into axis 1 of k and v; else row row0[layer] + slot of them)."""
        pos, layer = operator.index(pos), operator.index(layer)
        if pos < 0:
            raise ValueError(f"position must be >= 0, got {pos}")
        if not 0 <= layer < self._ring.n_layer:
            raise IndexError(f"layer {layer} out of range: the ring has {self._ring.n_layer} layers")
        return pos % self._ring.slots[layer]


def attention(KVRing kv not None, int layer, int64_t pos, q, out=None, n_threads=0, kq_scale=None):
    """Causal grouped-query attention of the queries q over `layer` of the ring.

    q: float32 C-contiguous (n_tokens, n_head, head_dim), n_head a multiple of n_head_kv;
    the tokens sit at positions pos .. pos+n_tokens-1, whose K/V are already appended.
    out: float32 C-contiguous like q (not overlapping it), allocated when None; returned.
    n_threads: threads (of the kernels' pool), 0 for os.cpu_count(). kq_scale: the scores'
    scale (> 0), 1/sqrt(head_dim) when None. Emulates ggml's CPU attention (see
    attention.h): q and the probabilities rounded to f16, f32 sums.
    """
    cdef realm_kv_ring *ring = kv._ring
    _f32_array(q, "q", (None, None, ring.head_dim))
    n_tokens, n_head = q.shape[0], q.shape[1]
    if n_tokens < 1 or n_head < 1:
        raise ValueError(f"q has shape {q.shape}: need at least one token and one head")
    if n_head % ring.n_head_kv != 0 or n_head > _INT32_MAX:
        raise ValueError(f"n_head {n_head} is not a (32-bit) multiple of n_head_kv {ring.n_head_kv}")
    if out is None:
        out = np.empty_like(q)
    _f32_array(out, "out", q.shape, writable=True)
    if np.may_share_memory(out, q):
        raise ValueError("out must not overlap q")
    if np.may_share_memory(out, kv._k) or np.may_share_memory(out, kv._v):
        raise ValueError("out must not overlap the ring's storage")
    n_threads = operator.index(n_threads)
    if n_threads < 0:
        raise ValueError(f"n_threads must be >= 0, got {n_threads}")
    if n_threads == 0:
        n_threads = os.cpu_count() or 1
    n_threads = min(n_threads, n_tokens * ring.n_head_kv, 4096)  # more threads than work items idle
    scratch = np.empty(realm_attention_scratch_floats(ring, n_head, n_threads), np.float32)

    cdef const float[:, :, ::1] q_mv = q
    cdef float[:, :, ::1] out_mv = out
    cdef float[::1] scratch_mv = scratch
    cdef int64_t c_n_tokens = n_tokens
    cdef int32_t c_n_head = n_head
    cdef int c_threads = n_threads
    cdef realm_attention_seq seq
    seq.kv, seq.pos, seq.n_tokens, seq.batch_tokens = ring, pos, c_n_tokens, c_n_tokens
    cdef float head_dim_f = ring.head_dim
    seq.kq_scale = (<float>1.0) / sqrtf(head_dim_f) if kq_scale is None else kq_scale  # as realm_attention
    if not seq.kq_scale > 0:
        raise ValueError(f"kq_scale must be > 0, got {kq_scale}")
    cdef int rc
    with nogil:
        rc = realm_attention_seqs(&seq, 1, layer, c_n_head, &q_mv[0, 0, 0], &out_mv[0, 0, 0], &scratch_mv[0],
                                  c_threads)
    if rc == REALM_ERR_RANGE:
        if not 0 <= layer < ring.n_layer:
            raise IndexError(f"layer {layer} out of range: the ring has {ring.n_layer} layers")
        n, held = ring.n_pos[layer], ring.held_from[layer]
        last = pos + n_tokens - 1
        if pos < 0 or last >= n:
            raise IndexError(
                f"positions {pos} .. {last} of layer {layer} are not all appended (n_pos={n}, "
                f"capacity {ring.capacity})"
            )
        raise IndexError(
            f"the window of position {pos} starts at {realm_kv_window_start(ring, layer, pos)}, but layer {layer} "
            f"holds positions {held} .. {n - 1} only (capacity {ring.capacity}): once the ring has "
            "wrapped, append and attend one token at a time"
        )
    if rc != 0:
        raise ValueError(f"realm_attention failed ({rc})")
    return out
