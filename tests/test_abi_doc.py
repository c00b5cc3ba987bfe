"""docs/ABI.md says what the code does: its import table against realm_ext/host.py's
import table and guest/include/realm.h's declarations, its error codes against
realm_ext/abi.py and csrc/realm_errors.h (the one C definition, which realm.h
includes), its struct offsets against realm.h's structs and
abi.py's packers, its export list against the shipped guest, its limits against the
constants that set them."""

from __future__ import annotations

import inspect
import re
import struct
from pathlib import Path

import pytest
import wasmtime

from realm_ext import Host, abi
from realm_ext import host as host_module
from realm_ext.api import GUEST_WASM
from realm_ext.engines import wasmtime_engine
from realm_ext.engines.base import parse_size

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ABI.md").read_text()
HEADER = (ROOT / "guest" / "include" / "realm.h").read_text()
ERRORS = (ROOT / "csrc" / "realm_errors.h").read_text()
C_WASM = {"uint32_t": "i32", "int32_t": "i32", "uint64_t": "i64", "int64_t": "i64"}
C_SIZE = {"uint32_t": 4, "int32_t": 4, "float": 4, "uint64_t": 8}
STRUCT_CHAR = {"I": "uint32_t", "i": "int32_t", "f": "float", "Q": "uint64_t"}


def norm(text: str) -> str:
    return " ".join(text.split())


def section(title: str) -> str:
    """The doc's text from a heading line starting with `title` to the next heading."""
    m = re.search(rf"^#+ {re.escape(title)}.*?$(.*?)(?=^#)", DOC, re.M | re.S)
    assert m, f"no section {title!r} in docs/ABI.md"
    return m.group(1)


def header_imports() -> dict[str, tuple[str, str]]:
    """realm.h's imports: name -> (C declaration, import name)."""
    found = {}
    for imp, ret, name, params in re.findall(
        r"REALM_IMPORT\((\w+)\)\s*(int32_t|int64_t)\s+(\w+)\(([^)]*)\);", HEADER
    ):
        found[name] = (norm(f"{ret} {name}({params})"), imp)
    return found


def host_imports() -> dict[str, tuple[tuple[str, ...], str]]:
    state = host_module.GuestState(None, {}, kv_limit=0)
    table = host_module.GuestImports(None, state).table()
    return {name: (params, result) for name, (params, result, _) in table.items()}


def test_import_table_matches_host_and_header() -> None:
    rows = re.findall(r"^\| `(realm_\w+)` \| `\(([^)]*)\) -> (i\d\d)` \| `([^`]+)` \|", DOC, re.M)
    doc = {
        name: ((tuple(norm(params).split(", ")) if params else ()), result, c)
        for name, params, result, c in rows
    }
    assert len(doc) == len(rows), "an import is listed twice"
    host, header = host_imports(), header_imports()
    assert set(doc) == set(host) == set(header)
    for name, (params, result, c_decl) in doc.items():
        assert (params, result) == host[name], name
        assert norm(c_decl) == header[name][0], name
        assert header[name][1] == name, f"{name} is imported as {header[name][1]}"
        # the C types are those of the wasm signature
        ret, args = re.fullmatch(r"(\w+) \w+\((.*)\)", header[name][0]).groups()
        c_params = tuple(C_WASM[a.split()[0]] for a in args.split(", ")) if args else ()
        assert (c_params, C_WASM[ret]) == host[name], name
    # every import has its own subsection
    for name in doc:
        assert re.search(rf"^### {name}\(", DOC, re.M), f"no subsection for {name}"


def test_error_codes_match_abi_and_header() -> None:
    rows = re.findall(r"^\| (-?\d+) \| `(REALM_\w+)` \| `(\w+)` \|", section("3. Error codes"), re.M)
    defines = {n: int(v) for n, v in re.findall(r"#define (REALM_(?:OK|ERR_\w+))\s+\(?(-?\d+)\)?", ERRORS)}
    assert '#include "realm_errors.h"' in HEADER
    assert not re.search(r"#define REALM_(OK|ERR_)", HEADER), "realm.h defines an error code of its own"
    codes = {n: getattr(abi, n) for n in dir(abi) if n == "OK" or n.startswith("ERR_")}
    assert {c_name for _, c_name, _ in rows} == set(defines)
    assert {py_name for _, _, py_name in rows} == set(codes)
    for value, c_name, py_name in rows:
        assert int(value) == defines[c_name] == codes[py_name], c_name
    assert set(abi.ERROR_NAMES) == {v for v in codes.values() if v < 0}


def header_struct(typedef: str) -> list[tuple[int, str, str]]:
    """(offset, field, C type) of a realm.h struct, laid out with natural alignment."""
    body = re.search(rf"typedef struct \w+ \{{([^}}]*)\}} {typedef};", HEADER).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields, offset = [], 0
    for ctype, names in re.findall(r"(\w+)\s+([\w\s,]+);", body):
        for name in (n.strip() for n in names.split(",")):
            size = C_SIZE[ctype]
            offset = (offset + size - 1) // size * size
            fields.append((offset, name, ctype))
            offset += size
    return fields


def packed_layout(fmt: struct.Struct) -> list[tuple[int, str]]:
    """(offset, C type) of each field of an abi.py struct (little-endian, no padding)."""
    out, offset = [], 0
    for count, ch in re.findall(r"(\d*)(\w)", fmt.format.lstrip("<")):
        for _ in range(int(count or 1)):
            out.append((offset, STRUCT_CHAR[ch]))
            offset += struct.calcsize("<" + ch)
    return out


@pytest.mark.parametrize(
    ("title", "typedef", "packer", "version"),
    [
        ("5.1 realm_model_info_t", "realm_model_info_t", abi.MODEL_INFO, abi.MODEL_INFO_VERSION),
        ("5.2 The vocabulary blob", "realm_vocab_header_t", abi.VOCAB_HEADER, abi.VOCAB_VERSION),
        ("5.3 realm_params_t", "realm_params_t", abi.PARAMS, abi.PARAMS_VERSION),
        ("5.4 realm_chat_stats_t", "realm_chat_stats_t", abi.CHAT_STATS, abi.CHAT_STATS_VERSION),
    ],
)
def test_struct_offsets_match_header_and_abi(
    title: str, typedef: str, packer: struct.Struct, version: int
) -> None:
    heading = re.search(rf"^### {re.escape(title)}.*\D(\d+) bytes, version (\d+)\)$", DOC, re.M)
    assert heading, title
    assert (int(heading.group(1)), int(heading.group(2))) == (packer.size, version)
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| `(\w+)` \|", section(title), re.M)
    doc = [(int(off), name, ctype) for off, name, ctype in rows]
    assert doc == header_struct(typedef)
    assert [(off, ctype) for off, _, ctype in doc] == packed_layout(packer)
    size_assert = re.search(rf"sizeof\({typedef}\) == (\d+)", HEADER)
    assert int(size_assert.group(1)) == packer.size


def test_exports_listed_are_the_shipped_guests() -> None:
    rows = re.findall(r"^\| `(realm_\w+)` \|", section("7. Guest exports"), re.M)
    module = wasmtime.Module(wasmtime.Engine(), GUEST_WASM.read_bytes())
    assert rows and set(rows) <= {e.name for e in module.exports}


def test_limits_match_the_code() -> None:
    limits = section("8. Limits")
    row = {m.group(1): m.group(2) for m in re.finditer(r"^\| ([^|]+?) \| ([^|]+?) \|", limits, re.M)}
    defaults = inspect.signature(Host.guest).parameters
    default = re.search(r"default (\d+ \w+)", row["linear memory"]).group(1)
    assert parse_size(default.replace(" ", "")) == parse_size(defaults["memory_limit"].default)
    default = re.search(r"default (\d+ \w+)", row["KV storage per guest"]).group(1)
    assert parse_size(default.replace(" ", "")) == parse_size(defaults["kv_limit"].default)
    assert row["positions per ring"] == "2^20" and host_module.MAX_KV_CTX == 2**20
    assert row["a log line"] == "the first 64 KiB" and host_module.MAX_LOG_BYTES == 64 * 1024
    tables = re.search(r"(\d+) tables of ([\d,]+) elements", row["tables"])
    assert int(tables.group(1)) == wasmtime_engine.MAX_TABLES
    assert int(tables.group(2).replace(",", "")) == wasmtime_engine.MAX_TABLE_ELEMENTS
    assert f"every {wasmtime_engine.EPOCH_TICK * 1000:.0f} ms" in row["time per export call"]
