"""`realm-ext serve`: an OpenAI-compatible HTTP server where every request runs in a
sandboxed guest (`pip install 'realm-ext[serve]'`).

    from realm_ext.serve import ServeConfig, ServerState, create_app, parse_model_spec

    state = ServerState(ServeConfig(models=[parse_model_spec("tiny=tiny.gguf")]))
    app = create_app(state, own_state=True)  # any ASGI server; realm_ext.serve.server runs uvicorn

Modules: config (models, tenants, tenants.toml), tenants (keys, limits), pool (guests per
tenant and model), generation (a request in a worker thread), schemas (OpenAI bodies and
errors), metrics (Prometheus), app (routes), server (uvicorn, clean shutdown), ray_serve
(a Ray Serve deployment of the same app).
"""

from __future__ import annotations

from realm_ext.serve.app import ServerState, create_app
from realm_ext.serve.config import (
    ConfigError,
    ModelSpec,
    ServeConfig,
    TenantConfig,
    load_tenants,
    parse_model_spec,
)

__all__ = [
    "ConfigError",
    "ModelSpec",
    "ServeConfig",
    "ServerState",
    "TenantConfig",
    "create_app",
    "load_tenants",
    "parse_model_spec",
]
