"""The server's run and shutdown: streams in flight at shutdown finish or end with a
final event, and the `realm-ext serve` command serves and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
from support.serve_support import KEYS, guest_params

from realm_ext.serve import ModelSpec, ServeConfig, ServerState, TenantConfig
from realm_ext.serve.server import BackgroundServer, free_port


def _events(lines):
    return [line for line in lines if line]


def test_shutdown_lets_short_streams_finish_and_ends_long_ones(host, tiny_chat, direct):
    cfg = ServeConfig(
        [ModelSpec("tiny", tiny_chat)],
        [TenantConfig("alice", KEYS["alice"], max_concurrent=4, time_limit=60)],
        threads=1,
        drain_timeout=1.0,
    )
    srv = BackgroundServer(ServerState(cfg, host=host)).start()
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    got: dict[str, list[str]] = {}
    started = threading.Barrier(3)

    def stream(name, max_tokens, slow):
        body = {"model": "tiny", "prompt": "Tell", "max_tokens": max_tokens, "temperature": 0, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, headers=headers, timeout=60) as r:
            lines = r.iter_lines()
            first = next(lines)
            started.wait()
            out = [first]
            for line in lines:
                out.append(line)
                if slow:
                    time.sleep(0.002)
            got[name] = _events(out)

    threads = [
        threading.Thread(target=stream, args=("long", 1_000_000, True)),
        threading.Thread(target=stream, args=("short", 40, True)),
    ]
    for t in threads:
        t.start()
    started.wait()
    t0 = time.monotonic()
    srv.stop()
    for t in threads:
        t.join(30)
    stopped_in = time.monotonic() - t0
    # the short stream ran to its end: every piece, the finish, [DONE]
    short = got["short"]
    text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in short[:-1])
    assert text == direct.generate("Tell", **guest_params(40))[0]
    assert (
        json.loads(short[-2][6:])["choices"][0]["finish_reason"] == "length" and short[-1] == "data: [DONE]"
    )
    # the long one got a final error event at the drain timeout, then [DONE]
    long = got["long"]
    assert long[-1] == "data: [DONE]"
    assert json.loads(long[-2][6:])["error"]["code"] == "shutting_down"
    assert 1.0 <= stopped_in < 30, stopped_in
    assert srv.state._closed and srv.state.pools()[0].guests() == []


def test_health_says_draining(host, tiny_chat):
    state = ServerState(ServeConfig([ModelSpec("tiny", tiny_chat)], threads=1), host=host)
    with BackgroundServer(state) as srv:
        state.begin_drain(5)
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and r.json() == {"status": "draining"}
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        state.draining = False


def test_the_serve_command(tiny_chat, tmp_path):
    """realm-ext serve with a tenants file: it serves, and stops cleanly on SIGTERM."""
    toml = tmp_path / "tenants.toml"
    toml.write_text(
        '[defaults]\nmax_concurrent = 2\n\n[tenants.alice]\nkey_env = "ALICE_KEY"\nmodels = ["tiny"]\n'
        "tokens_per_minute = 1000\n",
        encoding="utf-8",
    )
    port = free_port()
    env = {**os.environ, "ALICE_KEY": KEYS["alice"]}
    cmd = [
        sys.executable,
        "-m",
        "realm_ext.cli",
        "serve",
        "--model",
        f"tiny={tiny_chat}",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        [*cmd, "--tenants", str(toml), "--threads", "1", "--device", "cpu"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        t_end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < t_end, "the server did not come up"
            time.sleep(0.1)
        r = httpx.post(  # greedy: a sampled first token could be EOS, and no tokens come back
            url + "/v1/completions",
            json={"model": "tiny", "prompt": "Once", "max_tokens": 3, "temperature": 0},
            headers={"Authorization": f"Bearer {KEYS['alice']}"},
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    # uvicorn drains, shuts the app down, then re-raises the signal it caught
    assert proc.returncode == -signal.SIGTERM, err
    assert "Application shutdown complete" in err
    assert f"serving tiny on http://127.0.0.1:{port}/v1" in err
    assert "tenant=alice model=tiny endpoint=/v1/completions stream=False status=200 prompt_tokens=" in err
    assert KEYS["alice"] not in err


def test_the_serve_command_refuses_bad_configurations(tiny_chat, tmp_path):
    from click.testing import CliRunner

    from realm_ext.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[tenants.alice]\nkey = "k"\nmodels = ["nope"]\n', encoding="utf-8")
    r = CliRunner().invoke(main, ["serve", "--model", f"tiny={tiny_chat}", "--tenants", str(bad)])
    assert r.exit_code == 1 and "granted 'nope', which is not served" in r.output
    r = CliRunner().invoke(
        main, ["serve", "--model", f"tiny={tiny_chat}", "--tenants", str(bad), "--api-key", "k"]
    )
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(main, ["serve", "--model", str(tmp_path / "missing.gguf")])
    assert r.exit_code == 2 and "is not a file" in r.output
