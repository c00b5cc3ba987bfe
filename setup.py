"""Build the C kernels (csrc/) and their Cython wrappers into realm_ext._kernels."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

C_SOURCES = sorted(str(p) for p in Path("csrc").glob("*.c"))

# -ffp-contract=off: no fused multiply-add where ggml has none, so the decoders are
# bit-exact with ggml's. SIMD paths (later) choose their instruction set at run time
# through target attributes, so the wheel itself needs no -march.
# The kernels' loops run on one pthread pool (csrc/threadpool.c; the GIL is released
# around every call).
EXTRA_COMPILE_ARGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-pthread"]
EXTRA_LINK_ARGS = ["-pthread"]

kernels = Extension(
    "realm_ext._kernels",
    sources=["realm_ext/_kernels.pyx", *C_SOURCES],
    include_dirs=["csrc"],
    depends=[str(p) for p in Path("csrc").glob("*.h")] + [str(p) for p in Path("realm_ext").glob("*.pxi")],
    extra_compile_args=EXTRA_COMPILE_ARGS,
    extra_link_args=EXTRA_LINK_ARGS,
)

setup(
    ext_modules=cythonize([kernels], compiler_directives={"language_level": "3"}),
)
