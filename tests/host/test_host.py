"""The realm_* imports (realm_ext.host) through a proxy guest (tests/wat/proxy.wat)
that forwards each call, on every engine: results equal the backend's bit for bit,
and every bad-argument class returns its documented code without touching memory
outside the output it names."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from support.wasm_support import wat

from realm_ext import Host, abi
from realm_ext.backends import CpuBackend
from realm_ext.model import load_gguf

PAGE = 65536
U32 = 2**32


@pytest.fixture(scope="module")
def tiny(model_path):
    return load_gguf(model_path("Q8_0"))


@pytest.fixture
def host(tiny):
    with Host(device="cpu") as h:
        h.load(tiny)
        yield h


@pytest.fixture(params=["native", "python"])
def guest(host, tiny, engine, request):
    """The proxy guest; on wasmtime both with the forward imports in C (native) and in
    Python (wasmer always uses the Python ones)."""
    if engine == "wasmer" and request.param == "native":
        pytest.skip("native imports are a wasmtime feature")
    native = request.param == "native"
    with host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), memory_limit=64 * PAGE,
                    native_imports=native) as g:  # fmt: skip
        assert (g.state.native is not None) == (native and engine == "wasmtime")
        yield g


def signed(v: int) -> int:
    """v as the signed i32 an engine passes for a u32 argument."""
    v %= U32
    return v - U32 if v >= 2**31 else v


def call(g, name: str, *args: int) -> int:
    return g.call(name, *args)


def write_f32(g, ptr: int, a: np.ndarray) -> None:
    g.write(ptr, np.ascontiguousarray(a, np.float32))


def read_f32(g, ptr: int, n: int) -> np.ndarray:
    return np.frombuffer(g.read(ptr, 4 * n), np.float32).copy()


def test_model_info_and_vocab(guest, tiny) -> None:
    mid = guest.model_id()
    assert call(guest, "model_info", mid, 64, 48) == 48
    fields = abi.MODEL_INFO.unpack(guest.read(64, 48))
    c, t = tiny.config, tiny.tokenizer
    assert fields == (1, c.n_vocab, c.n_ctx_train, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.n_ff,
                      t.bos_id, t.eos_id, t.unk_id, abi.model_info(tiny)[-4])  # fmt: skip
    # a larger buffer gets the struct and nothing more
    guest.write(200, b"\xee" * 64)
    assert call(guest, "model_info", mid, 200, 64) == 48
    assert guest.read(200, 48) == guest.read(64, 48) and guest.read(248, 16) == b"\xee" * 16
    blob = abi.vocab_blob(tiny)
    assert call(guest, "vocab_size", mid) == len(blob)
    assert call(guest, "vocab_read", mid, 1024, len(blob)) == len(blob)
    assert guest.read(1024, len(blob)) == blob
    header = abi.VOCAB_HEADER.unpack_from(blob)
    assert header[0] == abi.VOCAB_MAGIC and header[4] == c.n_vocab
    # the scores and token texts in the blob are the file's
    scores = np.frombuffer(blob, "<f4", c.n_vocab, header[10])
    np.testing.assert_array_equal(scores, t.scores)
    ends = np.frombuffer(blob, "<u4", c.n_vocab, header[12])
    text = blob[header[14] : header[14] + header[15]]
    for i in (0, 3, 300, c.n_vocab - 1):
        start = ends[i - 1] if i else 0
        assert text[start : ends[i]].decode() == t.tokens[i]


def test_bad_model_ids(host, guest, tiny, model_path) -> None:
    other = host.load(load_gguf(model_path("F16")))  # loaded, but not granted to this guest
    for mid in (0, host.model_id(other), 99, signed(2**31 + guest.model_id())):
        assert call(guest, "model_info", mid, 64, 48) == abi.ERR_MODEL
        assert call(guest, "vocab_size", mid) == abi.ERR_MODEL
        assert call(guest, "kv_create", mid, 16) == abi.ERR_MODEL
    assert b"not granted" in guest.state.last_error


def test_model_info_grows_compatibly(guest, monkeypatch) -> None:
    """When fields are appended to the struct, a guest that asks for version 1's 48
    bytes gets them (a prefix), and one that asks for more gets the whole struct."""
    mid = guest.model_id()
    granted = guest.state.models[mid]
    info = granted.info
    longer = info + (7).to_bytes(4, "little")
    monkeypatch.setitem(guest.state.models, mid, dataclasses.replace(granted, info=longer))
    assert call(guest, "model_info", mid, 64, 48) == 48
    assert guest.read(64, 48) == info
    assert call(guest, "model_info", mid, 64, 100) == 52
    assert guest.read(64, 52) == longer


def test_blob_bounds_and_sizes(guest) -> None:
    mid = guest.model_id()
    size = guest.memory().size
    before = guest.memory().copy()
    assert call(guest, "model_info", mid, 64, 47) == abi.ERR_INVALID  # out_len too small
    assert call(guest, "model_info", mid, size - 47, 48) == abi.ERR_BOUNDS
    assert call(guest, "model_info", mid, signed(U32 - 16), 48) == abi.ERR_BOUNDS  # ptr + len wraps u32
    n = call(guest, "vocab_size", mid)
    assert call(guest, "vocab_read", mid, 0, n - 1) == abi.ERR_INVALID
    assert call(guest, "vocab_read", mid, size - n + 1, n) == abi.ERR_BOUNDS
    np.testing.assert_array_equal(guest.memory(), before)  # nothing written by a failed call


def test_logits_through_the_imports_equal_the_backend(guest, tiny, rng) -> None:
    c = tiny.config
    mid = guest.model_id()
    n = int(rng.integers(1, 9))
    ids = rng.integers(0, c.n_vocab, n).astype("<u4")
    kv = call(guest, "kv_create", mid, 32)
    assert kv == 1
    ids_ptr, x_ptr, logits_ptr = 64, 4096, 4096 + 4 * n * c.n_embd
    guest.write(ids_ptr, ids)
    assert call(guest, "embedding", mid, ids_ptr, n, x_ptr) == 0
    assert call(guest, "layers", mid, 0, c.n_layer, x_ptr, n * c.n_embd, 0, kv, x_ptr) == 0
    # one more token, one layer at a time through realm_forward_layer
    guest.write(ids_ptr, ids[:1])
    y_ptr = logits_ptr
    assert call(guest, "embedding", mid, ids_ptr, 1, y_ptr) == 0
    for layer in range(c.n_layer):
        assert call(guest, "layer", mid, layer, y_ptr, c.n_embd, n, kv, y_ptr) == 0
    hidden = np.concatenate([read_f32(guest, x_ptr, n * c.n_embd), read_f32(guest, y_ptr, c.n_embd)])
    write_f32(guest, x_ptr, hidden)
    assert call(guest, "lm_head", mid, x_ptr, (n + 1) * c.n_embd, x_ptr + 4 * (n + 1) * c.n_embd) == 0
    got = read_f32(guest, x_ptr + 4 * (n + 1) * c.n_embd, (n + 1) * c.n_vocab).reshape(n + 1, c.n_vocab)
    # the backend's calls the imports make, in the same order: a decode step's attention
    # sums in llama.cpp's one-token order, not as the same row of one 9-token batch would
    be = CpuBackend()
    kv_want = be.new_kv(tiny, 32)
    want_hidden = np.empty((n + 1, c.n_embd), np.float32)
    be.forward_embedding(tiny, ids.astype(np.int32), want_hidden[:n])
    be.forward_layers(tiny, 0, c.n_layer, want_hidden[:n], 0, kv_want, want_hidden[:n])
    be.forward_embedding(tiny, ids[:1].astype(np.int32), want_hidden[n:])
    for layer in range(c.n_layer):
        be.forward_layer(tiny, layer, want_hidden[n:], n, kv_want, want_hidden[n:])
    np.testing.assert_array_equal(hidden.reshape(n + 1, c.n_embd), want_hidden)
    want = np.empty((n + 1, c.n_vocab), np.float32)
    be.forward_lm_head(tiny, want_hidden, want)
    np.testing.assert_array_equal(got, want)
    # and the logits are the model's: the whole sequence in one batch, to the float order
    whole = be.logits(tiny, np.concatenate([ids, ids[:1]]).astype(np.int32), be.new_kv(tiny, 32))
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-2 * float(np.abs(whole).max()))


def test_forward_argument_errors(guest, tiny) -> None:
    c = tiny.config
    e = c.n_embd
    mid = guest.model_id()
    kv = call(guest, "kv_create", mid, 8)
    size = guest.memory().size
    guest.write(0, np.array([1, 2], "<u4"))
    before = guest.memory().copy()
    cases = {
        abi.ERR_RANGE: [
            ("layer", mid, c.n_layer, 4096, e, 0, kv, 4096),
            ("layer", mid, signed(-1), 4096, e, 0, kv, 4096),
            ("layer", mid, 0, 4096, e, 5, kv, 4096),  # skips ahead of the ring
            ("layers", mid, 1, c.n_layer, 4096, e, 0, kv, 4096),
        ],
        abi.ERR_ROWS: [
            ("layer", mid, 0, 4096, e + 1, 0, kv, 4096),
            ("lm_head", mid, 4096, e - 1, 65536),
        ],
        abi.ERR_INVALID: [
            ("layer", mid, 0, 4096, 0, 0, kv, 4096),  # no tokens
            ("layer", mid, 0, 4098, e, 0, kv, 4098),  # misaligned
            ("layer", mid, 0, 4096, e, 0, kv, 4100),  # out overlaps input, not equal
            ("layers", mid, 0, 0, 4096, e, 0, kv, 4096),
            ("embedding", mid, 0, 0, 4096),
            ("embedding", mid, 4, 1, 0),  # out overlaps the ids
        ],
        abi.ERR_BOUNDS: [
            ("layer", mid, 0, size - 4 * e + 4, e, 0, kv, 4096),
            ("layer", mid, 0, 4096, e, 0, kv, signed(U32 - 4)),
            ("layer", mid, 0, 4096, signed((U32 // e - 1) * e), 0, kv, 4096),  # huge, whole rows
            ("embedding", mid, 0, signed(2**31), 4096),
            ("lm_head", mid, 4096, e, size - 4 * c.n_vocab + 4),
        ],
        abi.ERR_KV: [
            ("layer", mid, 0, 4096, e, 0, kv + 1, 4096),
            ("layer", mid, 0, 4096, e, 0, -1, 4096),
            ("kv_free", kv + 7),
            ("kv_truncate", 0, 0),
        ],
    }
    for code, calls in cases.items():
        for args in calls:
            assert call(guest, *args) == code, (args, guest.state.last_error)
            assert guest.state.last_error
    np.testing.assert_array_equal(guest.memory(), before)
    # a token id outside the vocabulary, sign bit set or not
    for bad in (c.n_vocab, U32 - 1):
        guest.write(0, np.array([1, bad], "<u4"))
        assert call(guest, "embedding", mid, 0, 2, 4096) == abi.ERR_INVALID
    # the ring is untouched: position 0 still works on every layer
    assert call(guest, "layers", mid, 0, c.n_layer, 4096, e, 0, kv, 4096) == 0


def test_kv_lifecycle_and_namespaces(host, guest, tiny, engine) -> None:
    mid = guest.model_id()
    a, b = call(guest, "kv_create", mid, 16), call(guest, "kv_create", mid, 16)
    assert (a, b) == (1, 2)
    assert call(guest, "kv_create", mid, 0) == abi.ERR_INVALID
    assert call(guest, "kv_create", mid, signed(U32 - 1)) == abi.ERR_INVALID
    assert call(guest, "kv_truncate", a, 0) == 0
    assert call(guest, "kv_truncate", a, 3) == 0  # nothing at >= 3 to forget
    # a ring of 4 that slid past positions 0 and 1 cannot rewind to them
    c = tiny.config
    ring = call(guest, "kv_create", mid, 4)
    guest.write(0, np.arange(6, dtype="<u4"))
    assert call(guest, "embedding", mid, 0, 6, 4096) == 0
    assert call(guest, "layers", mid, 0, c.n_layer, 4096, 4 * c.n_embd, 0, ring, 4096) == 0
    assert call(guest, "layers", mid, 0, c.n_layer, 4096, 2 * c.n_embd, 4, ring, 4096) == 0
    assert call(guest, "kv_truncate", ring, 1) == abi.ERR_RANGE
    assert call(guest, "kv_truncate", ring, 5) == 0
    assert call(guest, "kv_free", ring) == 0
    assert call(guest, "kv_free", a) == 0
    assert call(guest, "kv_free", a) == abi.ERR_KV  # freed ids stay dead
    assert call(guest, "kv_create", mid, 16) == 4  # and are not reused
    # another guest's ids mean nothing here, and the other way round
    with host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), memory_limit=64 * PAGE) as other:
        assert call(other, "kv_free", b) == abi.ERR_KV
        assert call(other, "kv_create", mid, 16) == 1
        assert call(guest, "kv_free", b) == 0
        assert call(other, "kv_free", 1) == 0
    # the per-guest KV budget
    with host.guest(models=[tiny], engine=engine, wasm=wat("proxy"), kv_limit=100_000) as small:
        assert call(small, "kv_create", mid, 4096) == abi.ERR_NOMEM
        assert b"KV limit" in small.state.last_error


def test_emit_log_and_last_error(guest) -> None:
    got: list[str] = []
    guest.state.on_emit = lambda s: got.append(s) or len(got) < 2
    guest.write(100, "héllo ✓".encode())
    n = len("héllo ✓".encode())
    assert call(guest, "emit", 100, n) == 0
    assert call(guest, "emit", 100, 1) == abi.ERR_CANCELLED  # the host said stop
    assert got == ["héllo ✓", "h"]
    assert call(guest, "emit", guest.memory().size - 2, 4) == abi.ERR_BOUNDS
    assert call(guest, "log", 1, 100, n) == 0
    assert call(guest, "log", 4, 100, n) == abi.ERR_INVALID
    msg = guest.state.last_error
    assert call(guest, "last_error", 200, 1000) == len(msg)
    assert guest.read(200, len(msg)) == msg
    before = guest.memory().copy()
    assert call(guest, "last_error", 300, 5) == len(msg)  # truncated copy, full length back
    changed = np.flatnonzero(guest.memory() != before)
    assert changed.size <= 5 and (changed.size == 0 or (changed.min() >= 300 and changed.max() < 305))
