"""Conversations kept in the guest (Guest.chat over realm_chat_*): every turn evaluates
only what follows the longest common prefix of its tokens with those the guest's ring
holds, and still gives exactly the text of references that share none of that: a fresh
guest's realm_generate on the whole rendered conversation, and greedy decoding with the
CPU backend driven from Python. The evaluated positions are counted at the host's
forward imports. Edits, rings that wrap, errors part-way, limits and resets included.

F32 models: their CPU kernels give the same bits for a position whether it is evaluated
alone or in a batch, so "exactly" holds for any split of the work."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support.greedy import piece_bytes, prompt_ids

from realm_ext import Host, RealmError, abi, api
from realm_ext.chat_template import ChatTemplate
from realm_ext.engines.base import GuestLimitError
from realm_ext.host import GuestImports, _Fail
from realm_ext.model import Model
from realm_ext.model_maker import make_model
from realm_ext.stream import PieceStream

GREEDY = dict(temperature=0.0, stop_at_eos=False)

CONVERSATIONS = [
    ["hello there", "the king and the queen", "what did the cat see?", "tell me a story", "why"],
    ["Once upon a time", "and then?", "the dog ran to the house"],
    ["a", "b c d e f g h", "the sun and the moon", "good night"],
]


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with Host(device="cpu", n_threads=1) as h:
        yield h


@pytest.fixture(scope="module", params=[11, 5])
def model(request: pytest.FixtureRequest, host: Host, tmp_path_factory: pytest.TempPathFactory) -> Model:
    path = tmp_path_factory.mktemp("chat") / f"tiny-chatml-{request.param}.gguf"
    return host.load(make_model(path, "tiny", "F32", seed=request.param, chat_template="chatml"))


class Forwards:
    """The host's forward imports as the guest calls them: (layer_begin, layer_count,
    position, rows) per realm_forward_layer(s) call (Python imports only)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        # (layer_begin, position, after): fail the call at that layer covering that
        # position once, before it runs or (after) once it has appended its K/V
        self.fail_at: tuple[int, int, bool] | None = None
        self.failed: int | None = None  # the first position of the call that failed

    def positions(self, since: int = 0) -> list[int]:
        """Positions run through layer 0 in calls[since:], in order."""
        out: list[int] = []
        for begin, _, pos, rows in self.calls[since:]:
            if begin == 0:
                out.extend(range(pos, pos + rows))
        return out


@pytest.fixture
def forwards(monkeypatch: pytest.MonkeyPatch) -> Forwards:
    rec = Forwards()
    real = GuestImports.forward_layers

    def spy(self, model_id, layer_begin, layer_count, hs_ptr, hs_len, position, kv_id, out_ptr):
        n_embd = self.state.models[model_id & 0xFFFFFFFF].model.config.n_embd
        call = (layer_begin & 0xFFFFFFFF, layer_count & 0xFFFFFFFF, position & 0xFFFFFFFF)
        rows = (hs_len & 0xFFFFFFFF) // n_embd
        fail = rec.fail_at is not None and rec.fail_at[0] == call[0] and 0 <= rec.fail_at[1] - call[2] < rows
        if fail and not rec.fail_at[2]:
            rec.fail_at, rec.failed = None, call[2]
            raise _Fail(abi.ERR_INTERNAL, "a failure injected by the test")
        rc = real(self, model_id, layer_begin, layer_count, hs_ptr, hs_len, position, kv_id, out_ptr)
        if fail:
            rec.fail_at, rec.failed = None, call[2]
            raise _Fail(abi.ERR_INTERNAL, "a failure injected by the test, after the K/V were appended")
        rec.calls.append((*call, rows))
        return rc

    monkeypatch.setattr(GuestImports, "forward_layers", spy)
    return rec


# ---- references ----------------------------------------------------------------------


def backend_greedy(host: Host, model: Model, ids: list[int], n: int, n_ctx: int) -> list[int]:
    """n greedy tokens after `ids` with the CPU backend driven from Python, on a ring of
    n_ctx positions: the prompt up to the ring's end in one batch, then (past the wrap)
    one position at a time, as a ring allows; then one token at a time."""
    be, c = host.backend, model.config
    kv = be.new_kv(model, n_ctx)
    try:
        x = np.empty((len(ids), c.n_embd), np.float32)
        logits = np.empty((1, c.n_vocab), np.float32)
        pos = 0
        while pos < len(ids):
            rows = min(len(ids), n_ctx) - pos if pos < n_ctx else 1
            xs = x[:rows]
            be.forward_embedding(model, np.array(ids[pos : pos + rows], np.int32), xs)
            be.forward_layers(model, 0, c.n_layer, xs, pos, kv, xs)
            pos += rows
        be.forward_lm_head(model, xs[-1:], logits)
        out: list[int] = []
        for _ in range(n):
            t = int(np.argmax(logits[0]))
            out.append(t)
            if len(out) == n:
                break
            x1 = x[:1]
            be.forward_embedding(model, np.array([t], np.int32), x1)
            be.forward_layers(model, 0, c.n_layer, x1, pos, kv, x1)
            be.forward_lm_head(model, x1, logits)
            pos += 1
        return out
    finally:
        be.free_kv(model, kv)


def text_of(model: Model, ids: list[int]) -> str:
    return b"".join(piece_bytes(model, t) for t in ids).decode("utf-8", "replace")


def fresh_generate(host: Host, model: Model, text: str, **kw: object) -> str:
    """realm_generate on the whole text in a guest that has never seen it."""
    with host.guest(models=[model]) as g:
        return "".join(g.generate(text, **kw))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# ---- reuse gives the fresh text --------------------------------------------------------


@pytest.mark.parametrize(("per_layer", "n_batch"), [(False, 512), (True, 512), (False, 5)])
def test_turns_reuse_the_ring_and_match_fresh_runs(
    host: Host, model: Model, forwards: Forwards, per_layer: bool, n_batch: int
) -> None:
    kw = dict(GREEDY, max_tokens=8, n_ctx=512, per_layer=per_layer, n_batch=n_batch)
    template = ChatTemplate.for_model(model)
    for users in CONVERSATIONS:
        with host.guest(models=[model], native_imports=False) as g:
            messages: list[dict[str, str]] = [{"role": "system", "content": "You answer briefly."}]
            held: list[int] = []  # what the guest's ring should hold: prompt + tokens fed back
            for turn, user in enumerate(users):
                messages.append({"role": "user", "content": user})
                text = template.prompt(messages)
                ids = prompt_ids(g, model, text)
                since = len(forwards.calls)
                reply = "".join(g.chat(messages, **kw))
                s = g.last_stats

                want_ids = backend_greedy(host, model, ids, 8, 512)
                assert reply == text_of(model, want_ids) == fresh_generate(host, model, text, **kw)
                assert s.tokens == 8 and s.prompt_tokens == len(ids)
                assert s.cached_tokens == min(common_prefix(held, ids), len(ids) - 1)
                if turn:
                    assert s.cached_tokens > 0
                assert s.evaluated_tokens == len(ids) - s.cached_tokens and not s.restarted
                # the host ran exactly the new prompt positions, then the tokens fed back
                assert forwards.positions(since) == list(range(s.cached_tokens, len(ids) + 8 - 1))
                if not per_layer:
                    prefill = [c for c in forwards.calls[since:] if c[3] > 1]
                    assert all(rows <= n_batch for *_, rows in prefill)
                held = ids + want_ids[:-1]
                messages.append({"role": "assistant", "content": reply})


def test_sampling_with_a_seed_matches_fresh_runs(host: Host, model: Model) -> None:
    kw = dict(max_tokens=10, temperature=0.9, top_k=30, seed=3, stop_at_eos=False, n_ctx=512)
    template = ChatTemplate.for_model(model)
    with host.guest(models=[model]) as g:
        messages: list[dict[str, str]] = []
        for user in CONVERSATIONS[0]:
            messages.append({"role": "user", "content": user})
            reply = "".join(g.chat(messages, **kw))
            assert reply == fresh_generate(host, model, template.prompt(messages), **kw)
            messages.append({"role": "assistant", "content": reply})
        assert g.last_stats.cached_tokens > 0


def test_an_edit_re_evaluates_from_the_divergence(host: Host, model: Model, forwards: Forwards) -> None:
    kw = dict(GREEDY, max_tokens=6, n_ctx=512)
    template = ChatTemplate.for_model(model)
    with host.guest(models=[model], native_imports=False) as g:
        messages: list[dict[str, str]] = [{"role": "system", "content": "Be kind."}]
        for user in ("the cat", "the dog", "the house"):
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": "".join(g.chat(messages, **kw))})
        held_before = g.last_stats.prompt_tokens + 6 - 1
        old_ids = prompt_ids(g, model, template.prompt(messages[:-1]))
        # the first user message changes: everything after it is evaluated again
        messages[1] = {"role": "user", "content": "the big cat"}
        messages.append({"role": "user", "content": "and now?"})
        text = template.prompt(messages)
        ids = prompt_ids(g, model, text)
        since = len(forwards.calls)
        reply = "".join(g.chat(messages, **kw))
        s = g.last_stats
        assert reply == fresh_generate(host, model, text, **kw)
        assert reply == text_of(model, backend_greedy(host, model, ids, 6, 512))
        lcp = common_prefix(old_ids, ids)
        assert 0 < s.cached_tokens == lcp < held_before and not s.restarted
        assert forwards.positions(since) == list(range(lcp, len(ids) + 6 - 1))
        # and the next turn reuses the edited conversation
        messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": "bye"})
        text = template.prompt(messages)
        assert "".join(g.chat(messages, **kw)) == fresh_generate(host, model, text, **kw)
        assert g.last_stats.cached_tokens >= len(ids)


def test_same_conversation_again_re_evaluates_only_its_last_token(host: Host, model: Model) -> None:
    kw = dict(GREEDY, max_tokens=5, n_ctx=512)
    with host.guest(models=[model]) as g:
        messages = [{"role": "user", "content": "the king"}]
        a = "".join(g.chat(messages, **kw))
        b = "".join(g.chat(messages, **kw))  # the prompt is a prefix of what the ring holds
        s = g.last_stats
        assert a == b and s.cached_tokens == s.prompt_tokens - 1 and s.evaluated_tokens == 1


# ---- a ring that wraps -----------------------------------------------------------------

LONG = " ".join(["the king and the queen went to the house of the small boy"] * 8)


def test_past_the_ring_an_extension_is_reused_and_an_edit_restarts(
    host: Host, model: Model, forwards: Forwards
) -> None:
    """Past n_ctx positions the ring slides (position p attends p - n_ctx + 1 .. p), as
    a fresh guest's generation does over the same n_ctx. A prompt that extends what the
    ring holds is appended to it, wrapped or not; one that diverges inside positions the
    wrap overwrote cannot be rewound, and the ring starts over from position 0."""
    n_ctx = 32
    kw = dict(GREEDY, n_ctx=n_ctx)
    with host.guest(models=[model], native_imports=False) as g:
        a_ids = prompt_ids(g, model, LONG)
        assert len(a_ids) > 2 * n_ctx
        g.chat_to(LONG, lambda piece: True, params=abi.GenerateParams(max_tokens=1, **kw))
        assert g.last_stats.cached_tokens == 0 and g.last_stats.evaluated_tokens == len(a_ids)

        # "\n" is a byte token that no piece contains: the tokens of LONG stay a prefix
        text = LONG + "\nwhat did the king see"
        ids = prompt_ids(g, model, text)
        assert ids[: len(a_ids)] == a_ids
        since = len(forwards.calls)
        got: list[str] = []
        g.chat_to(text, got.append, params=abi.GenerateParams(max_tokens=12, **kw))
        s = g.last_stats
        assert s.cached_tokens == len(a_ids) and not s.restarted
        assert forwards.positions(since) == list(range(len(a_ids), len(ids) + 12 - 1))
        want = text_of(model, backend_greedy(host, model, ids, 12, n_ctx))
        assert "".join(got) == want == fresh_generate(host, model, text, max_tokens=12, **kw)

        edited = "a" + text[1:]
        ids = prompt_ids(g, model, edited)
        since = len(forwards.calls)
        got = []
        g.chat_to(edited, got.append, params=abi.GenerateParams(max_tokens=12, **kw))
        s = g.last_stats
        assert s.restarted and s.cached_tokens == 0 and s.evaluated_tokens == len(ids)
        assert forwards.positions(since) == list(range(0, len(ids) + 12 - 1))
        want = text_of(model, backend_greedy(host, model, ids, 12, n_ctx))
        assert "".join(got) == want == fresh_generate(host, model, edited, max_tokens=12, **kw)


def test_a_conversation_longer_than_the_ring_matches_fresh_runs(host: Host, model: Model) -> None:
    n_ctx = 64
    kw = dict(GREEDY, max_tokens=10, n_ctx=n_ctx, n_batch=16)
    template = ChatTemplate.for_model(model)
    with host.guest(models=[model]) as g:
        messages: list[dict[str, str]] = []
        for user in CONVERSATIONS[0]:
            messages.append({"role": "user", "content": user})
            text = template.prompt(messages)
            reply = "".join(g.chat(messages, **kw))
            assert reply == fresh_generate(host, model, text, **kw)
            assert reply == text_of(model, backend_greedy(host, model, prompt_ids(g, model, text), 10, n_ctx))
            messages.append({"role": "assistant", "content": reply})
        assert g.last_stats.prompt_tokens > 2 * n_ctx


# ---- failures, limits, resets --------------------------------------------------------


@pytest.mark.parametrize("per_layer", [True, False])
def test_an_import_failing_part_way_leaves_the_conversation_correct(
    host: Host, model: Model, forwards: Forwards, per_layer: bool
) -> None:
    """A forward call that fails with the ring part-updated (per layer: layer 1 of a
    prompt chunk, after layer 0 appended it; batched: a decode step, after every layer
    appended it) ends the call with an error; the next call reuses only positions the
    guest saw computed in full, and matches a fresh run."""
    kw = dict(GREEDY, max_tokens=6, n_ctx=512, per_layer=per_layer, n_batch=4)
    template = ChatTemplate.for_model(model)
    with host.guest(models=[model], native_imports=False) as g:
        messages = [{"role": "user", "content": "the king"}]
        messages.append({"role": "assistant", "content": "".join(g.chat(messages, **kw))})
        held = g.last_stats.prompt_tokens + 6 - 1
        messages.append({"role": "user", "content": "and the queen went home"})
        ids = prompt_ids(g, model, template.prompt(messages))
        fail_pos = held + 6 if per_layer else len(ids) + 2  # inside the new prompt / decode
        forwards.fail_at = (1, fail_pos, False) if per_layer else (0, fail_pos, True)
        with pytest.raises(RealmError) as e:
            list(g.chat(messages, **kw))
        assert e.value.code == abi.ERR_INTERNAL and "injected" in str(e.value)
        assert forwards.fail_at is None and forwards.failed is not None  # it did fail there
        since = len(forwards.calls)
        reply = "".join(g.chat(messages, **kw))
        s = g.last_stats
        assert reply == fresh_generate(host, model, template.prompt(messages), **kw)
        assert s.cached_tokens == min(forwards.failed, len(ids) - 1)
        assert forwards.positions(since) == list(range(s.cached_tokens, len(ids) + 6 - 1))


def test_closing_the_stream_mid_reply_keeps_what_was_fed_back(
    host: Host, model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = dict(GREEDY, max_tokens=40, n_ctx=512)
    template = ChatTemplate.for_model(model)
    # a stream of one piece: the guest waits in realm_emit one piece ahead of this reader,
    # so it cannot finish the reply before the close (the default lets a tiny model run
    # 4096 pieces ahead)
    monkeypatch.setattr(api, "PieceStream", functools.partial(PieceStream, max_pieces=1))
    with host.guest(models=[model]) as g:
        messages = [{"role": "user", "content": "tell me a story"}]
        stream = g.chat(messages, **kw)
        reply = "".join(next(stream) for _ in range(3))
        stream.close()
        assert g.last_stats.tokens < 40
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "go on"}]
        got = "".join(g.chat(messages, **kw))
        assert got == fresh_generate(host, model, template.prompt(messages), **kw)
        assert g.last_stats.cached_tokens > 0


def test_a_time_limit_inside_an_import_is_an_error_and_the_conversation_stays(
    host: Host, model: Model
) -> None:
    """The time limit passing inside a forward import: the import returns -8, the guest
    returns it (no trap, no reset), and its conversation holds what was computed."""
    kw = dict(GREEDY, max_tokens=6, n_ctx=8192)  # no wrap before the time is up
    template = ChatTemplate.for_model(model)
    with host.guest(models=[model], time_limit=0.3) as g:
        messages = [{"role": "user", "content": "hello there"}]
        messages.append({"role": "assistant", "content": "".join(g.chat(messages, **kw))})
        messages.append({"role": "user", "content": "the king"})
        epoch = g._epoch
        with pytest.raises((RealmError, GuestLimitError)) as e:  # slides over the ring until the time is up
            list(g.chat(messages, **dict(kw, max_tokens=10**7)))
        reset = isinstance(e.value, GuestLimitError)  # the time ran out in guest code: a trap
        assert reset or e.value.code == abi.ERR_CANCELLED
        assert g._epoch == epoch + reset
        reply = "".join(g.chat(messages, **kw))
        s = g.last_stats
        assert reply == fresh_generate(host, model, template.prompt(messages), **kw)
        assert (s.cached_tokens == 0) if reset else (s.cached_tokens == s.prompt_tokens - 1)


def test_a_trap_mid_chat_resets_the_guest_and_the_next_chat_starts_over(host: Host, model: Model) -> None:
    """Fuel runs out in guest code (a trap): the guest is reset, its conversation and
    ring are gone, and the next chat starts a new one and matches a fresh run."""
    kw = dict(GREEDY, max_tokens=6, n_ctx=512)
    template = ChatTemplate.for_model(model)
    with host.guest(models=[model], fuel=50_000_000) as g:
        messages = [{"role": "user", "content": "hello there"}]
        messages.append({"role": "assistant", "content": "".join(g.chat(messages, **kw))})
        messages.append({"role": "user", "content": "the king"})
        epoch = g._epoch
        with pytest.raises(GuestLimitError) as e:
            list(g.chat(messages, **dict(kw, max_tokens=10**7)))
        assert e.value.limit == "fuel"
        assert g._epoch == epoch + 1 and g.state.kv == {}
        reply = "".join(g.chat(messages, **kw))
        s = g.last_stats
        assert reply == fresh_generate(host, model, template.prompt(messages), **kw)
        assert s.cached_tokens == 0 and s.evaluated_tokens == s.prompt_tokens  # a new conversation
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "bye"}]
        assert "".join(g.chat(messages, **kw)) == fresh_generate(host, model, template.prompt(messages), **kw)
        assert g.last_stats.cached_tokens > 0
        assert len(g.state.kv) == 1  # one ring: the conversation's


def test_reset_chat_and_a_new_ring_size_start_over(host: Host, model: Model) -> None:
    kw = dict(GREEDY, max_tokens=4)
    with host.guest(models=[model]) as g:
        messages = [{"role": "user", "content": "the cat"}]
        a = "".join(g.chat(messages, n_ctx=256, **kw))
        "".join(g.chat(messages, n_ctx=256, **kw))
        assert g.last_stats.cached_tokens > 0
        g.reset_chat()
        assert g.state.kv == {}  # the ring went with the conversation
        assert "".join(g.chat(messages, n_ctx=256, **kw)) == a and g.last_stats.cached_tokens == 0
        assert "".join(g.chat(messages, n_ctx=128, **kw)) == a and g.last_stats.cached_tokens == 0
        assert len(g.state.kv) == 1
        g.reset_chat()
        g.reset_chat()  # twice: nothing to close


def test_generate_beside_a_chat_leaves_it_alone(host: Host, model: Model) -> None:
    kw = dict(GREEDY, max_tokens=5, n_ctx=256)
    with host.guest(models=[model]) as g:
        messages = [{"role": "user", "content": "the dog"}]
        messages.append({"role": "assistant", "content": "".join(g.chat(messages, **kw))})
        list(g.generate("something else entirely", **kw))
        messages.append({"role": "user", "content": "and?"})
        got = "".join(g.chat(messages, **kw))
        assert g.last_stats.cached_tokens > 0
        assert got == fresh_generate(host, model, ChatTemplate.for_model(model).prompt(messages), **kw)


def test_stats_report_time_to_first_token_and_decode_rate(host: Host, model: Model) -> None:
    with host.guest(models=[model]) as g:
        list(g.chat([{"role": "user", "content": "hi"}], max_tokens=16, n_ctx=256, **GREEDY))
        s = g.last_stats
        assert s.tokens == 16 and 0 < s.first_token_s < s.seconds
        assert s.decode_tokens_per_s > 0 and s.tokens_per_s > 0


def test_messages_are_checked(host: Host, model: Model) -> None:
    with host.guest(models=[model]) as g:
        with pytest.raises(TypeError):
            list(g.chat("hello"))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            list(g.chat([{"role": "user"}]))


# ---- the guest's exports, called wrong ----------------------------------------------


def test_chat_exports_refuse_bad_arguments(host: Host, model: Model, tmp_path: Path) -> None:
    with host.guest(models=[model], kv_limit="64MiB") as g:
        mid = g.model_id()
        params = abi.GenerateParams(max_tokens=2, n_ctx=16).pack()
        text = b"the king"
        p_ptr, t_ptr, s_ptr = g._put(params), g._put(text), g._put(bytes(32))
        mem = g.memory_pages * 65536
        gen = lambda h, *rest: g.call("realm_chat_generate", h, t_ptr, len(text), p_ptr, len(params), *rest)  # noqa: E731
        assert gen(0, s_ptr, 32) == abi.ERR_INVALID
        assert gen(99, s_ptr, 32) == abi.ERR_INVALID
        assert g.call("realm_chat_open", 4242, 16) == abi.ERR_MODEL
        h = g.call("realm_chat_open", mid, 16)
        assert h > 0
        assert gen(h, mem - 8, 32) == abi.ERR_BOUNDS
        assert gen(h, s_ptr, 0) == 2  # no stats asked for
        assert gen(h, s_ptr, 32) == 2
        stats = abi.ChatStats.unpack(g.read(s_ptr, 32))
        assert stats.version == abi.CHAT_STATS_VERSION and stats.n_cached > 0 and stats.n_generated == 2
        wrong_ctx = g._put(abi.GenerateParams(max_tokens=2, n_ctx=32).pack())
        assert g.call("realm_chat_generate", h, t_ptr, len(text), wrong_ctx, 56, s_ptr, 32) == abi.ERR_INVALID
        assert g.call("realm_chat_generate", h, t_ptr, len(text), p_ptr, 40, s_ptr, 32) == abi.ERR_INVALID
        assert g.call("realm_chat_close", h) == 0
        assert g.call("realm_chat_close", h) == abi.ERR_INVALID
        assert gen(h, s_ptr, 32) == abi.ERR_INVALID
        # conversations are bounded, and a KV limit shows at open
        handles = [g.call("realm_chat_open", mid, 16) for _ in range(64)]
        assert all(x > 0 for x in handles) and g.call("realm_chat_open", mid, 16) == abi.ERR_NOMEM
        for x in handles:
            assert g.call("realm_chat_close", x) == 0
        assert g.call("realm_chat_open", mid, 10**6) == abi.ERR_NOMEM and "KV limit" in str(
            g.state.last_error
        )
        assert g.state.kv == {}


def test_on_every_engine(host: Host, model: Model, engine: str) -> None:
    kw = dict(GREEDY, max_tokens=6, n_ctx=256)
    template = ChatTemplate.for_model(model)
    with host.guest(models=[model], engine=engine) as g:
        messages: list[dict[str, str]] = []
        for user in CONVERSATIONS[1]:
            messages.append({"role": "user", "content": user})
            reply = "".join(g.chat(messages, **kw))
            assert reply == fresh_generate(host, model, template.prompt(messages), **kw)
            messages.append({"role": "assistant", "content": reply})
        assert g.last_stats.cached_tokens > 0
