"""Guest pools: no instantiation per request, a conversation's KV ring reused when the
client sends the same history back, a failed guest replaced."""

from __future__ import annotations

from support.serve_support import KEYS, Direct, guest_params

from realm_ext.serve import TenantConfig
from realm_ext.serve.pool import common_prefix


def test_common_prefix():
    a = (("user", "x"), ("assistant", "y"), ("user", "z"))
    assert (
        common_prefix(a, a[:2]) == 2 and common_prefix(a, (("user", "q"),)) == 0 and common_prefix((), a) == 0
    )


def _turn(client, messages, n=10):
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=n, temperature=0)
    return r.choices[0].message.content, r.usage


def test_chat_turns_go_to_the_guest_holding_the_conversation(start_server, tiny_chat, host):
    served = start_server({"tiny": tiny_chat}, [TenantConfig("alice", KEYS["alice"], max_concurrent=2)])
    c = served.client(KEYS["alice"])
    conv_a = [{"role": "user", "content": "Tell me about the sea."}]
    conv_b = [{"role": "user", "content": "What is a mountain?"}]
    reply_a, usage_a1 = _turn(c, conv_a)
    reply_b, _ = _turn(c, conv_b)
    pool = served.pool("alice", "tiny")
    assert pool.created == 2  # b matched nothing: a second guest, a's conversation kept
    by_first = {pg.history[0][1]: pg for pg in pool.guests()}
    g_a, g_b = by_first["Tell me about the sea."], by_first["What is a mountain?"]
    assert g_a.history == (("user", conv_a[0]["content"]), ("assistant", reply_a))

    conv_a += [{"role": "assistant", "content": reply_a}, {"role": "user", "content": "And rivers?"}]
    conv_b += [{"role": "assistant", "content": reply_b}, {"role": "user", "content": "And hills?"}]
    reply_a2, usage_a2 = _turn(c, conv_a)
    s_a = g_a.guest.last_stats
    reply_b2, _ = _turn(c, conv_b)
    s_b = g_b.guest.last_stats
    assert pool.created == 2 and g_a.requests == 2 and g_b.requests == 2
    # turn 2 re-evaluated only what follows the common prefix: at least turn 1's prompt
    # (the random model's reply, bytes, tokenizes otherwise once rendered as text)
    assert s_a.cached_tokens >= usage_a1.prompt_tokens
    assert s_a.cached_tokens + s_a.evaluated_tokens == usage_a2.prompt_tokens
    assert s_b.cached_tokens > 0
    assert served.metric("realm_serve_reused_prompt_tokens_total", tenant="alice", model="tiny") >= (
        s_a.cached_tokens + s_b.cached_tokens
    )
    # the same two turns on a guest of its own give the same replies
    ref = Direct(host, tiny_chat)
    r1 = "".join(ref.guest.chat(conv_a[:1], **guest_params(10)))
    r2 = "".join(ref.guest.chat(conv_a, **guest_params(10)))
    assert (r1, r2) == (reply_a, reply_a2)
    assert ref.guest.last_stats.cached_tokens == s_a.cached_tokens
    ref.guest.close()


def test_completions_keep_the_pooled_conversations(start_server, tiny_chat):
    served = start_server({"tiny": tiny_chat}, [TenantConfig("alice", KEYS["alice"], max_concurrent=2)])
    c = served.client(KEYS["alice"])
    conv = [{"role": "user", "content": "Hello"}]
    reply, _ = _turn(c, conv)
    for _ in range(3):
        c.completions.create(model="tiny", prompt="Once", max_tokens=4, temperature=0)
    pool = served.pool("alice", "tiny")
    assert pool.created == 2  # the completions went to a guest without a conversation
    holder = next(pg for pg in pool.guests() if pg.history)
    assert holder.requests == 1
    _turn(c, conv + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Again"}])
    assert holder.requests == 2 and holder.guest.last_stats.cached_tokens > 0


def test_a_failed_guest_is_replaced_and_the_pool_goes_on(start_server, tiny_chat, hostile_wasm):
    served = start_server(
        {"tiny": tiny_chat}, [TenantConfig("eve", KEYS["eve"], max_concurrent=1, wasm=hostile_wasm)]
    )
    ok = {"model": "tiny", "prompt": "hello", "max_tokens": 4}
    r = served.post("/v1/completions", ok, key=KEYS["eve"])
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"
    pool = served.pool("eve", "tiny")
    first = pool.guests()[0].guest
    bad = served.post("/v1/completions", {**ok, "prompt": "p"}, key=KEYS["eve"])
    assert bad.status_code == 500
    assert pool.replaced == 1 and pool.guests() == [] and first._instance is None  # closed
    r = served.post("/v1/completions", ok, key=KEYS["eve"])
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"
    assert pool.created == 2 and pool.guests()[0].guest is not first
    assert served.metric("realm_serve_guests_replaced_total", tenant="eve", model="tiny") == 1
