"""realm_sample, the sampler realm_generate uses: llama.cpp's chain (repetition
penalty; greedy, or top-k, top-p, min-p, temperature and a seeded draw), checked
against numpy on fresh random logits."""

from __future__ import annotations

import math
import struct
from dataclasses import replace

import numpy as np
import pytest
from guest_helpers import put

from realm_ext.abi import ERR_BOUNDS, ERR_INVALID, GenerateParams

# everything off: plain sampling at temperature 1
PLAIN = GenerateParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, repeat_last_n=0)


class Sampler:
    """Buffers in the guest for calling realm_sample directly."""

    def __init__(self, guest, n_max: int = 4096, seed: int = 1):
        self.g = guest
        self.logits = guest.alloc(4 * n_max)
        self.params = guest.alloc(64)
        self.hist = guest.alloc(4 * 1024)
        self.rng = put(guest, struct.pack("<Q", seed))
        self.n_max = n_max

    def set(self, logits: np.ndarray, p: GenerateParams, history=(), seed: int | None = None) -> None:
        logits = np.asarray(logits, "<f4")
        assert logits.size <= self.n_max
        self.g.write(self.logits, logits)
        self.g.write(self.params, p.pack())
        hist = np.asarray(history, "<u4")
        if hist.size:
            self.g.write(self.hist, hist)
        self.n, self.n_hist = logits.size, hist.size
        if seed is not None:
            self.g.write(self.rng, struct.pack("<Q", seed & (2**64 - 1)))

    def draw(self) -> int:
        return self.g.call(
            "realm_sample", self.logits, self.n, self.params, 56, self.hist, self.n_hist, self.rng
        )

    def draws(self, k: int) -> np.ndarray:
        out = np.fromiter((self.draw() for _ in range(k)), np.int64, k)
        assert (out >= 0).all(), out[out < 0][:5]
        return out

    def free(self) -> None:
        for p in (self.logits, self.params, self.hist, self.rng):
            self.g.free(p)


@pytest.fixture
def sampler(tiny_guest, rng):
    s = Sampler(tiny_guest, seed=int(rng.integers(2**63)))
    yield s
    s.free()


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def chi2_critical(df: int, z: float = 4.75) -> float:
    """The chi-square quantile at about 1 - 1e-6 (Wilson-Hilferty)."""
    a = 2.0 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def chi2(counts: np.ndarray, p: np.ndarray) -> float:
    exp = counts.sum() * p
    return float(((counts - exp) ** 2 / exp).sum())


# ---- greedy ---------------------------------------------------------------------------


def test_greedy_is_argmax(sampler, rng) -> None:
    for _ in range(30):
        n = int(rng.integers(1, 4096))
        logits = rng.standard_normal(n).astype(np.float32) * 3
        sampler.set(logits, replace(PLAIN, temperature=0.0, top_k=5, top_p=0.5, min_p=0.2))
        assert sampler.draw() == int(np.argmax(logits))
    # ties go to the lowest id
    logits = np.zeros(100, np.float32)
    logits[[17, 42, 90]] = 5.0
    sampler.set(logits, replace(PLAIN, temperature=0.0))
    assert sampler.draw() == 17
    sampler.set(logits, replace(PLAIN, temperature=-1.0))
    assert sampler.draw() == 17


def test_top_k_1_is_argmax(sampler, rng) -> None:
    for _ in range(20):
        logits = rng.standard_normal(1000).astype(np.float32)
        sampler.set(logits, replace(PLAIN, temperature=5.0, top_k=1))
        assert set(sampler.draws(20).tolist()) == {int(np.argmax(logits))}


# ---- truncation -----------------------------------------------------------------------


def test_top_k_draws_from_the_k_best(sampler, rng) -> None:
    n, k = 3000, 7
    logits = rng.standard_normal(n).astype(np.float32)
    best = set(np.argsort(-logits)[:k].tolist())
    sampler.set(logits, replace(PLAIN, temperature=3.0, top_k=k))
    got = set(sampler.draws(1500).tolist())
    assert got <= best
    assert got == best  # at T=3 every one of the 7 shows up in 1500 draws


def nucleus(logits: np.ndarray, top_p: float) -> set[int] | None:
    """The top-p set in float64, or None when the cut is too close to call."""
    order = np.argsort(-logits.astype(np.float64), kind="stable")
    cum = np.cumsum(softmax(logits.astype(np.float64))[order])
    k = int(np.searchsorted(cum, top_p)) + 1  # first index with cum >= top_p
    k = min(k, logits.size)
    if abs(cum[k - 1] - top_p) < 1e-5 or (k >= 2 and abs(cum[k - 2] - top_p) < 1e-5):
        return None
    return set(order[:k].tolist())


def test_top_p_draws_from_the_nucleus(sampler, rng) -> None:
    checked = 0
    while checked < 6:
        n = int(rng.integers(20, 400))
        logits = (rng.standard_normal(n) * 2).astype(np.float32)
        top_p = float(np.float32(rng.uniform(0.2, 0.9)))
        want = nucleus(logits, top_p)
        if want is None or len(want) > 60:
            continue
        sampler.set(logits, replace(PLAIN, temperature=4.0, top_p=top_p))
        got = set(sampler.draws(400).tolist())
        assert got <= want, (sorted(got - want), top_p)
        assert len(got) >= min(len(want), 2)
        checked += 1


def test_top_p_after_top_k(sampler, rng) -> None:
    """top_p's softmax runs over top_k's survivors only."""
    checked = 0
    while checked < 4:
        logits = (rng.standard_normal(500) * 1.5).astype(np.float32)
        k = int(rng.integers(10, 40))
        top = np.argsort(-logits, kind="stable")[:k]
        sub = nucleus(logits[top], 0.5)
        if sub is None:
            continue
        want = {int(top[i]) for i in sub}
        sampler.set(logits, replace(PLAIN, temperature=4.0, top_k=k, top_p=0.5))
        got = set(sampler.draws(400).tolist())
        assert got <= want
        checked += 1


def test_min_p_keeps_p_at_least_min_p_times_max(sampler, rng) -> None:
    checked = 0
    while checked < 6:
        n = int(rng.integers(20, 2000))
        logits = (rng.standard_normal(n) * 2).astype(np.float32)
        min_p = float(np.float32(rng.uniform(0.05, 0.5)))
        ratio = np.exp(logits.astype(np.float64) - logits.max())
        if np.min(np.abs(ratio - min_p)) < 1e-5:
            continue
        want = set(np.nonzero(ratio >= min_p)[0].tolist())
        sampler.set(logits, replace(PLAIN, temperature=4.0, min_p=min_p))
        got = set(sampler.draws(300).tolist())
        assert got <= want
        assert len(got) >= min(len(want), 2)
        checked += 1


# ---- repetition penalty ---------------------------------------------------------------


def test_repeat_penalty_greedy_flips(sampler) -> None:
    a, b, x, y = 3, 7, 1, 2
    logits = np.full(10, -5.0, np.float32)
    logits[a], logits[b] = 2.0, 1.5  # positive: divided by the penalty
    p = replace(PLAIN, temperature=0.0, repeat_last_n=64)

    def greedy(penalty: float, history, last_n: int = 64) -> int:
        sampler.set(logits, replace(p, repeat_penalty=penalty, repeat_last_n=last_n), history)
        return sampler.draw()

    assert greedy(1.5, [a]) == b  # 2 / 1.5 < 1.5
    assert greedy(1.2, [a]) == a  # 2 / 1.2 > 1.5
    assert greedy(1.2, [a, a, a, a]) == a  # once per distinct token, not per occurrence
    assert greedy(1.5, [a, x, y], last_n=2) == a  # outside the last repeat_last_n
    assert greedy(1.5, [a, x, y], last_n=3) == b
    assert greedy(1.5, [a], last_n=0) == a  # repeat_last_n 0: off
    assert greedy(1.5, [b, 999999]) == a  # ids past the vocabulary are ignored

    logits[:] = -5.0
    logits[a], logits[b] = -1.0, -1.4  # negative: multiplied by the penalty
    assert greedy(1.5, [a]) == b  # -1.5 < -1.4
    assert greedy(1.3, [a]) == a  # -1.3 > -1.4


def test_repeat_penalty_distribution(sampler, rng) -> None:
    n = 12
    logits = rng.standard_normal(n).astype(np.float32)
    history = rng.integers(0, n, 9)
    pen = 1.8
    want = logits.astype(np.float64).copy()
    for t in set(history[-6:].tolist()):
        want[t] = want[t] / pen if want[t] > 0 else want[t] * pen
    p_want, p_plain = softmax(want), softmax(logits.astype(np.float64))
    sampler.set(logits, replace(PLAIN, repeat_penalty=pen, repeat_last_n=6), history)
    counts = np.bincount(sampler.draws(20000), minlength=n)
    crit = chi2_critical(n - 1)
    assert chi2(counts, p_want) < crit
    if 20000 * ((p_want - p_plain) ** 2 / p_plain).sum() > 10 * crit:
        assert chi2(counts, p_plain) > crit


# ---- temperature and the draw ---------------------------------------------------------


def test_temperature_distribution(sampler, rng) -> None:
    n, draws, temp = 10, 20000, 0.7
    crit = chi2_critical(n - 1)
    while True:
        logits = (rng.standard_normal(n) * 1.5).astype(np.float32)
        p = softmax(logits.astype(np.float64) / temp)
        wrong = softmax(logits.astype(np.float64) / 0.9)
        # a wrong temperature must be far outside the bound, or the test could not tell
        if draws * ((p - wrong) ** 2 / wrong).sum() > 10 * crit and p.min() * draws > 20:
            break
    sampler.set(logits, replace(PLAIN, temperature=temp))
    counts = np.bincount(sampler.draws(draws), minlength=n)
    assert chi2(counts, p) < crit
    assert chi2(counts, wrong) > crit


def test_seeds(sampler, rng) -> None:
    logits = rng.standard_normal(500).astype(np.float32)
    p = replace(PLAIN, temperature=1.5)
    seed = int(rng.integers(2**63))
    sampler.set(logits, p, seed=seed)
    first = sampler.draws(200)
    sampler.set(logits, p, seed=seed)
    assert (sampler.draws(200) == first).all()
    sampler.set(logits, p, seed=seed + 1)
    assert (sampler.draws(200) != first).any()
    # the state advances: no long runs of one value at this temperature
    assert len(set(first.tolist())) > 50


# ---- arguments and memory -------------------------------------------------------------


def test_bad_arguments(sampler) -> None:
    g, s = sampler.g, sampler
    s.set(np.zeros(8, np.float32), PLAIN)
    mem = g.memory_pages * 65536
    call = g.call
    assert call("realm_sample", s.logits, 8, s.params, 55, s.hist, 0, s.rng) == ERR_INVALID
    assert call("realm_sample", s.logits, 0, s.params, 56, s.hist, 0, s.rng) == ERR_INVALID
    assert call("realm_sample", mem - 16, 8, s.params, 56, s.hist, 0, s.rng) == ERR_BOUNDS
    assert call("realm_sample", s.logits, 8, s.params, 56, s.hist, 0, mem - 4) == ERR_BOUNDS
    assert call("realm_sample", s.logits, 8, s.params, 56, mem - 8, 4, s.rng) == ERR_BOUNDS
    g.write(s.params, struct.pack("<I", 0))  # version 0
    assert call("realm_sample", s.logits, 8, s.params, 56, s.hist, 0, s.rng) == ERR_INVALID
    s.set(np.zeros(8, np.float32), replace(PLAIN, repeat_penalty=0.0, repeat_last_n=4))
    assert call("realm_sample", s.logits, 8, s.params, 56, s.hist, 0, s.rng) == ERR_INVALID


def test_no_allocation_per_call(sampler, rng) -> None:
    logits = rng.standard_normal(4096).astype(np.float32)
    sampler.set(
        logits,
        replace(PLAIN, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1, repeat_last_n=64),
        rng.integers(0, 4096, 100),
    )
    sampler.draw()
    before = sampler.g.call("realm_heap_bytes")
    sampler.draws(50)
    sampler.set(logits[:1000], replace(PLAIN, top_p=0.5))
    sampler.draws(50)
    assert sampler.g.call("realm_heap_bytes") == before
