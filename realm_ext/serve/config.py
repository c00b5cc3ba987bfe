"""What `realm-ext serve` runs: the models (by name) and the tenants (keys, grants, limits).

A tenant is one API key, the model names it may use, and its limits: concurrent
requests (also the size of its guest pool per model), guest linear memory, seconds per
request (the guest's time limit), tokens per minute (prompt + completion, over a
sliding 60 s window; 0: none), the KV ring size of its guests (`n_ctx`), and
optionally a guest `.wasm` of its own (its own decoding logic, sandboxed like the
shipped guest and granted the same models through the same Host).

Configured from the command line (`--api-key KEY`: one tenant; no key at all: an open
server, one anonymous tenant granted every model) or from a TOML file (`--tenants`,
read with tomllib):

    [defaults]                  # optional: each tenant's limits unless it sets its own
    max_concurrent = 4
    memory_limit = "64MiB"
    time_limit = 30.0
    tokens_per_minute = 0       # 0: no limit
    n_ctx = 2048

    [tenants.alice]
    key = "sk-alice-..."        # or key_env = "ALICE_KEY" (the key from the environment)
    models = ["smollm2"]        # names as /v1/models lists them; ["*"]: every model
    tokens_per_minute = 20000

    [tenants.bob]
    key_env = "BOB_KEY"
    models = ["smollm2", "tiny"]
    max_concurrent = 1
    wasm = "guests/bob.wasm"    # relative to this file
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from realm_ext.engines.base import MAX_MEMORY, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport
    import tomli as tomllib

ALL_MODELS = "*"
OPEN_TENANT = "anonymous"  # the one tenant of a server with no key configured

DEFAULT_MAX_CONCURRENT = 4
DEFAULT_MEMORY_LIMIT = 64 << 20
DEFAULT_TIME_LIMIT = 60.0
DEFAULT_N_CTX = 2048


class ConfigError(ValueError):
    """A tenants file or a --model option that cannot be used (the message says why)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model the server loads: its name in /v1/models and its GGUF file."""

    name: str
    path: Path


def parse_model_spec(spec: str | os.PathLike[str]) -> ModelSpec:
    """`NAME=PATH`, or a PATH whose file stem is the name."""
    text = os.fspath(spec)
    name, sep, rest = text.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        path = Path(rest)
    else:
        name, path = Path(text).stem, Path(text)
    if not name:
        raise ConfigError(f"--model {text!r}: no model name")
    return ModelSpec(name, path)


@dataclass(frozen=True)
class TenantConfig:
    """One tenant (the module docstring). key None: the open server's anonymous tenant."""

    name: str
    key: str | None
    models: tuple[str, ...] = (ALL_MODELS,)
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    time_limit: float = DEFAULT_TIME_LIMIT
    tokens_per_minute: int = 0
    n_ctx: int = DEFAULT_N_CTX
    wasm: Path | None = None

    def __post_init__(self) -> None:
        where = f"tenant {self.name!r}"
        if self.key is not None and not self.key:
            raise ConfigError(f"{where}: an empty key")
        if not isinstance(self.max_concurrent, int) or self.max_concurrent < 1:
            raise ConfigError(f"{where}: max_concurrent must be an integer >= 1")
        if not 0 < self.memory_limit <= MAX_MEMORY:
            raise ConfigError(f"{where}: memory_limit must be in (0, 4GiB]")
        if not self.time_limit > 0:
            raise ConfigError(f"{where}: time_limit must be > 0 seconds")
        if not isinstance(self.tokens_per_minute, int) or self.tokens_per_minute < 0:
            raise ConfigError(f"{where}: tokens_per_minute must be an integer >= 0 (0: no limit)")
        if not isinstance(self.n_ctx, int) or not 1 <= self.n_ctx <= 1 << 20:
            raise ConfigError(f"{where}: n_ctx must be an integer in 1..{1 << 20}")

    def grants(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models

    def __repr__(self) -> str:  # never the key
        return (
            f"TenantConfig(name={self.name!r}, models={self.models!r}, max_concurrent={self.max_concurrent})"
        )


@dataclass
class ServeConfig:
    """Everything the app needs: models, tenants, the host's device and threads."""

    models: list[ModelSpec]
    tenants: list[TenantConfig] = field(default_factory=list)
    device: str = "cpu"
    threads: int | None = None
    drain_timeout: float = 10.0  # seconds in-flight streams get at shutdown before a final event

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if not names:
            raise ConfigError("no model to serve")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"two models named {dup[0]!r}: name them with NAME=PATH")
        tnames = [t.name for t in self.tenants]
        if len(set(tnames)) != len(tnames):
            raise ConfigError("two tenants with the same name")
        keys = [t.key for t in self.tenants]
        if None in keys and len(keys) > 1:
            raise ConfigError("an open (keyless) tenant cannot sit beside tenants with keys")
        if len({k for k in keys if k is not None}) != sum(k is not None for k in keys):
            raise ConfigError("two tenants share a key")
        for t in self.tenants:
            for m in t.models:
                if m != ALL_MODELS and m not in names:
                    raise ConfigError(f"tenant {t.name!r} is granted {m!r}, which is not served ({names})")
        if not self.tenants:
            self.tenants = [TenantConfig(OPEN_TENANT, None)]

    @property
    def is_open(self) -> bool:
        """No key configured: every request is the anonymous tenant's."""
        return all(t.key is None for t in self.tenants)


_TENANT_KEYS = {
    "key",
    "key_env",
    "models",
    "max_concurrent",
    "memory_limit",
    "time_limit",
    "tokens_per_minute",
    "n_ctx",
    "wasm",
}
_LIMIT_KEYS = {"max_concurrent", "memory_limit", "time_limit", "tokens_per_minute", "n_ctx"}


def _limits(where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in _LIMIT_KEYS & table.keys():
        v = table[k]
        if k == "memory_limit":
            try:
                v = parse_size(v)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: memory_limit: {e}") from None
        elif k == "time_limit":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: time_limit must be a number of seconds")
            v = float(v)
        elif isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}: {k} must be an integer")
        out[k] = v
    return out


def tenants_from_toml(data: Mapping[str, Any], base: Path = Path(".")) -> list[TenantConfig]:
    """The tenants of a parsed tenants file (the module docstring); `base` is the folder
    relative wasm paths start from."""
    unknown = set(data) - {"defaults", "tenants"}
    if unknown:
        raise ConfigError(f"unknown table(s) {sorted(unknown)} (expected [defaults] and [tenants.NAME])")
    defaults_table = data.get("defaults", {})
    if not isinstance(defaults_table, Mapping) or set(defaults_table) - _LIMIT_KEYS:
        raise ConfigError(f"[defaults] takes only {sorted(_LIMIT_KEYS)}")
    template = TenantConfig("defaults", None, **_limits("[defaults]", defaults_table))
    tenants = data.get("tenants", {})
    if not isinstance(tenants, Mapping) or not tenants:
        raise ConfigError("no [tenants.NAME] table")
    out = []
    for name, table in tenants.items():
        where = f"[tenants.{name}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} is not a table")
        extra = set(table) - _TENANT_KEYS
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}")
        if ("key" in table) == ("key_env" in table):
            raise ConfigError(f"{where}: give exactly one of key and key_env")
        if "key_env" in table:
            key = os.environ.get(str(table["key_env"]))
            if not key:
                raise ConfigError(f"{where}: the environment variable {table['key_env']} is not set")
        else:
            key = table["key"]
            if not isinstance(key, str):
                raise ConfigError(f"{where}: key must be a string")
        models = table.get("models")
        if not isinstance(models, Sequence) or isinstance(models, str) or not models:
            raise ConfigError(f'{where}: models must be a non-empty list of model names (["*"]: every model)')
        if not all(isinstance(m, str) for m in models):
            raise ConfigError(f"{where}: models must be strings")
        wasm = table.get("wasm")
        wasm_path = None
        if wasm is not None:
            wasm_path = Path(wasm) if Path(wasm).is_absolute() else base / wasm
            if not wasm_path.is_file():
                raise ConfigError(f"{where}: the guest {wasm_path} does not exist")
        out.append(
            replace(
                template,
                name=str(name),
                key=key,
                models=tuple(models),
                wasm=wasm_path,
                **_limits(where, table),
            )
        )
    return out


def load_tenants(path: str | os.PathLike[str]) -> list[TenantConfig]:
    """The tenants of a tenants.toml file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    try:
        return tenants_from_toml(data, p.parent)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
