"""Fuzz the GGUF loader: thousands of seeded mutations of valid tiny models.

Each mutated file must either load (and then pass validation, with every tensor's
bytes readable where the loader says they are) or raise GGUFError with a message; any
other exception, a crash, a load taking over 2 s of CPU (or a worker silent for 60 s),
or a peak Python allocation during the load over twice the file size fails, printing
the seed, case, kind and mutation.
The files are made and loaded in worker processes (tests/support/gguf_fuzz.py), so a crash
kills a worker, not pytest. REALM_FUZZ_N (default 5000), REALM_FUZZ_SEED and
REALM_FUZZ_WORKERS set a longer or different run.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import gguf
import pytest
from support.gguf_edit import rewrite
from support.gguf_fuzz import KINDS, layout_of, make_case

import realm_ext
from realm_ext.model import GGUFError, load_gguf

FUZZ_N = int(os.environ.get("REALM_FUZZ_N", "5000"))
FUZZ_SEED = int(os.environ.get("REALM_FUZZ_SEED", "20261126"))
FUZZ_WORKERS = int(os.environ.get("REALM_FUZZ_WORKERS", str(min(2, os.cpu_count() or 1))))
MAX_LOAD_S = 2.0
# A load that reaches the tensor table holds the metadata as Python objects (about 250 KB
# for the tiny models' 1024-token vocabulary, whatever the file's size): the bound is
# twice the file size, but never below this floor, which only matters for files cut
# to under 256 KiB (their peak / size ratio is printed apart).
ALLOC_FLOOR = 512 * 1024
WATCHDOG_S = 60.0  # no line from a worker for this long: it hangs

TESTS = Path(__file__).resolve().parents[1]  # on the workers' path, as under pytest
V = gguf.GGUFValueType


@pytest.fixture(scope="module")
def fuzz_bases(model_path, tmp_path_factory) -> list[Path]:
    """Tiny models of a few types, tied and untied, two with a general.alignment key."""
    root = tmp_path_factory.mktemp("fuzz_bases")
    bases = [
        model_path("Q4_0"),
        model_path("Q2_K", tied=True),
        rewrite(model_path("Q8_0", tied=True), root / "q8_0-tied-align64.gguf", alignment=64),
        rewrite(model_path("Q4_K_M"), root / "q4_k_m-align16.gguf", alignment=16),
    ]
    for p in bases:
        with load_gguf(p) as m:
            assert m.config.n_layer == 2
    return bases


def _tmp_dir() -> str:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


def run_fuzz(bases: list[Path], seed: int, n: int, n_workers: int) -> tuple[list[dict], list[str]]:
    """Cases 0..n-1 of `seed` over worker processes: (one result per case, problems)."""
    problems: list[str] = []
    results: dict[int, dict] = {}
    tmp = tempfile.mkdtemp(prefix="realm-fuzz-", dir=_tmp_dir())
    env = dict(os.environ)
    # the workers import this realm_ext (the worktree's), whatever is installed
    env["PYTHONPATH"] = os.pathsep.join([str(Path(realm_ext.__file__).parent.parent), str(TESTS)])
    spawned = 0
    stopping = False

    def spawn(start: int, stop: int) -> dict:
        nonlocal spawned
        spawned += 1
        spec = {
            "seed": seed,
            "cases": [start, stop],
            "bases": [str(p) for p in bases],
            "tmp": f"{tmp}/case-{spawned}.gguf",
            "realm_ext": os.path.realpath(realm_ext.__file__),
        }
        spec_path = Path(tmp) / f"spec-{spawned}.json"
        spec_path.write_text(json.dumps(spec))
        err = open(Path(tmp) / f"stderr-{spawned}.txt", "w+b")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, str(TESTS / "support" / "gguf_fuzz.py"), "worker", str(spec_path)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
        w = {"proc": proc, "next": start, "stop": stop, "err": err, "buf": b"", "seen": time.monotonic()}
        sel.register(proc.stdout, selectors.EVENT_READ, w)
        return w

    def stderr_tail(w: dict) -> str:
        w["err"].seek(0)
        return w["err"].read().decode(errors="replace")[-2000:]

    def finish(w: dict, why: str | None) -> None:
        """Worker w is done (why None) or died on case w['next'] (why says how)."""
        sel.unregister(w["proc"].stdout)
        if why is not None:
            w["proc"].kill()
        rc = w["proc"].wait()
        if why is None and rc != 0 and w["next"] < w["stop"]:
            why = f"worker died with exit status {rc}"
        if why is not None and w["next"] < w["stop"]:
            case = w["next"]
            problems.append(
                f"seed {seed} case {case}: {why} (kind {KINDS[case % len(KINDS)]}); "
                f"stderr: {stderr_tail(w)}; reproduce: python tests/support/gguf_fuzz.py repro {seed} {case} "
                f"out.gguf {' '.join(map(str, bases))}"
            )
            results[case] = {"case": case, "kind": KINDS[case % len(KINDS)], "outcome": "crash"}
            if case + 1 < w["stop"] and not stopping:
                spawn(case + 1, w["stop"])
        w["err"].close()

    sel = selectors.DefaultSelector()
    per = -(-n // n_workers)
    for start in range(0, n, per):
        spawn(start, min(start + per, n))
    try:
        while sel.get_map():
            for key, _ in sel.select(timeout=1.0):
                w = key.data
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if not chunk:
                    finish(w, None)
                    continue
                w["seen"] = time.monotonic()
                w["buf"] += chunk
                *lines, w["buf"] = w["buf"].split(b"\n")
                for line in lines:
                    res = json.loads(line)
                    results[res["case"]] = res
                    w["next"] = res["case"] + 1
            for key in list(sel.get_map().values()):
                w = key.data
                if time.monotonic() - w["seen"] > WATCHDOG_S:
                    finish(w, f"hang: no result for {WATCHDOG_S:.0f} s")
    finally:
        stopping = True
        for key in list(sel.get_map().values()):
            finish(key.data, "interrupted")
        shutil.rmtree(tmp, ignore_errors=True)
    for res in results.values():
        where = f"seed {seed} case {res['case']} ({res['kind']}: {res.get('desc')})"
        if res["outcome"] == "fail":
            problems.append(f"{where}: {res['msg']}")
        elif res["outcome"] in ("ok", "gguf_error"):
            # CPU time: on a busy shared machine the wall time of a 60 ms load can pass 2 s
            # (a load that blocks without computing is the watchdog's)
            if res["cpu"] > MAX_LOAD_S:
                problems.append(
                    f"{where}: the load took {res['cpu']:.2f} s of CPU ({res['secs']:.2f} s wall)"
                )
            if res["peak"] > max(2 * res["size"], ALLOC_FLOOR):
                problems.append(f"{where}: peak allocation {res['peak']} for a file of {res['size']} bytes")
    return [results[c] for c in sorted(results)], problems


def test_fuzz_loader(fuzz_bases: list[Path]) -> None:
    print(f"fuzz seed {FUZZ_SEED} (REALM_FUZZ_SEED), {FUZZ_N} files, {FUZZ_WORKERS} workers")
    t0 = time.monotonic()
    results, problems = run_fuzz(fuzz_bases, FUZZ_SEED, FUZZ_N, FUZZ_WORKERS)
    secs = time.monotonic() - t0
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        by_kind[r["kind"]][r["outcome"]] += 1
    total = collections.Counter(r["outcome"] for r in results)
    print(f"{len(results)} files in {secs:.1f} s: {dict(total)}")
    for kind in KINDS:
        c = by_kind[kind]
        print(f"  {kind:15s} ok {c['ok']:5d}  GGUFError {c['gguf_error']:5d}  other {c['fail'] + c['crash']}")
    ok = [r for r in results if r["outcome"] in ("ok", "gguf_error")]
    if ok:
        slow = max(ok, key=lambda r: r["cpu"])
        big = [r["peak"] / r["size"] for r in ok if r["size"] >= ALLOC_FLOOR]
        print(
            f"slowest load: {slow['cpu']:.3f} s of CPU ({slow['secs']:.3f} s wall; case {slow['case']}); "
            f"largest peak allocation {max(r['peak'] for r in ok)} bytes; largest peak / file size "
            f"for files of {ALLOC_FLOOR} bytes or more: {max(big or [0]):.3f}"
        )
    assert not problems, f"{len(problems)} problems (seed {FUZZ_SEED}):\n" + "\n".join(problems[:20])

    # not vacuous: every case ran, every kind ran, and both outcomes occur, in many kinds
    assert len(results) == FUZZ_N
    assert all(sum(by_kind[k].values()) >= FUZZ_N // len(KINDS) for k in KINDS), by_kind
    assert total["ok"] >= FUZZ_N // 20 and total["gguf_error"] >= FUZZ_N // 2, total
    both = [k for k in KINDS if by_kind[k]["ok"] and by_kind[k]["gguf_error"]]
    assert len(both) >= 6, both
    # a file cut before its tensor infos end can never load
    for kind in ("trunc_header", "trunc_kv", "trunc_tinfo"):
        assert by_kind[kind]["ok"] == 0 and by_kind[kind]["gguf_error"] > 0, kind
    # and the errors say different things (the path aside)
    messages = {r["msg"].split(": ", 1)[-1][:40] for r in results if r["outcome"] == "gguf_error"}
    assert len(messages) >= 20, messages


def test_cases_are_reproducible(fuzz_bases: list[Path]) -> None:
    bases = [p.read_bytes() for p in fuzz_bases]
    layouts = [layout_of(p) for p in fuzz_bases]
    for case in (0, 7, 23, 1234):
        a = make_case(FUZZ_SEED, case, bases, layouts)
        assert a == make_case(FUZZ_SEED, case, bases, layouts)
        assert a[0] != bases[0] or a[1] == "flip_data"
    assert make_case(1, 5, bases, layouts) != make_case(2, 5, bases, layouts)


def test_watchdog_reports_a_crashing_worker(fuzz_bases: list[Path], monkeypatch) -> None:
    """A worker that dies mid-run is reported with its case, and the run goes on."""
    monkeypatch.setenv("REALM_FUZZ_CRASH_AT", "3")
    results, problems = run_fuzz(fuzz_bases, 1, 6, 1)
    assert [r["outcome"] == "crash" for r in results] == [False, False, False, True, False, False]
    assert len(problems) == 1 and "case 3: worker died" in problems[0], problems


# ---- regressions: each a file the loader once mishandled, made again from a base --------


def _edit(src: Path, dst: Path, edits: list[tuple[int, int, int]]) -> Path:
    """src with (offset, size, value) little-endian integer writes, as dst."""
    buf = bytearray(src.read_bytes())
    for off, size, value in edits:
        buf[off : off + size] = value.to_bytes(size, "little")
    dst.write_bytes(bytes(buf))
    return dst


def _load_error(path: Path) -> str:
    """load_gguf(path) raises GGUFError fast, allocating little; its message."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(GGUFError) as e:
            load_gguf(path)
    finally:
        secs, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert secs < MAX_LOAD_S and peak < max(2 * path.stat().st_size, ALLOC_FLOOR), (secs, peak)
    assert str(path) in str(e.value)
    return str(e.value)


@pytest.fixture(scope="module")
def q4(model_path):
    path = model_path("Q4_0")
    return path, layout_of(path)


def _slot(slots, what: str):
    return next(s for s in slots if s.what == what)


def test_huge_array_length_fails_fast(q4, tmp_path: Path) -> None:
    # was: the stock reader made one numpy array per element up to the end of the file
    # (45 s and tens of MB for a 1.2 MB file)
    src, lay = q4
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.tokens"):
        s = _slot(lay.arr_lens, f"array length of {key}")
        for n in (2**32 - 1, lay.size // 4, 2**64 - 1):
            msg = _load_error(_edit(src, tmp_path / "a.gguf", [(s.off, 8, n)]))
            assert "truncated" in msg


def test_huge_block_count_fails_fast(q4, tmp_path: Path) -> None:
    # was: expected_shapes listed 9 * block_count tensor names (a hang, then out of memory)
    src, lay = q4
    off = next(o for o, _, key in lay.kv_scalars if key == "llama.block_count")
    msg = _load_error(_edit(src, tmp_path / "b.gguf", [(off, 4, 2**31 - 1)]))
    assert "missing tensor 'blk.2.attn_norm.weight'" in msg


def test_misaligned_and_overlapping_offsets(q4, tmp_path: Path) -> None:
    # were: loaded (tensor data at any offset, two tensors on the same bytes)
    src, lay = q4
    (s, _), (other, _) = lay.toffs[4], lay.toffs[5]
    msg = _load_error(_edit(src, tmp_path / "m.gguf", [(s.off, 8, s.value + 4)]))
    assert f"has offset {s.value + 4}, not a multiple of the alignment 32" in msg
    msg = _load_error(_edit(src, tmp_path / "o.gguf", [(s.off, 8, other.value)]))
    assert "overlap" in msg


def test_offset_that_wraps_around_2_64(q4, tmp_path: Path) -> None:
    # was: data_offset + offset wrapped in the reader's uint64 arithmetic and the tensor
    # loaded from the header's bytes
    src, lay = q4
    s, _ = lay.toffs[1]
    msg = _load_error(_edit(src, tmp_path / "w.gguf", [(s.off, 8, 2**64 - lay.data_offset)]))
    assert "too large" in msg


def test_tensor_without_dimensions(q4, tmp_path: Path) -> None:
    src, lay = q4
    s = _slot(lay.n_dims, "n_dims of output_norm.weight")
    # n_dims 0, and the (then unread) dim's 8 bytes become the type and part of the offset
    msg = _load_error(_edit(src, tmp_path / "d.gguf", [(s.off, 4, 0)]))
    assert "GGUF" in msg or "tensor" in msg


def test_nested_arrays_are_rejected(tmp_path: Path) -> None:
    # was: RecursionError (arrays of arrays 2,000 deep), not a GGUFError
    depth = 2000
    kv = struct.pack("<Q", 1) + b"x" + struct.pack("<I", V.ARRAY)
    kv += struct.pack("<IQ", V.ARRAY, 1) * depth + struct.pack("<IQ", V.UINT8, 0)
    p = tmp_path / "nested.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv)
    assert "nested arrays are not supported" in _load_error(p)


def test_scores_of_the_wrong_kind(model_path, tmp_path: Path) -> None:
    # was: numpy's ValueError ("could not convert string to float"), not a GGUFError
    src = model_path("Q4_0")
    for val in (["x"] * 1024, V.ARRAY, V.STRING), ([True] * 1024, V.ARRAY, V.BOOL):
        p = rewrite(src, tmp_path / "s.gguf", kv={"tokenizer.ggml.scores": val})
        assert "'tokenizer.ggml.scores' should be a list of numbers" in _load_error(p)
    p = rewrite(
        src, tmp_path / "t.gguf", kv={"tokenizer.ggml.token_type": ([2**40] * 1024, V.ARRAY, V.INT64)}
    )
    assert "outside int32" in _load_error(p)


def test_valid_load_is_fast_and_small(model_path) -> None:
    # was: 100 ms and 2.9 MB of Python allocations (one numpy array per vocabulary entry),
    # over twice the size of a 630 KB model
    path = model_path("Q2_K", tied=True)
    load_gguf(path).close()
    tracemalloc.start()
    t0 = time.perf_counter()
    m = load_gguf(path)
    secs, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    size = path.stat().st_size
    print(f"load {secs * 1e3:.1f} ms (traced), peak {peak} bytes for a file of {size}")
    assert peak < size // 2 and secs < 0.5
    assert len(m.tokenizer.tokens) == 1024 and m.tokenizer.tokens[3] == "<0x00>"
    # the reader's fields still read as the stock reader reads them
    ref = gguf.GGUFReader(path)
    for key, f in ref.fields.items():
        assert m.reader.fields[key].contents() == f.contents(), key
        assert m.reader.fields[key].types[0] == f.types[0], key
    m.close()
