"""Fixtures for the guest's tests: a sentencepiece model trained here, offline, and
guests (the shipped realm_guest.wasm, through realm_ext's Host) over GGUFs that carry
its vocabulary or the tiny preset's."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest
from guest_helpers import SpmCase, corpus_line, sp_vocab
from support.wasm_support import ENGINE_NAMES, require_engine

from realm_ext import Host
from realm_ext.model_maker import PRESETS, make_model


@pytest.fixture(scope="session")
def spm_case(tmp_path_factory: pytest.TempPathFactory) -> SpmCase:
    """A BPE sentencepiece model trained on a generated corpus (seconds, offline), and
    a tiny-preset GGUF carrying its vocabulary."""
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("spm")
    r = random.Random(1234)
    lines = [corpus_line(r) for _ in range(4000)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(root / "sp"),
        model_type="bpe",
        vocab_size=800,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=0.999,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(root / "sp.model"))
    vocab = sp_vocab(sp)
    cfg = replace(PRESETS["tiny"].config, n_vocab=len(vocab.tokens))
    path = make_model(root / "spm-tiny.gguf", cfg, "F32", vocab=vocab)
    return SpmCase(sp, path)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with Host(device="cpu", n_threads=1) as h:
        yield h


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def guest_engine(request: pytest.FixtureRequest) -> str:
    """Each engine in turn (one missing from this Python is skipped)."""
    return require_engine(request.param)


@pytest.fixture(scope="module")
def spm_guest(host: Host, spm_case: SpmCase, guest_engine: str) -> Iterator[object]:
    model = host.load(spm_case.gguf)
    with host.guest(models=[model], engine=guest_engine) as g:
        yield g


@pytest.fixture(scope="module")
def tiny_model(host: Host, tmp_path_factory: pytest.TempPathFactory) -> object:
    return host.load(make_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "tiny", "F32"))


@pytest.fixture(scope="module")
def tiny_guest(host: Host, tiny_model: object, guest_engine: str) -> Iterator[object]:
    with host.guest(models=[tiny_model], engine=guest_engine) as g:
        yield g
