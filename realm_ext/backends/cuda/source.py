"""The CUDA C sources (csrc/cuda/*.cu) and their run-time compilation.

The .cu files are compiled by NVRTC when a process first needs them: cupy.RawModule
on a machine with a GPU, or `nvrtc_compile` for a given architecture with no GPU at
all (CI checks every file for sm_80 and sm_90 that way). Both include csrc/ so the
kernels see the same block structs (ggml_blocks.h) as the C code.

In a source tree the sources are ./csrc; in an installed wheel, realm_ext/csrc.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import realm_ext

_PACKAGE = Path(realm_ext.__file__).resolve().parent
ARCHS_CHECKED = ("80", "90")  # Ampere (A100) and Hopper (H100/H200)


def csrc_dir() -> Path:
    """The folder holding ggml_blocks.h and cuda/*.cu (wheel first, then source tree)."""
    for d in (_PACKAGE / "csrc", _PACKAGE.parent / "csrc"):
        if (d / "ggml_blocks.h").is_file() and (d / "cuda").is_dir():
            return d
    raise FileNotFoundError(f"realm-ext's C sources are missing (looked in {_PACKAGE}/csrc and ../csrc)")


def sources() -> list[str]:
    """Names (no suffix) of every kernel file, csrc/cuda/*.cu."""
    return sorted(p.stem for p in (csrc_dir() / "cuda").glob("*.cu"))


def options(arch: str | None = None) -> tuple[str, ...]:
    """NVRTC options shared by every file: C++17, csrc/ and csrc/cuda/ on the include
    path; arch ("90") picks the target when compiling without a GPU."""
    d = csrc_dir()
    opts = ("-std=c++17", f"-I{d}", f"-I{d / 'cuda'}")
    return opts + ((f"-arch=sm_{arch}",) if arch else ())


def source_text(name: str) -> str:
    return (csrc_dir() / "cuda" / f"{name}.cu").read_text()


class NvrtcError(RuntimeError):
    """A .cu file that NVRTC rejects; the message carries NVRTC's log."""


def nvrtc_compile(name: str, arch: str) -> bytes:
    """Compile csrc/cuda/{name}.cu to a cubin for sm_{arch} with NVRTC (cupy's
    bindings; no GPU or driver needed). Raises NvrtcError with the compiler's log."""
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(source_text(name), f"{name}.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, options(arch))
        except nvrtc.NVRTCError as e:
            raise NvrtcError(f"{name}.cu (sm_{arch}): {e}\n{nvrtc.getProgramLog(prog)}") from None
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


@functools.cache
def load_module(name: str) -> Any:  # a cupy.RawModule
    """cupy.RawModule of csrc/cuda/{name}.cu, compiled once per process (and cached on
    disk by cupy across processes) for the current device."""
    import cupy

    return cupy.RawModule(code=source_text(name), options=options(), backend="nvrtc")
