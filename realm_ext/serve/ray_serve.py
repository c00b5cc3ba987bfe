"""The same ASGI app as a Ray Serve deployment (`pip install 'realm-ext[ray]'`).

    from ray import serve
    from realm_ext.serve import ServeConfig, parse_model_spec
    from realm_ext.serve.ray_serve import deployment

    config = ServeConfig([parse_model_spec("smollm2=/models/smollm2.gguf")], tenants)
    serve.run(deployment(config, num_replicas=4), route_prefix="/")

Each replica is one Ray actor that builds its own app and `ServerState` when it starts
(`serve.ingress` with a builder): its own Host with one copy of each model, its
tenants' guest pools and their KV rings, its own limits and metrics. Ray Serve's proxy
spreads requests over the replicas; nothing here is cluster code. docs/SCALE.md says
how a fleet is laid out and what that means for limits and for the reuse of a
conversation's ring.
"""

from __future__ import annotations

from typing import Any

from realm_ext.serve.app import ServerState, create_app
from realm_ext.serve.config import ServeConfig


def deployment(
    config: ServeConfig,
    num_replicas: int = 1,
    name: str = "realm-ext",
    ray_actor_options: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
) -> Any:
    """A bound Ray Serve application (for `serve.run`) of `num_replicas` replicas, each
    serving `config` with its own ServerState. ray_actor_options: per replica (default
    one CPU; give "num_gpus": 1 for config.device "cuda"). max_ongoing_requests: what
    Ray lets one replica hold at once (default: the sum of the tenants' concurrency
    limits, so that the replica's own 429s, not Ray's queue, bound a tenant)."""
    from ray import serve

    limit = max_ongoing_requests or max(1, sum(t.max_concurrent for t in config.tenants))

    def build_app() -> Any:  # run in each replica as it starts: a state of its own
        return create_app(ServerState(config), own_state=True)

    @serve.deployment(
        name=name,
        num_replicas=num_replicas,
        ray_actor_options=ray_actor_options or {"num_cpus": 1},
        max_ongoing_requests=limit,
    )
    @serve.ingress(build_app)
    class RealmReplica:
        pass

    return RealmReplica.bind()  # type: ignore[attr-defined]
