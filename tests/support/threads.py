"""Running test bodies in parallel threads, all released at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_together(targets: list[Callable[[], Any]], timeout: float = 300) -> list:
    """Run each target in its own thread, all released at once by a barrier; their
    results or the exceptions they raised, in order."""
    barrier = threading.Barrier(len(targets))
    out: list = [None] * len(targets)

    def body(i: int) -> None:
        barrier.wait()
        try:
            out[i] = targets[i]()
        except BaseException as e:  # noqa: BLE001 - handed back
            out[i] = e

    ts = [threading.Thread(target=body, args=(i,)) for i in range(len(targets))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
        assert not t.is_alive()
    return out
