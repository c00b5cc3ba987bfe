"""A numpy stand-in for the GPU, so that the CUDA backend's Python runs without one.

`emulated_cuda()` installs, for the duration of a `with`, fake `cupy` / `cupyx`
modules (device arrays are numpy arrays; streams, stream capture and graph replay keep
their ordering semantics: a launch on a capturing stream is recorded, and runs when its
graph is launched), a fake `realm_ext.backends.cuda.matmul` (the contract's matmul, by
the CPU backend's matmul or, given an Emulator, by matmul.cu's own kernels run on the
CPU (tests/backends/cuda_emulator.py); get_rows in numpy), and numpy versions of the
kernels of csrc/cuda/ops.cu and attention.cu. It yields a freshly imported
`realm_ext.backends.cuda` module bound to them.

What this checks: realm_ext/backends/cuda/backend.py itself (buffers, offsets and strides,
the chunking, the ring bookkeeping and descriptor, graph capture and replay, the
guest path) and the kernels' algorithms as written in the .cu files (the chunked
two-pass softmax of attention_max / attention_weigh, the RoPE angles), which the numpy kernels below
follow step by step. Each fake launch also checks its launch shape (threads per block,
shared memory, grid limits) and the C type of every argument against the kernel's
signature: an int where the kernel takes a long long, or a float64 where it takes a
float, fails here as it would corrupt the launch on a GPU. What it cannot check: the
CUDA C code itself (that is the GPU tests' job).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from realm_ext import _kernels, kernels, quant
from realm_ext.backends.cuda.matmul import activation_scratch_bytes, matmul_plan

if TYPE_CHECKING:
    from cuda_emulator import Emulator

# ---- device arrays ---------------------------------------------------------------------

_allocated = [0]  # bytes handed out by the fake allocator (never given back: a counter)
_by_address: dict[int, np.ndarray] = {}  # allocations, for addresses read from device memory


class _Data:
    def __init__(self, a: np.ndarray):
        self.ptr = a.ctypes.data


class DevArray(np.ndarray):
    """A 'device' array: numpy memory, cupy's set/get and .data.ptr."""

    @property
    def data(self) -> _Data:  # type: ignore[override]
        return _Data(self)

    def set(self, arr: np.ndarray, stream=None) -> None:
        arr = np.asarray(arr)
        if arr.shape != self.shape or arr.dtype != self.dtype or not self.flags.c_contiguous:
            raise ValueError(f"set: {arr.shape} {arr.dtype} into {self.shape} {self.dtype}")
        np.copyto(self.view(np.ndarray), arr)

    def get(self, stream=None, order: str = "C", out: np.ndarray | None = None, blocking: bool = True):
        if out is None:
            return np.array(self.view(np.ndarray), order=order)
        if not isinstance(out, np.ndarray) or out.shape != self.shape or out.dtype != self.dtype:
            raise ValueError(f"get: out {getattr(out, 'shape', None)} for {self.shape} {self.dtype}")
        if not out.flags.c_contiguous:
            raise ValueError("get: out must be C-contiguous")
        np.copyto(out, self.view(np.ndarray))
        return out


def _alloc(a: np.ndarray) -> DevArray:
    d = np.ascontiguousarray(a).view(DevArray)
    _allocated[0] += d.nbytes
    _by_address[d.ctypes.data] = d
    return d


def zeros(shape, dtype=np.float32) -> DevArray:
    return _alloc(np.zeros(shape, dtype))


def empty(shape, dtype=np.float32) -> DevArray:
    return _alloc(np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0x5A, dtype))  # poisoned


def full(shape, value, dtype=np.float32) -> DevArray:
    return _alloc(np.full(shape, value, dtype))


def asarray(a, dtype=None) -> DevArray:
    if isinstance(a, DevArray) and (dtype is None or a.dtype == dtype):
        return a
    return _alloc(np.array(a, dtype=dtype))


def _flat(p: np.ndarray, count: int, dtype=None) -> np.ndarray:
    """What a kernel sees through pointer p: count elements from p's first one on."""
    base = p.view(np.ndarray)
    flat = np.lib.stride_tricks.as_strided(base, shape=(count,), strides=(base.itemsize,), writeable=True)
    return flat.view(dtype) if dtype is not None else flat


def _lin(p: np.ndarray) -> np.ndarray:
    """A pointer argument as a 1-D array from its first element (pointer arithmetic)."""
    assert p.flags.c_contiguous, "a kernel pointer into a non-contiguous view"
    return p.view(np.ndarray).reshape(-1)


def _at(address: int) -> np.ndarray:
    """The allocation that starts at a device address (read from device memory)."""
    return _by_address[int(address)].view(np.ndarray).reshape(-1)


# ---- streams, capture, graphs ------------------------------------------------------------

_local = threading.local()


class Stream:
    null = None

    def __init__(self, non_blocking: bool = False):
        self.capture: list | None = None

    def __enter__(self) -> Stream:
        _local.__dict__.setdefault("stack", []).append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _local.stack.pop()

    def begin_capture(self, mode=None) -> None:
        assert self.capture is None, "already capturing"
        self.capture = []

    def end_capture(self) -> Graph:
        graph, self.capture = Graph(self.capture), None
        return graph

    def synchronize(self) -> None:
        assert self.capture is None, "synchronize while capturing"


class Graph:
    def __init__(self, launches: list):
        self.launches = launches

    def launch(self, stream=None) -> None:
        for fn in self.launches:
            fn()


def _current() -> Stream | None:
    stack = getattr(_local, "stack", [])
    return stack[-1] if stack else None


def _enqueue(fn, stream=None) -> None:
    """Run fn now, or record it when the stream is capturing (launches only)."""
    s = stream if stream is not None else _current()
    if s is not None and s.capture is not None:
        s.capture.append(fn)
    else:
        fn()


class Event:
    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


def get_elapsed_time(start: Event, end: Event) -> float:
    return (end.t - start.t) * 1e3  # ms


class Device:
    id = 0

    def synchronize(self) -> None:
        pass


class _Pool:
    def used_bytes(self) -> int:
        return _allocated[0]


# ---- kernels: numpy versions of ops.cu and attention.cu ---------------------------------

F32 = np.float32
_C_TYPES = {"P": (DevArray, np.uint64), "i": (np.int32,), "l": (np.int64,), "f": (np.float32,)}


def _check_args(name: str, sig: str, args: tuple) -> tuple:
    assert len(args) == len(sig), f"{name}: {len(args)} arguments for a signature of {len(sig)}"
    for i, (code, a) in enumerate(zip(sig, args, strict=True)):
        assert isinstance(a, _C_TYPES[code]), (
            f"{name}: argument {i} is {type(a).__name__}, the kernel takes {code}"
        )
    return args


def _check_launch(name: str, grid: tuple, block: tuple, shared_mem: int, max_threads: int = 1024) -> None:
    assert all(isinstance(g, int) and g >= 1 for g in grid), f"{name}: grid {grid}"
    assert len(grid) < 2 or grid[1] <= 65535, f"{name}: grid {grid}"
    assert len(grid) < 3 or grid[2] <= 65535, f"{name}: grid {grid}"
    assert int(np.prod(block)) <= max_threads, f"{name}: block {block}"
    assert shared_mem <= 48 * 1024, f"{name}: {shared_mem} bytes of shared memory"


def _rows(p: np.ndarray, n: int, width: int, stride: int | None = None) -> np.ndarray:
    stride = width if stride is None else stride
    return np.lib.stride_tricks.as_strided(
        p.view(np.ndarray), shape=(n, width), strides=(stride * p.itemsize, p.itemsize), writeable=True
    )


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: np.float32) -> np.ndarray:
    ss = np.sum((x * x).astype(np.float64), axis=1)  # f32 squares, summed in double
    scale = F32(1.0) / np.sqrt((ss / x.shape[1]).astype(F32) + eps)
    return (x * scale[:, None]) * w


def _expf_ggml(x: np.ndarray) -> np.ndarray:
    """ggml_math.cuh's expf_ggml: the CPU's realm_expf_ggml, elementwise."""
    flat = np.ascontiguousarray(x, F32).reshape(-1)
    return _kernels.expf_ggml(flat).reshape(np.shape(x))


def _dot_lanes(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """attention.cu's dot_lanes for every (head, position): q (G, D), k (T, D) -> (G, T)."""
    prods = q[:, None, :] * k[None, :, :]  # exact: f16 times f16
    D = q.shape[1]
    acc = np.zeros(prods.shape[:2] + (16,), F32)
    d = 0
    while d + 16 <= D:
        acc += prods[..., d : d + 16]
        d += 16
    acc[..., : D - d] += prods[..., d:]
    for w in (8, 4, 2, 1):
        acc[..., :w] += acc[..., w : 2 * w]
    return acc[..., 0]


def rmsnorm_f32(grid, block, args, shared_mem=0) -> None:
    _check_launch("rmsnorm_f32", grid, block, shared_mem, 256)
    x, w, out, n, eps = _check_args("rmsnorm_f32", "PPPif", args)
    t = grid[0]
    _rows(out, t, n)[:] = _rmsnorm(_rows(x, t, n).copy(), _flat(w, n), eps)


def add_rmsnorm_f32(grid, block, args, shared_mem=0) -> None:
    _check_launch("add_rmsnorm_f32", grid, block, shared_mem, 256)
    a, b, s, w, norm, n, eps = _check_args("add_rmsnorm_f32", "PPPPPif", args)
    t = grid[0]
    total = _rows(a, t, n) + _rows(b, t, n)
    _rows(s, t, n)[:] = total
    if isinstance(w, DevArray):
        _rows(norm, t, n)[:] = _rmsnorm(total, _flat(w, n), eps)


def swiglu_f32(grid, block, args, shared_mem=0) -> None:
    _check_launch("swiglu_f32", grid, block, shared_mem)
    gate, gs, up, us, out, n = _check_args("swiglu_f32", "PiPiPi", args)
    assert grid[0] * block[0] >= n, "swiglu_f32: the grid does not cover a row"
    t = grid[1]
    g = _rows(gate, t, n, int(gs))
    n16 = n - n % 16
    e = np.concatenate([_expf_ggml(F32(0.0) - g[:, :n16]), np.exp(-g[:, n16:])], axis=1)
    _rows(out, t, n)[:] = g / (F32(1.0) + e) * _rows(up, t, n, int(us))


def rope_store_kv(grid, block, args, shared_mem=0) -> None:
    _check_launch("rope_store_kv", grid, block, shared_mem)
    q, qs, k, ks, v, vs, ring, layer, cap, H, Hkv, D, rope_dim, theta_scale = _check_args(
        "rope_store_kv", "PiPiPiPiliiiif", args
    )
    n, heads = grid[0], grid[1]
    assert heads == H + 2 * Hkv and block == (D // 2,), f"rope_store_kv: grid {grid}, block {block}"
    p0, kc, vc = int(ring[0]), _at(ring[1]).view(np.float16), _at(ring[2]).view(np.float16)
    # the angles: pair i at pos * theta_scale^i by repeated f32 multiplication
    half = rope_dim // 2
    for t in range(n):
        theta = np.empty(half, F32)
        th = F32(p0 + t)
        for i in range(half):
            theta[i] = th
            th = F32(th * theta_scale)
        c, s = np.cos(theta).astype(F32), np.sin(theta).astype(F32)
        slot = (p0 + t) % int(cap)

        def rotate(x: np.ndarray, c: np.ndarray = c, s: np.ndarray = s) -> np.ndarray:
            x = x.copy()
            x0, x1 = x[:, 0:rope_dim:2].copy(), x[:, 1:rope_dim:2].copy()
            x[:, 0:rope_dim:2] = x0 * c - x1 * s
            x[:, 1:rope_dim:2] = x0 * s + x1 * c
            return x

        qt = _rows(_lin(q)[t * int(qs) :], H, D)
        qt[:] = rotate(qt)
        at = ((int(layer) * int(cap) + slot) * Hkv) * D
        kc[at : at + Hkv * D] = rotate(_rows(_lin(k)[t * int(ks) :], Hkv, D)).reshape(-1).astype(np.float16)
        vc[at : at + Hkv * D] = _rows(_lin(v)[t * int(vs) :], Hkv, D).reshape(-1).astype(np.float16)


ATT_TILE = 128


def _att_blocks(name: str, grid, block, args, shared_mem: int):
    """The launch checks of attention_max / attention_weigh, then per block (t, kvh, c):
    its chunk's positions c0 .. c1-1, q16 [G][D], and the chunk's slice of part."""
    _check_launch(name, grid, block, shared_mem)
    q, qs, ring, layer, cap, H, Hkv, D, scale, part = _check_args(name, "PiPiliiifP", args)
    chunks, n_kv, n = grid
    G, cap, layer = H // Hkv, int(cap), int(layer)
    assert n_kv == Hkv and block == (ATT_TILE,), f"{name}: grid {grid}, block {block}"
    assert shared_mem >= 4 * (2 * G * D + G * ATT_TILE + 2 * G + ATT_TILE), f"{name}: shared memory"
    p0, kc, vc = int(ring[0]), _at(ring[1]).view(np.float16), _at(ring[2]).view(np.float16)
    pf = _flat(part, n * H * chunks * (D + 2)).reshape(n, H, chunks, D + 2)
    for t in range(n):
        p = p0 + t
        first = max(0, p - cap + 1)
        per = (-(-(p - first + 1) // chunks) + ATT_TILE - 1) // ATT_TILE * ATT_TILE
        for kvh in range(Hkv):
            q16 = _rows(_lin(q)[t * int(qs) + kvh * G * D :], G, D).astype(np.float16).astype(F32)
            for c in range(chunks):
                c0 = first + c * per
                tiles = []
                for t0 in range(c0, min(c0 + per, p + 1), ATT_TILE):
                    slots = np.arange(t0, min(t0 + ATT_TILE, c0 + per, p + 1)) % cap
                    at = ((layer * cap + slots) * Hkv + kvh) * D
                    K = kc[at[:, None] + np.arange(D)].astype(F32)
                    V = vc[at[:, None] + np.arange(D)].astype(F32)
                    tiles.append((_dot_lanes(q16, K) * scale, V))  # scores (G, tile), V (tile, D)
                yield tiles, pf[t, kvh * G : (kvh + 1) * G], c


def attention_max(grid, block, args, shared_mem=0) -> None:
    for tiles, part, c in _att_blocks("attention_max", grid, block, args, shared_mem):
        m = np.full(part.shape[0], -np.inf, F32)
        total = np.zeros(part.shape[0], F32)
        for s, _ in tiles:
            m_new = np.maximum(m, s.max(axis=1))
            total = total * _expf_ggml(m - m_new) + _expf_ggml(s - m_new[:, None]).sum(axis=1, dtype=F32)
            m = m_new
        D = part.shape[2] - 2
        part[:, c, D], part[:, c, D + 1] = m, total


def attention_weigh(grid, block, args, shared_mem=0) -> None:
    for tiles, part, c in _att_blocks("attention_weigh", grid, block, args, shared_mem):
        D = part.shape[2] - 2
        M = part[:, :, D].max(axis=1)
        S = (
            part[:, :, D + 1].astype(np.float64) * np.exp(part[:, :, D] - M[:, None]).astype(np.float64)
        ).sum(1)
        inv = (1.0 / S).astype(F32)
        acc = np.zeros((part.shape[0], D), F32)
        for s, V in tiles:
            p16 = (_expf_ggml(s - M[:, None]) * inv[:, None]).astype(np.float16).astype(F32)
            for j in range(V.shape[0]):  # in position order, as the kernel (and the CPU)
                acc += p16[:, j : j + 1] * V[j]
        part[:, c, :D] = acc


def attention_combine(grid, block, args, shared_mem=0) -> None:
    _check_launch("attention_combine", grid, block, shared_mem)
    part, chunks, H, D, out = _check_args("attention_combine", "PiiiP", args)
    assert grid[0] == H, f"attention_combine: grid {grid}"
    n = grid[1]
    p = _flat(part, n * H * chunks * (D + 2)).reshape(n, H, chunks, D + 2)
    _rows(out, n, H * D)[:] = p[..., :D].sum(axis=2, dtype=F32).reshape(n, H * D)


KERNELS = {
    f.__name__: f
    for f in (rmsnorm_f32, add_rmsnorm_f32, swiglu_f32, rope_store_kv, attention_max, attention_weigh)
    + (attention_combine,)
}


class _Kernel:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        grid = tuple(int(g) if isinstance(g, (int, np.integer)) else g for g in grid)
        _enqueue(lambda: self.fn(grid, tuple(block), tuple(args), shared_mem))


class _Module:
    def __init__(self, name: str):
        self.name = name

    def get_function(self, name: str) -> _Kernel:
        return _Kernel(KERNELS[name])


def load_module(name: str) -> _Module:
    assert name in ("ops", "attention"), name
    return _Module(name)


# ---- the matmul contract (realm_ext.backends.cuda.matmul) --------------------------------


class DeviceWeight:
    def __init__(self, data: DevArray, ggml_type: int, n_rows: int, n_cols: int):
        self.data, self.ggml_type, self.n_rows, self.n_cols = data, ggml_type, n_rows, n_cols
        self.raw = data.view(np.ndarray)
        self.w = quant.dequantize(self.raw, ggml_type, (n_rows, n_cols)).astype(F32)  # for get_rows

    @classmethod
    def upload(cls, raw: np.ndarray, ggml_type: int, n_rows: int, n_cols: int) -> DeviceWeight:
        return cls(
            _alloc(np.ascontiguousarray(raw).view(np.uint8).reshape(n_rows, -1)),
            int(ggml_type),
            n_rows,
            n_cols,
        )


_runner: list = [None]  # the Emulator that runs matmul.cu's kernels, if any (emulated_cuda)
# per matmul run by the kernels: its largest error against the CPU backend's matmul of the
# same x, in units of |x| @ |W|^T (float summation order only: <= 1e-5 is asserted)
kernel_errors: list[float] = []


def _check_against_cpu(w: DeviceWeight, x: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """The kernels' activation bytes are the CPU backend's for this x, and their product
    is the CPU backend's up to float summation order."""
    from act_ref import FLOAT_TYPES, device_acts, unread_mask  # tests/backends, on the path in tests

    t = quant.GGMLType(w.ggml_type)
    if t not in FLOAT_TYPES:
        want = device_acts(t, x).reshape(-1)
        keep = unread_mask(t, want.size)
        got = scratch.view(np.ndarray).reshape(-1)[: want.size]
        assert np.array_equal(got[keep], want[keep]), f"{t.name}: activation bytes differ from the CPU's"
    cpu = kernels.matmul(w.raw, w.ggml_type, x)
    err = float((np.abs(out - cpu) / (np.abs(x) @ np.abs(w.w).T).clip(1e-30)).max())
    assert err <= 1e-5, f"{t.name} {w.n_rows}x{w.n_cols}, {x.shape[0]} tokens: {err:.2e} off the CPU's matmul"
    kernel_errors.append(err)


def _check(what: str, a, dtype, shape) -> None:
    assert isinstance(a, DevArray), f"{what} is {type(a).__name__}, not a device array"
    assert a.dtype == dtype and a.shape == shape and a.flags.c_contiguous, f"{what}: {a.dtype} {a.shape}"


def matmul(w: DeviceWeight, x, out, scratch, stream=None) -> None:
    """out = x W^T: by matmul.cu's kernels on the CPU when emulated_cuda was given an
    Emulator (exactly the launches of cuda_matmul.matmul_plan, on these buffers, the
    scratch included), each call then checked against the CPU backend's matmul of the
    same x (_check_against_cpu); else by the CPU backend's kernel (realm_ext.kernels
    .matmul), which the kernels equal up to float summation order."""
    n = x.shape[0]
    _check("x", x, F32, (n, w.n_cols))
    _check("out", out, F32, (n, w.n_rows))
    assert not np.shares_memory(x, out), "matmul: out overlaps x"
    need = activation_scratch_bytes(n, w.n_cols, w.ggml_type)
    assert scratch.nbytes >= need and scratch.dtype == np.uint8, "matmul: scratch too small"
    emulator = _runner[0]

    def run() -> None:
        if emulator is None:
            kernels.matmul(w.raw, w.ggml_type, x.view(np.ndarray), out.view(np.ndarray))
            return
        bufs = {"W": w.raw, "x": x.view(np.ndarray), "out": out.view(np.ndarray), "scratch": scratch}
        emulator.run(matmul_plan(w.ggml_type, w.n_rows, w.n_cols, n), {k: _lin(v) for k, v in bufs.items()})
        _check_against_cpu(w, x.view(np.ndarray), out.view(np.ndarray), scratch)

    _enqueue(run, stream)


def get_rows(w: DeviceWeight, ids, out, stream=None) -> None:
    _check("ids", ids, np.int32, (ids.shape[0],))
    _check("out", out, F32, (ids.shape[0], w.n_cols))
    _enqueue(lambda: out.__setitem__(slice(None), w.w[ids.view(np.ndarray)]), stream)


# ---- installing it ----------------------------------------------------------------------


def _module(name: str, **attrs: object) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    m.__dict__.update(attrs)
    return m


def _fake_modules() -> dict[str, types.ModuleType]:
    runtime = _module("cupy.cuda.runtime", getDeviceProperties=lambda i: {"name": b"numpy stand-in"})
    cuda_ns = _module(
        "cupy.cuda",
        Stream=Stream,
        Graph=Graph,
        Event=Event,
        Device=Device,
        get_elapsed_time=get_elapsed_time,
        runtime=runtime,
        is_available=lambda: True,
    )
    cupy = _module(
        "cupy",
        ndarray=DevArray,
        cuda=cuda_ns,
        zeros=zeros,
        empty=empty,
        full=full,
        asarray=asarray,
        float16=np.float16,
        float32=np.float32,
        int32=np.int32,
        int64=np.int64,
        uint8=np.uint8,
        get_default_memory_pool=_Pool,
    )
    cupyx = _module("cupyx", empty_pinned=lambda shape, dtype=np.float32: np.empty(shape, dtype))
    matmul_mod = _module(
        "realm_ext.backends.cuda.matmul",
        DeviceWeight=DeviceWeight,
        activation_scratch_bytes=activation_scratch_bytes,
        matmul=matmul,
        get_rows=get_rows,
    )
    return {"cupy": cupy, "cupy.cuda": cuda_ns, "cupyx": cupyx, "realm_ext.backends.cuda.matmul": matmul_mod}


@contextlib.contextmanager
def emulated_cuda(kernel_runner: Emulator | None = None) -> Iterator[types.ModuleType]:
    """realm_ext.backends.cuda over the numpy stand-ins, while the `with` lasts; its
    matmuls run matmul.cu's kernels on kernel_runner when one is given."""
    backend = "realm_ext.backends.cuda.backend"
    names = ["cupy", "cupy.cuda", "cupyx", "realm_ext.backends.cuda.matmul", backend]
    saved = {name: sys.modules.get(name) for name in names}
    _runner[0] = kernel_runner
    kernel_errors.clear()
    try:
        sys.modules.update(_fake_modules())
        sys.modules.pop(backend, None)
        mod = importlib.import_module(backend)
        mod.load_module = load_module
        yield mod
    finally:
        _runner[0] = None
        for name, m in saved.items():
            if m is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = m
