"""realm-ext: GGUF-quantized llama models for sandboxed WebAssembly guests.

The layers (see DESIGN.md): the model store (`realm_ext.model`), block formats and
the quantizer (`realm_ext.quant`, `realm_ext.quantizer`), the model maker
(`realm_ext.model_maker`), the float64 reference forward (`realm_ext.reference`), the
CPU kernels (`realm_ext.kernels`, `realm_ext.KVRing`) and the CPU backend
(`realm_ext.backends.cpu`).
"""

from realm_ext._kernels import KVRing

__version__ = "0.1.0"
__all__ = ["KVRing", "__version__"]
