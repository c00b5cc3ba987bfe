"""Write llama- and Qwen2-architecture GGUF models with deterministic random weights.

Test and benchmark models come from here, never from a download. A preset fixes the
family and the shape; the seed fixes every byte (each tensor draws from its own
generator seeded by (seed, tensor name), so the output does not depend on write order).
Tensors are made, quantized and written one at a time, so even the tinyllama shape at
Q4_K_M needs only one tensor in memory.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from realm_ext import arch as families
from realm_ext import quant
from realm_ext.arch import Architecture
from realm_ext.model import ROPE_FREQS, LlamaConfig, bias_shapes, expected_shapes
from realm_ext.quantizer import recipe_file_type, tensor_type_for, write_gguf

WEIGHT_STD = 0.02  # std of every matrix
NORM_STD = 0.1  # norms are 1 + N(0, NORM_STD)
BIAS_STD = 0.1  # Q/K/V biases are N(0, BIAS_STD)

# The families make_model writes, and of those the ones whose files carry Q/K/V biases
# (Qwen2's always do; llama.cpp keeps them F32 in every recipe, as tensor_type_for does).
WRITABLE_FAMILIES = (families.LLAMA, families.QWEN2)
BIASED_FAMILIES = (families.QWEN2,)


@dataclass(frozen=True)
class Preset:
    config: LlamaConfig
    description: str


def _cfg(
    n_vocab: int,
    n_ctx: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    family: Architecture = families.LLAMA,
) -> LlamaConfig:
    head_dim = n_embd // n_head
    return LlamaConfig(
        n_vocab=n_vocab,
        n_ctx_train=n_ctx,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=n_ff,
        rms_eps=1e-5,
        rope_freq_base=10000.0,
        rope_dim=head_dim,
        family=family,
    )


PRESETS: dict[str, Preset] = {
    # every row a multiple of 256, so the K-quants apply to every matrix
    "tiny": Preset(_cfg(1024, 512, 256, 2, 4, 2, 768), "2 layers, n_embd 256, for tests"),
    "small": Preset(_cfg(4096, 1024, 512, 4, 8, 4, 1536), "4 layers, n_embd 512"),
    # exactly TinyLlama-1.1B's shape
    "tinyllama": Preset(_cfg(32000, 2048, 2048, 22, 32, 4, 5632), "TinyLlama-1.1B's shape"),
    # Qwen2: tiny's and small's shapes with NEOX RoPE and Q/K/V biases
    "qwen2-tiny": Preset(_cfg(1024, 512, 256, 2, 4, 2, 768, families.QWEN2), "tiny as Qwen2, for tests"),
    "qwen2-small": Preset(_cfg(4096, 1024, 512, 4, 8, 4, 1536, families.QWEN2), "small as Qwen2"),
}

# ---- RoPE scaling ----------------------------------------------------------------------


def llama3_rope_freqs(
    rope_dim: int,
    base: float,
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_context: int = 8192,
) -> tuple[float, ...]:
    """Llama 3.1's `rope_freqs` (rope_dim / 2 divisors of the angles), as HF's
    convert_hf_to_gguf.py computes them from `rope_scaling` (rope_type "llama3"): pairs
    whose wavelength is under original_context / high_freq_factor keep 1, those over
    original_context / low_freq_factor get `factor`, those between a smooth mix. The
    defaults are Llama 3.1's config. Float32, as the converter's torch tensors."""
    f32 = np.float32
    freqs = f32(1.0) / np.power(f32(base), np.arange(0, rope_dim, 2, dtype=f32) / f32(rope_dim))
    low_wavelen = original_context / low_freq_factor
    high_wavelen = original_context / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return tuple(float(f32(v)) for v in out)


# ---- vocabulary ----------------------------------------------------------------------

SPACE = "\u2581"  # '▁', SentencePiece's marker for a space
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6
SPECIAL = [("<unk>", TOKEN_UNKNOWN), ("<s>", TOKEN_CONTROL), ("</s>", TOKEN_CONTROL)]
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

_WORDS = (
    "the of and to in is was that for on as with by he it at from his an were are which this be "
    "or she her they had not but have one all their there been has when who will more no if out "
    "so said what up its about into than them can only other new some could time these two may "
    "then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old "
    "year off come since against go came right used take three once upon story tell told king "
    "queen house small large boy girl cat dog tree water sun moon night light dark happy sad ran "
    "walk walked looked found friend friends mother father home play played wanted went saw big "
    "red blue green day morning "
).split()
_CHARS = "etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,!?'\"-:;()"


def make_vocab(n_vocab: int, seed: int = 0) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style BPE vocabulary of exactly n_vocab tokens.

    Layout: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then '▁', single
    characters and '▁'-prefixed pieces. Every piece's prefixes come before it with a
    higher score, so BPE merges by score can reach every piece from characters.
    """
    n_fixed = len(SPECIAL) + 256
    if n_vocab < n_fixed + 1 + len(_CHARS):
        raise ValueError(f"n_vocab must be at least {n_fixed + 1 + len(_CHARS)}, got {n_vocab}")
    tokens = [t for t, _ in SPECIAL] + [f"<0x{b:02X}>" for b in range(256)]
    types = [k for _, k in SPECIAL] + [TOKEN_BYTE] * 256
    pieces: list[str] = [SPACE, *_CHARS]
    seen = set(pieces)

    def add_word(word: str) -> None:
        w = SPACE + word
        for end in range(2, len(w) + 1):
            if w[:end] not in seen and len(pieces) < n_vocab - n_fixed:
                seen.add(w[:end])
                pieces.append(w[:end])

    for word in _WORDS:
        add_word(word)
    rng = np.random.default_rng([seed, 0x70CAB])
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + list("aeiou")
    while len(pieces) < n_vocab - n_fixed:
        n_syl = int(rng.integers(1, 4))
        add_word("".join(syllables[int(i)] for i in rng.integers(0, len(syllables), n_syl)))
    tokens += pieces
    types += [TOKEN_NORMAL] * len(pieces)
    scores = [0.0] * n_fixed + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


# ---- weights -------------------------------------------------------------------------


def _tensor_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def random_weight(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values of tensor `name`: norms 1 + N(0, 0.1), biases (`*.bias`)
    N(0, 0.1), matrices N(0, 0.02)."""
    rng = _tensor_rng(seed, name)
    x = rng.standard_normal(shape, dtype=np.float32)
    if name.endswith(".bias"):
        x *= BIAS_STD
        return x
    if len(shape) == 1:
        return (1.0 + NORM_STD * x).astype(np.float32)
    x *= WEIGHT_STD
    return x


def add_llama_metadata(w: gguf.GGUFWriter, cfg: LlamaConfig, name: str) -> None:
    w.add_name(name)
    w.add_context_length(cfg.n_ctx_train)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_rope_freq_base(cfg.rope_freq_base)
    w.add_rope_dimension_count(cfg.rope_dim)
    if cfg.rope_scale_linear != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scale_linear)
    w.add_vocab_size(cfg.n_vocab)


@dataclass(frozen=True)
class Vocab:
    """A SentencePiece (tokenizer.ggml.model "llama") vocabulary to write instead of
    make_vocab's, e.g. a trained sentencepiece model's pieces, scores and types."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int | None = BOS_ID
    eos_id: int | None = EOS_ID
    unk_id: int | None = UNK_ID
    add_bos: bool = True
    add_space_prefix: bool = True

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.scores) != n or len(self.types) != n:
            raise ValueError(f"{n} tokens but {len(self.scores)} scores and {len(self.types)} types")
        for name in ("bos_id", "eos_id", "unk_id"):
            tid = getattr(self, name)
            if tid is not None and not 0 <= tid < n:
                raise ValueError(f"{name} {tid} is outside the vocabulary of {n} tokens")


def add_spm_tokenizer(
    w: gguf.GGUFWriter,
    tokens: list[str],
    scores: list[float],
    types: list[int],
    vocab: Vocab | None = None,
) -> None:
    """The tokenizer.ggml.* keys: make_vocab's ids and flags, or those of `vocab`."""
    v = vocab or Vocab(tokens, scores, types)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    if v.bos_id is not None:
        w.add_bos_token_id(v.bos_id)
    if v.eos_id is not None:
        w.add_eos_token_id(v.eos_id)
    if v.unk_id is not None:
        w.add_unk_token_id(v.unk_id)
    w.add_add_bos_token(v.add_bos)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(v.add_space_prefix)


def read_tokenizer_keys(path: str | os.PathLike[str]) -> list[tuple[str, Any, gguf.GGUFValueType, Any]]:
    """Every `tokenizer.*` key of a GGUF file (tokens, types, scores, merges, pre, special
    ids, flags, chat template ...) as (key, value, type, array element type), to write
    into another file unchanged. The file must carry a tokenizer llama.cpp can load:
    its `tokenizer.ggml.tokens`."""
    from realm_ext.model import GGUFError, _open_reader  # the bounded, fast reader

    path = Path(path)
    reader = _open_reader(path)
    keys = []
    for name, f in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
        keys.append((name, f.contents(), vtype, sub))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in keys):
        raise GGUFError(f"{path}: no 'tokenizer.ggml.tokens': not a vocabulary")
    return keys


def make_model(
    out: str | os.PathLike[str],
    preset: str | LlamaConfig = "tiny",
    type: str = "F32",  # noqa: A002 - mirrors the CLI's --type
    seed: int = 0,
    tied: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    random_blocks: bool = False,
    vocab: Vocab | tuple[list[str], list[float], list[int]] | None = None,
    rope_freqs: tuple[float, ...] | None = None,
    rope_scale_linear: float | None = None,
    vocab_from: str | os.PathLike[str] | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write a GGUF of the preset's family (llama or qwen2) with random weights; `type` is
    a single type or a recipe. A Qwen2 model carries each layer's Q/K/V biases (F32).

    random_blocks: fill the matrices with random valid blocks (random quants, small f16
    scales) instead of encoding N(0, 0.02) values: seconds instead of minutes for the
    tinyllama shape, for speed measurements only (the values mean nothing).

    vocab: write this vocabulary (a Vocab, or (tokens, scores, types) with make_vocab's
    special ids) instead of make_vocab's; it must have the config's n_vocab tokens.

    rope_freqs (rope_dim / 2 values, e.g. llama3_rope_freqs(...)) and rope_scale_linear
    override the config's: a `rope_freqs.weight` tensor (llama only: llama.cpp loads it for
    no other family), linear scaling keys.

    vocab_from: a GGUF whose whole tokenizer (every `tokenizer.*` key) the model carries,
    n_vocab its token count (e.g. llama.cpp's ggml-vocab-*.gguf files).

    chat_template: a `tokenizer.chat_template` to write (in place of one vocab_from
    carries): a Jinja2 template's text, or a name in realm_ext.chat_template.BUILTIN
    ("chatml": its markers are spelled by the vocabulary's byte tokens, since an SPM
    tokenizer never parses control text)."""
    cfg = PRESETS[preset].config if isinstance(preset, str) else preset
    if cfg.family not in WRITABLE_FAMILIES:
        names = ", ".join(f.name for f in WRITABLE_FAMILIES)
        raise ValueError(f"cannot write a {cfg.arch} model (families: {names})")
    tokenizer_keys = None
    if vocab_from is not None:
        if vocab is not None:
            raise ValueError("vocab and vocab_from are exclusive")
        tokenizer_keys = read_tokenizer_keys(vocab_from)
        n_tokens = len(next(v for k, v, *_ in tokenizer_keys if k == "tokenizer.ggml.tokens"))
        cfg = replace(cfg, n_vocab=n_tokens)
    if rope_freqs is not None:
        if len(rope_freqs) != cfg.rope_dim // 2:
            raise ValueError(f"rope_freqs has {len(rope_freqs)} values, rope_dim / 2 is {cfg.rope_dim // 2}")
        cfg = replace(cfg, rope_freq_factors=tuple(float(v) for v in rope_freqs))
    if cfg.rope_freq_factors is not None and cfg.family is not families.LLAMA:
        raise ValueError(f"rope_freqs is llama's: llama.cpp loads no such tensor for {cfg.arch}")
    if rope_scale_linear is not None:
        if not rope_scale_linear > 0:
            raise ValueError(f"rope_scale_linear must be > 0, got {rope_scale_linear}")
        cfg = replace(cfg, rope_scale_linear=float(rope_scale_linear))
    name = preset if isinstance(preset, str) else "custom"
    if chat_template is not None:
        from realm_ext.chat_template import BUILTIN, ChatTemplate

        chat_template = BUILTIN.get(chat_template, chat_template)
        ChatTemplate(chat_template)  # a template that does not parse fails here, not at use
    tokens: list[str]
    scores: list[float]
    types: list[int]
    spm_vocab: Vocab | None = None
    if tokenizer_keys is not None:
        tokens, scores, types = [], [], []
        if chat_template is not None:
            tokenizer_keys = [k for k in tokenizer_keys if k[0] != gguf.Keys.Tokenizer.CHAT_TEMPLATE]
    elif vocab is None:
        tokens, scores, types = make_vocab(cfg.n_vocab, seed)
    else:
        spm_vocab = vocab if isinstance(vocab, Vocab) else Vocab(*vocab)
        tokens, scores, types = (
            list(spm_vocab.tokens),
            [float(x) for x in spm_vocab.scores],
            list(spm_vocab.types),
        )
        if len(tokens) != cfg.n_vocab:
            raise ValueError(
                f"the vocabulary has {len(tokens)} tokens, the config's n_vocab is {cfg.n_vocab}"
            )
    shapes = expected_shapes(cfg, tied)
    if cfg.rope_freq_factors is not None:
        shapes[ROPE_FREQS] = (cfg.rope_dim // 2,)
    if cfg.family in BIASED_FAMILIES:
        for i in range(cfg.n_layer):
            shapes |= {f"blk.{i}.{b}.bias": s for b, s in bias_shapes(cfg).items()}
    plan = {n: tensor_type_for(n, s, type, cfg.n_layer, tied, log) for n, s in shapes.items()}

    def add_metadata(w: gguf.GGUFWriter) -> None:
        add_llama_metadata(w, cfg, f"realm-ext {name} seed {seed}")
        if tokenizer_keys is not None:
            for key, val, vtype, sub in tokenizer_keys:
                w.add_key_value(key, val, vtype, sub)
        else:
            add_spm_tokenizer(w, tokens, scores, types, spm_vocab)
        if chat_template is not None:
            w.add_chat_template(chat_template)
        w.add_file_type(int(recipe_file_type(type)))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def make(tname: str) -> np.ndarray:
        shape = shapes[tname]
        if tname == ROPE_FREQS:
            return quant.quantize(np.asarray(cfg.rope_freq_factors, np.float32), plan[tname])
        if random_blocks and len(shape) > 1:
            return quant.random_blocks(_tensor_rng(seed, tname), plan[tname], shape)
        return quant.quantize(random_weight(seed, tname, shape), plan[tname])

    plan_shapes = {n: (shapes[n], plan[n]) for n in shapes}
    return write_gguf(out, add_metadata, plan_shapes, make, progress, arch=cfg.arch)
