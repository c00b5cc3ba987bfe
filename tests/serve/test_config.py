"""Model names, tenants files, and the configuration's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from realm_ext.serve.config import (
    OPEN_TENANT,
    ConfigError,
    ModelSpec,
    ServeConfig,
    TenantConfig,
    load_tenants,
    parse_model_spec,
    tenants_from_toml,
)


def test_model_names():
    assert parse_model_spec("models/tiny.gguf") == ModelSpec("tiny", Path("models/tiny.gguf"))
    assert parse_model_spec("chat=models/tiny.gguf") == ModelSpec("chat", Path("models/tiny.gguf"))
    assert parse_model_spec("/a/b=c.gguf") == ModelSpec("b=c", Path("/a/b=c.gguf"))  # a path with "="


def test_tenants_file(tmp_path, monkeypatch):
    (tmp_path / "guests").mkdir()
    (tmp_path / "guests" / "bob.wasm").write_bytes(b"\0asm")
    monkeypatch.setenv("BOB_KEY", "sk-bob")
    f = tmp_path / "tenants.toml"
    f.write_text(
        """
[defaults]
max_concurrent = 3
memory_limit = "32MiB"
time_limit = 5

[tenants.alice]
key = "sk-alice"
models = ["*"]
tokens_per_minute = 100

[tenants.bob]
key_env = "BOB_KEY"
models = ["tiny"]
max_concurrent = 1
n_ctx = 256
wasm = "guests/bob.wasm"
""",
        encoding="utf-8",
    )
    alice, bob = load_tenants(f)
    assert (alice.name, alice.key, alice.models, alice.max_concurrent) == ("alice", "sk-alice", ("*",), 3)
    assert (alice.memory_limit, alice.time_limit, alice.tokens_per_minute, alice.wasm) == (
        32 << 20,
        5.0,
        100,
        None,
    )
    assert (bob.key, bob.models, bob.max_concurrent, bob.n_ctx) == ("sk-bob", ("tiny",), 1, 256)
    assert bob.wasm == tmp_path / "guests" / "bob.wasm"
    assert alice.grants("anything") and bob.grants("tiny") and not bob.grants("other")
    assert "sk-" not in repr(alice) + repr(bob)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no [tenants.NAME] table"),
        ({"tenants": {"a": {"models": ["x"]}}}, "exactly one of key and key_env"),
        ({"tenants": {"a": {"key": "k", "key_env": "E", "models": ["x"]}}}, "exactly one of key and key_env"),
        ({"tenants": {"a": {"key": "k"}}}, "models must be a non-empty list"),
        ({"tenants": {"a": {"key": "k", "models": "x"}}}, "models must be a non-empty list"),
        ({"tenants": {"a": {"key": "k", "models": ["x"], "colour": 1}}}, "unknown key(s) ['colour']"),
        ({"tenants": {"a": {"key": "k", "models": ["x"], "max_concurrent": 0}}}, "max_concurrent must be"),
        ({"tenants": {"a": {"key": "k", "models": ["x"], "memory_limit": "lots"}}}, "memory_limit"),
        ({"tenants": {"a": {"key": "k", "models": ["x"], "time_limit": "1"}}}, "time_limit must be"),
        ({"tenants": {"a": {"key": "k", "models": ["x"], "wasm": "nope.wasm"}}}, "does not exist"),
        ({"tenants": {"a": {"key_env": "REALM_NO_SUCH_VAR", "models": ["x"]}}}, "is not set"),
        ({"defaults": {"key": "k"}, "tenants": {}}, "[defaults] takes only"),
        ({"tenant": {}}, "unknown table(s)"),
    ],
)
def test_bad_tenants_files(data, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        tenants_from_toml(data, tmp_path)
    assert message in str(e.value)


def test_load_tenants_names_the_file(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text("[tenants.a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"t\.toml is not valid TOML"):
        load_tenants(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_tenants(tmp_path / "missing.toml")


def test_serve_config_checks():
    m = [ModelSpec("tiny", Path("t.gguf"))]
    open_cfg = ServeConfig(m)
    assert open_cfg.is_open and [t.name for t in open_cfg.tenants] == [OPEN_TENANT]
    assert not ServeConfig(m, [TenantConfig("a", "k")]).is_open
    with pytest.raises(ConfigError, match="no model"):
        ServeConfig([])
    with pytest.raises(ConfigError, match="two models named 'tiny'"):
        ServeConfig(m + m)
    with pytest.raises(ConfigError, match="share a key"):
        ServeConfig(m, [TenantConfig("a", "k"), TenantConfig("b", "k")])
    with pytest.raises(ConfigError, match="same name"):
        ServeConfig(m, [TenantConfig("a", "k"), TenantConfig("a", "j")])
    with pytest.raises(ConfigError, match="open"):
        ServeConfig(m, [TenantConfig("a", None), TenantConfig("b", "j")])
    with pytest.raises(ConfigError, match="granted 'x'"):
        ServeConfig(m, [TenantConfig("a", "k", models=("x",))])
    with pytest.raises(ConfigError, match="empty key"):
        TenantConfig("a", "")
