"""Shared fixtures: fresh random generators and tiny models built on demand."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from support.wasm_support import ENGINE_NAMES, require_engine

from realm_ext.model_maker import make_model


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator with a fresh seed per test; the seed is reported on failure, and
    REALM_TEST_SEED=<seed> replays it."""
    seed = int(os.environ.get("REALM_TEST_SEED") or secrets.randbits(64))
    request.node.user_properties.append(("rng_seed", seed))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def float_order() -> Iterator[Callable[[str], str]]:
    """float_order(name) forces the kernels' float order ('avx512' or 'avx2', ops.h) for
    the rest of the test; the CPU's is restored after it."""
    from realm_ext import kernels

    try:
        yield kernels.set_float_order
    finally:
        kernels.set_float_order(None)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """model_path(type="F32", preset="tiny", seed=0, tied=False) -> a GGUF, made once per session."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("models")

    def get(type: str = "F32", preset: str = "tiny", seed: int = 0, tied: bool = False) -> Path:  # noqa: A002
        key = (type, preset, seed, tied)
        if key not in cache:
            name = f"{preset}-{type}-s{seed}{'-tied' if tied else ''}.gguf"
            cache[key] = make_model(root / name, preset, type, seed=seed, tied=tied)
        return cache[key]

    return get


# ---- guests and engines ----------------------------------------------------------------


@pytest.fixture(params=ENGINE_NAMES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine in turn; one missing from this Python is skipped with the reason."""
    return require_engine(request.param)
