"""Calls from many threads on one model run as batched steps (csrc/cpu/llama_steps.c):
each call's rows come out exactly as they do alone, a bad or cancelled call fails alone,
and the steps did carry several calls at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from support.prompts import prompt
from support.threads import run_together

from realm_ext import _kernels
from realm_ext.backends.cpu import CpuBackend
from realm_ext.model import load_gguf
from realm_ext.quantizer import RECIPES

DECODE = 12


@pytest.fixture(scope="module")
def backend() -> CpuBackend:
    return CpuBackend(n_threads=2)


def conversation(
    backend: CpuBackend, m, toks: list[int], steps: int, barrier: threading.Barrier | None = None
):
    """The logits of a prompt's last row and of `steps` greedy decode steps after it, each
    step's layers and LM head called separately (as a guest calls them); with a barrier,
    every decode step starts with the other threads'."""
    c = m.config
    kv = backend.new_kv(m, len(toks) + steps + 1)
    x = np.empty((len(toks), c.n_embd), np.float32)
    backend.forward_embedding(m, np.asarray(toks, np.int32), x)
    backend.forward_layers(m, 0, c.n_layer, x, 0, kv, x)
    rows = [np.empty((1, c.n_vocab), np.float32)]
    backend.forward_lm_head(m, x[-1:], rows[0])
    x1 = np.empty((1, c.n_embd), np.float32)
    for pos in range(len(toks), len(toks) + steps):
        if barrier is not None:
            barrier.wait()
        backend.forward_embedding(m, np.array([int(np.argmax(rows[-1]))], np.int32), x1)
        backend.forward_layers(m, 0, c.n_layer, x1, pos, kv, x1)
        rows.append(np.empty((1, c.n_vocab), np.float32))
        backend.forward_lm_head(m, x1, rows[-1])
    backend.free_kv(m, kv)
    return np.concatenate(rows)


def batched(backend: CpuBackend, m) -> tuple[int, int]:
    stats = backend.prepare(m).step_stats
    return stats["steps"], stats["jobs"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_decoding_together_equals_alone_bit_for_bit(
    model_path, backend: CpuBackend, rng, recipe: str
) -> None:
    """Nine conversations decoding in step (steps of 8 rows and more): their steps batch
    (the weights read once for all rows), and every logit equals the conversation's
    alone, bit for bit, in every format: a row sums in the float order of its own call's
    size, whatever shares its step (a decode row in a step of 8 rows does not take the
    batched K-quant order)."""
    with load_gguf(model_path(recipe, preset="small")) as m:
        prompts = [prompt(rng, int(n), m.config.n_vocab) for n in rng.integers(3, 20, 9)]
        alone = [conversation(backend, m, p, DECODE) for p in prompts]
        steps0, jobs0 = batched(backend, m)
        barrier = threading.Barrier(len(prompts))
        together = run_together([lambda p=p: conversation(backend, m, p, DECODE, barrier) for p in prompts])
        steps1, jobs1 = batched(backend, m)
        for want, got in zip(alone, together, strict=True):
            assert not isinstance(got, BaseException), got
            np.testing.assert_array_equal(got, want)
        # steps carried several calls: fewer steps than calls
        assert jobs1 - jobs0 > 1.5 * (steps1 - steps0), (steps1 - steps0, jobs1 - jobs0)
        assert backend.prepare(m).step_stats["max_jobs"] >= 3


def test_conversations_out_of_step_come_together(model_path, backend: CpuBackend, rng) -> None:
    """Two conversations, one started a call behind the other: one is at its layers while
    the other is at its LM head, so without the queue's yield rule (llama_steps.h) every
    step would carry one call. Their steps come together, and every logit is exact."""
    with load_gguf(model_path("Q8_0", preset="small")) as m:
        c = m.config
        tokens = 24

        def decode(first: int, behind: threading.Event | None, ahead: threading.Event | None) -> np.ndarray:
            kv = backend.new_kv(m, tokens + 1)
            x = np.empty((1, c.n_embd), np.float32)
            rows = np.empty((tokens, c.n_vocab), np.float32)
            tok = first
            for pos in range(tokens):
                backend.forward_embedding(m, np.array([tok], np.int32), x)
                if behind is not None and pos == 0:
                    behind.wait()  # start once the other has run its first layers call
                backend.forward_layers(m, 0, c.n_layer, x, pos, kv, x)
                if ahead is not None and pos == 0:
                    ahead.set()
                backend.forward_lm_head(m, x, rows[pos : pos + 1])
                tok = int(np.argmax(rows[pos]))
                threading.Event().wait(0.0002)  # a guest samples between its calls
            backend.free_kv(m, kv)
            return rows

        firsts = [int(t) for t in rng.integers(3, c.n_vocab, 2)]
        want = [decode(t, None, None) for t in firsts]
        steps0, jobs0 = batched(backend, m)
        started = threading.Event()
        got = run_together(
            [lambda: decode(firsts[0], None, started), lambda: decode(firsts[1], started, None)]
        )
        steps1, jobs1 = batched(backend, m)
        for w, g in zip(want, got, strict=True):
            assert not isinstance(g, BaseException), g
            np.testing.assert_array_equal(g, w)
        # 4 * tokens calls; apart they would take as many steps, together about half
        assert jobs1 - jobs0 == 4 * tokens
        assert jobs1 - jobs0 > 1.4 * (steps1 - steps0), (steps1 - steps0, jobs1 - jobs0)


def test_a_long_prompt_and_decoders_share_steps(model_path, backend: CpuBackend, rng) -> None:
    """A 300-token prompt, in chunks, beside three decoding conversations: all exact."""
    with load_gguf(model_path("Q8_0", preset="small")) as m:
        long_prompt = prompt(rng, 300, m.config.n_vocab)
        prompts = [prompt(rng, 5, m.config.n_vocab) for _ in range(3)]
        want_long = conversation(backend, m, long_prompt, 2)
        want = [conversation(backend, m, p, 40) for p in prompts]
        got = run_together(
            [lambda: conversation(backend, m, long_prompt, 2)]
            + [lambda p=p: conversation(backend, m, p, 40) for p in prompts]
        )
        np.testing.assert_array_equal(got[0], want_long)
        for w, g in zip(want, got[1:], strict=True):
            np.testing.assert_array_equal(g, w)


def test_a_bad_call_fails_alone(model_path, backend: CpuBackend, rng) -> None:
    """Calls at a position the ring is not at, again and again, beside decoding
    conversations: each bad call fails with the range error, the others are exact."""
    with load_gguf(model_path("Q8_0", preset="small")) as m:
        c = m.config
        prompts = [prompt(rng, 6, c.n_vocab) for _ in range(3)]
        want = [conversation(backend, m, p, 30) for p in prompts]

        def bad() -> int:
            kv = backend.new_kv(m, 64)
            x = np.ones((4, c.n_embd), np.float32)
            failures = 0
            for _ in range(40):
                try:
                    backend.forward_layers(m, 0, c.n_layer, x, 7, kv, x)  # the ring is at 0
                except IndexError:
                    failures += 1
            assert list(kv.n_pos) == [0] * c.n_layer  # nothing appended
            return failures

        got = run_together([bad] + [lambda p=p: conversation(backend, m, p, 30) for p in prompts])
        assert got[0] == 40
        for w, g in zip(want, got[1:], strict=True):
            np.testing.assert_array_equal(g, w)


def test_a_cancelled_call_stops_alone(model_path, backend: CpuBackend, rng) -> None:
    """A long call cancelled while decoders share its steps: it stops between chunks with
    its ring holding the tokens it reports; the decoders are exact."""
    with load_gguf(model_path("Q8_0", preset="small")) as m:
        c = m.config
        prompts = [prompt(rng, 6, c.n_vocab) for _ in range(2)]
        want = [conversation(backend, m, p, 30) for p in prompts]
        rt = backend.prepare(m)
        control = _kernels.CallControl()
        control.arm(None)
        started = threading.Event()

        def long_call():
            kv = backend.new_kv(m, 2048)
            x = np.random.default_rng(1).standard_normal((2000, c.n_embd)).astype(np.float32) * 0.1
            started.set()
            try:
                rt.forward_layers(0, c.n_layer, x, 0, kv, x, backend.n_threads, control)
            except _kernels.CallStopped as e:
                return e.done, kv.n_pos
            return None

        def cancel_soon():
            started.wait()
            while control.chunks["grants"] < 3:
                threading.Event().wait(0.001)
            control.cancel()

        got = run_together(
            [long_call, cancel_soon] + [lambda p=p: conversation(backend, m, p, 30) for p in prompts]
        )
        assert got[0] is not None, "the long call was not stopped"
        done, n_pos = got[0]
        assert 0 < done < 2000 and list(n_pos) == [done] * c.n_layer
        for w, g in zip(want, got[2:], strict=True):
            np.testing.assert_array_equal(g, w)


def test_step_tokens_is_checked(model_path, backend: CpuBackend) -> None:
    with load_gguf(model_path("Q8_0")) as m:
        rt = backend.prepare(m)
        assert rt.step_tokens >= 1
        with pytest.raises(ValueError, match="step_tokens"):
            rt.step_tokens = 0


def test_a_decoders_lm_head_does_not_wait_for_a_prompt_under_way(
    model_path, backend: CpuBackend, rng
) -> None:
    """A decoder's layers steps carry rows of a long prompt too; its LM head step then
    expects the calls that step finished (the decoder's), not the prompt, which has rows
    left and does not come to the LM head. With a gather wait of 0.2 s, counting the prompt
    in would cost 0.2 s per decode step; the whole run waits less than 10 of them."""
    with load_gguf(model_path("Q8_0", preset="small")) as m:
        c = m.config
        rt = backend.prepare(m)
        steps, wait = 20, 0.2
        default_wait = rt.gather_wait_s
        started, decoded = threading.Event(), threading.Event()
        toks = prompt(rng, 4, c.n_vocab)

        def long_call() -> None:
            kv = backend.new_kv(m, 4096)
            x = np.random.default_rng(1).standard_normal((4000, c.n_embd)).astype(np.float32) * 0.1
            control = _kernels.CallControl()
            control.arm(None)
            started.set()
            threading.Thread(target=lambda: (decoded.wait(), control.cancel())).start()
            with pytest.raises(_kernels.CallStopped):
                rt.forward_layers(0, c.n_layer, x, 0, kv, x, backend.n_threads, control)

        def decoder() -> np.ndarray:
            started.wait()
            try:
                return conversation(backend, m, toks, steps)
            finally:
                decoded.set()

        want = conversation(backend, m, toks, steps)
        rt.gather_wait_s = wait
        try:
            gather0 = rt.step_stats["gather_s"]
            got = run_together([long_call, decoder])
            gathered = rt.step_stats["gather_s"] - gather0
        finally:
            rt.gather_wait_s = default_wait
        assert not isinstance(got[0], BaseException), got[0]
        np.testing.assert_array_equal(got[1], want)
        assert gathered < 10 * wait, gathered


def test_an_ended_conversation_is_not_waited_for(model_path, backend: CpuBackend, rng) -> None:
    """Conversations one after another: each frees its ring at the end, and the next
    one's steps do not wait for the last one's calls (before the queue forgot a freed
    ring, the next conversation's second layers step waited the whole gather wait for
    it). The rows are those of a conversation alone."""
    with load_gguf(model_path("Q8_0")) as m:
        rt = backend.prepare(m)
        toks = prompt(rng, 4, m.config.n_vocab)
        want = conversation(backend, m, toks, 3)
        default_wait, wait = rt.gather_wait_s, 0.5
        rt.gather_wait_s = wait
        try:
            gather0 = rt.step_stats["gather_s"]
            got = [conversation(backend, m, toks, 3) for _ in range(3)]
            gathered = rt.step_stats["gather_s"] - gather0
        finally:
            rt.gather_wait_s = default_wait
        for g in got:
            np.testing.assert_array_equal(g, want)
        assert gathered < wait / 2, gathered


def test_gather_wait_is_checked(model_path, backend: CpuBackend) -> None:
    with load_gguf(model_path("Q8_0")) as m:
        rt = backend.prepare(m)
        assert rt.gather_wait_s == pytest.approx(0.003)
        with pytest.raises(ValueError, match="gather_wait_s"):
            rt.gather_wait_s = -1
