"""The guest's allocator (realm_alloc / realm_free / realm_heap_bytes)."""

from __future__ import annotations


def alloc(g, n: int) -> int:
    return g.call("realm_alloc", n) & 0xFFFFFFFF


def test_alignment_and_accounting(tiny_guest, rng) -> None:
    g = tiny_guest
    base = g.call("realm_heap_bytes")
    ptrs = [alloc(g, int(n)) for n in rng.integers(0, 5000, 50)]
    assert all(p and p % 16 == 0 for p in ptrs)
    assert len(set(ptrs)) == len(ptrs)
    assert g.call("realm_heap_bytes") > base
    for p in rng.permutation(ptrs):
        g.call("realm_free", int(p))
    assert g.call("realm_heap_bytes") == base


def test_reuse_and_merge(tiny_guest) -> None:
    g = tiny_guest
    a = alloc(g, 100_000)
    g.call("realm_free", a)
    assert alloc(g, 100_000) == a  # the same block again
    g.call("realm_free", a)
    pages = g.memory_pages
    parts = [alloc(g, 30_000) for _ in range(3)]
    for p in parts:
        g.call("realm_free", p)
    big = alloc(g, 90_000)  # fits in the three freed blocks merged
    assert g.memory_pages == pages
    g.call("realm_free", big)


def test_out_of_memory_is_zero(tiny_guest) -> None:
    g = tiny_guest
    before = g.call("realm_heap_bytes")
    assert alloc(g, 0xFFFFFFFF) == 0
    assert alloc(g, 0x7FFFFFFF) == 0
    assert alloc(g, 200 * 2**20) == 0  # past the guest's 64 MiB cap
    assert g.call("realm_heap_bytes") == before
    p = alloc(g, 1000)  # and it still works
    assert p
    g.call("realm_free", p)


def test_bad_frees_are_ignored(tiny_guest) -> None:
    g = tiny_guest
    before = g.call("realm_heap_bytes")
    p = alloc(g, 64)
    for bad in (0, 1, 16, p + 16, p - 16, 0x7FFFFFF0, 0xFFFFFFF0):
        g.call("realm_free", bad)
    g.call("realm_free", p)
    g.call("realm_free", p)  # twice
    assert g.call("realm_heap_bytes") == before
