"""The simulated engine through its Python API (``SimServer``): timing, faults, priority."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp

from infergridd.sim.options import SimOptions
from infergridd.sim.server import SimServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sse import chat_body, stream_chat  # noqa: E402


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))


async def test_stream_duration_follows_step_time_and_time_scale() -> None:
    async with SimServer(SimOptions(model="demo", step_s=0.01)) as srv, _session() as s:
        t0 = time.monotonic()
        r = await stream_chat(s, srv.url, None, chat_body(max_tokens=20))
        full = time.monotonic() - t0
    assert r.content_chunks == 20
    assert 0.19 <= full <= 0.4, full  # 20 steps of 10 ms
    async with SimServer(SimOptions(model="demo", step_s=0.01, time_scale=0.5)) as srv, \
            _session() as s:
        t0 = time.monotonic()
        await stream_chat(s, srv.url, None, chat_body(max_tokens=20))
        half = time.monotonic() - t0
    assert half < full * 0.75, (half, full)


async def test_error_rate_one_gives_openai_500() -> None:
    async with SimServer(SimOptions(model="demo", error_rate=1.0)) as srv, _session() as s:
        r = await stream_chat(s, srv.url, None, chat_body(max_tokens=2))
    assert r.status == 500 and r.body["error"]["code"] == 500


async def test_error_rate_is_deterministic_with_seed() -> None:
    async def statuses(seed: int) -> list[int]:
        async with SimServer(SimOptions(model="demo", error_rate=0.5, seed=seed)) as srv, \
                _session() as s:
            return [(await stream_chat(s, srv.url, None, chat_body(max_tokens=1))).status
                    for _ in range(12)]

    a, b = await statuses(3), await statuses(3)
    assert a == b and 200 in a and 500 in a


async def test_stall_mid_stream_pauses_after_half_the_tokens() -> None:
    opts = SimOptions(model="demo", step_s=0.002, stall_mid_stream_s=0.3)
    async with SimServer(opts) as srv, _session() as s:
        body = chat_body(max_tokens=10)
        arrivals: list[float] = []
        async with s.post(srv.url + "/v1/chat/completions", json=body) as resp:
            async for line in resp.content:
                if b'"content":" tok' in line:
                    arrivals.append(time.monotonic())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) == 10
    assert max(gaps) >= 0.25 and gaps.index(max(gaps)) == 4  # after token 5 of 10


async def test_priority_policy_over_http() -> None:
    opts = SimOptions(model="demo", step_s=0.005, max_num_seqs=1, scheduling_policy="priority")
    async with SimServer(opts) as srv, _session() as s:
        first = asyncio.create_task(stream_chat(s, srv.url, None, chat_body(max_tokens=20)))
        await asyncio.sleep(0.03)
        done: list[int] = []

        async def one(prio: int) -> None:
            await stream_chat(s, srv.url, None, {**chat_body(max_tokens=2), "priority": prio})
            done.append(prio)

        others = [asyncio.create_task(one(p)) for p in (7, 3, 5, 1)]
        await asyncio.gather(first, *others)
    assert done == [1, 3, 5, 7]


async def test_eos_prob_stops_some_streams_early() -> None:
    async with SimServer(SimOptions(model="demo", eos_prob=0.2, seed=5)) as srv, _session() as s:
        rs = [await stream_chat(s, srv.url, None, chat_body(max_tokens=30)) for _ in range(4)]
        forced = await stream_chat(s, srv.url, None, {**chat_body(max_tokens=30), "ignore_eos": True})
    stopped = [r for r in rs if r.chunks[-2]["choices"][0]["finish_reason"] == "stop"]
    assert stopped and all(r.usage["completion_tokens"] < 30 for r in stopped)
    assert forced.usage["completion_tokens"] == 30


async def test_many_concurrent_streams_one_process() -> None:
    async with SimServer(SimOptions(model="demo", max_num_seqs=256)) as srv:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:
            t0 = time.monotonic()
            rs = await asyncio.gather(*[stream_chat(s, srv.url, None, chat_body(max_tokens=50))
                                        for _ in range(200)])
            wall = time.monotonic() - t0
    assert all(r.done and r.content_chunks == 50 for r in rs)
    # 50 steps of 2 ms + 200 × 10 µs = 0.2 s simulated; client and server share this core
    assert wall < 4.0, wall


async def test_sleep_fails_streams_in_flight_and_frees_the_batch() -> None:
    async with SimServer(SimOptions(model="demo", step_s=0.005)) as srv, _session() as s:
        task = asyncio.create_task(stream_chat(s, srv.url, None, chat_body(max_tokens=500)))
        await asyncio.sleep(0.1)
        async with s.post(srv.url + "/sleep?level=2") as resp:
            assert resp.status == 200
        r = await task
        assert r.error is not None and r.done, "an SSE error event, then [DONE]"
        assert 0 < r.content_chunks < 500
        assert srv.engine.model.num_running == 0 and srv.engine.model.kv_usage == 0.0
        async with s.post(srv.url + "/wake_up") as resp:
            assert resp.status == 200
        assert (await stream_chat(s, srv.url, None, chat_body(max_tokens=3))).content_chunks == 3
