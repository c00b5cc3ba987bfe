"""The bounded stream between a generating guest and the consumer of `Guest.generate`.

The guest runs in a worker thread and hands each piece to `put` from inside its
realm_emit import; the consumer takes them with `take`. At most MAX_BYTES (the host
memory of the queued str objects, sys.getsizeof) in MAX_PIECES pieces wait at once.
When the consumer falls behind, `put` waits, so the guest waits inside realm_emit
(back-pressure), until there is room, the consumer goes away, or the guest call's
deadline passes. A piece larger than MAX_BYTES passes only into an empty stream, so
the stream holds at most MAX_BYTES plus one piece (and a piece is at most the guest's
memory).
"""

from __future__ import annotations

import collections
import sys
import threading
import time

MAX_BYTES = 1 << 20
MAX_PIECES = 4096
WAKE_S = 0.005  # a waiting consumer is woken, or wakes to look, at most this often (seconds)


class PieceStream:
    """Pieces from one producer thread to one consumer, bounded (see the module)."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_pieces: int = MAX_PIECES):
        self.max_bytes, self.max_pieces = max_bytes, max_pieces
        self.timed_out = False  # put gave up: the deadline passed while the stream was full
        self._cv = threading.Condition()
        self._items: collections.deque[str] = collections.deque()
        self._bytes = 0
        self._closed = False  # the consumer is gone
        self._ended = False  # the producer is done
        self._error: BaseException | None = None
        self._last_wake = 0.0

    def put(self, piece: str, deadline: float | None = None) -> bool:
        """Queue a piece, waiting while the stream is full. False: stop producing (the
        consumer is gone, or `deadline`, a time.monotonic() value, passed)."""
        size = sys.getsizeof(piece)
        with self._cv:
            while (
                self._items
                and not self._closed
                and (self._bytes + size > self.max_bytes or len(self._items) >= self.max_pieces)
            ):
                self._cv.notify_all()  # the consumer has plenty to take
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    self.timed_out = True
                    return False
                self._cv.wait(timeout)
            if self._closed:
                return False
            self._items.append(piece)
            self._bytes += size
            # Waking the consumer costs more than a token of a small model: at most every WAKE_S.
            now = time.monotonic()
            if now - self._last_wake >= WAKE_S:
                self._last_wake = now
                self._cv.notify_all()
        return True

    def end(self, error: BaseException | None = None) -> None:
        """The producer is done; `error`, if any, is raised to the consumer after the pieces."""
        with self._cv:
            self._ended, self._error = True, error
            self._cv.notify_all()

    def take(self) -> list[str]:
        """Every waiting piece (waiting for at least one); [] once the producer has ended
        and everything was taken, or its error then."""
        with self._cv:
            while not self._items and not self._ended:
                self._cv.wait(WAKE_S)  # a put may have skipped its wake-up
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._cv.notify_all()  # room for the producer
            if not items and self._error is not None:
                error, self._error = self._error, None
                raise error
        return items

    def close(self) -> None:
        """The consumer is gone: a waiting or later put returns False."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
