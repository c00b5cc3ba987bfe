"""The CUDA backend: device-resident weights and KV rings, kernels compiled by NVRTC.

The backend contract of realm_ext/backends/base.py, as `CpuBackend` has it. What lives where:

- weights: uploaded once per model on first use (`prepare`), raw GGUF blocks in device
  memory (`DeviceWeight`, realm_ext/backends/cuda/matmul.py), shared by every guest;
  Q/K/V and gate/up of a layer are stacked into one matrix where their types agree, so
  each is one matmul. Norm vectors become f32 device arrays.
- scratch: one set of device buffers per model (`CudaRuntime`), sized for max_batch
  tokens, reused by every call under the runtime's lock: nothing is allocated per token.
- KV rings (`DeviceKVRing`): f16 K/V in device memory, the bookkeeping on the host
  (realm_ext/backends/kv_book.py, the rules of csrc/cpu/kv_ring.c).
- hidden states: copied from the caller's array (a view of guest memory) straight into
  a device buffer, and back into the caller's `out` (cupy set/get, no host copies in
  between); forward_layers keeps them on the device between layers and synchronizes
  once, when its result is copied back.

Decode (one token) replays a CUDA graph: the whole layer sequence of a forward_layers
call is captured once per (model, layer range, ring capacity) and replayed per token.
The kernels read the position and the ring's storage addresses from a device buffer
(`CudaRuntime.ring`), written by one small copy before each replay, so one graph
serves every position and every ring of that capacity (every guest, every
conversation). The first decode call of a shape runs eagerly (it loads every kernel);
the second captures.

`CudaRuntime.run_layers` is the forward pass, readable top to bottom.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import cupy
import cupyx
import numpy as np

from realm_ext import arch
from realm_ext._kernels import CallControl, CallStopped
from realm_ext.backends import base
from realm_ext.backends.base import (
    as_rows,
    check_layers,
    check_position,
    check_token_ids,
    prefill_chunk,
    token_ids_int32,
)
from realm_ext.backends.cuda.matmul import DeviceWeight, activation_scratch_bytes, get_rows, matmul
from realm_ext.backends.cuda.source import load_module
from realm_ext.backends.kv_book import RingBook
from realm_ext.model import Model, Tensor

NORM_THREADS = 256  # ops.cu's NORM_THREADS
SWIGLU_THREADS = 256
ATT_TILE = 128  # attention.cu's ATT_TILE: threads of attention_max / attention_weigh
MAX_SPLIT = 32  # at most this many chunks per token's window
SPLIT_BLOCKS = 256  # split a window until a launch has about this many blocks
MAX_SHARED_BYTES = 48 * 1024  # dynamic shared memory a block may use without opting in
LM_HEAD_ROWS = 64  # logits computed per pass of forward_lm_head

_i32, _i64, _f32 = np.int32, np.int64, np.float32
_NULL = np.uint64(0)  # a null pointer kernel argument


def split_chunks(n_tokens: int, n_head_kv: int, capacity: int) -> int:
    """Chunks per token's window in the attention passes: enough blocks to fill the GPU
    for one token (flash-decoding's split), one chunk when a long prompt gives blocks
    enough."""
    most = min(MAX_SPLIT, -(-capacity // ATT_TILE))
    return max(1, min(most, -(-SPLIT_BLOCKS // (n_tokens * n_head_kv))))


def attention_shared_bytes(group: int, head_dim: int) -> int:
    """Dynamic shared memory of attention_weigh (the layout in its comment in
    attention.cu), enough for attention_max too."""
    return 4 * (2 * group * head_dim + group * ATT_TILE + 2 * group + ATT_TILE)


class DeviceKVRing(RingBook):
    """A KV ring with f16 storage in device memory: k, v are cupy float16 arrays
    (n_layer, capacity, n_head_kv, head_dim); the bookkeeping (n_pos, held_from,
    truncate) is RingBook's, the same rules as the CPU's KVRing. Not thread-safe: one
    conversation, one thread at a time."""

    def __init__(self, n_layer: int, capacity: int, n_head_kv: int, head_dim: int):
        super().__init__(n_layer, capacity, n_head_kv, head_dim)
        shape = (self.n_layer, self.capacity, self.n_head_kv, self.head_dim)
        self.k = cupy.zeros(shape, cupy.float16)
        self.v = cupy.zeros(shape, cupy.float16)
        # the zeroing ran on cupy's current stream; the backend's kernels run on their own
        # (non-blocking) stream, which does not wait for it
        cupy.cuda.Device().synchronize()

    def append(self, layer: int, pos: int, k_rows: Any, v_rows: Any) -> None:
        """Store K and V rows (float32 (n_tokens, n_head_kv * head_dim), numpy or cupy)
        at positions pos .. pos+n_tokens-1 of `layer`, rounded to f16 (as KVRing.append;
        the backend itself writes the ring from its kernels)."""
        row = self.n_head_kv * self.head_dim
        k_rows, v_rows = cupy.asarray(k_rows), cupy.asarray(v_rows)
        if k_rows.dtype != cupy.float32 or k_rows.ndim != 2 or k_rows.shape[1] != row:
            raise ValueError(f"k_rows must be float32 (n, {row})")
        if v_rows.dtype != cupy.float32 or v_rows.shape != k_rows.shape:
            raise ValueError(f"v_rows must be float32 {k_rows.shape}")
        n = k_rows.shape[0]
        self.reserve(layer, pos, n)
        slots = cupy.asarray([(pos + t) % self.capacity for t in range(n)])
        shape = (n, self.n_head_kv, self.head_dim)
        self.k[layer, slots] = k_rows.reshape(shape).astype(cupy.float16)
        self.v[layer, slots] = v_rows.reshape(shape).astype(cupy.float16)


class _Kernels:
    """The kernels of ops.cu and attention.cu, compiled once per process."""

    def __init__(self) -> None:
        ops, att = load_module("ops"), load_module("attention")
        self.rmsnorm = ops.get_function("rmsnorm_f32")
        self.add_rmsnorm = ops.get_function("add_rmsnorm_f32")
        self.swiglu = ops.get_function("swiglu_f32")
        self.rope_store_kv = att.get_function("rope_store_kv")
        self.attention_max = att.get_function("attention_max")
        self.attention_weigh = att.get_function("attention_weigh")
        self.attention_combine = att.get_function("attention_combine")


class Stacked:
    """Projections of one input (Q, K, V or gate, up) in as few matmuls as their types
    allow: consecutive weights of one ggml type are stacked row-wise into one
    DeviceWeight (a GGUF matrix's rows are independent blocks, so stacking is
    concatenating raw rows). Group g writes its (n, rows_g) output contiguously at
    float offset max_tokens * (rows of the groups before it) of a flat scratch buffer
    of max_tokens * total_rows floats; each projection is a column range of its group."""

    def __init__(self, tensors: list[Tensor], max_tokens: int):
        self.groups: list[tuple[DeviceWeight, int]] = []  # (weight, float offset)
        self.parts: list[tuple[int, int]] = []  # per projection: (float offset of its column 0, row stride)
        runs: list[list[Tensor]] = []
        for t in tensors:
            if runs and runs[-1][0].type == t.type:
                runs[-1].append(t)
            else:
                runs.append([t])
        offset = 0
        for run in runs:
            raw = np.concatenate([np.asarray(t.raw) for t in run]) if len(run) > 1 else np.asarray(run[0].raw)
            rows = sum(t.shape[0] for t in run)
            self.groups.append((DeviceWeight.upload(raw, int(run[0].type), rows, run[0].shape[1]), offset))
            col = 0
            for t in run:
                self.parts.append((offset + col, rows))
                col += t.shape[0]
            offset += max_tokens * rows
        self.total_floats = offset
        self.nbytes = sum(int(w.data.nbytes) for w, _ in self.groups)

    def matmul(
        self, x: cupy.ndarray, out: cupy.ndarray, scratch: cupy.ndarray, stream: cupy.cuda.Stream
    ) -> None:
        """Every group's rows of W x into the flat buffer `out` (x: (n, n_cols))."""
        n = x.shape[0]
        for w, off in self.groups:
            matmul(w, x, out[off : off + n * w.n_rows].reshape(n, w.n_rows), scratch, stream)

    def part(self, i: int, out: cupy.ndarray) -> tuple[cupy.ndarray, np.int32]:
        """Projection i in `out` as (a view starting at its token 0, row stride in floats)."""
        off, stride = self.parts[i]
        return out[off:], _i32(stride)


@dataclass
class _Layer:
    attn_norm: cupy.ndarray
    qkv: Stacked  # parts: q, k, v
    wo: DeviceWeight
    ffn_norm: cupy.ndarray
    gate_up: Stacked  # parts: gate, up
    down: DeviceWeight


def _norm(t: Tensor) -> cupy.ndarray:
    return cupy.asarray(np.ascontiguousarray(t.dequantize(), dtype=np.float32))


def _weight(t: Tensor) -> DeviceWeight:
    return DeviceWeight.upload(np.asarray(t.raw), int(t.type), t.shape[0], t.shape[1])


class CudaRuntime:
    """One model on the device: its weights, its scratch buffers, a stream, a lock.

    Buffers (max_tokens = T rows each, token-major, f32 unless said):
      x (T, n_embd): the hidden states, updated in place layer after layer
      cur (T, n_embd): the normed input of the next matmuls
      qkv, gate_up: flat outputs of the stacked projections (see Stacked)
      att (T, n_head * head_dim): attention output; tmp (T, n_embd): Wo / down output
      act (T, n_ff): SwiGLU output; part: attention's per-chunk partials
      xq: matmul's activation scratch (uint8); ids (T,) int32; logits (LM_HEAD_ROWS, n_vocab)
      ring (3,) int64: the ring descriptor the kernels read (attention.cu): the position
        of token 0 and the addresses of the ring's k and v; written by bind()
    graphs: captured decode steps, (first layer, layer count, ring capacity) -> cupy
    Graph, or None once that shape has run eagerly (see decode()).
    """

    def __init__(self, model: Model, max_tokens: int):
        c = self.config = model.config
        self.max_tokens = T = max_tokens
        D, G = c.head_dim, c.n_head // c.n_head_kv
        if c.n_head % c.n_head_kv or D % 2 or not 0 < c.rope_dim <= D or c.rope_dim % 2 or D > 1024:
            raise ValueError(
                f"the CUDA kernels need n_head a multiple of n_head_kv and even head_dim <= 1024, "
                f"rope_dim <= head_dim (got {c.n_head}/{c.n_head_kv} heads of {D}, rope_dim {c.rope_dim})"
            )
        if c.rope_freq_factors is not None or c.rope_scale_linear != 1.0:
            raise ValueError(
                "the CUDA kernels do not apply RoPE frequency factors (a rope_freqs tensor) or "
                f"linear RoPE scaling (factor {c.rope_scale_linear}): use the CPU backend for this model"
            )
        self.att_shared = attention_shared_bytes(G, D)
        if self.att_shared > MAX_SHARED_BYTES:
            raise ValueError(
                f"attention over {G} heads of {D} needs {self.att_shared} bytes of shared memory"
            )
        self.k = _Kernels()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.lock = threading.Lock()
        self.eps = _f32(c.rms_eps)
        self.theta_scale = np.power(_f32(c.rope_freq_base), _f32(-2.0) / _f32(c.rope_dim), dtype=np.float32)
        self.scale = _f32(1.0) / np.sqrt(_f32(D))

        # weights, uploaded once
        self.layers = []
        for i in range(c.n_layer):

            def t(name: str, i: int = i) -> Tensor:
                return model.layer(i, name)

            self.layers.append(
                _Layer(
                    attn_norm=_norm(t("attn_norm")),
                    qkv=Stacked([t("attn_q"), t("attn_k"), t("attn_v")], T),
                    wo=_weight(t("attn_output")),
                    ffn_norm=_norm(t("ffn_norm")),
                    gate_up=Stacked([t("ffn_gate"), t("ffn_up")], T),
                    down=_weight(t("ffn_down")),
                )
            )
        self.token_embd = _weight(model.tensor("token_embd.weight"))
        self.output = self.token_embd if model.tied_output else _weight(model.tensor("output.weight"))
        self.output_norm = _norm(model.tensor("output_norm.weight"))

        # scratch, allocated once
        E, q_dim, F = c.n_embd, c.n_head * D, c.n_ff
        f32 = cupy.float32
        self.x, self.cur, self.tmp = (cupy.empty((T, E), f32) for _ in range(3))
        self.qkv = cupy.empty(self.layers[0].qkv.total_floats if self.layers else 0, f32)
        self.gate_up = cupy.empty(self.layers[0].gate_up.total_floats if self.layers else 0, f32)
        self.att = cupy.empty((T, q_dim), f32)
        self.act = cupy.empty((T, F), f32)
        # n_tokens * split_chunks(n_tokens, ...) <= T + SPLIT_BLOCKS for every n_tokens <= T
        self.part = cupy.empty((T + SPLIT_BLOCKS) * c.n_head * (D + 2), f32)
        self.xq = cupy.empty(activation_scratch_bytes(T, max(E, q_dim, F)), cupy.uint8)
        self.ids = cupy.empty(T, cupy.int32)
        self.logits = cupy.empty((min(T, LM_HEAD_ROWS), c.n_vocab), f32)
        self.ring = cupy.zeros(3, cupy.int64)
        self.ring_host = cupyx.empty_pinned(3, np.int64)  # the source of ring's async copy
        self.graphs: dict[tuple[int, int, int], Any] = {}  # cupy.cuda.Graph
        cupy.cuda.Device().synchronize()  # the uploads (cupy's stream) before our stream's kernels

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every layer's matrices and the LM head."""
        per_layer = sum(
            L.qkv.nbytes + L.gate_up.nbytes + L.wo.data.nbytes + L.down.data.nbytes for L in self.layers
        )
        return int(per_layer + self.output.data.nbytes)

    # -- the forward pass (kernel launches only: capturable into a graph) ----------------

    def run_layers(self, capacity: int, first: int, count: int, n: int) -> None:
        """Layers first .. first+count-1 on the hidden states self.x[:n], in place, with
        the ring bound by bind() (of `capacity` slots), the tokens at positions pos ..
        pos+n-1. Launches on self.stream (the current stream) and nothing else."""
        c, k, st = self.config, self.k, self.stream
        E, F = c.n_embd, c.n_ff
        x, cur, tmp, att, act = self.x[:n], self.cur[:n], self.tmp[:n], self.att[:n], self.act[:n]

        k.rmsnorm((n,), (NORM_THREADS,), (x, self.layers[first].attn_norm, cur, _i32(E), self.eps))
        for i in range(first, first + count):
            L = self.layers[i]
            # attention: q, k, v = W cur; RoPE; K, V into the ring; attend; tmp = Wo att
            L.qkv.matmul(cur, self.qkv, self.xq, st)
            q, k_, v = (L.qkv.part(j, self.qkv) for j in range(3))
            self.rope_store_kv(capacity, i, q, k_, v, n)
            self.attention(capacity, i, q, n, att)
            matmul(L.wo, att, tmp, self.xq, st)
            # x += tmp (the residual), cur = norm(x)
            k.add_rmsnorm((n,), (NORM_THREADS,), (x, tmp, x, L.ffn_norm, cur, _i32(E), self.eps))

            # feed-forward: x += down(silu(gate cur) * up cur)
            L.gate_up.matmul(cur, self.gate_up, self.xq, st)
            (g, gs), (u, us) = L.gate_up.part(0, self.gate_up), L.gate_up.part(1, self.gate_up)
            k.swiglu((-(-F // SWIGLU_THREADS), n), (SWIGLU_THREADS,), (g, gs, u, us, act, _i32(F)))
            matmul(L.down, act, tmp, self.xq, st)
            # x += tmp, and the next layer's attention norm in the same pass
            nxt = self.layers[i + 1].attn_norm if i + 1 < first + count else _NULL
            k.add_rmsnorm((n,), (NORM_THREADS,), (x, tmp, x, nxt, cur, _i32(E), self.eps))

    def rope_store_kv(self, capacity: int, layer: int, q: tuple, k: tuple, v: tuple, n: int) -> None:
        """RoPE on Q (in place) and K of n tokens at positions pos.., then K and V into
        their slots of `layer` in the bound ring. q, k, v: (view at token 0, row stride)."""
        c = self.config
        H, Hkv, D = c.n_head, c.n_head_kv, c.head_dim
        args = (*q, *k, *v, self.ring, _i32(layer), _i64(capacity))
        self.k.rope_store_kv(
            (n, H + 2 * Hkv),
            (D // 2,),
            args + (_i32(H), _i32(Hkv), _i32(D), _i32(c.rope_dim), self.theta_scale),
        )

    def attention(self, capacity: int, layer: int, q: tuple, n: int, out: cupy.ndarray) -> None:
        """out (n, n_head * head_dim) = attention of Q (view at token 0, row stride) of n
        tokens at positions pos.. over `layer` of the bound ring, the window of each
        split into chunks: each chunk's max and sum, then each chunk's share of the
        output with the CPU's f16 probabilities, then their sum (attention.cu)."""
        c = self.config
        H, Hkv, D = c.n_head, c.n_head_kv, c.head_dim
        chunks = split_chunks(n, Hkv, capacity)
        args = (
            *q,
            self.ring,
            _i32(layer),
            _i64(capacity),
            _i32(H),
            _i32(Hkv),
            _i32(D),
            self.scale,
            self.part,
        )
        self.k.attention_max((chunks, Hkv, n), (ATT_TILE,), args, shared_mem=self.att_shared)
        self.k.attention_weigh((chunks, Hkv, n), (ATT_TILE,), args, shared_mem=self.att_shared)
        self.k.attention_combine((H, n), (min(D, 256),), (self.part, _i32(chunks), _i32(H), _i32(D), out))

    def bind(self, kv: DeviceKVRing, pos: int) -> None:
        """Point the kernels at kv, token 0 at position pos (an async copy on the stream;
        the caller synchronizes before the next bind, as every forward call does)."""
        self.ring_host[:] = (pos, kv.k.data.ptr, kv.v.data.ptr)
        self.ring.set(self.ring_host, self.stream)

    def decode(self, capacity: int, first: int, count: int, use_graph: bool) -> None:
        """run_layers for one token, through the captured graph of its shape when use_graph."""
        key = (first, count, capacity)
        if not use_graph or key not in self.graphs:  # first sight: eager (loads the kernels)
            if use_graph:
                self.graphs[key] = None
            self.run_layers(capacity, first, count, 1)
            return
        graph = self.graphs[key]
        if graph is None:
            self.stream.begin_capture()
            try:
                self.run_layers(capacity, first, count, 1)
            except BaseException:
                self.stream.end_capture()  # leave capture mode; the partial graph is dropped
                raise
            graph = self.graphs[key] = self.stream.end_capture()
        graph.launch(self.stream)


class CudaBackend(base.BackendBase):
    """Forward steps of llama models on a CUDA GPU (see the module docstring).

    max_batch: tokens per pass through the layers (sizes the scratch); longer inputs
    go in chunks. use_graphs: replay captured CUDA graphs for one-token calls.
    """

    name = "cuda"

    def __init__(self, max_batch: int = 512, use_graphs: bool = True):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        super().__init__()
        self.max_batch = max_batch
        self.use_graphs = use_graphs

    # -- per model -------------------------------------------------------------------

    # prepare(model) -> CudaRuntime: the model's runtime (weights on the device), built
    # by _build on first use (base.BackendBase)

    def _build(self, model: Model) -> CudaRuntime:
        c = model.config
        has_bias = any(model.bias(i, n) is not None for i in range(c.n_layer) for n in arch.BIASES)
        if c.family is not arch.LLAMA or has_bias:
            # the CUDA kernels have llama's layer only: the other families need their switches there
            what = "Q/K/V biases" if c.family is arch.LLAMA else f"the {c.arch} architecture"
            raise ValueError(f"{model.path}: the CUDA backend does not run {what} yet; use device='cpu'")
        return CudaRuntime(model, self.max_batch)

    def new_kv(self, model: Model, n_ctx: int) -> DeviceKVRing:
        """A KV ring of n_ctx positions for every layer of the model (f16, device memory)."""
        c = model.config
        return DeviceKVRing(c.n_layer, n_ctx, c.n_head_kv, c.head_dim)

    def free_kv(self, model: Model, kv: DeviceKVRing) -> None:
        """Nothing to do: the ring's device memory goes with the ring."""

    def kv_bytes(self, model: Model, n_ctx: int) -> int:
        """Device memory a ring of n_ctx positions pins: its K and V (the attention
        scratch is sized by max_batch, not by rings)."""
        c = model.config
        return 2 * 2 * c.n_layer * n_ctx * c.n_head_kv * c.head_dim  # K and V, f16

    # -- the forward steps -------------------------------------------------------------

    def forward_embedding(self, model: Model, token_ids: np.ndarray, out: np.ndarray) -> None:
        """out (n_tokens, n_embd) = embedding rows of token_ids."""
        ids = token_ids_int32(token_ids)
        rt = self.prepare(model)
        outs = as_rows(out, model.config.n_embd, "out")
        if outs.shape[0] != ids.size:
            raise ValueError(f"out has {outs.shape[0]} rows for {ids.size} token ids")
        check_token_ids(ids, model.config.n_vocab)
        with rt.lock, rt.stream:
            for t0 in range(0, ids.size, rt.max_tokens):
                n = min(ids.size - t0, rt.max_tokens)
                rt.ids[:n].set(ids[t0 : t0 + n], rt.stream)
                get_rows(rt.token_embd, rt.ids[:n], rt.x[:n], rt.stream)
                rt.x[:n].get(rt.stream, out=outs[t0 : t0 + n])

    def forward_layer(
        self, model: Model, layer: int, x: np.ndarray, position: int, kv: DeviceKVRing, out: np.ndarray
    ) -> None:
        """One whole layer on hidden states x (n_tokens x n_embd) at positions position.."""
        self.forward_layers(model, layer, 1, x, position, kv, out)

    def forward_layers(
        self,
        model: Model,
        layer_begin: int,
        layer_count: int,
        x: np.ndarray,
        position: int,
        kv: DeviceKVRing,
        out: np.ndarray,
        control: CallControl | None = None,
    ) -> None:
        """forward_layer for layers layer_begin .. layer_begin+layer_count-1, in order,
        with the hidden states kept on the device in between; chunks of max_batch tokens
        take the lock one at a time, and a stop of `control` between them raises
        CallStopped."""
        c = model.config
        rt = self.prepare(model)
        xs, outs = as_rows(x, c.n_embd, "x"), as_rows(out, c.n_embd, "out")
        if xs.shape != outs.shape:
            raise ValueError(f"x and out must both be (n_tokens, {c.n_embd})")
        check_layers(layer_begin, layer_count, c.n_layer)
        if not isinstance(kv, DeviceKVRing):
            raise TypeError(f"kv must be a DeviceKVRing (from CudaBackend.new_kv), got {type(kv).__name__}")
        if kv.n_head_kv != c.n_head_kv or kv.head_dim != c.head_dim:
            raise ValueError(
                f"the KV ring holds {kv.n_head_kv} heads of {kv.head_dim}, "
                f"the model {c.n_head_kv} of {c.head_dim}"
            )
        check_position(position)
        layers = range(layer_begin, layer_begin + layer_count)
        n_total = xs.shape[0]
        if not layers or n_total == 0:
            return
        t0 = 0
        while t0 < n_total:
            if control is not None and control.stopped:
                raise CallStopped(control.stopped, t0, n_total)
            with rt.lock, rt.stream:
                p = position + t0
                n = prefill_chunk(p, n_total - t0, rt.max_tokens, kv.capacity)
                kv.check_reserve(layers, p, n)
                for i in layers:
                    kv.reserve(i, p, n)
                    kv.check_window(i, p)
                rt.bind(kv, p)
                rt.x[:n].set(xs[t0 : t0 + n], rt.stream)
                if n == 1:
                    rt.decode(kv.capacity, layer_begin, layer_count, self.use_graphs)
                else:
                    rt.run_layers(kv.capacity, layer_begin, layer_count, n)
                rt.x[:n].get(rt.stream, out=outs[t0 : t0 + n])  # waits for the stream
                t0 += n

    def forward_lm_head(
        self, model: Model, x: np.ndarray, out: np.ndarray, control: CallControl | None = None
    ) -> None:
        """out (n_tokens, n_vocab) = logits of the final norm of x, a chunk of rows at a
        time under the lock; a stop of `control` between chunks raises CallStopped."""
        c = model.config
        rt = self.prepare(model)
        xs, outs = as_rows(x, c.n_embd, "x"), as_rows(out, c.n_vocab, "out")
        if xs.shape[0] != outs.shape[0]:
            raise ValueError(f"x must be (n, {c.n_embd}) and out (n, {c.n_vocab})")
        rows = rt.logits.shape[0]
        for t0 in range(0, xs.shape[0], rows):
            if control is not None and control.stopped:
                raise CallStopped(control.stopped, t0, xs.shape[0])
            with rt.lock, rt.stream:
                n = min(xs.shape[0] - t0, rows)
                rt.x[:n].set(xs[t0 : t0 + n], rt.stream)
                rt.k.rmsnorm(
                    (n,), (NORM_THREADS,), (rt.x[:n], rt.output_norm, rt.cur[:n], _i32(c.n_embd), rt.eps)
                )
                matmul(rt.output, rt.cur[:n], rt.logits[:n], rt.xq, rt.stream)
                rt.logits[:n].get(rt.stream, out=outs[t0 : t0 + n])

    # -- convenience -------------------------------------------------------------------

    def logits(
        self, model: Model, tokens: np.ndarray, kv: DeviceKVRing | None = None, position: int = 0
    ) -> np.ndarray:
        """Logits (n_tokens, n_vocab) of tokens at positions position.. through every
        layer, appending to kv (a fresh ring of n_ctx_train positions when None)."""
        return base.logits(self, model, tokens, kv, position)
