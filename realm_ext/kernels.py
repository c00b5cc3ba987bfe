"""The low-level CPU kernels (C, behind Cython; the GIL is released in every call).

Weights are raw GGUF bytes, (n_rows, row_bytes) uint8, never decoded to a matrix:
`matmul` rounds the activations to the weight's vec dot type and takes integer (or
f16/f32) dot products, as llama.cpp's CPU backend does. `set_isa("scalar")` forces the
portable kernels (the SIMD ones are chosen at run time from the CPU's features).
`float_order()` names the llama.cpp build whose float order the kernels follow (AVX2 on
an AVX2-only CPU, AVX-512 elsewhere); `set_float_order` forces one.
"""

from realm_ext._kernels import (
    KVRing,
    active_isa,
    attention,
    cpu_isa,
    float_order,
    geglu,
    matmul,
    quantize_acts,
    rmsnorm,
    rope,
    set_float_order,
    set_isa,
    swiglu,
    vec_dot_type,
)

__all__ = [
    "KVRing",
    "active_isa",
    "attention",
    "cpu_isa",
    "float_order",
    "matmul",
    "quantize_acts",
    "rmsnorm",
    "rope",
    "set_float_order",
    "set_isa",
    "geglu",
    "swiglu",
    "vec_dot_type",
]
