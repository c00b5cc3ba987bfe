"""The shipped guest, realm_ext/guest/realm_guest.wasm: what it imports and exports
against realm.h, and that guest/build.sh rebuilds exactly these bytes."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "guest" / "include" / "realm.h"
WASM = ROOT / "realm_ext" / "guest" / "realm_guest.wasm"

C_TO_WASM = {"int32_t": "i32", "uint32_t": "i32", "int64_t": "i64", "uint64_t": "i64", "void": None}


def wasm_type(c_type: str) -> str | None:
    c_type = c_type.replace("const", "").strip()
    if "*" in c_type:
        return "i32"  # a pointer: a u32 offset
    return C_TO_WASM[c_type]


def signature(ret: str, args: str) -> tuple[list[str], list[str]]:
    params = []
    for a in args.split(","):
        a = a.strip()
        if a and a != "void":
            c_type = re.match(r"(.*?)\w+$", a).group(1)  # drop the parameter's name
            params.append(wasm_type(c_type))
    r = wasm_type(ret)
    return params, [r] if r else []


def header_imports() -> dict[str, tuple[list[str], list[str]]]:
    text = HEADER.read_text()
    found = re.findall(r"REALM_IMPORT\((\w+)\)\s*([\w ]+?\*?)\s*(\w+)\(([^)]*)\);", text)
    assert len(found) >= 12
    out = {}
    for name, ret, fname, args in found:
        assert name == fname
        out[name] = signature(ret, args)
    return out


def header_exports() -> dict[str, tuple[list[str], list[str]]]:
    text = HEADER.read_text()
    block = text[text.index("what the shipped guest exports") :]
    block = " ".join(line.strip().lstrip("*").strip() for line in block.splitlines())
    found = re.findall(r"((?:u?int\d+_t|void)\s*\*?)\s*(realm_\w+)\(([^)]*)\);", block)
    return {name: signature(ret, args) for ret, name, args in found}


def module() -> wasmtime.Module:
    return wasmtime.Module.from_file(wasmtime.Engine(), str(WASM))


def func_sig(t: wasmtime.FuncType) -> tuple[list[str], list[str]]:
    return [str(p) for p in t.params], [str(r) for r in t.results]


def test_header_lists() -> None:
    exports = header_exports()
    assert set(exports) == {
        "realm_alloc",
        "realm_free",
        "realm_generate",
        "realm_chat_open",
        "realm_chat_generate",
        "realm_chat_close",
        "realm_tokenize",
        "realm_detokenize",
        "realm_sample",
        "realm_heap_bytes",
    }
    assert exports["realm_sample"] == (["i32"] * 7, ["i32"])
    assert exports["realm_chat_generate"] == (["i32"] * 7, ["i32"])
    assert header_imports()["realm_kv_create"] == (["i32", "i32"], ["i64"])


def test_imports_are_realm_h() -> None:
    allowed = header_imports()
    memory = []
    for imp in module().imports:
        assert imp.module == "env", imp.name
        if isinstance(imp.type, wasmtime.MemoryType):
            memory.append(imp)
            continue
        assert imp.name in allowed, f"{imp.name} is not declared in realm.h"
        assert func_sig(imp.type) == allowed[imp.name], imp.name
    # the host supplies the memory (env.memory) and sets its cap
    assert [m.name for m in memory] == ["memory"]
    limits = memory[0].type.limits
    assert limits.min <= 4 and limits.max is None
    assert not memory[0].type.is_64


def test_exports_cover_realm_h() -> None:
    have = {e.name: e.type for e in module().exports}
    for name, sig in header_exports().items():
        assert name in have, f"{name} is missing"
        assert func_sig(have[name]) == sig, name
    assert "memory" not in have  # imported, not exported


def test_small() -> None:
    assert WASM.stat().st_size < 64 * 1024


@pytest.mark.skipif(importlib.util.find_spec("ziglang") is None, reason="needs the ziglang package")
def test_build_check() -> None:
    """guest/build.sh --check: the committed wasm is what guest/src builds."""
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(
        ["bash", "guest/build.sh", "--check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
