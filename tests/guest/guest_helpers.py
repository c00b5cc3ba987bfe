"""Helpers shared by the guest's tests: the training corpus, a sentencepiece model's
vocabulary as a GGUF one, and copying data into a guest."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realm_ext.model_maker import Vocab

# GGUF token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

WORDS = (
    "the of and to in is was that for on as with by he it at from his an were are which this be or she "
    "her they had not but have one all their there been when who will more no if out so said what up "
    "about into than them can only other new some could time these two may then do first any my now "
    "once upon story king queen house small large boy girl cat dog tree water sun moon night light "
    "happy sad walked looked found friend mother father home played wanted went saw big red blue green"
).split()
ACCENTED = "café naïve résumé über straße niño façade crème brûlée déjà señor garçon élève".split()
CJK = "日本語 中文 東京 漢字 学校 先生 ひらがな カタカナ 今日は 世界".split()
# characters the corpus never shows: they can only come out as bytes
UNSEEN = ["😀", "🎉", "鬱", "Ω", "Привет", "مرحبا", "ß̂", "𝔘𝔫𝔦", "\u00a0", "€", "\x7f"]


def corpus_line(r: random.Random) -> str:
    parts = []
    for _ in range(r.randint(3, 14)):
        x = r.random()
        if x < 0.70:
            w = r.choice(WORDS)
            parts.append(w.capitalize() if r.random() < 0.15 else w)
        elif x < 0.80:
            parts.append(r.choice(ACCENTED))
        elif x < 0.88:
            parts.append(str(r.randint(0, 10 ** r.randint(1, 6))))
        elif x < 0.95:
            parts.append(r.choice(CJK))
        else:
            parts.append(r.choice([",", ".", "!", "?", "'s", "(", ")", "-", ":"]))
    line = ""
    for p in parts:
        line += p + r.choice([" "] * 12 + ["  ", "   ", "\t", "\n", ", "])
    return line.rstrip(" ") if r.random() < 0.7 else line


@dataclass
class SpmCase:
    sp: object  # sentencepiece.SentencePieceProcessor
    gguf: Path

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()


def sp_vocab(sp: object) -> Vocab:
    """The sentencepiece model's pieces, scores and types as a GGUF vocabulary."""
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(UNKNOWN)
        elif sp.is_control(i):
            types.append(CONTROL)
        elif sp.is_unused(i):
            types.append(UNUSED)
        elif sp.is_byte(i):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return Vocab(
        tokens=[sp.id_to_piece(i) for i in range(n)],
        scores=[sp.get_score(i) for i in range(n)],
        types=types,
        bos_id=sp.bos_id(),
        eos_id=sp.eos_id(),
        unk_id=sp.unk_id(),
    )


def put(guest: object, data: bytes | np.ndarray) -> int:
    """Copy data into freshly allocated guest memory; returns its address."""
    buf = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    ptr = guest.alloc(len(buf))
    guest.write(ptr, buf)
    return ptr
