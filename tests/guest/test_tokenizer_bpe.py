"""The guest's byte-level BPE tokenizer and its special-token handling, on real
vocabularies, against references no one here wrote: llama.cpp's own test cases
(ggml-vocab-*.gguf.inp/.out), llama.cpp itself (llama-cpp-python, vocab only) and HF
`tokenizers` rebuilt from the GGUF's tokens and merges. The tiny models carry each
vocabulary whole (make-model --vocab-from); their weights are random blocks."""

from __future__ import annotations

import ctypes
import functools
import logging
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from guest_helpers import put
from support import real_files
from support.gguf_edit import rewrite

from realm_ext import Host, RealmError, abi
from realm_ext.api import Guest
from realm_ext.model import GGUFError, Model, load_gguf
from realm_ext.model_maker import make_model

LLAMA_CPP_VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2"]
# the tokenizer's heap (its blob and tables) on SmolLM2's 49,152 tokens: 2,818,656
# bytes measured
SMOLLM2_TOKENIZER_HEAP = 3_000_000


@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model per llama.cpp test vocabulary, made once."""
    root = tmp_path_factory.mktemp("bpe")
    out = {}
    for name in LLAMA_CPP_VOCABS:
        src, _, _ = real_files.llama_vocab(name)
        out[name] = make_model(
            root / f"{name}.gguf", "tiny", "Q4_0", tied=True, random_blocks=True, vocab_from=src
        )
    return out


@pytest.fixture(scope="module")
def bpe_host() -> Iterator[Host]:
    with Host(device="cpu", n_threads=1) as h:
        yield h


def open_guest(host: Host, model: Model) -> Guest:
    return host.guest(models=[host.load(model)], engine="wasmtime", memory_limit="256MiB")


@pytest.fixture(scope="module")
def smol() -> Model:
    return load_gguf(real_files.smollm2())


@pytest.fixture(scope="module")
def smol_guest(bpe_host: Host, smol: Model) -> Iterator[Guest]:
    with open_guest(bpe_host, smol) as g:
        yield g


class LlamaCpp:
    """llama.cpp's tokenizer (vocab only) through llama-cpp-python."""

    def __init__(self, path: Path):
        llama_cpp = pytest.importorskip("llama_cpp")
        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab

    def tokenize(self, text: str, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=special)

    def detokenize(self, ids: list[int]) -> bytes:
        """llama_detokenize(remove_special=False, unparse_special=False): clean_spaces included."""
        arr = (self.lib.llama_token * max(1, len(ids)))(*ids)
        buf = ctypes.create_string_buffer(64 * len(ids) + 16)
        n = self.lib.llama_detokenize(self.vocab, arr, len(ids), buf, len(buf), False, False)
        assert n >= 0
        return buf.raw[:n]

    def piece(self, i: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_token_to_piece(self.vocab, i, buf, len(buf), 0, False)
        assert n >= 0
        return buf.raw[:n]


@functools.cache
def llama_cpp_vocab(name: str) -> LlamaCpp:
    """llama.cpp over a test vocabulary, loaded once per module."""
    return LlamaCpp(real_files.llama_vocab(name)[0])


@pytest.fixture(scope="module", autouse=True)
def _close_llama_cpp() -> Iterator[None]:
    yield
    for name in LLAMA_CPP_VOCABS:
        llama_cpp_vocab(name).llm.close()
    llama_cpp_vocab.cache_clear()


@pytest.fixture(scope="module")
def smol_ref() -> Iterator[LlamaCpp]:
    ref = LlamaCpp(real_files.smollm2())
    yield ref
    ref.llm.close()


# ---- llama.cpp's own cases ------------------------------------------------------------


@pytest.mark.parametrize("name", LLAMA_CPP_VOCABS)
def test_llama_cpp_cases(name: str, vocab_models: dict[str, Path], bpe_host: Host) -> None:
    """The 46 texts of llama.cpp's test-tokenizer-0 for each vocabulary give its ids."""
    _, texts, expected = real_files.llama_vocab(name)
    assert len(texts) == len(expected) == 46
    with open_guest(bpe_host, load_gguf(vocab_models[name])) as g:
        got = [g.tokenize(t) for t in texts]
    wrong = [(t, a, b) for t, a, b in zip(texts, got, expected, strict=True) if a != b]
    assert not wrong, f"{len(texts) - len(wrong)}/46 match; first wrong: {wrong[0]}"


@pytest.mark.parametrize("name", LLAMA_CPP_VOCABS)
def test_host_side_tokenizer_data_matches_llama_cpp(name: str, vocab_models: dict[str, Path]) -> None:
    """The EOG set, every token's attributes and the BOS / EOS flags the host derives
    from the GGUF are llama.cpp's."""
    ref = llama_cpp_vocab(name)
    t = load_gguf(vocab_models[name]).tokenizer
    n = len(t.tokens)
    lib = ref.lib
    assert list(t.eog_ids) == [i for i in range(n) if lib.llama_vocab_is_eog(ref.vocab, i)]
    attrs = np.fromiter((lib.llama_vocab_get_attr(ref.vocab, i) for i in range(n)), np.uint32, n)
    assert (attrs == t.token_attrs).all()
    assert (t.add_bos, t.add_eos) == (
        lib.llama_vocab_get_add_bos(ref.vocab),
        lib.llama_vocab_get_add_eos(ref.vocab),
    )


@pytest.mark.parametrize("name", LLAMA_CPP_VOCABS)
def test_special_parsing_and_detokenize_vs_llama_cpp(
    name: str, vocab_models: dict[str, Path], bpe_host: Host
) -> None:
    """special=True on llama.cpp's texts with the vocabulary's control tokens spliced in,
    and detokenizing (clean_spaces where llama.cpp applies it) of those ids and of random
    ones."""
    _, texts, expected = real_files.llama_vocab(name)
    ref = llama_cpp_vocab(name)
    t = load_gguf(vocab_models[name]).tokenizer
    specials = [t.tokens[i] for i in range(len(t.tokens)) if t.token_attrs[i] & (8 | 16)][:40]
    r = random.Random(3)
    with open_guest(bpe_host, load_gguf(vocab_models[name])) as g:
        for text in texts:
            s = text
            for _ in range(3):
                k = r.randrange(len(s) + 1)
                s = s[:k] + r.choice(specials) + r.choice(["", " ", "\n"]) + s[k:]
            assert g.tokenize(s, special=True) == ref.tokenize(s, True), s
            assert g.tokenize(s) == ref.tokenize(s, False), s
        for ids in expected:
            assert g.detokenize(ids) == ref.detokenize(ids).decode("utf-8", "replace")
        for _ in range(200):
            ids = [r.randrange(len(t.tokens)) for _ in range(r.randint(1, 12))]
            assert g.detokenize(ids) == ref.detokenize(ids).decode("utf-8", "replace"), ids


# ---- SmolLM2 against llama.cpp and HF tokenizers -------------------------------------

POOL = [
    "hello", " world", "Hello", "  ", "   ", "\n", "\n\n", "\t", " \t\n ", "\r\n", "0", "7", "123",
    "2024-01-01", "3.14159", "😀", "🎉🎉", "👩‍👩‍👧",
    "日本語", "東京", "café", "naïve", "straße", "Привет", "مرحبا", "𝔘𝔫𝔦",
    "'s", "'ll", "'RE", " ?", "!", ".", ",", "def f(x):\n    return x + 1\n", "{\"a\": [1, 2]}", "a\u00a0b",
    "zero\u200bwidth", "Ω≈ç√∫", "ﬁ", "\u0301", "x" * 20, "<s>", "</s>", "<|", "|>", "<|im_start", "im_end|>",
]  # fmt: skip
CHATML = [
    "<|im_start|>user\nhi<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|>",
    " <|im_start|> user <|im_end|> ",
    "<|im_start|user",
]


def smol_texts() -> list[str]:
    r = random.Random(42)
    out = [*POOL, *CHATML]
    for _ in range(250):
        out.append("".join(r.choice(POOL) for _ in range(r.randint(1, 14))))
    for _ in range(60):  # characters from all over the code space
        out.append(
            "".join(
                chr(r.choice([r.randint(0x20, 0x7E), r.randint(0xA0, 0x2FFF), r.randint(0x10000, 0x1FAFF)]))
                for _ in range(r.randint(1, 10))
            )
        )
    return [s for s in out if not any(0xD800 <= ord(c) <= 0xDFFF for c in s)]


SMOL_TEXTS = smol_texts()


@pytest.mark.parametrize("special", [False, True])
def test_smollm2_matches_llama_cpp(smol_guest: Guest, smol_ref: LlamaCpp, special: bool) -> None:
    wrong = [
        s for s in SMOL_TEXTS if smol_guest.tokenize(s, special=special) != smol_ref.tokenize(s, special)
    ]
    assert not wrong, f"{len(SMOL_TEXTS) - len(wrong)}/{len(SMOL_TEXTS)} match; first wrong: {wrong[0]!r}"
    if special:
        ids = smol_guest.tokenize(CHATML[0], special=True)
        assert ids[0] == 1 and ids[-2] == 2  # <|im_start|> ... <|im_end|> \n
        assert 1 not in smol_guest.tokenize(CHATML[0])


def hf_tokenizer(model: Model, pattern: str, split_digits: bool):
    """HF tokenizers' byte-level BPE over the GGUF's own tokens and merges."""
    tk = pytest.importorskip("tokenizers")
    t = model.tokenizer
    vocab = {s: i for i, s in enumerate(t.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in t.merges]
    tok = tk.Tokenizer(tk.models.BPE(vocab, merges, ignore_merges=t.ignore_merges))
    splits = [tk.pre_tokenizers.Split(tk.Regex(r"\p{N}"), behavior="isolated")] if split_digits else []
    splits.append(tk.pre_tokenizers.Split(tk.Regex(pattern), behavior="isolated"))
    tok.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [*splits, tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = tk.decoders.ByteLevel()
    return tok


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def test_smollm2_matches_hf_tokenizers(smol_guest: Guest, smol: Model) -> None:
    tok = hf_tokenizer(smol, GPT2_PATTERN, split_digits=True)
    wrong = [s for s in SMOL_TEXTS if smol_guest.tokenize(s) != tok.encode(s, add_special_tokens=False).ids]
    assert not wrong, f"{len(SMOL_TEXTS) - len(wrong)}/{len(SMOL_TEXTS)} match; first wrong: {wrong[0]!r}"


def test_smollm2_detokenize(smol_guest: Guest, smol_ref: LlamaCpp, smol: Model) -> None:
    """Round trips (smollm does not clean spaces), llama.cpp's detokenize of the same ids
    and of random ones (control tokens give nothing)."""
    r = random.Random(7)
    for s in SMOL_TEXTS:
        ids = smol_guest.tokenize(s)
        assert smol_guest.detokenize(ids) == s
        ids = smol_guest.tokenize(s, special=True)
        assert smol_guest.detokenize(ids) == smol_ref.detokenize(ids).decode()
    n = len(smol.tokenizer.tokens)
    for _ in range(300):
        ids = [r.randrange(n) for _ in range(r.randint(1, 12))]
        assert smol_guest.detokenize(ids) == smol_ref.detokenize(ids).decode("utf-8", "replace"), ids


def stream(guest: Guest, ids: list[int]) -> list[bytes]:
    """The pieces the streaming detokenizer lets out for ids fed one at a time, then its
    final flush."""
    arr = np.asarray(ids, "<u4")
    ids_ptr = put(guest, arr.tobytes() or b"\0")
    cap = 64 * len(ids) + 16
    out_ptr, ends_ptr = guest.alloc(cap), guest.alloc(4 * (len(ids) + 1))
    try:
        n = guest.call("realm_detokenize_stream", guest.model_id(), ids_ptr, len(ids), out_ptr, cap, ends_ptr)
        assert 0 <= n <= cap
        data = guest.read(out_ptr, n)
        ends = np.frombuffer(guest.read(ends_ptr, 4 * (len(ids) + 1)), "<u4").tolist()
    finally:
        for p in (ids_ptr, out_ptr, ends_ptr):
            guest.free(p)
    return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def test_streaming_never_splits_a_character(smol_guest: Guest, smol_ref: LlamaCpp) -> None:
    """Byte-level pieces end mid-character (emoji, CJK as several tokens): the stream
    holds those bytes back; every piece decodes, and they add up to llama.cpp's pieces."""
    split = 0
    for s in SMOL_TEXTS:
        ids = smol_guest.tokenize(s, special=True)
        pieces = stream(smol_guest, ids)
        for p in pieces:
            p.decode("utf-8")
        assert b"".join(pieces) == b"".join(smol_ref.piece(i) for i in ids)
        split += any(not _decodes(smol_ref.piece(i)) for i in ids)
    assert split > 20  # the texts do make pieces that end inside a character


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_smollm2_tokenizer_heap(bpe_host: Host, smol: Model) -> None:
    """The tokenizer's memory in the guest on a 49,152-token vocabulary (blob, text ->
    id and merge tables, special list), and a prompt's work freed after it."""
    with open_guest(bpe_host, smol) as g:
        assert g.call("realm_heap_bytes") == 0
        g.tokenize("x")
        built = g.call("realm_heap_bytes")
        assert abi.VOCAB_HEADER.size < built <= SMOLLM2_TOKENIZER_HEAP, built
        g.tokenize(" ".join(SMOL_TEXTS), special=True)
        assert g.call("realm_heap_bytes") == built


def test_hostile_prompt_is_an_error(bpe_host: Host, smol: Model) -> None:
    """A word megabytes long needs work memory in proportion: past the guest's limit
    that is an error code, and the guest goes on."""
    with bpe_host.guest(models=[bpe_host.load(smol)], engine="wasmtime", memory_limit="64MiB") as g:
        with pytest.raises(RealmError) as e:
            g.tokenize("a" * 4_000_000)
        assert e.value.code == abi.ERR_NOMEM
        assert g.tokenize("hello") == smol_ref_ids_hello(smol)


def smol_ref_ids_hello(smol: Model) -> list[int]:
    return [smol.tokenizer.tokens.index("hello")]


# ---- refusals -------------------------------------------------------------------------


def test_unknown_pre_is_refused(model_path, tmp_path: Path) -> None:
    kv = {
        "tokenizer.ggml.model": ("gpt2", gguf.GGUFValueType.STRING),
        "tokenizer.ggml.pre": ("made-up", gguf.GGUFValueType.STRING),
    }
    bad = rewrite(model_path(), tmp_path / "bad.gguf", kv=kv)
    with pytest.raises(GGUFError, match=r"'tokenizer\.ggml\.pre' is 'made-up'.*supported: .*'smollm'"):
        load_gguf(bad)


def corrupt(blob: bytes, word: int, value: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into("<I", b, 4 * word, value)
    return bytes(b)


def test_bad_blobs_are_invalid(
    vocab_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte-level blob with a pre-tokenizer the guest does not know, bad merges or bad
    EOG ids: REALM_ERR_INVALID (the log names the pre value), never a trap."""
    model = load_gguf(vocab_models["gpt-2"])
    good = abi.vocab_blob(model)
    h = abi.VOCAB_HEADER.unpack_from(good)
    n, n_merges, merge_ends_off, text_off, eog_off = h[4], h[5], h[13], h[14], h[17]
    ends = np.frombuffer(good, "<u4", n + n_merges, h[12])
    first_merge = int(ends[n - 1])
    no_space = bytearray(good)
    m0 = text_off + first_merge
    no_space[m0 : m0 + int(ends[n]) - first_merge] = b"x" * (int(ends[n]) - first_merge)
    bad = {
        "pre 9": corrupt(good, 16, 9),
        "pre 0": corrupt(good, 16, 0),
        "merge ends": corrupt(good, merge_ends_off // 4 + 3, 0),
        "merge text": bytes(no_space),
        "eog past the vocabulary": corrupt(good, eog_off // 4, n),
        "eog array past the blob": corrupt(good, 18, 1 << 28),
        "attrs past the blob": corrupt(good, 19, len(good)),
        "version 1 header only": corrupt(good[:64], 2, 64),
    }
    blobs = iter(bad.values())
    monkeypatch.setattr(abi, "vocab_blob", lambda model: next(blobs))
    with Host(device="cpu", n_threads=1) as host, caplog.at_level(logging.ERROR):
        for what in bad:
            m = host.load(model)
            with host.guest(models=[m], engine="wasmtime") as g:
                with pytest.raises(RealmError) as e:
                    g.tokenize("hello")
                assert e.value.code == abi.ERR_INVALID, what
            host.unload(m)
    assert "unknown pre-tokenizer 9" in caplog.text

    # random flips in the merges and their ends: an error or a tokenizer, never a trap
    rng = np.random.default_rng(5)
    flips = []
    for _ in range(16):
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 6))):
            lo = merge_ends_off if rng.random() < 0.5 else text_off + first_merge
            b[int(rng.integers(lo, lo + 4 * 1000))] ^= 1 << int(rng.integers(0, 8))
        flips.append(bytes(b))
    blobs = iter(flips)
    with Host(device="cpu", n_threads=1) as host:
        for _ in flips:
            m = host.load(model)
            with host.guest(models=[m], engine="wasmtime") as g:
                try:
                    g.detokenize(g.tokenize("hello world 日本 😀 <|endoftext|>", special=True))
                except RealmError as e:
                    assert e.code in (abi.ERR_INVALID, abi.ERR_NOMEM)
            host.unload(m)
