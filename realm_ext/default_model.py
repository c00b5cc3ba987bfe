"""The built-in default model: made on first use into the user cache directory, so
`realm-ext generate` works on a fresh machine with nothing to download.

Its weights are deterministic random numbers (realm_ext.model_maker): the text it
writes is word salad from its vocabulary, but every step of the real path runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from realm_ext.model_maker import make_model

PRESET, TYPE, SEED = "small", "Q4_K_M", 0
CACHE_ENV = "REALM_EXT_CACHE"  # overrides the cache directory


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("realm-ext"))


def default_model_path(progress: bool = True) -> Path:
    """The default model's file, made (once; atomically) when missing."""
    path = cache_dir() / f"default-{PRESET}-{TYPE}-seed{SEED}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            make_model(tmp, PRESET, TYPE, seed=SEED, progress=progress)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path
