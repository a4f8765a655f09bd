"""Engine faults as clients see them, through the whole appliance."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import aiohttp
import pytest
from appliance import DEMO_TENANTS, sim_model
from sse import chat_body, stream_chat

pytestmark = pytest.mark.slow


async def test_engine_crash_mid_stream_ends_streams_with_an_error_event(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(step_s=0.02, crash_after_s=4)],
                             "tenants": DEMO_TENANTS})
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*[
            stream_chat(s, app.url, "sk-quiet-demo", chat_body(1000)) for _ in range(4)])
    for r in results:
        assert r.status == 200
        assert r.error is not None and r.error["code"] == "engine_error", r.error
        assert r.done, "the stream must still end with [DONE]"
        assert 0 < r.content_chunks < 1000
    # the books balance (one Done each), and the supervisor brings the engine back
    app.wait_for(lambda: all(t["inflight"] == 0 for t in app.status()["tenants"]),
                 what="in-flight back to 0")
    eng = app.wait_for(lambda: (lambda e: e if e["restarts"] >= 1 and e["state"] == "ready"
                                else None)(app.status()["engines"][0]), what="engine restarted")
    assert eng["generation"] >= 2


async def test_engine_that_never_becomes_ready(appliance_factory) -> None:
    model = {**sim_model(startup_delay=60), "startup_timeout_s": 1.5}
    app = appliance_factory({"models": [model], "tenants": DEMO_TENANTS}, start=False)
    app.start(wait_healthy=False)

    def failed():
        e = app.status()["engines"]
        return e and e[0]["state"] == "failed" and e[0]

    eng = app.wait_for(failed, timeout=30, what="engine failed")
    assert "ready" in eng["last_error"] or "start" in eng["last_error"], eng["last_error"]
    try:
        urllib.request.urlopen(app.url + "/health", timeout=5)
        raise AssertionError("/health must not be 200")
    except urllib.error.HTTPError as e:
        assert e.code == 503
        body = json.loads(e.read())
    assert body["missing_models"] == ["demo"]
    assert "reasons" not in body  # engine log lines: only on admin_listen (test_edge_admin)
    assert "did not become ready" in app.logs() or "not ready" in app.logs()
