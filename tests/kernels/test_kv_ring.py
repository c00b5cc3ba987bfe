"""KVRing: positions, slots, wrap and truncate rules, f16 storage (csrc/cpu/kv_ring.c)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from realm_ext._kernels import KV_RING_MAX_CAPACITY, KVRing


def rows(rng: np.random.Generator, kv: KVRing, n_tokens: int) -> np.ndarray:
    return rng.standard_normal((n_tokens, kv.n_head_kv * kv.head_dim)).astype(np.float32)


def as_f16(x: np.ndarray) -> np.ndarray:
    """x rounded to f16 (numpy rounds to nearest even; too large becomes inf)."""
    with np.errstate(over="ignore"):
        return x.astype(np.float16)


def test_shape_and_properties():
    kv = KVRing(3, 5, 2, 8)
    assert (kv.n_layer, kv.capacity, kv.n_head_kv, kv.head_dim) == (3, 5, 2, 8)
    for storage in (kv.k, kv.v):
        assert storage.shape == (3, 5, 2, 8)
        assert storage.dtype == np.float16
        assert storage.flags.c_contiguous
        assert not storage.any()
    assert kv.n_pos == (0, 0, 0)
    assert kv.held_from == (0, 0, 0)
    assert isinstance(kv.address, int) and kv.address != 0
    assert "capacity=5" in repr(kv)


@pytest.mark.parametrize(
    "args",
    [
        (0, 4, 1, 8),
        (1, 0, 1, 8),
        (1, -4, 1, 8),
        (1, 4, 0, 8),
        (1, 4, 1, -1),
        (1, KV_RING_MAX_CAPACITY + 1, 1, 8),
        (2**31, 4, 1, 8),
        (1, 4, 1, 2**40),
    ],
)
def test_bad_constructor_args(args):
    with pytest.raises(ValueError):
        KVRing(*args)


@pytest.mark.parametrize("args", [(1.0, 4, 1, 8), (1, "4", 1, 8), (1, 4, None, 8)])
def test_constructor_needs_ints(args):
    with pytest.raises(TypeError):
        KVRing(*args)


def test_append_writes_slots_and_rounds_like_numpy(rng):
    kv = KVRing(2, 8, 2, 4)
    # values that test the rounding: ties between neighbouring f16 values (exact in
    # f32), subnormals, overflow to inf, and plain random values
    f16 = rng.integers(0, 0x7BFE, size=(3, 8), dtype=np.uint16).view(np.float16).astype(np.float32)
    next_up = np.nextafter(f16.astype(np.float16), np.float16(np.inf)).astype(np.float32)
    ties = ((f16 + next_up) / 2).astype(np.float32) * np.where(rng.random((3, 8)) < 0.5, -1, 1)
    k = np.concatenate([ties, rng.standard_normal((2, 8)).astype(np.float32) * 1e-6]).astype(np.float32)
    k[3, :2] = [70000.0, -65520.0]  # both overflow to inf
    v = rows(rng, kv, 5) * 1000
    kv.append(1, 0, k, v)
    assert kv.n_pos == (0, 5)
    assert np.array_equal(kv.k[1, :5].view(np.uint16), as_f16(k).reshape(5, 2, 4).view(np.uint16))
    assert np.array_equal(kv.v[1, :5].view(np.uint16), as_f16(v).reshape(5, 2, 4).view(np.uint16))
    assert not kv.k[0].any() and not kv.k[1, 5:].any()  # nothing else touched


def test_wrap_keeps_the_last_capacity_positions(rng):
    kv = KVRing(1, 4, 1, 3)
    history = []
    for n in (3, 2, 1, 4, 1):  # positions 0..10, wrapping twice
        history.append(rows(rng, kv, n))
        kv.append(0, kv.n_pos[0], history[-1], -history[-1])
    history = np.concatenate(history)
    assert kv.n_pos == (11,)
    assert kv.held_from == (7,)
    for p in range(7, 11):
        assert kv.slot(p) == p % 4
        assert np.array_equal(kv.k[0, p % 4].ravel(), as_f16(history[p]))
        assert np.array_equal(kv.v[0, p % 4].ravel(), as_f16(-history[p]))


def test_window_start_and_slot():
    kv = KVRing(1, 4, 1, 1)
    assert [kv.window_start(p) for p in range(8)] == [0, 0, 0, 0, 1, 2, 3, 4]
    assert [kv.slot(p) for p in range(6)] == [0, 1, 2, 3, 0, 1]
    for bad in (kv.window_start, kv.slot):
        with pytest.raises(ValueError):
            bad(-1)


def test_append_errors_change_nothing(rng):
    kv = KVRing(2, 4, 2, 3)
    kv.append(0, 0, rows(rng, kv, 2), rows(rng, kv, 2))
    k_before, v_before = kv.k.copy(), kv.v.copy()
    r1, r5 = rows(rng, kv, 1), rows(rng, kv, 5)
    with pytest.raises(IndexError, match="position 3 of layer 0.*n_pos=2"):
        kv.append(0, 3, r1, r1)  # skip ahead
    with pytest.raises(IndexError, match="n_pos=2"):
        kv.append(0, 1, r1, r1)  # rewrite without truncate
    with pytest.raises(IndexError, match="layer -1"):
        kv.append(-1, 0, r1, r1)
    with pytest.raises(IndexError, match="layer 2"):
        kv.append(2, 0, r1, r1)
    with pytest.raises(ValueError, match="capacity 4"):
        kv.append(1, 0, r5, r5)  # more tokens than slots
    with pytest.raises(ValueError):
        kv.append(1, 0, r5[:0], r5[:0])
    with pytest.raises(TypeError):
        kv.append(1, 0, r1.astype(np.float64), r1)
    with pytest.raises(TypeError):
        kv.append(1, 0, r1.tolist(), r1)
    with pytest.raises(ValueError):
        kv.append(1, 0, r1, r5[:2])  # token counts differ
    with pytest.raises(ValueError):
        kv.append(1, 0, r1[:, :5], r1[:, :5])  # short rows
    with pytest.raises(ValueError):
        kv.append(1, 0, r1.reshape(1, 2, 3), r1)
    with pytest.raises(ValueError, match="C-contiguous"):
        wide = np.zeros((2, 12), np.float32)
        kv.append(1, 0, wide[:, ::2], wide[:, ::2])
    assert kv.n_pos == (2, 0)
    assert np.array_equal(kv.k, k_before) and np.array_equal(kv.v, v_before)


def test_truncate_before_a_wrap_works_anywhere(rng):
    kv = KVRing(2, 8, 1, 2)
    kv.append(0, 0, rows(rng, kv, 6), rows(rng, kv, 6))
    kv.append(1, 0, rows(rng, kv, 3), rows(rng, kv, 3))
    kv.truncate(4)
    assert kv.n_pos == (4, 3)  # a layer shorter than n_pos stays as it is
    kv.truncate(100)
    assert kv.n_pos == (4, 3)
    new = rows(rng, kv, 2)
    kv.append(0, 4, new, new)
    assert kv.n_pos == (6, 3)
    assert np.array_equal(kv.k[0, 4:6].reshape(2, 2), as_f16(new))
    with pytest.raises(ValueError):
        kv.truncate(-1)


def test_truncate_after_a_wrap(rng):
    kv = KVRing(2, 4, 1, 2)
    kv.append(0, 0, rows(rng, kv, 4), rows(rng, kv, 4))
    kv.append(0, 4, rows(rng, kv, 2), rows(rng, kv, 2))  # 4 and 5 overwrote 0 and 1
    kv.append(1, 0, rows(rng, kv, 2), rows(rng, kv, 2))
    assert kv.held_from == (2, 0)
    k_before = kv.k.copy()
    # the window of position 4 is 1..4, and position 1 is gone: nothing changes
    with pytest.raises(IndexError, match="layer 0.*holds positions 2 .. 5"):
        kv.truncate(4)
    with pytest.raises(IndexError):
        kv.truncate(1)
    assert kv.n_pos == (6, 2)
    assert np.array_equal(kv.k, k_before)
    # dropping the newest position is fine (window of 5 is 2..4)...
    kv.truncate(5)
    assert kv.n_pos == (5, 2)
    # ...but not twice: position 1's slot holds (the forgotten) position 5
    with pytest.raises(IndexError):
        kv.truncate(4)
    assert kv.n_pos == (5, 2)
    # re-append position 5, then start over
    again = rows(rng, kv, 1)
    kv.append(0, 5, again, again)
    assert np.array_equal(kv.k[0, 1].ravel(), as_f16(again[0]))
    kv.truncate(0)
    assert kv.n_pos == (0, 0) and kv.held_from == (0, 0)
    fresh = rows(rng, kv, 4)
    kv.append(0, 0, fresh, fresh)
    assert np.array_equal(kv.k[0].reshape(4, 2), as_f16(fresh))
    kv.truncate(2)  # no wrap since the reset
    assert kv.n_pos == (2, 0)


def test_storage_views_outlive_the_ring(rng):
    kv = KVRing(1, 2, 1, 2)
    r = rows(rng, kv, 2)
    kv.append(0, 0, r, r)
    k = kv.k
    del kv
    assert np.array_equal(k[0].reshape(2, 2), as_f16(r))


def mapped_kib(a: np.ndarray, field: str) -> int:
    """The sum of `field` (kB) over the /proc/self/smaps mappings that a's data overlaps
    (an madvise splits one map into several)."""
    lo = a.__array_interface__["data"][0]
    hi = lo + a.nbytes
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if head.endswith(":"):
            if inside and head == field + ":":
                total += int(line.split()[1])
            continue
        start, end = (int(x, 16) for x in head.split("-"))
        inside = start < hi and end > lo
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_a_new_ring_commits_only_the_pages_it_reaches(rng):
    """A conversation's ring of 8192 positions (SmolLM2's 30 layers, 94 MiB per half)
    after one token in every layer holds a few small pages per layer, not a huge page
    (numpy's default for large arrays: 2 MiB zeroed at the first append into each)."""
    kv = KVRing(30, 8192, 3, 64)
    for layer in range(30):
        kv.append(layer, 0, rows(rng, kv, 1), rows(rng, kv, 1))
    for storage in (kv.k, kv.v):
        assert mapped_kib(storage, "AnonHugePages") == 0
        assert mapped_kib(storage, "Rss") <= 30 * 2 * 4, mapped_kib(storage, "Rss")


def test_a_ring_larger_than_the_address_space_is_a_memory_error():
    """2^49 bytes of K (more than x86-64's user address space): MemoryError, naming it."""
    with pytest.raises(MemoryError, match="bytes for a KV ring"):
        KVRing(1, 2**20, 2**14, 2**14)
