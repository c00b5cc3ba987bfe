"""realm-ext: GGUF-quantized llama models for sandboxed WebAssembly guests.

The layers (see DESIGN.md): the model store (`realm_ext.model`), block formats and
the quantizer (`realm_ext.quant`, `realm_ext.quantizer`), the model maker
(`realm_ext.model_maker`) and the float64 reference forward (`realm_ext.reference`).
"""

__version__ = "0.1.0"
