"""Build the C kernels (csrc/cpu/) and their Cython wrappers into realm_ext._kernels, and
the host's native imports into realm_ext._host_native (it calls the kernels through
_kernels.pxd: the C sources are compiled once, into _kernels)."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

C_SOURCES = sorted(str(p) for p in Path("csrc/cpu").glob("*.c"))
INCLUDE_DIRS = ["csrc", "csrc/cpu"]  # the shared headers (block structs, fp16, error codes), the CPU's
HEADERS = [str(p) for d in INCLUDE_DIRS for pattern in ("*.h", "*.inc") for p in Path(d).glob(pattern)]
CYTHON_DECLS = [str(p) for pattern in ("*.pxi", "*.pxd") for p in Path("realm_ext").glob(pattern)]

# -ffp-contract=off: no fused multiply-add where ggml has none, so the decoders are
# bit-exact with ggml's. SIMD paths (later) choose their instruction set at run time
# through target attributes, so the wheel itself needs no -march.
# The kernels' loops run on one pthread pool (csrc/cpu/threadpool.c; the GIL is released
# around every call).
EXTRA_COMPILE_ARGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-pthread"]
EXTRA_LINK_ARGS = ["-pthread"]

kernels = Extension(
    "realm_ext._kernels",
    sources=["realm_ext/_kernels.pyx", *C_SOURCES],
    include_dirs=INCLUDE_DIRS,
    depends=HEADERS + CYTHON_DECLS,
    extra_compile_args=EXTRA_COMPILE_ARGS,
    extra_link_args=EXTRA_LINK_ARGS,
)

host_native = Extension(
    "realm_ext._host_native",
    sources=["realm_ext/_host_native.pyx"],
    include_dirs=INCLUDE_DIRS,
    depends=HEADERS + CYTHON_DECLS,
    extra_compile_args=EXTRA_COMPILE_ARGS,
    extra_link_args=EXTRA_LINK_ARGS,
)

setup(
    ext_modules=cythonize([kernels, host_native], compiler_directives={"language_level": "3"}),
)
