"""The guest's byte-level BPE pre-tokenizers (pretokenize.c, through the test-only export
realm_pretokenize) against the `regex` module running llama.cpp's expressions, and end
to end against llama.cpp itself: a plain BPE here, fed the guest's words, must give
llama.cpp's token ids.

llama.cpp is the bar where it and the textbook expressions part:
- its Unicode tables are 15.1: a codepoint assigned later (U+1C89, a Cyrillic letter
  of Unicode 16.0) is neither \\p{L} nor \\p{N} to it, as it is to the regex module's
  newer data;
- it decodes UTF-8 leniently (an invalid byte is one U+FFFD, an overlong form the
  codepoint it spells): a reference decoder here does the same before `regex` splits.
"""

from __future__ import annotations

import importlib.util
import random
import time
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from guest_helpers import put
from support import real_files

from realm_ext.abi import ERR_BOUNDS, ERR_INVALID

regex = pytest.importorskip("regex")

ROOT = Path(__file__).resolve().parents[2]

GPT2, LLAMA3, QWEN2, SMOLLM = 1, 2, 3, 4  # REALM_PRE_* (realm.h)
PRES = (GPT2, LLAMA3, QWEN2, SMOLLM)

GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_RE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_RE = LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")
# smollm: the first expression's words, matched or not, each split by the second
EXPRS = {
    GPT2: [regex.compile(GPT2_RE)],
    LLAMA3: [regex.compile(LLAMA3_RE)],
    QWEN2: [regex.compile(QWEN2_RE)],
    SMOLLM: [regex.compile(r"\p{N}"), regex.compile(GPT2_RE)],
}


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_unicode_data", ROOT / "scripts" / "gen_unicode_data.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = load_generator()
LATE = GEN.after_15_1()  # assigned after Unicode 15.1: "other" to llama.cpp


# ---- references ---------------------------------------------------------------------


def ref_split(pre: int, s: str) -> list[str]:
    """s split as llama.cpp's regex path splits it: every match a word, and every
    stretch between matches one too."""
    pieces = [s]
    for expr in EXPRS[pre]:
        out = []
        for p in pieces:
            at = 0
            for m in expr.finditer(p):
                if m.start() > at:
                    out.append(p[at : m.start()])
                out.append(m.group())
                at = m.end()
            if at < len(p):
                out.append(p[at:])
        pieces = out
    return pieces


def llama_decode(data: bytes) -> list[tuple[int, int]]:
    """(codepoint, byte length) of each character as llama.cpp's unicode_cpts_from_utf8
    reads data: the lead byte gives the length, enough continuation bytes must follow
    (nothing else is checked); otherwise the byte alone is U+FFFD."""
    out, i = [], 0
    while i < len(data):
        b = data[i]
        n = 1 if b < 0x80 else 0 if b < 0xC0 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF8 else 0
        if n == 0 or i + n > len(data) or any(data[j] & 0xC0 != 0x80 for j in range(i + 1, i + n)):
            out.append((0xFFFD, 1))
            i += 1
            continue
        v = b if n == 1 else b & (0xFF >> (n + 1))
        for j in range(i + 1, i + n):
            v = v << 6 | data[j] & 0x3F
        out.append((v, n))
        i += n
    return out


def ref_spans(pre: int, data: bytes) -> list[tuple[int, int]]:
    """The byte spans llama.cpp's split gives data, any bytes at all."""
    cpts = llama_decode(data)
    # > U+10FFFF has no Python character: a private-use one is "other" as it is to llama.cpp
    text = "".join(chr(c) if c <= 0x10FFFF else "\ue000" for c, _ in cpts)
    ends = np.cumsum([0] + [n for _, n in cpts]).tolist()
    out, at = [], 0
    for w in ref_split(pre, text):
        out.append((ends[at], ends[at + len(w)] - ends[at]))
        at += len(w)
    return out


def llama_bytes(word: bytes) -> bytes:
    """The bytes llama.cpp gives the merges for a word: its codepoints re-encoded."""
    return "".join(chr(c) for c, _ in llama_decode(word)).encode("utf-8", "surrogatepass")


# ---- the guest ----------------------------------------------------------------------


_BUFFERS: dict[int, tuple[int, int]] = {}  # id(guest) -> (address, bytes) of a scratch buffer


def scratch(g, n: int) -> int:
    """A buffer of at least n bytes in g, kept for the next call."""
    ptr, size = _BUFFERS.get(id(g), (0, 0))
    if size < n:
        if ptr:
            g.free(ptr)
        size = max(n, 1 << 16)
        ptr = g.alloc(size)
        _BUFFERS[id(g)] = (ptr, size)
    return ptr


def spans(g, pre: int, data: bytes) -> list[tuple[int, int]]:
    """The guest's words of data, as (start, len) byte spans."""
    cap = len(data)
    text = scratch(g, len(data) + 8 * cap + 8)
    out = text + (len(data) + 7) // 8 * 8
    g.write(text, data)
    n = g.call("realm_pretokenize", pre, text, len(data), out, cap)
    assert 0 <= n <= cap, n
    got = np.frombuffer(g.read(out, 8 * n), "<u4").reshape(-1, 2)
    return [(int(s), int(ln)) for s, ln in got]


def words(g, pre: int, data: bytes) -> list[bytes]:
    return [data[s : s + n] for s, n in spans(g, pre, data)]


def check_cover(sp: list[tuple[int, int]], n: int) -> None:
    at = 0
    for s, ln in sp:
        assert s == at and ln > 0
        at += ln
    assert at == n


# ---- cases --------------------------------------------------------------------------

WHITESPACE = [
    "\t", "\n", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u1680", "\u2000", "\u2005", "\u200a",
    "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
]  # fmt: skip

EDGE_CASES = [
    "", " ", "  ", "   ", "\t", "\n", "\r\n", "\r\n\r\n", " \r\n ", "\n\n\n", "a\r\nb", "a \r\n b",
    "\t\ta", "a\t\t", "\ta", "a\t", " \ta", "\t a", "a  \t  b", "x\u00a0y", "x \u00a0 y", "x\u3000y",
    "\u3000\u3000x", "x\u3000\u3000", "\u2028\u2029", "a\x85b", "a\x0b\x0cb", "\x1c\x1d\x1e\x1fa",
    "don't", "DON'T", "Don'T", "we're We'RE we'Re", "I'll I'LL i'lL", "she'd SHE'D", "you've YOU'VE",
    "it's IT'S", "'s", "'", "''", "'''s", "x'", "'x", "' s", "I'm I'M", "rock'n'roll", "o'clock",
    "’s", "l'été", "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789",
    "1234567890", " 1234567890", "a1234b", "1 2  3", "3.14159", "٣٤٥٦", "½¼¾", "Ⅻ", "x²³", "１２３４",
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷🇩🇪", "emoji 😀 in 🎉 text", "日本語のテキスト",
    "中文 字符", "한국어 텍스트", "مرحبا بالعالم", "שלום עולם", "Привет, мир!", "e\u0301te\u0301",
    "n\u0303o", "a\u0308\u0304b", "\u0301", " \u0301", "ﬁ ﬂ", "Ω≈ç√∫", "zero\u200bwidth",
    "soft\u00adhyphen", "\ufeffbom", "tab\tsep\tvalues\t", "  leading and trailing  ",
    "line one\nline two\n", "a\n\n\n\nb", "a  \n  b", "!!!???...", " !!! ", "!\n\n", "! \n\n",
    "(a) [b] {c}", "<|endoftext|>", "a\x00b", "\x7f\x01\x02",
    "Hello world, once upon a time. 1,234,567 people said: \"hi!\"",
]  # fmt: skip

# whitespace runs of every kind, alone and around words, at every position
for w in WHITESPACE:
    EDGE_CASES += [
        w,
        w * 3,
        f"a{w}b",
        f"a{w * 2}b",
        f"a {w}b",
        f"a{w} b",
        f"{w}a",
        f"a{w}",
        f"1{w}2",
        f"!{w}!",
    ]

ALPHABET = (
    list("abcxyzABCXYZ0123456789 '''''sStTrReEvVmMlLdD.,!?-_()\"\t\n\r")
    + WHITESPACE
    + list("éßΩЯжאعب日本語ひカ한\u0301\u0308٣½Ⅻ²０😀🎉\u200d🏽🇫€₿’\x00\x1c\x7f")
)


def random_string(r: random.Random) -> str:
    n = r.choice([r.randint(0, 8), r.randint(0, 40)])
    return "".join(r.choice(ALPHABET) for _ in range(n))


@cache
def random_strings() -> list[str]:
    r = random.Random(20240611)
    return [random_string(r) for _ in range(2000)]


# ---- tests: splits --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases_46() -> list[str]:
    return real_files.llama_vocab("gpt-2")[1]


@pytest.mark.parametrize("pre", PRES)
def test_llama_cpp_texts(tiny_guest, cases_46, pre: int) -> None:
    assert len(cases_46) == 46
    for s in cases_46:
        data = s.encode()
        assert words(tiny_guest, pre, data) == [w.encode() for w in ref_split(pre, s)], repr(s)


@pytest.mark.parametrize("pre", PRES)
def test_edge_cases(tiny_guest, pre: int) -> None:
    for s in EDGE_CASES:
        data = s.encode()
        sp = spans(tiny_guest, pre, data)
        check_cover(sp, len(data))
        assert [data[a : a + n] for a, n in sp] == [w.encode() for w in ref_split(pre, s)], repr(s)


@pytest.mark.parametrize("pre", PRES)
def test_random_strings(tiny_guest, pre: int) -> None:
    for s in random_strings():
        data = s.encode()
        assert words(tiny_guest, pre, data) == [w.encode() for w in ref_split(pre, s)], repr(s)


def test_examples(tiny_guest) -> None:
    """A few splits spelled out (and what they show)."""
    g = tiny_guest
    # gpt2 has no final \s+ in its expression: llama.cpp's matcher makes a lone tab a word
    assert words(g, GPT2, b"a\tb") == [b"a", b"\t", b"b"]
    assert words(g, GPT2, b"a   b") == [b"a", b"  ", b" b"]
    assert words(g, LLAMA3, b"12345 don'T\r\n\r\n x") == [b"123", b"45", b" don", b"'T", b"\r\n\r\n", b" x"]
    assert words(g, QWEN2, b"x 123") == [b"x", b" ", b"1", b"2", b"3"]
    assert words(g, SMOLLM, b"a 12b") == [b"a", b" ", b"1", b"2", b"b"]
    # \s is White_Space: no-break and ideographic spaces are spaces, U+001C..U+001F are not
    assert words(g, GPT2, "a\u00a0\u00a0b".encode()) == [b"a", "\u00a0".encode(), "\u00a0".encode(), b"b"]
    assert words(g, GPT2, b"a\x1c\x1db") == [b"a", b"\x1c\x1d", b"b"]


def test_letters_after_unicode_15_1_are_other(tiny_guest) -> None:
    """llama.cpp's tables are Unicode 15.1: U+1C89 (a Cyrillic capital letter of 16.0)
    is "other" to it, a letter to the regex module."""
    s = "ab\u1c89cd"
    assert ref_split(GPT2, s) == [s]  # the regex module's newer data
    assert words(tiny_guest, GPT2, s.encode()) == [b"ab", "\u1c89".encode(), b"cd"]
    assert words(tiny_guest, LLAMA3, s.encode()) == [b"ab", "\u1c89cd".encode()]


INVALID = [
    b"\xff", b"a\xffb", b"a\x80\x80b", b"ab\xe2\x82", b"\xe2\x82 x", b"\xc3", b"\xc3a", b" \xff", b"  \xff",
    b"x \xff\xfe y", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80\x80", b"\xc0\x80", b"\xc0\xa0x", b"a\xc1\xa7s",
    b"'\xc1\xb3", b"\xe0\x80\xa0a", b"\xed\xa0\x80x", b"\xf4\x90\x80\x80x", b"\xf7\xbf\xbf\xbf",
    b"\xf8\x88\x80\x80\x80",
    b"12\xff34", b"\xd9\xa3\xff\xd9\xa4", b"\n\xff\n",
]  # fmt: skip


@pytest.mark.parametrize("pre", PRES)
def test_invalid_utf8(tiny_guest, pre: int) -> None:
    """llama.cpp's lenient decoding: an invalid byte is one U+FFFD (a symbol: it joins
    punctuation), an overlong form is its codepoint ("\\xc0\\xa0" is a space, "\\xc1\\xb3"
    an 's'), a surrogate or a value past U+10FFFF is "other"."""
    r = random.Random(7)
    cases = list(INVALID)
    for _ in range(300):
        cases.append(
            bytes(
                r.choice([*b"a '1\n\t\x80\xbf\xc0\xc3\xe2\xed\xf0\xf4\xf8\xff", 0xA9])
                for _ in range(r.randint(1, 12))
            )
        )
    for data in cases:
        sp = spans(tiny_guest, pre, data)
        check_cover(sp, len(data))
        assert sp == ref_spans(pre, data), data


def test_table_against_regex_module(tiny_guest) -> None:
    """Every run boundary of the class table, and a sample of all codepoints, classed as
    the regex module classes them, for codepoints assigned by Unicode 15.1 (those that
    both Python's unicodedata and the regex module know, less the later ones)."""
    runs = [
        int(x, 16) >> 2
        for x in regex.findall(r"0x([0-9A-F]+)", (ROOT / "guest/src/unicode_data.c").read_text())
    ]
    probe = {c + d for c in runs for d in (-1, 0)} | set(random.Random(3).sample(range(0x110000), 3000))
    known = sorted(
        c
        for c in probe
        if 0x20 < c < 0x110000
        and not 0xD800 <= c < 0xE000
        and c not in LATE
        and unicodedata.category(chr(c)) != "Cn"
        and not regex.match(r"\p{Cn}", chr(c))
    )
    assert len(known) > 2500
    # "aX0X!X": whether X joins the letter, the digit or the '!' before it shows its class
    for i in range(0, len(known), 400):
        s = "".join(f"a{chr(c)}0{chr(c)}!{chr(c)}" for c in known[i : i + 400])
        assert words(tiny_guest, GPT2, s.encode()) == [w.encode() for w in ref_split(GPT2, s)]


# ---- tests: the call ------------------------------------------------------------------


def test_unknown_pre(tiny_guest) -> None:
    g = tiny_guest
    text, out = put(g, b"hello"), g.alloc(64)
    try:
        for pre in (0, 5, 99, 0xFFFFFFFF):
            assert g.call("realm_pretokenize", pre, text, 5, out, 8) == ERR_INVALID
            assert g.call("realm_pretokenize", pre, text, 0, out, 0) == ERR_INVALID
    finally:
        g.free(text)
        g.free(out)


def test_cap_and_retry(tiny_guest) -> None:
    g = tiny_guest
    data = b"Hello world, once upon a time 12345!"
    full = spans(g, LLAMA3, data)
    assert len(full) == 11
    text, out = put(g, data), g.alloc(8 * len(full))
    try:
        for cap in (0, 1, 3, len(full) - 1):
            g.write(out, b"\xff" * 8 * len(full))
            assert g.call("realm_pretokenize", LLAMA3, text, len(data), out, cap) == len(full)
            got = np.frombuffer(g.read(out, 8 * len(full)), "<u4").reshape(-1, 2)
            assert [tuple(map(int, x)) for x in got[:cap]] == full[:cap]
            assert (got[cap:] == 0xFFFFFFFF).all()  # nothing past cap
        assert g.call("realm_pretokenize", LLAMA3, text, len(data), out, len(full)) == len(full)
        assert g.call("realm_pretokenize", LLAMA3, text, 0, out, 0) == 0
    finally:
        g.free(text)
        g.free(out)


def test_hostile_lengths(tiny_guest) -> None:
    g = tiny_guest
    mem = g.memory_pages * 65536
    text, out = put(g, b"hi there"), g.alloc(64)
    try:
        before = g.read(0, 16)
        for args in [
            (mem - 2, 10, out, 8),
            (text, 0xFFFFFFFF, out, 8),
            (0xFFFFFFFF, 2, out, 8),
            (text, 8, mem - 8, 2),
            (text, 8, out, 0xFFFFFFFF),
            (text, 8, out, 0x20000000),  # 8 * cap wraps to 0 in u32
            (text, 8, 0xFFFFFFF8, 1),
        ]:
            assert g.call("realm_pretokenize", GPT2, *args) == ERR_BOUNDS, args
        assert g.read(0, 16) == before
    finally:
        g.free(text)
        g.free(out)


def test_no_leak(tiny_guest) -> None:
    g = tiny_guest
    spans(g, GPT2, b"warm up")
    before = g.call("realm_heap_bytes")
    for pre in PRES:
        for s in EDGE_CASES[:40]:
            spans(g, pre, s.encode())
    assert g.call("realm_heap_bytes") == before


@pytest.mark.parametrize("pre", PRES)
def test_long_runs_are_linear(tiny_guest, pre: int) -> None:
    """Long whitespace runs, of every kind, split in linear time."""
    n = 100_000
    cases = [
        b" " * n + b"a",
        b"\t" * n + b"a",
        b"\n " * n + b"x",
        b" \t" * n,
        ("\u3000" * n).encode(),
        b"1" * n,
    ]
    t = time.perf_counter()
    for data in cases:
        sp = spans(tiny_guest, pre, data)
        check_cover(sp, len(data))
    assert time.perf_counter() - t < 10


# ---- tests: end to end against llama.cpp ------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


BYTE_CHARS = bytes_to_unicode()


class RefBpe:
    """Plain byte-level BPE over a GGUF's tokens and merges: in each word, merge the
    adjacent pair of lowest rank (the leftmost on ties) until none is a merge."""

    def __init__(self, path: Path) -> None:
        from realm_ext.model import _metadata, _open_reader

        md = _metadata(path, _open_reader(path))
        self.ids = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
        self.ranks = {m: i for i, m in enumerate(md["tokenizer.ggml.merges"])}  # "a b" -> rank
        # llama.cpp sets ignore_merges for llama-bpe: a word that is a token is taken whole
        self.ignore_merges = md["tokenizer.ggml.pre"] == "llama-bpe"
        self.cache: dict[bytes, list[int]] = {}

    def word(self, w: bytes) -> list[int]:
        if w not in self.cache:
            self.cache[w] = self._word(w)
        return self.cache[w]

    def _word(self, w: bytes) -> list[int]:
        s = "".join(BYTE_CHARS[b] for b in w)
        if self.ignore_merges and s in self.ids:
            return [self.ids[s]]
        parts = list(s)
        while len(parts) > 1:
            rank, i = min(
                (self.ranks.get(f"{parts[i]} {parts[i + 1]}", 1 << 62), i) for i in range(len(parts) - 1)
            )
            if rank == 1 << 62:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        out = []
        for p in parts:
            if p in self.ids:
                out.append(self.ids[p])
                continue
            # not a token (SmolLM2 lacks some bytes' tokens): llama.cpp looks each byte of
            # its UTF-8 up as a one-byte token, and drops those that are none
            out += [self.ids[chr(b)] for b in p.encode() if b < 0x80 and chr(b) in self.ids]
        return out


VOCABS = {"gpt-2": GPT2, "llama-bpe": LLAMA3, "qwen2": QWEN2}

# llama.cpp aborts on a value past U+10FFFF (it cannot re-encode it): kept out of here
E2E_EXTRA = [
    "ab\u1c89cd", "a\tb", "\u00a0\u3000 x", "x\r\n\r\n  y", "DON'T we're", "1234567890 1 12 123",
    "👨\u200d👩\u200d👧 e\u0301", "日本語 中文", "   ", "a  ",
]  # fmt: skip
E2E_BYTES = [b"a\xffb", b"  \xff", b"x\xc0\xa0y", b"ab\xe2\x82", b"\xed\xa0\x80x", b"12\xff34"]


@pytest.fixture(scope="module", params=[*VOCABS, "smollm2"])
def vocab(request: pytest.FixtureRequest):
    llama_cpp = pytest.importorskip("llama_cpp")
    if request.param == "smollm2":
        path, texts, pre = real_files.smollm2(), real_files.llama_vocab("gpt-2")[1], SMOLLM
    else:
        path, texts, _ = real_files.llama_vocab(request.param)
        pre = VOCABS[request.param]
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return RefBpe(path), llm, texts, pre


def test_ids_match_llama_cpp(tiny_guest, vocab) -> None:
    ref, llm, texts, pre = vocab
    cases = [t.encode() for t in [*texts, *EDGE_CASES, *E2E_EXTRA, *random_strings()[:300]]] + E2E_BYTES
    for data in cases:
        ids = [i for a, n in spans(tiny_guest, pre, data) for i in ref.word(llama_bytes(data[a : a + n]))]
        assert ids == llm.tokenize(data, add_bos=False, special=False), data
