"""The KV ring's bookkeeping in Python, for rings whose storage is not host memory.

`RingBook` keeps what csrc/cpu/kv_ring.c keeps in its C struct (n_pos and held_from per
layer) and applies the same rules with the same errors as the Cython `KVRing`: append
positions in order, truncate only where every shortened layer still holds the window of
the new end. The CUDA backend's `DeviceKVRing` is a RingBook plus device storage; the
rules are restated here rather than called in C because the C struct insists on host
storage for appends (and this is a handful of integer comparisons per layer call).

See csrc/cpu/kv_ring.c's header for why held_from is stored, not derived.
"""

from __future__ import annotations

import operator

MAX_CAPACITY = 1 << 24  # REALM_KV_RING_MAX_CAPACITY
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


class RingBook:
    """n_pos / held_from of a ring of `capacity` slots per layer (see KVRing)."""

    def __init__(self, n_layer: int, capacity: int, n_head_kv: int, head_dim: int):
        dims = {"n_layer": n_layer, "capacity": capacity, "n_head_kv": n_head_kv, "head_dim": head_dim}
        for name, value in dims.items():
            value = dims[name] = operator.index(value)
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
            if name != "capacity" and value > _INT32_MAX:
                raise ValueError(f"{name} {value} is too large")
        if dims["capacity"] > MAX_CAPACITY:
            raise ValueError(f"capacity {dims['capacity']} exceeds the maximum {MAX_CAPACITY}")
        self.n_layer: int = dims["n_layer"]
        self.capacity: int = dims["capacity"]
        self.n_head_kv: int = dims["n_head_kv"]
        self.head_dim: int = dims["head_dim"]
        self._n_pos = [0] * self.n_layer
        self._held_from = [0] * self.n_layer

    @property
    def n_pos(self) -> tuple[int, ...]:
        """Per layer, the next position to append."""
        return tuple(self._n_pos)

    @property
    def held_from(self) -> tuple[int, ...]:
        """Per layer, the oldest position whose slot still holds it."""
        return tuple(self._held_from)

    def window_start(self, pos: int) -> int:
        """First position of the attention window at position pos."""
        pos = operator.index(pos)
        if not 0 <= pos <= _INT64_MAX:
            raise ValueError(f"position must be >= 0, got {pos}")
        return max(0, pos - self.capacity + 1)

    def slot(self, pos: int) -> int:
        """The slot (index into axis 1 of the storage) that holds position pos."""
        pos = operator.index(pos)
        if pos < 0:
            raise ValueError(f"position must be >= 0, got {pos}")
        return pos % self.capacity

    def check_reserve(self, layers: range, pos: int, n_tokens: int) -> None:
        """Raise as reserve() would for each layer of `layers`, changing nothing."""
        if not 1 <= n_tokens <= self.capacity:
            raise ValueError(f"cannot append {n_tokens} tokens: 1 to capacity {self.capacity} at a time")
        for layer in layers:
            if not 0 <= layer < self.n_layer:
                raise IndexError(f"layer {layer} out of range: the ring has {self.n_layer} layers")
            if not 0 <= pos <= _INT64_MAX - n_tokens:
                raise IndexError(f"position {pos} out of range")
            if pos != self._n_pos[layer]:
                raise IndexError(
                    f"cannot append at position {pos} of layer {layer}: the next position is "
                    f"n_pos={self._n_pos[layer]} (capacity {self.capacity}); truncate first to rewrite "
                    "earlier positions"
                )

    def reserve(self, layer: int, pos: int, n_tokens: int) -> None:
        """Claim positions pos .. pos+n_tokens-1 of `layer` (realm_kv_reserve): pos must be
        n_pos[layer] and 1 <= n_tokens <= capacity. The caller then writes their slots."""
        self.check_reserve(range(layer, layer + 1), pos, n_tokens)
        self._n_pos[layer] = pos + n_tokens
        self._held_from[layer] = max(self._held_from[layer], pos + n_tokens - self.capacity)

    def truncate(self, n_pos: int) -> None:
        """Forget positions >= n_pos in every layer. Raises IndexError, changing nothing,
        when a layer it shortens no longer holds the window of position n_pos."""
        n_pos = operator.index(n_pos)
        if n_pos < 0:
            raise ValueError(f"n_pos must be >= 0, got {n_pos}")
        n_pos = min(n_pos, _INT64_MAX)
        start = self.window_start(n_pos)
        for layer, (n, held) in enumerate(zip(self._n_pos, self._held_from, strict=True)):
            if n_pos < n and n_pos > 0 and start < held:
                raise IndexError(
                    f"cannot truncate to n_pos={n_pos}: its window starts at position {start}, but layer "
                    f"{layer} (n_pos={n}, capacity {self.capacity}) holds positions {held} .. {n - 1} only"
                )
        self._n_pos = [min(n, n_pos) for n in self._n_pos]
        self._held_from = [min(h, n) for h, n in zip(self._held_from, self._n_pos, strict=True)]

    def check_window(self, layer: int, pos: int) -> None:
        """IndexError unless the window of pos is intact in `layer` (realm_attention's check)."""
        if self.window_start(pos) < self._held_from[layer]:
            raise IndexError(
                f"the window of position {pos} starts at {self.window_start(pos)}, but layer {layer} "
                f"holds positions {self._held_from[layer]} .. {self._n_pos[layer] - 1} only "
                f"(capacity {self.capacity})"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_layer={self.n_layer}, capacity={self.capacity}, "
            f"n_head_kv={self.n_head_kv}, head_dim={self.head_dim}, n_pos={self.n_pos})"
        )
