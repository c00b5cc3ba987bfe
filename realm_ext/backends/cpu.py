"""The CPU backend: C kernels over the quantized weights.

`CpuBackend.prepare(model)` builds, once per model, the C view of its weights and one
scratch buffer that every later call reuses, so the decode path allocates nothing per
token. The weights stay quantized in every mode; `weights` says where the kernels read them:
- "repack" (default): the file's memory map, except the matrices the active ISA's
  kernels read faster interleaved (csrc/cpu/repack.h: Q4_0 and Q4_K in groups of 16
  rows on AVX-512), which get one repacked copy per model in anonymous memory advised for 2 MiB
  pages, as llama.cpp repacks Q4_0 and Q4_K on x86: the same blocks in another order.
  A model with none of those (another format, or an AVX2 machine) is only mapped.
- "mmap": borrowed pointers into the file's memory map, no copy of anything.
- "load": every matrix copied, as "repack" copies the repacked ones: for a machine whose
  page cache reads slower than fresh memory.
benchmarks.cpu measures the default against "mmap" (cpu.<model>.default_vs_mmap).
Only the small norm vectors are converted, to f32, in every mode.

Every forward method writes into an array the caller provides (later: a view of guest
memory); `out` may be the input array.
"""

from __future__ import annotations

import mmap

import numpy as np

from realm_ext import _kernels, arch
from realm_ext.backends import base
from realm_ext.backends.base import as_rows, token_ids_int32
from realm_ext.model import Model, layer_tensor_names

KVRing = _kernels.KVRing
CallControl = _kernels.CallControl


def runtime_args(model: Model) -> tuple[dict, int, dict, dict]:
    """LlamaRuntime's arguments for a model: its dims (with the RoPE factors as a float32
    array or None, and what its family adds: realm_ext.arch), n_layer, the 2-D tensors as
    (raw, ggml type, n_rows, n_cols) and the 1-D ones (norms, biases) as float32 copies."""
    c = model.config
    fam = c.family
    dims = {
        "n_embd": c.n_embd,
        "n_head": c.n_head,
        "n_head_kv": c.n_head_kv,
        "head_dim": c.head_dim,
        "n_ff": c.n_ff,
        "rope_dim": c.rope_dim,
        "n_vocab": c.n_vocab,
        "rms_eps": c.rms_eps,
        "rope_freq_base": c.rope_freq_base,
        "rope_freq_scale": c.rope_freq_scale,
        "rope_freqs": None if c.rope_freq_factors is None else np.array(c.rope_freq_factors, np.float32),
        "rope_neox": int(fam.rope_neox),
        "ffn_act": 1 if fam.ffn_act == arch.GELU else 0,  # llama.h's REALM_FFN_*
        "embd_scale": float(np.sqrt(np.float32(c.n_embd))) if fam.embd_scale else 1.0,
        "q_scale": c.attn_scale if fam.q_scale else 0.0,
        "layer_rope": [c.layer_rope(i) for i in range(c.n_layer)],
    }
    tensors, norms = {}, {}
    names = ["token_embd.weight", "output.weight", "output_norm.weight"]
    names += [f"blk.{i}.{n}.weight" for i in range(c.n_layer) for n in layer_tensor_names(c)]
    names += [b.name for i in range(c.n_layer) for n in arch.BIASES if (b := model.bias(i, n)) is not None]
    for name in names:
        t = model.tensor(name)  # output.weight resolves to token_embd when tied
        if len(t.shape) == 1:
            norms[name] = np.ascontiguousarray(t.dequantize(), dtype=np.float32)
        else:
            tensors[name] = (t.raw, int(t.type), t.shape[0], t.shape[1])
    return dims, c.n_layer, tensors, norms


WEIGHTS = ("repack", "load", "mmap")  # how the kernels hold a model's weights (module docstring)
DEFAULT_WEIGHTS = WEIGHTS[0]
_HUGE_PAGE = 2 << 20


def load_weights(tensors: dict, copy_all: bool = True) -> dict:
    """`tensors` (name -> (raw, type, n_rows, n_cols)) with raw arrays copied into one
    anonymous buffer, each 64-byte aligned, the buffer 2 MiB aligned and advised for huge
    pages. A matrix the kernels read faster repacked (`_kernels.repack_type`) is copied
    in that layout and comes back with that type, except the embedding table, whose rows
    are looked up one by one; copy_all=False copies only those, the rest stay where they
    are (the file's map). Tensors sharing one array (a tied output) share one copy, in
    the file's layout. The buffer lives as long as the returned arrays (they hold the
    mmap object)."""
    sources = {id(r): (r, wtype, n_rows, n_cols) for r, wtype, n_rows, n_cols in tensors.values()}
    embd = tensors.get("token_embd.weight")
    packed = {
        key: pt
        for key, (r, wtype, n_rows, n_cols) in sources.items()
        if (embd is None or r is not embd[0]) and (pt := _kernels.repack_type(wtype, n_rows, n_cols)) >= 0
    }
    if not copy_all:
        sources = {key: src for key, src in sources.items() if key in packed}
    if not sources:
        return dict(tensors)
    size = sum((r.nbytes + 63) // 64 * 64 for r, *_ in sources.values())
    mem = mmap.mmap(-1, size + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux; elsewhere the pages stay small
        mem.madvise(mmap.MADV_HUGEPAGE)
    buf = np.frombuffer(mem, np.uint8)
    off = -buf.ctypes.data % _HUGE_PAGE
    copies = {}
    for key, (r, wtype, *_) in sources.items():
        copies[key] = buf[off : off + r.nbytes].reshape(r.shape)
        if key in packed:
            _kernels.repack(r, wtype, packed[key], copies[key])
        else:
            copies[key][...] = r
        off += (r.nbytes + 63) // 64 * 64
    return {
        name: (copies.get(id(r), r), packed.get(id(r), wtype), *rest)
        for name, (r, wtype, *rest) in tensors.items()
    }


class CpuBackend(base.BackendBase):
    """Forward steps of llama models on the CPU.

    n_threads: threads per kernel call (default: every core this process may use).
    max_batch: rows per step of a model's calls (sizes the scratch).
    weights: "repack" (the file's map, repacked copies of the matrices that read faster
    so), "mmap" (the file's map only) or "load" (one copy of everything in anonymous
    memory per model); see the module's docstring.
    step_tokens: the prompt rows a call adds to a step it shares with other guests'
    decode rows (csrc/cpu/llama_steps.h): the most a long prompt delays a neighbour's
    decode step by, in tokens; more gives the prompt more speed beside decoders.
    """

    name = "cpu"

    def __init__(
        self,
        n_threads: int | None = None,
        max_batch: int = 64,
        weights: str = DEFAULT_WEIGHTS,
        step_tokens: int = _kernels.STEP_TOKENS_DEFAULT,
    ):
        super().__init__()
        self.n_threads = n_threads or _kernels.default_threads()
        if not 1 <= self.n_threads <= _kernels.MAX_THREADS or max_batch < 1 or step_tokens < 1:
            raise ValueError(f"n_threads must be 1..{_kernels.MAX_THREADS}, max_batch and step_tokens >= 1")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        self.max_batch = max_batch
        self.weights = weights
        self.step_tokens = step_tokens

    # -- per model -------------------------------------------------------------------

    # prepare(model) -> LlamaRuntime: the model's runtime, built by _build on first use
    # (base.BackendBase)

    def _build(self, model: Model) -> _kernels.LlamaRuntime:
        dims, n_layer, tensors, norms = runtime_args(model)
        if self.weights != "mmap":
            tensors = load_weights(tensors, copy_all=self.weights == "load")
        rt = _kernels.LlamaRuntime(dims, n_layer, tensors, norms, self.max_batch)
        rt.step_tokens = self.step_tokens
        return rt

    def native_runtime(self, model: Model) -> tuple[_kernels.LlamaRuntime, int]:
        """The model's C runtime and the threads its kernels use: what the host's native
        imports (realm_ext/_host_native.pyx) run the forward steps with, without Python."""
        return self.prepare(model), self.n_threads

    def new_kv(self, model: Model, n_ctx: int) -> KVRing:
        """A KV ring of n_ctx positions for every layer of the model (f16, host memory;
        a sliding layer holds its window and one chunk), with the model's scratch grown
        for attention over it (until free_kv)."""
        ring = self._ring(model, n_ctx)
        self.prepare(model).reserve(ring, self.n_threads)
        return ring

    def free_kv(self, model: Model, kv: KVRing) -> None:
        """kv is closed: the model's scratch shrinks to what its other rings need."""
        self.prepare(model).release(kv)

    def _ring(self, model: Model, n_ctx: int) -> KVRing:
        c = model.config
        windows = [c.layer_window(i) for i in range(c.n_layer)] if c.sliding_window else None
        return KVRing(c.n_layer, n_ctx, c.n_head_kv, c.head_dim, windows, self.max_batch)

    def kv_bytes(self, model: Model, n_ctx: int) -> int:
        """Host memory a ring of n_ctx positions pins: its K and V, and the attention
        scratch the model keeps for it while it lives."""
        c = model.config
        slots = sum(
            n_ctx if (w := c.layer_window(i)) is None or w >= n_ctx else min(w + self.max_batch - 1, n_ctx)
            for i in range(c.n_layer)
        )
        storage = 2 * 2 * slots * c.n_head_kv * c.head_dim  # K and V, f16
        return storage + self.prepare(model).attention_scratch_bytes(n_ctx, self.n_threads)

    # -- the forward steps -------------------------------------------------------------

    def forward_embedding(self, model: Model, token_ids: np.ndarray, out: np.ndarray) -> None:
        """out (n_tokens, n_embd) = embedding rows of token_ids."""
        ids = token_ids_int32(token_ids)
        self.prepare(model).embedding(ids, as_rows(out, model.config.n_embd, "out"))

    def forward_layer(
        self, model: Model, layer: int, x: np.ndarray, position: int, kv: KVRing, out: np.ndarray
    ) -> None:
        """One whole layer on hidden states x (n_tokens x n_embd) at positions position.."""
        e = model.config.n_embd
        self.prepare(model).layer(
            layer, as_rows(x, e, "x"), position, kv, as_rows(out, e, "out"), self.n_threads
        )

    def forward_layers(
        self,
        model: Model,
        layer_begin: int,
        layer_count: int,
        x: np.ndarray,
        position: int,
        kv: KVRing,
        out: np.ndarray,
        control: CallControl | None = None,
    ) -> None:
        """forward_layer for layers layer_begin .. layer_begin+layer_count-1, in order, in
        chunks (csrc/cpu/llama_steps.h); a stop of `control` between chunks raises CallStopped."""
        e = model.config.n_embd
        xs, os_ = as_rows(x, e, "x"), as_rows(out, e, "out")
        rt = self.prepare(model)
        rt.forward_layers(layer_begin, layer_count, xs, position, kv, os_, self.n_threads, control)

    def forward_lm_head(
        self, model: Model, x: np.ndarray, out: np.ndarray, control: CallControl | None = None
    ) -> None:
        """out (n_tokens, n_vocab) = logits of the final norm of x (in chunks of rows)."""
        c = model.config
        self.prepare(model).lm_head(
            as_rows(x, c.n_embd, "x"), as_rows(out, c.n_vocab, "out"), self.n_threads, control
        )

    # -- convenience -------------------------------------------------------------------

    def logits(
        self, model: Model, tokens: np.ndarray, kv: KVRing | None = None, position: int = 0
    ) -> np.ndarray:
        """Logits (n_tokens, n_vocab) of tokens at positions position.. through every
        layer, appending to kv (a fresh ring of n_ctx_train positions when None)."""
        return base.logits(self, model, tokens, kv, position)
