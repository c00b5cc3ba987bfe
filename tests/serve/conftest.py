"""Servers on a real socket of 127.0.0.1 (uvicorn in a background thread, a free port),
tiny random models, and direct guests to compare the server's answers with."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI") != "true":  # CI installs them (the test extra): a missing one fails there
    for _name in ("fastapi", "uvicorn", "prometheus_client", "openai", "httpx"):
        pytest.importorskip(_name, reason=f"{_name} is not installed: pip install -e '.[serve,test]'")

from support.serve_support import Direct, Served  # noqa: E402
from support.wasm_support import wat  # noqa: E402

from realm_ext import Host  # noqa: E402
from realm_ext.model_maker import make_model  # noqa: E402
from realm_ext.serve import ModelSpec, ServeConfig, ServerState, TenantConfig  # noqa: E402
from realm_ext.serve.server import BackgroundServer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset with a ChatML template (Q8_0; made once per session)."""
    path = tmp_path_factory.mktemp("serve") / "tiny.gguf"
    return make_model(path, "tiny", "Q8_0", seed=3, chat_template="chatml")


@pytest.fixture(scope="session")
def tiny_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model (another seed), for grants."""
    path = tmp_path_factory.mktemp("serve") / "other.gguf"
    return make_model(path, "tiny", "Q8_0", seed=4, chat_template="chatml")


@pytest.fixture(scope="session")
def hostile_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/wat/hostile.wat, compiled."""
    path = tmp_path_factory.mktemp("serve") / "hostile.wasm"
    path.write_bytes(wat("hostile"))
    return path


@pytest.fixture(scope="session")
def host() -> Iterator[Host]:
    """One CPU host (one kernel thread) shared by the servers and the direct guests."""
    with Host(device="cpu", n_threads=1) as h:
        yield h


@pytest.fixture(scope="session")
def direct(host: Host, tiny_chat: Path) -> Direct:
    return Direct(host, tiny_chat)


StartServer = Callable[..., Served]


@pytest.fixture
def start_server(host: Host) -> Iterator[StartServer]:
    """start_server(models={name: path}, tenants=[TenantConfig...], **config) -> Served;
    stopped (drained, closed) at the end of the test."""
    running: list[BackgroundServer] = []

    def start(models: dict[str, Path], tenants: Sequence[TenantConfig] = (), **config: Any) -> Served:
        cfg = ServeConfig([ModelSpec(n, p) for n, p in models.items()], list(tenants), threads=1, **config)
        srv = BackgroundServer(ServerState(cfg, host=host)).start()
        running.append(srv)
        return Served(srv)

    yield start
    for srv in running:
        srv.stop()
