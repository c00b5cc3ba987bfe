"""Running the app under uvicorn, with a clean shutdown.

On SIGINT / SIGTERM (or `BackgroundServer.stop`) the server stops accepting
connections and refuses new requests (503; /health says "draining"); streams in flight
go on to their end, and any still running after the drain timeout stop their guest
and end with a final error event and `data: [DONE]`. Then the pools, the guests and
the Host are closed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from realm_ext.serve.app import ServerState, create_app

log = logging.getLogger("realm_ext.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, which tells the app to drain before it waits for connections."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.realm_state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.realm_state.begin_drain()
        await super().shutdown(sockets)


def _uvicorn_config(state: ServerState, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    app = create_app(state, own_state=True)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # one line per request from realm_ext.serve instead (never the key)
        # the drain timeout first, then the streams' final events
        timeout_graceful_shutdown=int(state.config.drain_timeout) + 5,
        log_config=None,
        **kwargs,
    )


def run(state: ServerState, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Serve `state` until interrupted (signals handled by uvicorn), then close it."""
    server = _Server(_uvicorn_config(state, host, port, **kwargs), state)
    try:
        server.run()
    finally:
        state.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class BackgroundServer:
    """The server in a background thread on a free port of 127.0.0.1 (tests, embedding):

    with BackgroundServer(state) as srv:
        openai.OpenAI(base_url=srv.url + "/v1", api_key=...)
    """

    def __init__(self, state: ServerState, host: str = "127.0.0.1", port: int | None = None):
        self.state = state
        self.host, self.port = host, port or free_port(host)
        self.server = _Server(_uvicorn_config(state, self.host, self.port), state)
        self._thread = threading.Thread(target=self.server.run, name="realm-serve-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        t_end = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > t_end:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Drain and stop (see the module), then close the state."""
        self.server.should_exit = True
        self._thread.join(timeout)
        self.state.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
