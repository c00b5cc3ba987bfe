"""csrc/cuda/matmul.cu run on the CPU: cuda_host_harness.cpp built by the host C++
compiler and driven by ctypes, launching exactly the plans realm_ext.backends.cuda.matmul
launches on a GPU (same kernels, grids, blocks and arguments), on numpy buffers."""

from __future__ import annotations

import ctypes
import mmap
import shutil
import subprocess
from pathlib import Path

import numpy as np

from realm_ext.backends.cuda import source as cuda_source
from realm_ext.backends.cuda.matmul import Launch, activation_scratch_bytes, get_rows_plan, matmul_plan

HARNESS = Path(__file__).resolve().parent / "cuda_host_harness.cpp"


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def guarded(a: np.ndarray) -> np.ndarray:
    """A copy of `a` whose last byte is followed by an inaccessible page: a kernel that
    reads or writes past the end of its buffer crashes the process (SIGSEGV) instead of
    silently using another allocation's bytes."""
    page = mmap.PAGESIZE
    n = a.nbytes
    size = (n + page - 1) // page * page + page
    mm = mmap.mmap(-1, size)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    if _libc.mprotect(base + size - page, page, 0) != 0:  # PROT_NONE
        raise OSError(ctypes.get_errno(), "mprotect failed")
    out = np.frombuffer(mm, dtype=a.dtype, count=a.size, offset=size - page - n).reshape(a.shape)
    out[...] = a
    return out


class Emulator:
    def __init__(self, build_dir: Path) -> None:
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler (g++/c++) on PATH")
        so = build_dir / "cuda_host_harness.so"
        d = cuda_source.csrc_dir()
        flags = [
            "-O2",
            "-std=c++17",
            "-ffp-contract=off",
            "-Wall",
            "-Wno-unknown-pragmas",
            "-shared",
            "-fPIC",
        ]
        subprocess.run([cxx, *flags, f"-I{d}", f"-I{d / 'cuda'}", str(HARNESS), "-o", str(so)], check=True)
        self.lib = lib = ctypes.CDLL(str(so))
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.harness_dot_rows.argtypes = [i, p, p, i, i, p]
        lib.harness_decode_rows.argtypes = [i, p, i, i, p]
        lib.emu_launch.argtypes = [p, i, i, i, i, ctypes.POINTER(ctypes.c_uint64)]

    def run(self, plan: list[Launch], buffers: dict[str, np.ndarray]) -> None:
        """Each launch of the plan in turn; a buffer role names a C-contiguous array."""
        for lc in plan:
            ptrs = [buffers[a].ctypes.data if isinstance(a, str) else int(a) for a in lc.args]
            assert all(buffers[a].flags.c_contiguous for a in lc.args if isinstance(a, str))
            args = (ctypes.c_uint64 * 6)(*[v & (2**64 - 1) for v in ptrs])
            fn = ctypes.cast(getattr(self.lib, lc.kernel), ctypes.c_void_p)
            gx, gy = (*lc.grid, 1)[:2]
            bx, by = (*lc.block, 1)[:2]
            rc = self.lib.emu_launch(fn, gx, gy, bx, by, args)
            assert rc == 0, f"{lc.kernel}: a barrier that not every thread reaches (rc {rc})"

    def matmul(self, t: int, raw: np.ndarray, x: np.ndarray, n_rows: int) -> np.ndarray:
        """out (n_tokens, n_rows) of W (raw blocks) times x (n_tokens, n_cols), as matmul does."""
        n_tokens, n_cols = x.shape
        bufs = {
            "W": guarded(np.ascontiguousarray(raw).view(np.uint8).reshape(-1)),
            "x": guarded(np.ascontiguousarray(x, dtype=np.float32)),
            "out": guarded(np.full((n_tokens, n_rows), np.nan, dtype=np.float32)),
            "scratch": guarded(np.zeros(activation_scratch_bytes(n_tokens, n_cols, t), dtype=np.uint8)),
        }
        self.run(matmul_plan(t, n_rows, n_cols, n_tokens), bufs)
        np.testing.assert_array_equal(bufs["x"], x)  # x is read only
        return np.array(bufs["out"])

    def get_rows(self, t: int, raw: np.ndarray, n_rows: int, n_cols: int, ids: np.ndarray) -> np.ndarray:
        bufs = {
            "W": guarded(np.ascontiguousarray(raw).view(np.uint8).reshape(-1)),
            "ids": guarded(ids.astype(np.int32)),
            "out": guarded(np.zeros((ids.size, n_cols), dtype=np.float32)),
        }
        self.run(get_rows_plan(t, n_rows, n_cols, ids.size), bufs)
        return np.array(bufs["out"])
