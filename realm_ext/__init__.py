"""realm-ext: GGUF-quantized llama models for sandboxed WebAssembly guests.

The layers (see DESIGN.md): the Python API (`Host`, `Guest`: realm_ext.api), the
engines that run guests (`realm_ext.engines`: wasmtime, wasmer), the host imports
(`realm_ext.host`, layouts in `realm_ext.abi`), the backends (`realm_ext.backends`),
the CPU kernels (`realm_ext.kernels`, `realm_ext.KVRing`), the model store
(`realm_ext.model`), block formats and the quantizer (`realm_ext.quant`,
`realm_ext.quantizer`), the model maker (`realm_ext.model_maker`) and the float64
reference forward (`realm_ext.reference`). Every error raised on purpose is a
`RealmExtError` (the tree: realm_ext.errors).
"""

from realm_ext._kernels import KVRing
from realm_ext.abi import GenerateParams
from realm_ext.api import Guest, Host, ModelNotGrantedError, RealmError
from realm_ext.chat_template import ChatTemplateError
from realm_ext.engines.base import GuestError, GuestLimitError
from realm_ext.errors import RealmExtError
from realm_ext.model import GGUFError
from realm_ext.pull import PullError

__version__ = "0.1.0"
__all__ = [
    "ChatTemplateError",
    "GGUFError",
    "GenerateParams",
    "Guest",
    "GuestError",
    "GuestLimitError",
    "Host",
    "KVRing",
    "ModelNotGrantedError",
    "PullError",
    "RealmError",
    "RealmExtError",
    "__version__",
]
