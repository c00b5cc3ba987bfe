"""The host ABI's constants and byte layouts, mirroring guest/include/realm.h.

Everything a guest reads from the host (model info, the vocabulary blob) or passes to
it (realm_generate's params), and what the shipped guest reports back (a chat call's
statistics), is packed here, little-endian, as the header declares.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

# PRE_* are realm.h's REALM_PRE_*
from realm_ext.model import PRE_GPT2, PRE_LLAMA3, PRE_NONE, PRE_QWEN2, PRE_SMOLLM, Model  # noqa: F401

# error codes: csrc/realm_errors.h is their C definition (tests/test_abi_doc.py holds the two equal)
OK = 0
ERR_INVALID = -1
ERR_BOUNDS = -2
ERR_MODEL = -3
ERR_KV = -4
ERR_RANGE = -5
ERR_ROWS = -6
ERR_NOMEM = -7
ERR_CANCELLED = -8
ERR_INTERNAL = -9

ERROR_NAMES = {
    ERR_INVALID: "invalid argument",
    ERR_BOUNDS: "pointer or length outside guest memory",
    ERR_MODEL: "model unknown or not granted",
    ERR_KV: "KV cache unknown or not owned",
    ERR_RANGE: "layer or position out of range",
    ERR_ROWS: "length not a whole number of rows",
    ERR_NOMEM: "out of host or device memory",
    ERR_CANCELLED: "cancelled",
    ERR_INTERNAL: "internal error",
}

NO_TOKEN = 0xFFFFFFFF

# realm_model_info
MODEL_INFO_VERSION = 1
MODEL_INFO = struct.Struct("<12I")
# a guest's buffer must hold at least version 1 of the struct; the host writes
# min(out_len, MODEL_INFO.size) bytes, so a guest built for an older, shorter version
# keeps working when fields are appended
MODEL_INFO_MIN_BYTES = 48
MODEL_ADD_BOS, MODEL_ADD_EOS, MODEL_ADD_SPACE_PREFIX = 1, 2, 4
MODEL_CLEAN_SPACES, MODEL_IGNORE_MERGES = 8, 16

# the vocabulary blob
VOCAB_MAGIC = 0x434F5652  # "RVOC"
VOCAB_VERSION = 2
VOCAB_SPM, VOCAB_GPT2 = 1, 2
VOCAB_HEADER = struct.Struct("<20I")
VOCAB_HEADER_V1_BYTES = 64

# realm_tokenize's flags
TOKENIZE_SPECIAL = 1

# realm_generate's params
PARAMS_VERSION = 1
PARAMS = struct.Struct("<IIfifffIIIIIQ")
F32_MAX = float(np.finfo(np.float32).max)  # the sampling floats travel as f32
GEN_ADD_BOS, GEN_STOP_AT_EOS, GEN_PER_LAYER = 1, 2, 4

# realm_chat_generate's statistics
CHAT_STATS_VERSION = 1
CHAT_STATS = struct.Struct("<8I")
CHAT_RESTARTED = 1

assert MODEL_INFO.size == 48 and VOCAB_HEADER.size == 80 and PARAMS.size == 56 and CHAT_STATS.size == 32


def _token_id(v: int | None) -> int:
    return NO_TOKEN if v is None else v


def _model_flags(model: Model) -> int:
    t = model.tokenizer
    return (
        (MODEL_ADD_BOS if t.add_bos else 0)
        | (MODEL_ADD_EOS if t.add_eos else 0)
        | (MODEL_ADD_SPACE_PREFIX if t.add_space_prefix else 0)
        | (MODEL_CLEAN_SPACES if t.clean_spaces else 0)
        | (MODEL_IGNORE_MERGES if t.ignore_merges else 0)
    )


def model_info(model: Model) -> bytes:
    """The realm_model_info struct of a model."""
    c, t = model.config, model.tokenizer
    return MODEL_INFO.pack(
        MODEL_INFO_VERSION,
        c.n_vocab,
        c.n_ctx_train,
        c.n_embd,
        c.n_layer,
        c.n_head,
        c.n_head_kv,
        c.n_ff,
        _token_id(t.bos_id),
        _token_id(t.eos_id),
        _token_id(t.unk_id),
        _model_flags(model),
    )


def _align4(n: int) -> int:
    return (n + 3) & ~3


def vocab_blob(model: Model) -> bytes:
    """The vocabulary blob of realm.h: header, scores, types, ends, text, EOG ids, attributes."""
    t = model.tokenizer
    # llama.cpp names an empty token "[EMPTY_<id>]"
    token_text = [(s or f"[EMPTY_{i}]").encode("utf-8") for i, s in enumerate(t.tokens)]
    merge_text = [s.encode("utf-8") for s in t.merges]
    n, m = len(token_text), len(merge_text)
    lengths = np.fromiter((len(b) for b in token_text + merge_text), np.int64, n + m)
    ends = np.cumsum(lengths, dtype=np.int64)
    text = b"".join(token_text + merge_text)
    eog = np.asarray(t.eog_ids, "<u4")
    attrs = np.asarray(t.token_attrs, "<u4")
    if attrs.shape != (n,):
        raise ValueError(f"{attrs.shape[0]} token attributes for {n} tokens")
    scores_off = VOCAB_HEADER.size
    types_off = scores_off + 4 * n
    token_ends_off = types_off + 4 * n
    merge_ends_off = token_ends_off + 4 * n
    eog_off = merge_ends_off + 4 * m
    attrs_off = eog_off + 4 * len(eog)
    text_off = attrs_off + 4 * n
    total = _align4(text_off + len(text))
    if total >= 2**31:
        raise ValueError("the vocabulary does not fit a 2 GiB blob")
    header = VOCAB_HEADER.pack(
        VOCAB_MAGIC,
        VOCAB_VERSION,
        total,
        VOCAB_SPM if t.model == "llama" else VOCAB_GPT2,
        n,
        m,
        _token_id(t.bos_id),
        _token_id(t.eos_id),
        _token_id(t.unk_id),
        _model_flags(model),
        scores_off,
        types_off,
        token_ends_off,
        merge_ends_off,
        text_off,
        len(text),
        t.pre,
        eog_off,
        len(eog),
        attrs_off,
    )
    parts = [
        header,
        np.asarray(t.scores, "<f4").tobytes(),
        np.asarray(t.token_types, "<u4").tobytes(),
        ends[:n].astype("<u4").tobytes(),
        ends[n:].astype("<u4").tobytes(),
        eog.tobytes(),
        attrs.tobytes(),
        text,
    ]
    blob = b"".join(parts)
    return blob + b"\0" * (total - len(blob))


class GenerateOptions(TypedDict, total=False):
    """The generation settings as keywords (Guest.generate, Guest.chat, ...): the fields of
    GenerateParams, which holds their defaults and checks."""

    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    n_ctx: int
    n_batch: int
    seed: int
    add_bos: bool
    stop_at_eos: bool
    per_layer: bool


def generate_params(params: GenerateParams | None, options: GenerateOptions) -> GenerateParams:
    """`params`, or a GenerateParams of the keyword `options` (the defaults for the rest)."""
    if params is None:
        return GenerateParams(**options)
    if options:
        raise TypeError("give the generation settings as keywords or as one GenerateParams, not both")
    return params


@dataclass(frozen=True)
class GenerateParams:
    """realm_generate's parameters (realm_params_t in realm.h)."""

    max_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    n_ctx: int = 0
    n_batch: int = 512  # prompt tokens per forward call (bounds the guest's prefill buffer)
    seed: int = 0
    add_bos: bool = True
    stop_at_eos: bool = True
    per_layer: bool = False

    def __post_init__(self) -> None:
        u32, i32, u64 = (0, 2**32 - 1), (-(2**31), 2**31 - 1), (0, 2**64 - 1)
        ranges = {
            "max_tokens": u32, "top_k": i32, "repeat_last_n": u32, "n_ctx": u32, "n_batch": u32, "seed": u64,
        }  # fmt: skip
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > F32_MAX:
                raise ValueError(f"{name} must be a finite 32-bit float, got {value!r}")

    def pack(self) -> bytes:
        flags = (
            (GEN_ADD_BOS if self.add_bos else 0)
            | (GEN_STOP_AT_EOS if self.stop_at_eos else 0)
            | (GEN_PER_LAYER if self.per_layer else 0)
        )
        return PARAMS.pack(
            PARAMS_VERSION,
            self.max_tokens,
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.repeat_penalty,
            self.repeat_last_n,
            self.n_ctx,
            self.n_batch,
            flags,
            0,
            self.seed,
        )


@dataclass(frozen=True)
class ChatStats:
    """realm_chat_stats_t in realm.h: what one realm_chat_generate call did."""

    version: int
    n_prompt: int
    n_cached: int
    n_evaluated: int
    n_generated: int
    n_held: int
    flags: int

    @property
    def restarted(self) -> bool:
        """The ring could not be rewound (it had wrapped past the common prefix) and
        started over at position 0."""
        return bool(self.flags & CHAT_RESTARTED)

    @classmethod
    def unpack(cls, data: bytes) -> ChatStats:
        v = CHAT_STATS.unpack(data)
        return cls(*v[:7])
