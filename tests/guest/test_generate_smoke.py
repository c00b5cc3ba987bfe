"""A smoke test of realm_generate through the host on the tiny preset (the end-to-end
comparison with the backend lives with the host's tests): deterministic, no leak
between calls, errors as codes, and a memory cap met with an error, not a trap."""

from __future__ import annotations

import pytest
from guest_helpers import put

from realm_ext import RealmError
from realm_ext.abi import ERR_INVALID, ERR_MODEL, ERR_NOMEM, GenerateParams

PROMPT = "Once upon a time, the king"


def test_greedy_is_deterministic(tiny_guest) -> None:
    g = tiny_guest
    a = list(g.generate(PROMPT, max_tokens=12, temperature=0.0, stop_at_eos=False))
    assert g.last_stats.tokens == 12 and "".join(a)
    assert list(g.generate(PROMPT, max_tokens=12, temperature=0.0, stop_at_eos=False)) == a
    # realm_forward_layer per layer: the same tokens
    assert list(g.generate(PROMPT, max_tokens=12, temperature=0.0, stop_at_eos=False, per_layer=True)) == a
    # a prefix of a longer run
    longer = "".join(g.generate(PROMPT, max_tokens=20, temperature=0.0, stop_at_eos=False))
    assert longer.startswith("".join(a))


def test_sampling_seeds_and_batches(tiny_guest) -> None:
    g = tiny_guest
    kw = dict(max_tokens=16, temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, stop_at_eos=False)
    a = "".join(g.generate(PROMPT, seed=7, **kw))
    assert "".join(g.generate(PROMPT, seed=7, **kw)) == a
    assert "".join(g.generate(PROMPT, seed=8, **kw)) != a
    # prompt chunks of 3 positions and a ring shorter than the run: still 16 tokens
    "".join(g.generate(PROMPT, seed=7, n_batch=3, n_ctx=8, **kw))
    assert g.last_stats.tokens == 16


def test_no_leak_between_calls(tiny_guest) -> None:
    g = tiny_guest
    list(g.generate(PROMPT, max_tokens=4, temperature=0.8, repeat_penalty=1.1, seed=1))
    before = g.call("realm_heap_bytes")
    pages = g.memory_pages
    for seed in range(5):
        list(g.generate(PROMPT * (seed + 1), max_tokens=8, temperature=0.8, repeat_penalty=1.1, seed=seed))
    assert g.call("realm_heap_bytes") == before
    assert g.memory_pages <= pages + 1


def test_errors_are_codes(tiny_guest) -> None:
    g = tiny_guest
    params = GenerateParams(max_tokens=2).pack()
    prompt_ptr, params_ptr = put(g, PROMPT.encode()), put(g, params)
    try:
        assert g.call("realm_generate", 4242, prompt_ptr, len(PROMPT), params_ptr, 56) == ERR_MODEL
        assert g.call("realm_generate", g.model_id(), prompt_ptr, len(PROMPT), params_ptr, 40) == ERR_INVALID
        assert g.call("realm_generate", g.model_id(), prompt_ptr, len(PROMPT), params_ptr, 56) == 2
    finally:
        g.free(prompt_ptr)
        g.free(params_ptr)
    with pytest.raises(RealmError) as e:  # nothing to run the model on
        list(g.generate("", max_tokens=2, add_bos=False))
    assert e.value.code == ERR_INVALID
    assert list(g.generate(PROMPT, max_tokens=0)) == []


def test_memory_cap_is_an_error_not_a_trap(host, tiny_model, guest_engine) -> None:
    # room for the prompt and params, not for a 4096-token prompt's activations
    with host.guest(models=[tiny_model], engine=guest_engine, memory_limit="256KiB") as g:
        with pytest.raises(RealmError) as e:
            list(g.generate("word " * 4096, max_tokens=2))
        assert e.value.code == ERR_NOMEM
        # the same instance carries on
        assert len(list(g.generate(PROMPT, max_tokens=3, temperature=0.0, stop_at_eos=False))) >= 1
