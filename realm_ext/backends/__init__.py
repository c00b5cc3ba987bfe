"""Backends: one forward step of a llama model on one device (DESIGN.md). A backend
never knows about WASM; it reads and writes caller-provided float32 arrays.

`make_backend(device)` picks one: "cpu", "cuda", or "auto" (CUDA when cupy imports and
sees a GPU, else the CPU). The CUDA backend (realm_ext/backends/cuda/) imports cupy, so
it is imported only when chosen. What every backend offers: realm_ext/backends/base.py."""

from __future__ import annotations

import importlib.util

from realm_ext.backends.base import Backend
from realm_ext.backends.cpu import DEFAULT_WEIGHTS, CpuBackend

__all__ = ["CpuBackend", "DEVICES", "cuda_unavailable_reason", "make_backend"]

DEVICES = ("auto", "cpu", "cuda")


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA backend can run here, else why not (for messages and skips)."""
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed (pip install 'realm-ext[cuda13]' or '[cuda12]')"
    try:
        import cupy

        if cupy.cuda.is_available():
            return None
    except Exception as e:  # a broken CUDA install: report it, let "auto" fall back
        return f"cupy cannot reach CUDA: {type(e).__name__}: {e}"
    return "no CUDA GPU is visible (cupy.cuda.is_available() is False)"


def make_backend(
    device: str = "auto", n_threads: int | None = None, weights: str = DEFAULT_WEIGHTS
) -> Backend:
    """The backend for `device`. n_threads: CPU kernel threads; weights: "repack", "mmap" or "load",
    where the CPU kernels read the weights (CPU backend only: CUDA uploads them once).
    Raises ValueError for an unknown device, RuntimeError for "cuda" without a GPU."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'auto'")
    if device == "cpu":
        return CpuBackend(n_threads=n_threads, weights=weights)
    reason = cuda_unavailable_reason()
    if reason is None:
        from realm_ext.backends.cuda import CudaBackend

        return CudaBackend()
    if device == "cuda":
        raise RuntimeError(f"device 'cuda' is not available: {reason}")
    return CpuBackend(n_threads=n_threads, weights=weights)
