"""Build the C kernels (csrc/) and their Cython wrappers into realm_ext._kernels."""

from Cython.Build import cythonize
from setuptools import Extension, setup

C_SOURCES = ["csrc/dequant.c", "csrc/quantize.c"]

# -ffp-contract=off: no fused multiply-add where ggml has none, so the decoders are
# bit-exact with ggml's. SIMD paths (later) choose their instruction set at run time
# through target attributes, so the wheel itself needs no -march.
EXTRA_COMPILE_ARGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-Wall"]

kernels = Extension(
    "realm_ext._kernels",
    sources=["realm_ext/_kernels.pyx", *C_SOURCES],
    include_dirs=["csrc"],
    depends=["csrc/ggml_blocks.h", "csrc/fp16.h", "csrc/dequant.h", "csrc/quantize.h"],
    extra_compile_args=EXTRA_COMPILE_ARGS,
)

setup(
    ext_modules=cythonize([kernels], compiler_directives={"language_level": "3"}),
)
