"""Where a request's time went, end to end: the real appliance (three daemons and the
simulated engine) tells the client how long the request was queued in InferGrid
(``X-InferGrid-Queue-Ms``), and ``/metrics`` and the request's log line split its time
into ``queued``, ``engine_first_token`` and ``generation``."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from appliance import DEMO_TENANTS, sim_model
from sse import chat_body, stream_chat

FAM = "infergrid_request_phase_seconds"
PHASES = ("queued", "engine_first_token", "generation")


def _count(text: str, tenant: str, phase: str) -> float:
    m = re.search(rf'^{FAM}_count{{model="demo",phase="{phase}",tenant="{tenant}"}} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


async def _metrics(s: aiohttp.ClientSession, url: str) -> str:
    async with s.get(url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


async def test_phases_reach_the_client_metrics_and_log(appliance_factory) -> None:
    # one seat and no engine assist (which would let a light request overflow the seat):
    # a quiet request sent while the flooder's stream runs waits in InferGrid's queue
    model = {**sim_model(max_num_seqs=1, step_s=0.01), "engine_assist": False}
    app = appliance_factory({"models": [model], "tenants": DEMO_TENANTS})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        before = await _metrics(s, app.url)
        assert f"# TYPE {FAM} histogram" in before
        idle = await stream_chat(s, app.url, "sk-quiet-demo", chat_body(8))
        assert idle.status == 200 and idle.done
        idle_ms = float(idle.headers["X-InferGrid-Queue-Ms"])
        assert idle.headers["X-Request-Id"].startswith("cmpl-")
        assert 0 <= idle_ms < 1000
        flood = asyncio.create_task(stream_chat(s, app.url, "sk-flooder-demo", chat_body(60)))
        while True:  # until the flooder holds the seat
            await asyncio.sleep(0.02)
            if 'infergrid_inflight{model="demo",tenant="flooder"} 1.0' in \
                    await _metrics(s, app.url):
                break
        waited = await stream_chat(s, app.url, "sk-quiet-demo", chat_body(4))
        assert (await flood).done and waited.status == 200 and waited.done
        waited_ms = float(waited.headers["X-InferGrid-Queue-Ms"])
        assert waited_ms >= 100, (waited_ms, "queued behind the flooder's 60-token stream")
        assert waited.ttft_s is not None and waited.ttft_s * 1000 >= waited_ms
        whole = await stream_chat(s, app.url, "sk-quiet-demo", chat_body(3, stream=False))
        assert whole.status == 200 and float(whole.headers["X-InferGrid-Queue-Ms"]) >= 0
        after = await _metrics(s, app.url)
    # three OK quiet answers: each queued; two streamed ones have the engine phases
    assert _count(after, "quiet", "queued") - _count(before, "quiet", "queued") == 3
    for phase in ("engine_first_token", "generation"):
        assert _count(after, "quiet", phase) - _count(before, "quiet", phase) == 2, phase
    for phase in PHASES:
        assert _count(after, "flooder", phase) == 1, phase
    m = re.search(rf'^{FAM}_sum{{model="demo",phase="queued",tenant="quiet"}} (\S+)$', after,
                  re.M)
    assert m and float(m.group(1)) >= (idle_ms + waited_ms) / 1000 - 0.01
    rid = waited.headers["X-Request-Id"]
    line = app.wait_for(lambda: next((ln for ln in app.logs().splitlines()
                                      if f"{rid} quiet demo ok" in ln), None),
                        what="the request's log line")
    got = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    assert float(got["queue_ms"]) == waited_ms
    assert float(got["engine_ttft_ms"]) >= 0 and float(got["generation_ms"]) >= 0
