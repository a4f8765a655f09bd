"""Honest charging and what reaches the engine, through the real daemons (issue 14,
items 1 and 8): ``infergrid serve`` with the simulated engine, which counts a prompt
the way a chat template renders it (tools included) and logs, at debug level, the
names of the fields each request carried."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from appliance import DEMO_TENANTS, sim_model
from sse import chat_body, stream_chat

pytestmark = pytest.mark.slow

FLOODER = "sk-flooder-demo"


def _tenant(app, name: str) -> dict:  # noqa: ANN001
    return next(t for t in app.status()["tenants"] if t["name"] == name)


def _engine_logs(app) -> str:  # noqa: ANN001
    """Every engine's log, wherever under the runtime directory the supervisor keeps them."""
    return "\n".join(f.read_text(errors="replace")
                     for f in sorted(app.runtime.rglob("*.log")) if f.is_file())


async def test_a_tpm_tenant_with_huge_prompts_is_refused_once_its_bucket_is_spent(
        appliance_factory) -> None:
    """The issue's reproduction: ``tpm: 600``, 100 requests of 100,000 prompt tokens
    each (the prompt in ``tools``, which the old estimate did not count, and which the
    old quota never debited when the engine reported it).  Now the first request runs
    and puts the bucket ~100,000 tokens in debt; the other 99 get 429."""
    tenants = [{"name": "flooder", "keys": [FLOODER], "tpm": 600}, DEMO_TENANTS[0]]
    app = appliance_factory({
        "models": [sim_model(max_model_len=200_000)],
        "tenants": tenants, "limits": {"max_body_bytes": 2 * 1024 * 1024}})
    body = chat_body(16, text="hi")
    body["tools"] = [{"type": "function", "function": {
        "name": "lookup", "description": "x" * 400_000,
        "parameters": {"type": "object", "properties": {}}}}]
    results = []
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            results.append(await stream_chat(s, app.url, FLOODER, body))
    ok = [r for r in results if r.status == 200]
    limited = [r for r in results if r.status == 429]
    assert (len(ok), len(limited)) == (1, 99), sorted({r.status for r in results})
    assert ok[0].usage["prompt_tokens"] > 100_000  # the engine counted the tools
    assert all(r.body["error"]["code"] == "rate_limit_exceeded" for r in limited)
    assert int(limited[-1].headers["Retry-After"]) >= 60
    stats = _tenant(app, "flooder")
    assert stats["tokens_in"] > 100_000 and stats["rejected"]["rate_limit_exceeded"] == 99
    # the other tenant is not touched by the flooder's debt
    async with aiohttp.ClientSession() as s:
        r = await stream_chat(s, app.url, "sk-quiet-demo", chat_body(4))
    assert r.status == 200 and r.done


FORBIDDEN = {
    "request_id": "someone-elses", "best_of": 4, "guided_json": {"type": "object"},
    "guided_regex": "a+", "guided_grammar": "root ::= \"a\"", "chat_template": "{{ 7*7 }}",
    "chat_template_kwargs": {"enable_thinking": True}, "rid": "r-1",
    "lora_path": "/tmp/other-adapter", "store": True, "service_tier": "priority",
    "metadata": {"k": "v"},
}


async def test_forbidden_fields_never_reach_the_engine(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(log_level="debug")],
                             "tenants": DEMO_TENANTS})
    chat = {**chat_body(4), **FORBIDDEN, "top_k": 5}
    completion = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 4,
                  "echo": True, **FORBIDDEN}
    async with aiohttp.ClientSession() as s:
        r1 = await stream_chat(s, app.url, "sk-quiet-demo", chat)
        r2 = await stream_chat(s, app.url, "sk-quiet-demo", completion, path="/v1/completions")
    assert r1.status == 200 and r1.done and r1.content_chunks == 4
    assert r2.status == 200 and r2.body["choices"], r2.body

    def seen() -> list[set[str]]:
        return [set(line.split("request fields: ", 1)[1].split())
                for line in _engine_logs(app).splitlines() if "request fields: " in line]

    got = app.wait_for(lambda: len(seen()) >= 2 and seen(), what="the engine's field log")
    assert any({"messages", "top_k", "stream_options"} <= f for f in got), got
    assert any({"prompt", "echo"} <= f for f in got), got
    for f in got:
        assert not f & set(FORBIDDEN), f & set(FORBIDDEN)


async def test_a_request_that_crashes_its_engine_is_charged_and_retried_once(
        appliance_factory) -> None:
    """A prompt that kills the engine it lands on (``--crash-on-prompt-tokens``): the
    client gets one 502 after at most one retry, so at most two of three engines die;
    the tenant is charged the prompt for each engine that took it (it was free)."""
    model = {**sim_model(crash_on_prompt_tokens=1000), "replicas": 3}
    app = appliance_factory({"models": [model], "tenants": DEMO_TENANTS})
    poison = chat_body(16, text="x" * 8000)  # 2,004 prompt tokens by the estimate
    async with aiohttp.ClientSession() as s:
        r = await stream_chat(s, app.url, FLOODER, poison)
    assert r.status == 502 and r.body["error"]["code"] == "engine_unavailable", r.body

    def restarts() -> int:
        return sum(e["restarts"] for e in app.status()["engines"])

    app.wait_for(lambda: restarts() >= 1 and all(
        e["state"] == "ready" for e in app.status()["engines"]), timeout=30,
        what="the crashed engines back")
    time.sleep(2.0)  # nothing retries it a third time behind the client's back
    crashed = restarts()
    assert 1 <= crashed <= 2, app.status()["engines"]
    log = app.logs()  # the front door's own account: one retry, then the 502
    assert log.count("; retrying once") == 1 and log.count("; giving up") == 1, log[-3000:]
    stats = app.wait_for(lambda: (lambda t: t if t["inflight"] == 0 else None)(
        _tenant(app, "flooder")), what="in-flight back to 0")
    # one charge per engine the request reached and crashed (a retry that met the dead
    # engine's closed port reached nothing and is free)
    assert 2004 <= stats["tokens_in"] <= 2 * 2004, stats
    assert stats["tokens_out"] == 0
    # and the tenant's ordinary requests still run
    async with aiohttp.ClientSession() as s:
        ok = await asyncio.gather(*[stream_chat(s, app.url, FLOODER, chat_body(4))
                                    for _ in range(3)])
    assert all(x.status == 200 and x.done for x in ok)
