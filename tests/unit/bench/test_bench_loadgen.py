"""The load generator against a tiny fake OpenAI-compatible SSE server (no engine, no daemons).

What must hold for the numbers to mean anything: requests leave at their
scheduled time even while earlier ones are stuck (open loop), TTFT is the first
*content* chunk, 429 is "rejected" and not "failed", a request cut off by the
drain is "unfinished" (kept, not dropped), and the capacity probe saturates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web

from infergridd.bench.loadgen import (
    FAILED,
    OK,
    REJECTED,
    UNFINISHED,
    Prompts,
    Target,
    closed_loop,
    open_loop,
)
from infergridd.bench.workload import Planned

TOKEN_S = 0.01
SEEN = web.AppKey("seen", list)
RELEASE = web.AppKey("release", asyncio.Event)


async def _completions(request: web.Request) -> web.StreamResponse:
    """Streams ``max_tokens`` one-token chunks; the tenant (from the key) picks a behaviour."""
    body = msgspec.json.decode(await request.read())
    who = request.headers.get("Authorization", "").removeprefix("Bearer ")
    request.app[SEEN].append((who, body))
    if who == "limited":
        return web.json_response({"error": {"message": "slow down"}}, status=429,
                                 headers={"Retry-After": "1"})
    if who == "broken":
        return web.json_response({"error": {"message": "boom"}}, status=500)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    # a role-only first chunk (no content) must not count as the first token
    await resp.write(b'data: {"choices":[{"text":""}]}\n\n')
    await asyncio.sleep(0.2 if who == "stuck" else 0.03)  # the "prefill"
    if who == "stuck":  # until the test ends (a handler outliving it would stall cleanup)
        await request.app[RELEASE].wait()
        return resp
    n = int(body["max_tokens"])
    for _ in range(n):
        await resp.write(b'data: {"choices":[{"text":"x"}]}\n\n')
        await asyncio.sleep(TOKEN_S)
    usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}
    await resp.write(b"data: " + msgspec.json.encode({"choices": [], "usage": usage}) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest.fixture
async def fake() -> AsyncIterator[tuple[str, web.Application]]:
    app = web.Application()
    app[SEEN] = []
    app[RELEASE] = asyncio.Event()
    app.router.add_post("/v1/completions", _completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", app
    app[RELEASE].set()
    await runner.cleanup()


def _target(url: str) -> Target:
    return Target(url, "m", {t: t for t in ("ok", "limited", "broken", "stuck")})


async def test_outcomes_and_timings(fake: tuple[str, web.Application]) -> None:
    url, app = fake
    plan = [Planned("ok", 0, 0.0, 12, 5), Planned("limited", 0, 0.0, 4, 5),
            Planned("broken", 0, 0.05, 4, 5), Planned("stuck", 0, 0.1, 4, 5)]
    run = await open_loop(_target(url), plan, Prompts(0, size=4096), label="t",
                          duration_s=0.5, drain_s=0.3, progress=False)
    by = {r.tenant: r for r in run.results}
    ok = by["ok"]
    assert ok.status == OK and ok.tokens_in == 12 and ok.tokens_out == 5
    assert 0.025 < ok.ttft_s < 1.0  # the empty first chunk is not a token
    assert len(ok.itl_s) == 4 and all(0.005 < x < 0.5 for x in ok.itl_s)
    assert ok.e2e_s >= ok.ttft_s + 4 * TOKEN_S * 0.8
    assert by["limited"].status == REJECTED and by["limited"].http_status == 429
    assert by["broken"].status == FAILED and by["broken"].http_status == 500
    assert by["stuck"].status == UNFINISHED and by["stuck"].ttft_s is None
    assert sum(run.timeline.bins["ok"]) == 5
    # each request carried its exact prompt length, ignore_eos and usage in the stream
    bodies = {who: b for who, b in app[SEEN]}
    assert len(bodies["ok"]["prompt"]) == 12 and bodies["ok"]["ignore_eos"] is True
    assert bodies["ok"]["stream_options"] == {"include_usage": True}


async def test_open_loop_sends_on_schedule_while_others_are_stuck(
        fake: tuple[str, web.Application]) -> None:
    """Requests keep leaving on time although every earlier one is still waiting."""
    url, _ = fake
    plan = [Planned("stuck", i, i * 0.02, 4, 2) for i in range(20)]
    run = await open_loop(_target(url), plan, Prompts(0, size=4096), label="t",
                          duration_s=0.45, drain_s=0.05, progress=False)
    assert len(run.results) == 20
    assert all(r.status == UNFINISHED for r in run.results)
    lags = sorted(r.lag_s for r in run.results)
    assert lags[0] >= 0 and lags[len(lags) // 2] < 0.05, lags  # closed loop: >= 0.2 s each
    assert [r.scheduled_s for r in run.results] == [p.t for p in plan]


async def test_closed_loop_capacity(fake: tuple[str, web.Application]) -> None:
    """4 workers, 10-token answers of ~0.13 s each: ~30 req/s, ~300 tokens/s (loose bounds:
    a loaded test machine is slower, never faster)."""
    url, _ = fake
    shape = [Planned("ok", 0, 0.0, 8, 10)]
    cap = await closed_loop(_target(url), shape, Prompts(0, size=4096), concurrency=4,
                            duration_s=1.5, warmup_s=0.5)
    assert 2 < cap.requests_per_s < 40, cap
    assert abs(cap.tokens_per_s / cap.requests_per_s - 10) < 3, cap
    assert cap.concurrency == 4 and cap.window_s == pytest.approx(1.0)
