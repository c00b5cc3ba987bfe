"""Seeded mutation fuzzer for realm_ext.model.load_gguf (driven by tests/model/test_model_fuzz.py).

Every case is a pure function of (seed, case index, base files): `make_case` picks a
base model and a mutation kind and returns the mutated bytes with a description, so a
failure is reproduced by

    python tests/support/gguf_fuzz.py repro SEED CASE OUT.gguf BASE.gguf [BASE.gguf ...]

Where to mutate comes from the gguf package's own reader: every field of a base file is
a numpy view into the reader's memory map, so its byte offset is the view's address
minus the map's (no hand parsing beyond the fixed 24-byte header).

As a worker (`python tests/support/gguf_fuzz.py worker SPEC.json`) it loads each case's file
with load_gguf under tracemalloc and prints one JSON line per case: the outcome ("ok":
loaded, validated and every tensor touched; "gguf_error"; "fail": anything else), the
seconds the load took and its peak Python allocation. A crash or a hang of the worker
is seen by the parent as a missing line.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import traceback
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

V = gguf.GGUFValueType
HEADER = 24  # magic u32, version u32, n_tensors u64, n_kv u64
U32, U64 = 4, 8
_INT_TYPES = {
    V.UINT8: ("<B", 1),
    V.INT8: ("<b", 1),
    V.UINT16: ("<H", 2),
    V.INT16: ("<h", 2),
    V.UINT32: ("<I", 4),
    V.INT32: ("<i", 4),
    V.UINT64: ("<Q", 8),
    V.INT64: ("<q", 8),
    V.BOOL: ("<B", 1),
}
_FLOAT_TYPES = {V.FLOAT32: "<f", V.FLOAT64: "<d"}


@dataclass
class Slot:
    """An unsigned little-endian integer field of a base file."""

    off: int
    size: int  # 4 or 8
    value: int
    what: str


@dataclass
class Layout:
    size: int
    kv_end: int  # first byte of the tensor infos
    ti_end: int  # first byte after the tensor infos
    data_offset: int
    alignment: int
    n_tensors: Slot
    n_kv: Slot
    str_lens: dict[str, list[Slot]] = field(default_factory=dict)  # category -> slots
    arr_lens: list[Slot] = field(default_factory=list)
    arr_types: list[Slot] = field(default_factory=list)
    kv_types: list[Slot] = field(default_factory=list)
    kv_scalars: list[tuple[int, V, str]] = field(default_factory=list)  # (offset, type, key)
    n_dims: list[Slot] = field(default_factory=list)
    dims: list[Slot] = field(default_factory=list)
    ttypes: list[Slot] = field(default_factory=list)
    toffs: list[tuple[Slot, int]] = field(default_factory=list)  # (relative offset, n_bytes)
    alignment_slot: Slot | None = None


def layout_of(path: Path) -> Layout:
    """Where every field of the base file lies, from gguf.GGUFReader's own parse."""
    r = gguf.GGUFReader(path)
    base = r.data.ctypes.data

    def slot(part: np.ndarray, what: str) -> Slot:
        return Slot(part.ctypes.data - base, part.itemsize, int(part[0]), what)

    tinfo = [t.field for t in r.tensors]
    last = tinfo[-1]
    lay = Layout(
        size=int(r.data.size),
        kv_end=tinfo[0].offset,
        ti_end=last.offset + sum(int(p.nbytes) for p in last.parts),
        data_offset=int(r.data_offset),
        alignment=int(r.alignment),
        n_tensors=slot(r.fields["GGUF.tensor_count"].parts[0], "n_tensors"),
        n_kv=slot(r.fields["GGUF.kv_count"].parts[0], "n_kv"),
    )
    lay.str_lens = {"key": [], "value": [], "element": [], "tensor_name": []}
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        p = f.parts  # klen, kdata, vtype, value parts...
        lay.str_lens["key"].append(slot(p[0], f"key length of {key}"))
        lay.kv_types.append(slot(p[2], f"value type of {key}"))
        vt = f.types[0]
        if vt == V.STRING:
            lay.str_lens["value"].append(slot(p[3], f"string length of {key}"))
        elif vt == V.ARRAY:
            lay.arr_types.append(slot(p[3], f"array type of {key}"))
            lay.arr_lens.append(slot(p[4], f"array length of {key}"))
            if f.types[-1] == V.STRING:
                for i, idx in enumerate(f.data):
                    lay.str_lens["element"].append(slot(p[idx - 1], f"length of {key}[{i}]"))
        else:
            lay.kv_scalars.append((p[3].ctypes.data - base, vt, key))
            if key == "general.alignment":
                lay.alignment_slot = slot(p[3], "general.alignment")
    for t in r.tensors:
        name_len, _name, n_dims, dims, ttype, offset = t.field.parts
        lay.str_lens["tensor_name"].append(slot(name_len, f"name length of {t.name}"))
        lay.n_dims.append(slot(n_dims, f"n_dims of {t.name}"))
        for i in range(len(dims)):
            lay.dims.append(slot(dims[i : i + 1], f"dim {i} of {t.name}"))
        lay.ttypes.append(slot(ttype, f"type of {t.name}"))
        lay.toffs.append((slot(offset, f"offset of {t.name}"), int(t.n_bytes)))
    return lay


# ---- mutations -------------------------------------------------------------------------

KINDS = (
    "trunc_header",
    "trunc_kv",
    "trunc_tinfo",
    "trunc_data",
    "trunc_random",
    "flip_header",
    "flip_kv",
    "flip_tinfo",
    "flip_data",
    "n_tensors",
    "n_kv",
    "str_len",
    "arr_len",
    "arr_type",
    "kv_type",
    "kv_value",
    "n_dims",
    "dim",
    "tensor_type",
    "off_misaligned",
    "off_past_end",
    "off_overlap",
    "alignment",
    "multi",
)
# targeted kinds that `multi` combines
_TARGETED = KINDS[9:23]


def _absurd(rng: np.random.Generator, value: int, size: int, remaining: int) -> int:
    """An unsigned value of `size` bytes that a parser should distrust."""
    top = 8 * size
    pool = [
        0,
        1,
        value - 1,
        value + 1,
        value * 2,
        value // 2,
        2**31 - 1,
        2**31,
        2**32 - 1,
        remaining,
        remaining + 1,
        remaining // 2,
        int(rng.integers(0, 2**31)),
    ]
    if top == 64:
        pool += [
            2**32,
            2**62,
            2**63 - 1,
            2**63,
            2**64 - 1,
            2**64 - value,
            int(rng.integers(0, 2**63)) * 2 + 1,
        ]
    return int(pool[int(rng.integers(len(pool)))]) % (1 << top)


def _put(buf: bytearray, s: Slot, value: int) -> str:
    value %= 1 << (8 * s.size)
    struct.pack_into("<I" if s.size == 4 else "<Q", buf, s.off, value)
    return f"{s.what} {s.value} -> {value}"


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _flip(rng: np.random.Generator, buf: bytearray, lo: int, hi: int, n_max: int) -> str:
    done = []
    for _ in range(int(rng.integers(1, n_max + 1))):
        off = int(rng.integers(lo, hi))
        old = buf[off]
        buf[off] = old ^ (1 << int(rng.integers(8))) if rng.random() < 0.5 else int(rng.integers(256))
        done.append(f"@{off} {old:#04x}->{buf[off]:#04x}")
    return "flip " + " ".join(done)


def _targeted(kind: str, rng: np.random.Generator, buf: bytearray, lay: Layout) -> str:
    size = lay.size
    if kind == "n_tensors":
        return _put(buf, lay.n_tensors, _absurd(rng, lay.n_tensors.value, 8, size - HEADER))
    if kind == "n_kv":
        return _put(buf, lay.n_kv, _absurd(rng, lay.n_kv.value, 8, size - HEADER))
    if kind == "str_len":
        s = _pick(rng, _pick(rng, list(lay.str_lens.values())))
        return _put(buf, s, _absurd(rng, s.value, 8, size - s.off - 8))
    if kind == "arr_len":
        s = _pick(rng, lay.arr_lens)
        return _put(buf, s, _absurd(rng, s.value, 8, size - s.off - 8))
    if kind in ("arr_type", "kv_type"):
        s = _pick(rng, lay.arr_types if kind == "arr_type" else lay.kv_types)
        return _put(buf, s, _pick(rng, [*range(13), 13, 255, 2**31, 2**32 - 1]))
    if kind == "kv_value":
        off, vt, key = _pick(rng, lay.kv_scalars)
        if vt in _FLOAT_TYPES:
            new = _pick(rng, [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-45, 3e38])
            struct.pack_into(_FLOAT_TYPES[vt], buf, off, new)
            return f"{key} ({vt.name}) -> {new}"
        fmt, n = _INT_TYPES[vt]
        raw = _absurd(rng, int.from_bytes(buf[off : off + n], "little"), max(n, 4), 0) % (1 << (8 * n))
        buf[off : off + n] = raw.to_bytes(n, "little")
        return f"{key} ({vt.name}) -> {struct.unpack_from(fmt, buf, off)[0]}"
    if kind == "n_dims":
        s = _pick(rng, lay.n_dims)
        return _put(buf, s, _pick(rng, [0, 1, 2, 3, 4, 5, 8, 64, 2**31, 2**32 - 1]))
    if kind == "dim":
        s = _pick(rng, lay.dims)
        return _put(buf, s, _absurd(rng, s.value, 8, 2**20))
    if kind == "tensor_type":
        s = _pick(rng, lay.ttypes)
        valid = [int(t) for t in gguf.GGMLQuantizationType]
        return _put(buf, s, _pick(rng, [*valid, 4, 5, 40, 1000, 2**31, 2**32 - 1]))
    if kind == "off_misaligned":
        s, _ = _pick(rng, lay.toffs)
        return _put(buf, s, s.value + int(rng.integers(1, lay.alignment)))
    if kind == "off_past_end":
        s, nbytes = _pick(rng, lay.toffs)
        end = size - lay.data_offset
        a = lay.alignment
        new = _pick(
            rng, [end, end - nbytes + a, (end // a + 1) * a, 2**63, 2**64 - a, 2**64 - lay.data_offset]
        )
        return _put(buf, s, new)
    if kind == "off_overlap":
        (s, _), (other, n_other) = (_pick(rng, lay.toffs) for _ in range(2))
        inside = other.value + (int(rng.integers(0, max(n_other // lay.alignment, 1))) * lay.alignment)
        return _put(buf, s, _pick(rng, [other.value, inside]))
    if kind == "alignment":
        s = lay.alignment_slot
        assert s is not None
        return _put(buf, s, _pick(rng, [0, 1, 2, 3, 7, 16, 31, 33, 64, 128, 4096, 2**31, 2**32 - 1]))
    raise AssertionError(kind)


def make_case(seed: int, case: int, bases: list[bytes], layouts: list[Layout]) -> tuple[bytes, str, str]:
    """(mutated file, kind, description) of case `case` of `seed`."""
    rng = np.random.default_rng([seed, case])
    kind = KINDS[case % len(KINDS)]
    choices = [i for i, lay in enumerate(layouts) if kind != "alignment" or lay.alignment_slot is not None]
    b = _pick(rng, choices)
    lay, buf = layouts[b], bytearray(bases[b])
    size = lay.size
    if kind.startswith("trunc_"):
        lo, hi = {
            "trunc_header": (0, HEADER),
            "trunc_kv": (HEADER, lay.kv_end),
            "trunc_tinfo": (lay.kv_end, lay.ti_end),
            "trunc_data": (lay.ti_end, size),
            "trunc_random": (0, size),
        }[kind]
        cut = int(rng.integers(lo, hi))
        return bytes(buf[:cut]), kind, f"base {b}: truncate to {cut} of {size}"
    if kind.startswith("flip_"):
        lo, hi, n = {
            "flip_header": (0, HEADER, 3),
            "flip_kv": (HEADER, lay.kv_end, 4),
            "flip_tinfo": (lay.kv_end, lay.ti_end, 4),
            "flip_data": (lay.data_offset, size, 16),
        }[kind]
        desc = _flip(rng, buf, lo, hi, n)
        return bytes(buf), kind, f"base {b}: {desc}"
    if kind == "multi":
        kinds = [_pick(rng, [k for k in _TARGETED if k != "alignment" or lay.alignment_slot])]
        kinds += [_pick(rng, _TARGETED[:-1]) for _ in range(int(rng.integers(1, 4)))]
        desc = "; ".join(f"{k}: {_targeted(k, rng, buf, lay)}" for k in kinds)
        return bytes(buf), kind, f"base {b}: {desc}"
    desc = _targeted(kind, rng, buf, lay)
    return bytes(buf), kind, f"base {b}: {desc}"


# ---- checking one load ---------------------------------------------------------------


def touch(model) -> int:  # model: a realm_ext.model.Model
    """Read every tensor's bytes where they lie in the map and decode its first and last
    rows; fails if a view is not the file's bytes at the tensor's offset."""
    from realm_ext import quant

    data = model.reader.data
    lo, hi = data.ctypes.data, data.ctypes.data + data.size
    total = 0
    for name, t in model.tensors.items():
        raw = t.raw
        assert raw.dtype == np.uint8 and raw.ndim == 2 and raw.flags.c_contiguous, name
        a = raw.ctypes.data
        assert lo <= a and a + raw.nbytes <= hi, f"{name}: view outside the map"
        assert a - lo == t.offset, f"{name}: view at {a - lo}, offset {t.offset}"
        assert raw.shape[0] == (int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1), name
        assert raw.shape[1] == quant.row_bytes(t.type, t.shape[-1]), name
        if raw.size:
            total += int(raw[0, :16].sum()) + int(raw[-1, -16:].sum())
            for row in (raw[:1], raw[-1:]):
                x = quant.dequantize(row, t.type, (1, t.shape[-1]))
                assert x.shape == (1, t.shape[-1]), name
    return total


def _load(path):
    from realm_ext.model import load_gguf

    return load_gguf(path)


def run_case(path: Path) -> dict:
    """Load `path` once; the outcome, seconds and peak traced allocation."""
    from realm_ext.model import GGUFError, load_gguf

    tracemalloc.start()  # traced during the load only: tracing slows Python down ~10x
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict = {}
    try:
        model = load_gguf(path)
    except GGUFError as e:
        out["outcome"], out["msg"] = "gguf_error", str(e)
        if not str(e).strip() or str(path) not in str(e):
            out["outcome"], out["msg"] = "fail", f"GGUFError without the path or a message: {e!r}"
    except BaseException as e:  # noqa: BLE001 - any other exception is the finding
        out["outcome"], out["msg"] = "fail", "".join(traceback.format_exception(e))[-3000:]
    else:
        out["outcome"], out["msg"] = "ok", ""
    out["secs"], out["cpu"] = time.perf_counter() - t0, time.process_time() - c0
    out["peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if out["outcome"] == "ok":
        try:
            touch(model)
            model.close()
        except BaseException as e:  # noqa: BLE001
            out["outcome"], out["msg"] = (
                "fail",
                "loaded, then: " + "".join(traceback.format_exception(e))[-3000:],
            )
    return out


def worker(spec: dict) -> None:
    """Run cases spec["cases"] of spec["seed"]; one JSON line per case on stdout."""
    import realm_ext

    if spec.get("realm_ext") and os.path.realpath(realm_ext.__file__) != spec["realm_ext"]:
        raise SystemExit(f"imported {realm_ext.__file__}, expected {spec['realm_ext']}")
    bases = [Path(p).read_bytes() for p in spec["bases"]]
    layouts = [layout_of(Path(p)) for p in spec["bases"]]
    path = Path(spec["tmp"])
    crash_at = int(os.environ.get("REALM_FUZZ_CRASH_AT", "-1"))  # the parent's own test
    touch(_load(spec["bases"][0]))  # warm up: lazy imports and caches are not the load's
    for case in range(*spec["cases"]):
        if case == crash_at:
            os.abort()
        data, kind, desc = make_case(spec["seed"], case, bases, layouts)
        path.write_bytes(data)
        res = run_case(path)
        res.update(case=case, kind=kind, desc=desc, size=len(data))
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> None:
    if argv[0] == "worker":
        worker(json.loads(Path(argv[1]).read_text()))
    elif argv[0] == "repro":
        seed, case, out = int(argv[1]), int(argv[2]), Path(argv[3])
        paths = [Path(p) for p in argv[4:]]
        data, kind, desc = make_case(
            seed, case, [p.read_bytes() for p in paths], [layout_of(p) for p in paths]
        )
        out.write_bytes(data)
        print(kind, desc, run_case(out))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
