"""Helpers of the server tests (tests/serve): direct guests to compare with, a running
server's clients and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai

from realm_ext import Host
from realm_ext.serve import ServerState
from realm_ext.serve.server import BackgroundServer

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-abcdefghij", "eve": "sk-eve-hostile-guest"}


class Direct:
    """What a guest of its own gives for the same request, straight through the API."""

    def __init__(self, host: Host, path: Path):
        self.model = host.load(path)
        self.guest = host.guest(models=[self.model], engine="wasmtime")

    def generate(self, prompt: str, **params: Any) -> tuple[str, int]:
        text = "".join(self.guest.generate(prompt, **params))
        assert self.guest.last_stats is not None
        return text, self.guest.last_stats.tokens

    def prompt_tokens(self, prompt: str) -> int:
        """realm_generate's prompt count, through the guest's chat call (the same tokenization)."""
        self.guest.chat_to(prompt, lambda piece: True, max_tokens=1)
        assert self.guest.last_stats is not None
        n = self.guest.last_stats.prompt_tokens
        self.guest.reset_chat()
        return n


# OpenAI's sampling mapped onto the guest's: what the server passes for a request that
# gives temperature, top_p and seed only
def guest_params(
    max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0
) -> dict[str, Any]:
    return dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, top_k=0, min_p=0.0)


class Served:
    """A running server and clients for it."""

    def __init__(self, srv: BackgroundServer):
        self.srv = srv
        self.state: ServerState = srv.state
        self.url = srv.url

    def client(self, key: str | None = None, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "unused", max_retries=0, **kwargs)

    def post(self, path: str, body: Any, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kwargs.setdefault("timeout", 60)
        return httpx.post(self.url + path, json=body, headers=headers, **kwargs)

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers=headers, timeout=60)

    def pool(self, tenant: str, model: str) -> Any:
        return next(p for p in self.state.pools() if (p.tenant.name, p.model_name) == (tenant, model))

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics, by name and labels (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0
