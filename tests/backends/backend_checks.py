"""Checks every backend must pass, shared by test_cpu.py and test_cuda.py."""

from __future__ import annotations

import numpy as np
import pytest

from realm_ext.model import Model


def check_bad_calls_raise(backend, m: Model, kv) -> None:
    """Misshaped, mistyped and out-of-range calls raise, naming the problem."""
    c = m.config
    x = np.zeros((2, c.n_embd), np.float32)
    with pytest.raises(ValueError, match="not a whole number of rows"):
        backend.forward_layer(m, 0, np.zeros(c.n_embd + 1, np.float32), 0, kv, x)
    with pytest.raises(ValueError, match="float32"):
        backend.forward_layer(m, 0, x.astype(np.float64), 0, kv, x)
    with pytest.raises(IndexError):
        backend.forward_layer(m, c.n_layer, x, 0, kv, x)
    with pytest.raises(IndexError):
        backend.forward_layer(m, 0, x, 5, kv, x)  # skips ahead of the ring
    with pytest.raises(IndexError):
        backend.forward_embedding(m, np.array([c.n_vocab], np.int32), x[:1])
