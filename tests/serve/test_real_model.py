"""The real SmolLM2-135M-Instruct through the server (skipped locally when the set-up
has not fetched it; under CI a missing file fails)."""

from __future__ import annotations

from support.real_files import smollm2
from support.serve_support import KEYS, guest_params

from realm_ext.serve import TenantConfig


def test_smollm2_says_paris_through_the_server(start_server):
    served = start_server({"smollm2": smollm2()}, [TenantConfig("alice", KEYS["alice"], max_concurrent=2)])
    c = served.client(KEYS["alice"])
    r = c.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=12, temperature=0)
    assert r.choices[0].text.startswith(" Paris.")
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens == 5

    # a conversation's second turn reuses the first turn's prompt and reply from the ring,
    # and both replies are a direct guest's
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r1 = c.chat.completions.create(model="smollm2", messages=messages, max_tokens=16, temperature=0)
    reply = r1.choices[0].message.content
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And of Italy?"}]
    r2 = c.chat.completions.create(model="smollm2", messages=messages, max_tokens=16, temperature=0)
    pg = next(p for p in served.pool("alice", "smollm2").guests() if p.history)
    s = pg.guest.last_stats
    assert s.prompt_tokens == r2.usage.prompt_tokens
    assert s.cached_tokens >= r1.usage.prompt_tokens + r1.usage.completion_tokens - 1
    assert s.evaluated_tokens < 20
    ref = served.state.host.guest(models=[served.state.models["smollm2"]])
    try:
        params = guest_params(16)
        assert "".join(ref.chat(messages[:1], **params)) == reply
        assert "".join(ref.chat(messages, **params)) == r2.choices[0].message.content
    finally:
        ref.close()
