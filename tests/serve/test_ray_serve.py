"""realm_ext.serve as a Ray Serve deployment: two replicas on a local single-node Ray
cluster on 127.0.0.1, each with its own model copy, answering through Ray's proxy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.serve_support import guest_params

ray = pytest.importorskip(
    "ray", reason="ray is not installed (pip install 'realm-ext[ray]'): Ray Serve untested"
)
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed: Ray Serve untested")

from realm_ext.serve import ModelSpec, ServeConfig, TenantConfig  # noqa: E402
from realm_ext.serve.ray_serve import deployment  # noqa: E402
from realm_ext.serve.server import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_cluster():
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": env},  # the workers import this checkout's realm_ext
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_the_same_app(ray_cluster, tiny_chat, direct):
    import httpx
    import openai

    tenants = [TenantConfig("alice", "sk-ray-alice", max_concurrent=2)]
    config = ServeConfig([ModelSpec("tiny", tiny_chat)], tenants, device="cpu", threads=1)
    serve.run(deployment(config, num_replicas=2, ray_actor_options={"num_cpus": 0.5}), route_prefix="/")
    status = serve.status().applications["default"].deployments["realm-ext"]
    assert status.replica_states.get("RUNNING") == 2
    client = openai.OpenAI(base_url=ray_cluster + "/v1", api_key="sk-ray-alice", max_retries=0)
    prompts = [f"Replica test {i}" for i in range(6)]
    for p in prompts:
        r = client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0)
        assert r.choices[0].text == direct.generate(p, **guest_params(12))[0]
        assert r.usage.prompt_tokens == direct.prompt_tokens(p)
    stream = client.completions.create(
        model="tiny", prompt=prompts[0], max_tokens=12, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].text for ch in stream) == direct.generate(prompts[0], **guest_params(12))[0]
    bad = httpx.post(ray_cluster + "/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "missing_api_key"
    assert httpx.get(ray_cluster + "/health").json() == {"status": "ok", "models": 1}
