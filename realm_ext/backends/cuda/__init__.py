"""The CUDA backend, as a package:

- backend.py: `CudaBackend`, `DeviceKVRing`, the forward pass (`CudaRuntime`)
- matmul.py: GGUF weights in device memory (`DeviceWeight`), matmul and row lookups
- source.py: the CUDA C sources (csrc/cuda/*.cu) and their run-time NVRTC compilation

backend.py and matmul.py import cupy; source.py does not (it compile-checks the
kernels on machines with no GPU). `from realm_ext.backends.cuda import CudaBackend`
imports backend.py (and cupy) on first use only.
"""

from __future__ import annotations

import importlib
from typing import Any

_FROM_BACKEND = ("CudaBackend", "CudaRuntime", "DeviceKVRing")

__all__ = list(_FROM_BACKEND)


def __getattr__(name: str) -> Any:
    if name in _FROM_BACKEND:
        return getattr(importlib.import_module("realm_ext.backends.cuda.backend"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
