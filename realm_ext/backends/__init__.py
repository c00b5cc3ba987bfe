"""Backends: one forward step of a llama model on one device (DESIGN.md). A backend
never knows about WASM; it reads and writes caller-provided float32 arrays."""

from realm_ext.backends.cpu import CpuBackend

__all__ = ["CpuBackend"]
