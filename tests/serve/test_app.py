"""The endpoints through the official openai client and raw HTTP, on a real socket:
the text equals a direct guest's, the usage counts equal the guest's tokenization,
and every error is OpenAI's shape with the right status."""

from __future__ import annotations

import json
import logging

import openai
import pytest
from support.serve_support import KEYS, Direct, guest_params

from realm_ext.serve import TenantConfig

PROMPT = "Once upon a time"


@pytest.fixture
def served(start_server, tiny_chat, tiny_other):
    return start_server(
        {"tiny": tiny_chat, "other": tiny_other},
        [
            TenantConfig("alice", KEYS["alice"], models=("tiny",)),
            TenantConfig("bob", KEYS["bob"], models=("tiny", "other")),
        ],
    )


def test_models_lists_only_the_tenants_grants(served):
    alice, bob = served.client(KEYS["alice"]), served.client(KEYS["bob"])
    assert [m.id for m in alice.models.list().data] == ["tiny"]
    assert [m.id for m in bob.models.list().data] == ["tiny", "other"]
    assert bob.models.retrieve("other").id == "other"
    m = alice.models.list().data[0]
    assert (m.object, m.owned_by, m.created) == ("model", "realm-ext", served.state.created)


def test_completion_matches_a_direct_guest(served, direct: Direct):
    c = served.client(KEYS["alice"])
    r = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0)
    text, tokens = direct.generate(PROMPT, **guest_params(20))
    assert r.choices[0].text == text and len(text) > 0
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == tokens == 20
    assert r.usage.prompt_tokens == direct.prompt_tokens(PROMPT) == 1 + len(direct.guest.tokenize(PROMPT))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20
    assert r.model == "tiny" and r.object == "text_completion" and r.id.startswith("cmpl-")


def test_sampled_completion_matches_a_direct_guest_with_the_same_seed(served, direct: Direct):
    c = served.client(KEYS["alice"])
    r = c.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=24, temperature=0.9, top_p=0.8, seed=1234
    )
    text, _ = direct.generate(PROMPT, **guest_params(24, 0.9, 0.8, 1234))
    greedy, _ = direct.generate(PROMPT, **guest_params(24))
    assert r.choices[0].text == text != greedy


def test_streamed_completion_is_the_same_text_in_pieces(served, direct: Direct):
    c = served.client(KEYS["alice"])
    chunks = list(
        c.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text, _ = direct.generate(PROMPT, **guest_params(20))
    pieces = [ch.choices[0].text for ch in chunks if ch.choices]
    assert "".join(pieces) == text
    assert len([p for p in pieces if p]) > 1  # streamed, not one block
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finals[-1] == "length" and set(finals[:-1]) == {None}
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 20
    assert usage.prompt_tokens == direct.prompt_tokens(PROMPT)


def test_chat_matches_a_direct_guest_streaming_or_not(served, host, tiny_chat):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    c = served.client(KEYS["alice"])
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    ref = Direct(host, tiny_chat)
    text = "".join(ref.guest.chat(messages, **guest_params(12)))
    stats = ref.guest.last_stats
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == stats.prompt_tokens > 10
    assert r.usage.completion_tokens == stats.tokens
    assert r.choices[0].finish_reason == ("length" if stats.tokens == 12 else "stop")
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")

    chunks = list(
        c.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    ref.guest.close()


def test_stop_strings_cut_the_text_and_end_the_generation(served, direct: Direct):
    c = served.client(KEYS["alice"])
    full, _ = direct.generate(PROMPT, **guest_params(30))
    # a stop string made of the end of one piece and the start of the next
    words = full.split(" ")
    assert len(words) > 4
    stop = words[2][-1:] + " " + words[3][:2]
    cut = full[: full.index(stop)]
    r = c.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop, "never here"]
    )
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 30
    streamed = c.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(ch.choices[0].text for ch in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def _error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_and_missing_keys_are_401(served, caplog):
    caplog.set_level(logging.INFO, logger="realm_ext")
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    e = _error(served.post("/v1/completions", body, key="sk-alice-0123456788"), 401)
    assert e["code"] == "invalid_api_key" and e["type"] == "invalid_request_error"
    assert _error(served.post("/v1/completions", body), 401)["code"] == "missing_api_key"
    assert _error(served.get("/v1/models", key=KEYS["alice"] + "x"), 401)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        served.client("wrong").completions.create(model="tiny", prompt="x", max_tokens=1)
    # auth comes before the body: a bad key with a bad body is still a 401
    assert served.post("/v1/chat/completions", {"nonsense": 1}, key="wrong").status_code == 401
    assert served.post("/v1/completions", body, key=KEYS["alice"]).status_code == 200
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "tenant=alice model=tiny endpoint=/v1/completions stream=False status=200" in logged
    assert all(k not in logged for k in KEYS.values()) and "sk-alice" not in logged


def test_a_model_not_granted_is_exactly_an_unknown_model(served):
    body = {"model": "other", "prompt": "x", "max_tokens": 1}
    hidden = served.post("/v1/completions", body, key=KEYS["alice"])
    unknown = served.post("/v1/completions", {**body, "model": "ghost"}, key=KEYS["alice"])
    e = _error(hidden, 404)
    assert (e["code"], e["param"], e["type"]) == ("model_not_found", "model", "invalid_request_error")
    assert hidden.content == unknown.content.replace(b"ghost", b"other")
    assert dict(hidden.headers).keys() == dict(unknown.headers).keys()
    chat = {"model": "other", "messages": [{"role": "user", "content": "hi"}]}
    assert served.post("/v1/chat/completions", chat, key=KEYS["alice"]).content == hidden.content
    assert served.get("/v1/models/other", key=KEYS["alice"]).content == hidden.content
    assert served.get("/v1/models/ghost", key=KEYS["alice"]).content == unknown.content
    # bob may use it
    assert served.post("/v1/completions", body, key=KEYS["bob"]).status_code == 200
    with pytest.raises(openai.NotFoundError):
        served.client(KEYS["alice"]).completions.create(model="other", prompt="x", max_tokens=1)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny", "prompt": "x", "temperature": "hot"}, "temperature"),
        ({"model": "tiny", "prompt": "x", "temperature": 2.5}, "temperature"),
        ({"model": "tiny", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "n": 2}, "n"),
        ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "tiny", "prompt": "x", "logprobs": 3}, "logprobs"),
        ({"model": "tiny", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "tiny"}, "prompt"),
        ({"prompt": "x"}, "model"),
    ],
)
def test_invalid_completion_bodies_are_400(served, body, param):
    e = _error(served.post("/v1/completions", body, key=KEYS["alice"]), 400)
    assert e["type"] == "invalid_request_error" and e["param"] == param, e


def test_invalid_chat_bodies_and_requests_are_400(served):
    key = KEYS["alice"]
    e = _error(served.post("/v1/chat/completions", {"model": "tiny", "messages": []}, key=key), 400)
    assert e["param"] == "messages"
    bad_role = {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}
    assert _error(served.post("/v1/chat/completions", bad_role, key=key), 400)["param"] == "messages.0.role"
    n2 = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 3}
    assert "only n=1" in _error(served.post("/v1/chat/completions", n2, key=key), 400)["message"]
    raw = served.post("/v1/completions", None, key=key, content=b"{not json")
    assert "not valid JSON" in _error(raw, 400)["message"]
    with pytest.raises(openai.BadRequestError):
        served.client(key).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], n=2
        )


def test_unknown_routes_and_methods_answer_in_the_error_shape(served):
    assert _error(served.get("/v1/nothing"), 404)["type"] == "invalid_request_error"
    assert _error(served.get("/v1/completions"), 405)["message"] == "Method Not Allowed"


def test_open_server_needs_no_key(start_server, tiny_chat, direct):
    served = start_server({"tiny": tiny_chat})
    assert served.state.config.is_open
    r = served.post("/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == direct.generate(PROMPT, **guest_params(8))[0]
    r = served.post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}, key="anything")
    assert r.status_code == 200


def test_health_and_metrics(served, direct):
    h = served.get("/health")
    assert h.status_code == 200 and h.json() == {"status": "ok", "models": 2}
    c = served.client(KEYS["alice"])
    for _ in range(3):
        c.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0)
    list(c.completions.create(model="tiny", prompt=PROMPT, max_tokens=7, temperature=0, stream=True))
    served.post("/v1/completions", {"model": "tiny", "prompt": "x"}, key="nope")
    served.post("/v1/completions", {"model": "tiny", "prompt": "x", "n": 2}, key=KEYS["alice"])
    m = served.metric
    ep = "/v1/completions"
    assert m("realm_serve_requests_total", endpoint=ep, tenant="alice", status="200") == 4
    assert m("realm_serve_requests_total", endpoint=ep, tenant="-", status="401") == 1
    assert m("realm_serve_requests_total", endpoint=ep, tenant="alice", status="400") == 1
    assert m("realm_serve_completion_tokens_total", tenant="alice", model="tiny") == 3 * 5 + 7
    assert m("realm_serve_prompt_tokens_total", tenant="alice", model="tiny") == 4 * direct.prompt_tokens(
        PROMPT
    )
    assert m("realm_serve_in_flight_requests", tenant="alice") == 0
    assert m("realm_serve_queue_depth") == 0
    assert m("realm_serve_request_seconds_count", endpoint=ep) == 4
    assert m("realm_serve_time_to_first_token_seconds_count", endpoint=ep) == 4
    # the requests ran one after another: one pooled guest served them all
    assert m("realm_serve_guests", tenant="alice", model="tiny", state="idle") == 1
    assert m("realm_serve_guests", tenant="alice", model="tiny", state="busy") == 0
    pool = served.pool("alice", "tiny")
    assert pool.created == 1 and pool.guests()[0].requests == 4
    text = served.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    assert "# TYPE realm_serve_requests_total counter" in text.text


def test_sse_wire_format(served):
    """The raw stream: data: lines, JSON chunks, the [DONE] marker last."""
    import httpx

    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST",
        served.url + "/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEYS['alice']}"},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len({c["id"] for c in chunks}) == 1


def test_fastapi_validation_errors_are_400_in_the_openai_shape(tiny_chat, host):
    """A route's own parameters failing FastAPI's validation (its 422) answer 400."""
    from fastapi.testclient import TestClient

    from realm_ext.serve import ModelSpec, ServeConfig, ServerState, create_app

    state = ServerState(ServeConfig([ModelSpec("tiny", tiny_chat)], threads=1), host=host)
    app = create_app(state, own_state=True)

    @app.get("/typed")
    async def typed(n: int) -> dict[str, int]:
        return {"n": n}

    with TestClient(app) as client:
        assert client.get("/typed", params={"n": 3}).json() == {"n": 3}
        r = client.get("/typed", params={"n": "three"})
        assert r.status_code == 400
        e = r.json()["error"]
        assert (e["type"], e["param"], e["code"]) == ("invalid_request_error", "query.n", None)
        assert e["message"].startswith("Invalid request: 'query.n': Input should be a valid integer")
    assert state._closed  # the app owned the state: closed at its shutdown
