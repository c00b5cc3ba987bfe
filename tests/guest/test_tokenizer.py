"""The guest's SentencePiece tokenizer (realm_tokenize / realm_detokenize and the
streaming detokenizer of realm_generate) against sentencepiece itself, on a BPE model
trained here with byte fallback."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from guest_helpers import ACCENTED, CJK, UNSEEN, WORDS, corpus_line, put

from realm_ext.abi import ERR_INVALID, ERR_MODEL
from realm_ext.model import load_gguf

EDGE_CASES = [
    "",
    " ",
    "  ",
    "   ",
    "\n",
    "\t",
    "\n\n",
    " \t \n ",
    "a",
    " a",
    "a ",
    "  a  ",
    "hello world",
    "hello  world",
    "hello   world",
    "    leading spaces",
    "trailing spaces    ",
    "line one\nline two\n",
    "col\tcol\t\tcol",
    "\r\n",
    "The cat walked home.",
    "Once upon a time, there was a king.",
    "12345",
    "3.14159",
    "007 and 2024-01-01",
    "café crème",
    "naïve résumé",
    "straße über",
    "日本語",
    "東京 先生",
    "今日は世界",
    "😀",
    "🎉🎉 party",
    "emoji 😀 in text",
    "鬱",
    "Ω≈ç√∫",
    "Привет мир",
    "مرحبا",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "a\u00a0b",
    "zero\u200bwidth",
    "<s>",
    "</s>",
    "<unk>",
    "<s>hello</s>",
    "<0x41>",
    "▁",
    "▁▁x",
    "x▁y",
    "~!@#$%^&*()_+`-={}[]|\\:;\"'<>,.?/",
]

CHAR_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "     \t\n",
    "éèêëàâäîïôöùûüçñß",
    "日本語中文東京漢字学校先生ひらがなカタカナ世界",
    "".join(UNSEEN),
    ".,;:!?'\"()-",
]


def random_string(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.4:
        return corpus_line(r)
    if kind < 0.7:
        return "".join(r.choice(r.choice(CHAR_POOLS)) for _ in range(r.randint(1, 40)))
    words = WORDS + ACCENTED + CJK + UNSEEN
    sep = [" ", "  ", "\t", "\n", "", " \n "]
    return r.choice(["", " ", "  "]) + "".join(
        r.choice(words) + r.choice(sep) for _ in range(r.randint(1, 10))
    )


def make_strings() -> list[str]:
    r = random.Random(99)
    out = EDGE_CASES + [random_string(r) for _ in range(400)]
    # characters from all over the code space: byte fallback for most
    for _ in range(60):
        out.append(
            "".join(
                chr(r.choice([r.randint(0x20, 0x7E), r.randint(0xA0, 0x2FFF), r.randint(0x10000, 0x1FAFF)]))
                for _ in range(r.randint(1, 8))
            )
        )
    return [s for s in out if not any(0xD800 <= ord(c) <= 0xDFFF for c in s)]


STRINGS = make_strings()


def test_enough_cases() -> None:
    assert len(STRINGS) >= 300


def test_ids_match_sentencepiece(spm_case, spm_guest) -> None:
    sp = spm_case.sp
    mismatches = []
    byte_fallbacks = 0
    for s in STRINGS:
        want = sp.encode(s)
        got = spm_guest.tokenize(s)
        if got != want:
            mismatches.append((s, want, got))
        byte_fallbacks += any(sp.is_byte(i) for i in want)
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, first: {mismatches[:3]}"
    assert byte_fallbacks >= 30  # the byte fallback is exercised, not only plain pieces


def test_roundtrip(spm_case, spm_guest) -> None:
    sp = spm_case.sp
    for s in STRINGS:
        if "▁" in s:  # a literal U+2581 reads as a space, in sentencepiece too
            continue
        ids = spm_guest.tokenize(s)
        assert spm_guest.detokenize(ids) == s
        assert sp.decode(ids) == s


def test_detokenize_arbitrary_ids(spm_case, spm_guest) -> None:
    """Random id sequences (pieces, bytes, control tokens): pieces with U+2581 as a
    space, bytes as they are, control tokens as nothing, the first space dropped; the
    same as sentencepiece's decode wherever the bytes are valid UTF-8."""
    sp = spm_case.sp
    n = sp.get_piece_size()
    r = random.Random(5)
    compared = 0
    for _ in range(300):
        ids = [r.randrange(3, n) for _ in range(r.randint(1, 12))]
        if r.random() < 0.3:
            ids.insert(r.randrange(len(ids) + 1), r.choice([sp.bos_id(), sp.eos_id()]))
        raw = b"".join(
            bytes([int(sp.id_to_piece(i)[3:5], 16)])
            if sp.is_byte(i)
            else b""
            if sp.is_control(i)
            else sp.id_to_piece(i).replace("\u2581", " ").encode()
            for i in ids
        )
        raw = raw[1:] if raw.startswith(b" ") else raw
        got = spm_guest.detokenize(ids)
        assert got == raw.decode("utf-8", "replace"), ids
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert got == sp.decode(ids), ids
        compared += 1
    assert compared > 100


def stream(guest, ids: list[int]) -> list[bytes]:
    """The pieces the streaming detokenizer lets out for ids fed one at a time, and
    the final flush as the last element."""
    arr = np.asarray(ids, "<u4")
    ids_ptr = put(guest, arr.tobytes() or b"\0")
    cap = 16 * len(ids) + 16
    out_ptr, ends_ptr = guest.alloc(cap), guest.alloc(4 * (len(ids) + 1))
    try:
        n = guest.call("realm_detokenize_stream", guest.model_id(), ids_ptr, len(ids), out_ptr, cap, ends_ptr)
        assert 0 <= n <= cap
        data = guest.read(out_ptr, n)
        ends = np.frombuffer(guest.read(ends_ptr, 4 * (len(ids) + 1)), "<u4").tolist()
    finally:
        for p in (ids_ptr, out_ptr, ends_ptr):
            guest.free(p)
    assert ends[-1] == n and ends == sorted(ends)
    return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def test_streaming_pieces_are_whole_characters(spm_guest) -> None:
    for s in STRINGS:
        if "▁" in s:
            continue
        pieces = stream(spm_guest, spm_guest.tokenize(s))
        for p in pieces:
            p.decode("utf-8")  # never half a character
        # generation continues a prompt: the dummy prefix's space stays
        assert b"".join(pieces).decode("utf-8") == (" " + s if s else "")


def test_streaming_holds_back_only_unfinished_characters(spm_case, spm_guest) -> None:
    sp = spm_case.sp
    byte = {b: sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    euro = [byte[b] for b in "€".encode()]
    # invalid bytes go out as they are, not held forever
    assert stream(spm_guest, [byte[0xE2], byte[0x41]]) == [b"", b"\xe2A", b""]
    assert stream(spm_guest, [byte[0x80]]) == [b"\x80", b""]
    # an unfinished character at the end is flushed
    assert stream(spm_guest, euro[:2]) == [b"", b"", b"\xe2\x82"]
    assert stream(spm_guest, euro) == [b"", b"", "€".encode(), b""]


def test_control_text_is_plain_text(spm_case, spm_guest) -> None:
    sp = spm_case.sp
    specials = {sp.bos_id(), sp.eos_id(), sp.unk_id()}
    for s in ["<s>", "</s>", "<s></s>", " <s> hello </s> ", "<unk>", "</s><s>" * 5]:
        ids = spm_guest.tokenize(s)
        assert not specials & set(ids), (s, ids)
        assert spm_guest.detokenize(ids) == s
    # and control tokens decode to nothing
    assert spm_guest.detokenize([sp.bos_id(), *spm_guest.tokenize("hi"), sp.eos_id()]) == "hi"


def test_tokenize_out_cap_and_bounds(spm_guest) -> None:
    g = spm_guest
    data = b"hello world, once upon a time"
    full = g.tokenize(data.decode())
    text_ptr, out_ptr = put(g, data), g.alloc(4 * len(full))
    try:
        # a short buffer: the count back, only the first out_cap written
        g.write(out_ptr, b"\xff" * 4 * len(full))
        n = g.call("realm_tokenize", g.model_id(), text_ptr, len(data), out_ptr, 2, 0)
        assert n == len(full)
        got = np.frombuffer(g.read(out_ptr, 4 * len(full)), "<u4")
        assert got[:2].tolist() == full[:2] and (got[2:] == 0xFFFFFFFF).all()
        mem = g.memory_pages * 65536
        assert g.call("realm_tokenize", g.model_id(), mem - 2, 10, out_ptr, 4, 0) == -2
        assert g.call("realm_tokenize", g.model_id(), text_ptr, len(data), mem - 4, 4, 0) == -2
        assert g.call("realm_tokenize", 12345, text_ptr, len(data), out_ptr, 4, 0) == -3
    finally:
        g.free(text_ptr)
        g.free(out_ptr)


def test_no_leak(spm_guest) -> None:
    g = spm_guest
    g.tokenize("warm up")
    g.detokenize([5, 6, 7])
    before = g.call("realm_heap_bytes")
    for s in STRINGS[:50]:
        g.detokenize(g.tokenize(s))
    assert g.call("realm_heap_bytes") == before


@pytest.mark.parametrize("n_vocab", [32000])
def test_tinyllama_sized_vocab(host, tmp_path, n_vocab: int) -> None:
    """make_vocab's 32000 tokens (TinyLlama's count): tokenize/detokenize agree and the
    tables stay small."""
    from dataclasses import replace

    from realm_ext.model_maker import PRESETS, make_model

    cfg = replace(PRESETS["tiny"].config, n_vocab=n_vocab, n_embd=256, n_ff=256, n_layer=1)
    model = host.load(make_model(tmp_path / "v32k.gguf", cfg, "Q8_0"))
    with host.guest(models=[model], engine="wasmtime") as g:
        text = "once upon a time the king walked home with his friends"
        ids = g.tokenize(text)
        assert g.detokenize(ids) == text and len(ids) < len(text.split()) * 3
        heap = g.call("realm_heap_bytes")
        assert heap < 2 * 2**20, heap  # blob + text -> id table + scratch


def test_revoked_model(spm_case) -> None:
    from realm_ext import Host

    with Host(device="cpu", n_threads=1) as host:
        model = host.load(spm_case.gguf)
        with host.guest(models=[model], engine="wasmtime") as g:
            assert g.tokenize("hello")  # the tokenizer is built and cached
            mid = g.model_id()
            host.unload(model)
            ptr, out = put(g, b"hello"), g.alloc(64)
            assert g.call("realm_tokenize", mid, ptr, 5, out, 16, 0) == ERR_MODEL


def corrupt(blob: bytes, field: int, value: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into("<I", b, 4 * field, value & 0xFFFFFFFF)
    return bytes(b)


def test_bad_blobs_are_invalid(spm_case, monkeypatch, rng) -> None:
    """A vocabulary blob that breaks the header's rules: REALM_ERR_INVALID, no trap."""
    from realm_ext import Host, RealmError, abi

    good = abi.vocab_blob(load_gguf(spm_case.gguf))
    h = abi.VOCAB_HEADER.unpack_from(good)
    total, n = h[2], h[4]
    ends_off = h[12]
    bad = [
        corrupt(good, 0, 0x12345678),  # magic
        corrupt(good, 1, 0),  # version
        corrupt(good, 2, len(good) + 4),  # total_bytes past the blob
        corrupt(good, 2, 10),  # total_bytes inside the header
        corrupt(good, 3, abi.VOCAB_GPT2),  # kind
        corrupt(good, 4, 0),  # no tokens
        corrupt(good, 4, n * 50),  # arrays past the end
        corrupt(good, 4, 0x40000001),  # 4 * n overflows 32 bits
        corrupt(good, 6, n),  # bos outside the vocabulary
        corrupt(good, 10, total - 8),  # scores past the end
        corrupt(good, 11, h[11] + 2),  # unaligned
        corrupt(good, 14, total),  # text past the end
        corrupt(good, 15, total),
        corrupt(good, ends_off // 4 + 5, 0xFFFFFF),  # a token end past the text
        corrupt(good, ends_off // 4 + 5, 0),  # ends out of order
        good[:40],  # shorter than the header
    ]
    blobs = iter(bad)
    monkeypatch.setattr(abi, "vocab_blob", lambda model: next(blobs))
    with Host(device="cpu", n_threads=1) as host:
        for i in range(len(bad)):
            model = host.load(load_gguf(spm_case.gguf))
            with host.guest(models=[model], engine="wasmtime") as g:
                with pytest.raises(RealmError) as e:
                    g.tokenize("hello")
                assert e.value.code == ERR_INVALID, i
            host.unload(model)

    # random flips in the header and the arrays: an error or a tokenizer, never a trap
    flips = []
    for _ in range(40):
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, min(len(b), 64 + 8 * n)))] ^= 1 << int(rng.integers(0, 8))
        flips.append(bytes(b))
    blobs = iter(flips)
    with Host(device="cpu", n_threads=1) as host:
        for _ in flips:
            model = host.load(load_gguf(spm_case.gguf))
            with host.guest(models=[model], engine="wasmtime") as g:
                try:
                    g.detokenize(g.tokenize("hello world 日本 😀"))
                except RealmError as e:
                    assert e.code in (ERR_INVALID, abi.ERR_NOMEM)
            host.unload(model)
