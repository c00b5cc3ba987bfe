"""The backend contract: what realm_ext.host asks of a backend, and the rules every
backend applies the same way.

`Backend` is the interface (CpuBackend, realm_ext/backends/cpu.py; CudaBackend,
realm_ext/backends/cuda/). Every forward step reads float32 hidden states from an array
the caller provides and writes into another (a view of guest memory, for the host);
`out` may be the input array where the step allows it. A backend may also offer native
imports: `native_runtime(model) -> (LlamaRuntime, n_threads)`, the C runtime the host's
native imports (realm_ext/_host_native.pyx) run the forward steps with, without Python.
The host uses it when present (the CPU backend has it, the CUDA backend has not).

The plain functions below are the argument checks and the prefill chunk rule that the
backends share; the CPU backend's Cython wrappers apply the same checks, with the same
messages, in C.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Protocol

import numpy as np

from realm_ext.model import Model


class Backend(Protocol):
    """One forward step of a llama model on one device."""

    name: str
    max_batch: int  # tokens per pass through the layers (the scratch's size)

    def prepare(self, model: Model) -> Any:
        """The model's runtime (weights, scratch) on this device, built on first use."""

    def new_kv(self, model: Model, n_ctx: int) -> Any:
        """A KV ring of n_ctx positions for every layer of the model."""

    def free_kv(self, model: Model, kv: Any) -> None:
        """kv is closed (what the model keeps for it may go)."""

    def kv_bytes(self, model: Model, n_ctx: int) -> int:
        """Memory a ring of n_ctx positions pins (the host counts it against a guest's limit)."""

    def forward_embedding(self, model: Model, token_ids: np.ndarray, out: np.ndarray) -> None:
        """out (n_tokens, n_embd) = embedding rows of token_ids; IndexError for an id
        outside the vocabulary."""

    def forward_layer(
        self, model: Model, layer: int, x: np.ndarray, position: int, kv: Any, out: np.ndarray
    ) -> None:
        """One whole layer on x (n_tokens, n_embd) at positions position.., K/V into kv."""

    def forward_layers(
        self,
        model: Model,
        layer_begin: int,
        layer_count: int,
        x: np.ndarray,
        position: int,
        kv: Any,
        out: np.ndarray,
        control: Any = None,
    ) -> None:
        """forward_layer for each layer in order, in chunks; a stop of `control` (a
        CallControl) between chunks raises CallStopped."""

    def forward_lm_head(self, model: Model, x: np.ndarray, out: np.ndarray, control: Any = None) -> None:
        """out (n_tokens, n_vocab) = logits of the final norm of x, in chunks of rows."""

    def logits(self, model: Model, tokens: np.ndarray, kv: Any = None, position: int = 0) -> np.ndarray:
        """Logits (n_tokens, n_vocab) of tokens through every layer."""


class BackendBase:
    """One runtime per model, for a backend's `prepare`: built by the subclass's
    `_build(model)` on first use, under a lock, and shared afterwards (as long as the
    model lives)."""

    def __init__(self) -> None:
        self._runtimes: weakref.WeakKeyDictionary[Model, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _build(self, model: Model) -> Any:
        raise NotImplementedError

    def prepare(self, model: Model) -> Any:
        """The model's runtime, built on first use and shared afterwards."""
        rt = self._runtimes.get(model)
        if rt is not None:
            return rt
        with self._lock:
            rt = self._runtimes.get(model)
            if rt is None:
                rt = self._build(model)
                self._runtimes[model] = rt
            return rt


def logits(
    backend: Backend, model: Model, tokens: np.ndarray, kv: Any = None, position: int = 0
) -> np.ndarray:
    """Logits (n_tokens, n_vocab) of tokens at positions position.. through every layer
    of `backend`, appending to kv (a fresh ring of n_ctx_train positions when None)."""
    c = model.config
    ring = kv if kv is not None else backend.new_kv(model, c.n_ctx_train)
    tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
    x = np.empty((tokens.size, c.n_embd), np.float32)
    try:
        backend.forward_embedding(model, tokens, x)
        backend.forward_layers(model, 0, c.n_layer, x, position, ring, x)
        out = np.empty((tokens.size, c.n_vocab), np.float32)
        backend.forward_lm_head(model, x, out)
    finally:
        if kv is None:
            backend.free_kv(model, ring)
    return out


# ---- the shared argument checks ----------------------------------------------------------


def as_rows(a: np.ndarray, width: int, name: str) -> np.ndarray:
    """a as a C-contiguous float32 (n, width) view (no copy), or a ValueError."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float32 array")
    if a.size % width:
        raise ValueError(f"{name} has {a.size} floats, not a whole number of rows of {width}")
    return a.reshape(-1, width)


def token_ids_int32(token_ids: np.ndarray) -> np.ndarray:
    """token_ids as a C-contiguous 1-D int32 array (a view when it already is one)."""
    ids = np.asarray(token_ids)
    if ids.dtype != np.int32 or not ids.flags.c_contiguous or ids.ndim != 1:
        ids = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
    return ids


def check_token_ids(ids: np.ndarray, n_vocab: int) -> None:
    """IndexError unless every id is in 0..n_vocab-1."""
    if ids.size and (ids.min() < 0 or ids.max() >= n_vocab):
        raise IndexError(f"a token id is outside the vocabulary 0..{n_vocab - 1}")


def check_layers(layer_begin: int, layer_count: int, n_layer: int) -> None:
    """IndexError unless layers layer_begin .. layer_begin+layer_count-1 are the model's."""
    if layer_begin < 0 or layer_count < 0 or layer_begin + layer_count > n_layer:
        raise IndexError(f"layers {layer_begin}..{layer_begin + layer_count - 1} outside 0..{n_layer - 1}")


def check_position(position: int) -> None:
    if position < 0:
        raise IndexError(f"position {position} is negative")


# ---- the prefill chunk rule --------------------------------------------------------------


def prefill_chunk(position: int, n_left: int, max_tokens: int, capacity: int) -> int:
    """Tokens in the next chunk of a layer call at `position`, n_left tokens to go.

    A chunk appends all its K/V before attending, so it must not overwrite a slot its
    own first token attends to: up to max_tokens within the ring's capacity before the
    ring wraps, one token at a time after (csrc/cpu/llama.c's rule)."""
    n = min(n_left, max_tokens)
    if position + n > capacity:
        n = capacity - position if position < capacity else 1
    return n
