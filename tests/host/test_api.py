"""The shipped guest end to end through the Python API (realm_ext.api), on every
engine: greedy generation equals the CPU backend driven directly from Python, and
llama.cpp's where its margin is clear; tenants do not disturb each other."""

from __future__ import annotations

import dataclasses
import threading
import typing

import numpy as np
import pytest
from support.greedy import backend_greedy, piece_bytes, prompt_ids

from realm_ext import Host, RealmError, abi
from realm_ext.model import Model, load_gguf

PROMPTS = ["Once upon a time", " the king and the queen", "héllo wörld 123", "a"]


@pytest.fixture(scope="module")
def tiny(model_path) -> Model:
    return load_gguf(model_path("Q4_K_M", seed=11))


@pytest.fixture
def host(tiny: Model):
    with Host(device="cpu") as h:
        h.load(tiny)
        yield h


@pytest.mark.parametrize("per_layer", [False, True])
def test_greedy_through_the_guest_equals_the_backend(host, tiny: Model, engine: str, per_layer: bool) -> None:
    with host.guest(models=[tiny], engine=engine) as g:
        for text in PROMPTS:
            pieces = list(g.generate(text, max_tokens=24, temperature=0.0, n_ctx=64, per_layer=per_layer))
            want = backend_greedy(host.backend, tiny, prompt_ids(g, tiny, text), 24, 64)
            assert g.last_stats.tokens == len(want)
            assert "".join(pieces) == b"".join(piece_bytes(tiny, t) for t in want).decode("utf-8", "replace")


def test_sliding_window_past_n_ctx(host, tiny: Model, engine: str) -> None:
    """A conversation longer than n_ctx keeps going over the window, as the backend does."""
    with host.guest(models=[tiny], engine=engine) as g:
        text = "the cat ran to the"
        pieces = list(g.generate(text, max_tokens=40, temperature=0.0, n_ctx=16, n_batch=4))
        ids = prompt_ids(g, tiny, text)
        want = backend_greedy(host.backend, tiny, ids, 40, 16) if len(ids) <= 16 else None
        assert g.last_stats.tokens == 40 or (want is not None and len(want) < 40)
        if want is not None:
            assert "".join(pieces) == b"".join(piece_bytes(tiny, t) for t in want).decode("utf-8", "replace")


def test_sampling_is_seeded(host, tiny: Model, engine: str) -> None:
    with host.guest(models=[tiny], engine=engine) as g:
        kw = dict(max_tokens=24, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, stop_at_eos=False)
        a = "".join(g.generate("the", seed=5, **kw))
        b = "".join(g.generate("the", seed=5, **kw))
        c = "".join(g.generate("the", seed=6, **kw))
        assert a == b and a != c


def test_closing_the_stream_stops_the_guest(host, tiny: Model, engine: str) -> None:
    with host.guest(models=[tiny], engine=engine) as g:
        stream = g.generate("the", max_tokens=200, temperature=0.0, stop_at_eos=False)
        first = [next(stream) for _ in range(3)]
        stream.close()
        assert len(first) == 3
        assert g.last_stats.tokens < 200
        assert g.state.kv == {}  # the guest freed its ring


def test_errors_surface_with_their_code(host, tiny: Model, engine: str) -> None:
    with host.guest(models=[tiny], engine=engine, kv_limit=1000) as g:
        with pytest.raises(RealmError, match="out of host or device memory"):
            list(g.generate("the", max_tokens=4))
        assert "KV limit" in str(g.state.last_error)


def test_two_guests_in_threads_equal_one_by_one(host, tiny: Model, engine: str) -> None:
    jobs = [(text, seed) for text in PROMPTS for seed in (1, 2)]
    kw = dict(max_tokens=16, temperature=0.9, top_k=20, n_ctx=64)

    def run(guest, text: str, seed: int) -> str:
        return "".join(guest.generate(text, seed=seed, **kw))

    with host.guest(models=[tiny], engine=engine) as g:
        alone = [run(g, t, s) for t, s in jobs]
    results: dict[int, str] = {}
    guests = [host.guest(models=[tiny], engine=engine) for _ in range(4)]

    def worker(k: int) -> None:
        for i in range(k, len(jobs), len(guests)):
            results[i] = run(guests[k], *jobs[i])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(guests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in guests:
        g.close()
    assert [results[i] for i in range(len(jobs))] == alone


def test_guest_memory_stays_small(host, tiny: Model, engine: str) -> None:
    with host.guest(models=[tiny], engine=engine, memory_limit="8MiB") as g:
        list(g.generate("Once upon a time", max_tokens=8, temperature=0.0))
        assert g.last_stats.memory_pages * 65536 <= 8 * 2**20
        assert g.last_stats.heap_bytes < 4 * 2**20


# ---- against llama.cpp ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


def test_tokenize_equals_llama_cpp(llama_cpp, host, tiny: Model, model_path) -> None:
    llm = llama_cpp.Llama(str(model_path("Q4_K_M", seed=11)), n_ctx=64, verbose=False, vocab_only=True)
    with host.guest(models=[tiny]) as g:
        for text in PROMPTS + [
            "",
            "  two  spaces ",
            "tab\there\nnewline",
            "digits 0123456789",
            "ünïcödé ✓ 漢字 🙂",
        ]:
            assert g.tokenize(text) == llm.tokenize(text.encode(), add_bos=False, special=False), text


def test_greedy_through_the_guest_equals_llama_cpp(llama_cpp, host, tiny: Model, model_path) -> None:
    """llama.cpp's greedy tokens, as text, up to its first step with a top-2 margin
    below 1e-2, are a prefix of what the guest streams."""
    llm = llama_cpp.Llama(
        str(model_path("Q4_K_M", seed=11)), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2
    )
    checked = 0
    words = "the king queen cat dog ran walked happy night light tree water sun moon".split()
    texts = PROMPTS + [" ".join(np.random.default_rng(k).choice(words, 4)) for k in range(8)]
    with host.guest(models=[tiny]) as g:
        for text in texts:
            ids = prompt_ids(g, tiny, text)
            assert ids == llm.tokenize(text.encode(), add_bos=True, special=False)
            llm.reset()
            llm.eval(ids)
            theirs: list[int] = []
            for _ in range(24):
                scores = np.array(llm.scores[llm.n_tokens - 1], np.float64)
                top2 = np.sort(scores)[-2:]
                if top2[1] - top2[0] <= 1e-2:
                    break
                t = int(np.argmax(scores))
                if t == tiny.tokenizer.eos_id:
                    break
                theirs.append(t)
                llm.eval([t])
            ours = "".join(g.generate(text, max_tokens=24, temperature=0.0, n_ctx=64))
            prefix = b"".join(piece_bytes(tiny, t) for t in theirs).decode("utf-8", "replace")
            assert ours.startswith(prefix), (text, ours, prefix)
            checked += len(theirs)
    assert checked >= 24, f"only {checked} steps had a clear margin"


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", -1), ("max_tokens", 2**32), ("top_k", 2**31), ("seed", -1), ("seed", 2**64),
     ("n_batch", 1.5), ("temperature", float("nan")), ("top_p", 1e39)],
)  # fmt: skip
def test_generate_params_out_of_range_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        abi.GenerateParams(**{field: value})


def test_generate_takes_keywords_or_one_generate_params(host, tiny: Model) -> None:
    kw = dict(max_tokens=12, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=3, stop_at_eos=False)
    with host.guest(models=[tiny]) as g:
        by_keywords = "".join(g.generate("the", **kw))
        assert "".join(g.generate("the", params=abi.GenerateParams(**kw))) == by_keywords
        pieces: list[str] = []
        assert g.generate_to("the", pieces.append, params=abi.GenerateParams(**kw)) == 12
        assert "".join(pieces) == by_keywords
        with pytest.raises(TypeError, match="not both"):
            list(g.generate("the", max_tokens=4, params=abi.GenerateParams()))
        with pytest.raises(TypeError, match="not both"):  # a keyword at its default value too
            list(g.generate("the", max_tokens=64, params=abi.GenerateParams()))
        with pytest.raises(TypeError, match="max_token"):
            list(g.generate("the", max_token=4))  # type: ignore[call-arg]


def test_generate_options_are_the_fields_of_generate_params() -> None:
    """The keywords' types (GenerateOptions) and the struct (GenerateParams) list the
    same settings with the same types, so neither can grow without the other."""
    hints = typing.get_type_hints(abi.GenerateParams)
    assert [f.name for f in dataclasses.fields(abi.GenerateParams)] == list(hints)
    assert typing.get_type_hints(abi.GenerateOptions) == hints


def test_errors_share_one_base(host, tiny: Model, model_path) -> None:
    from realm_ext import (
        ChatTemplateError,
        GGUFError,
        GuestError,
        GuestLimitError,
        ModelNotGrantedError,
        PullError,
        RealmExtError,
    )

    for cls in (RealmError, GuestError, GuestLimitError, GGUFError, ChatTemplateError, PullError):
        assert issubclass(cls, RealmExtError)
    other = load_gguf(model_path("F16"))
    with host.guest(models=[tiny]) as g:
        # not loaded by the host, not granted to the guest: the same error
        with pytest.raises(ModelNotGrantedError, match="was not loaded by this host"):
            g.model_id(other)
        host.load(other)
        with pytest.raises(ModelNotGrantedError, match="is not granted to this guest"):
            g.model_id(other)
    # what callers caught before: KeyError from the host, ValueError from a guest
    assert issubclass(ModelNotGrantedError, KeyError) and issubclass(ModelNotGrantedError, ValueError)
    with pytest.raises(KeyError):
        host.unload(load_gguf(model_path("F16", seed=1)))
