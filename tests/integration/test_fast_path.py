"""The fast path through the real appliance (``frontdoor.fast_path``, core/leases.py).

A quiet request goes to an idle engine slot the scheduler leased to the front
door ahead of time: no Submit/Dispatch round trip.  Shown the hard way: with the
scheduler SIGSTOPped, a quiet request still completes (the normal path holds it
in the waiting room until the scheduler is back), and the scheduler charges it
once it runs again.  Under a flood nothing is leased (something is always
queued), so the weighted shares hold as before.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import aiohttp
import pytest
from appliance import DEMO_TENANTS, sim_model
from sse import chat_body, stream_chat
from weighted_flood import WARMUP_S, assert_shares, flood, tenants

pytestmark = pytest.mark.slow

QUIET = "sk-quiet-demo"


async def _fast_dispatches(s: aiohttp.ClientSession, url: str) -> int:
    await asyncio.sleep(0.15)  # the page is cached for 0.1 s
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    m = re.search(r"^infergrid_frontdoor_fast_path_dispatches(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert m is not None, "no fast-path counter on /metrics"
    return int(float(m.group(1)))


def _tenant(app, name: str) -> dict:  # noqa: ANN001
    return next(t for t in app.status()["tenants"] if t["name"] == name)


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_quiet_request_runs_while_the_scheduler_is_stopped_and_is_charged(
        appliance_factory, fast_path: bool) -> None:
    app = appliance_factory({"models": [sim_model(max_num_seqs=8)], "tenants": DEMO_TENANTS,
                             "frontdoor": {"fast_path": fast_path}})
    async with aiohttp.ClientSession() as s:
        for _ in range(5):  # one by one: each finds the engine idle and a lease held
            await asyncio.sleep(0.3)
            r = await stream_chat(s, app.url, QUIET, chat_body(8))
            assert r.status == 200 and r.done
        assert await _fast_dispatches(s, app.url) == (5 if fast_path else 0)
        before = _tenant(app, "quiet")["tokens_in"]
        assert before > 0  # the leased ones were charged as they ran
        await asyncio.sleep(0.3)
        sched = app.daemon_pid("scheduler")
        os.kill(sched, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            try:
                r = await asyncio.wait_for(stream_chat(s, app.url, QUIET, chat_body(8)), 1.5)
                took: float | None = time.monotonic() - t0
            except asyncio.TimeoutError:
                took = None
        finally:
            os.kill(sched, signal.SIGCONT)
        if not fast_path:
            assert took is None  # held for the scheduler: there is a round trip
            return
        assert took is not None and r.status == 200 and r.done, "the lease was not used"
        # the scheduler, back, reads the Submit that named the lease and charges it
        app.wait_for(lambda: _tenant(app, "quiet")["tokens_in"] > before, 10,
                     "the leased request to be charged")
        assert await _fast_dispatches(s, app.url) == 6


async def test_under_a_flood_nothing_is_leased_and_the_shares_hold(appliance_factory) -> None:
    """tests/integration/test_fairness_shares.py's flood, with the fast path on."""
    app = appliance_factory({"models": [sim_model(max_num_seqs=8, step_s=0.005)],
                             "tenants": tenants(), "frontdoor": {"fast_path": True}})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        # quiet first: the front door holds a lease, and uses it
        await asyncio.sleep(0.5)
        r = await stream_chat(s, app.url, "sk-t1a", chat_body(4))
        assert r.status == 200
        assert await _fast_dispatches(s, app.url) == 1
        load = asyncio.create_task(flood(s, app.url))
        await asyncio.sleep(WARMUP_S)
        at_warm = await _fast_dispatches(s, app.url)
        served = await load
        after = await _fast_dispatches(s, app.url)

    # backlogged all along: no lease granted, so none used (the fairness is the scheduler's)
    assert after - at_warm == 0, (at_warm, after, served)
    assert_shares(served)


async def test_a_busy_front_door_holds_no_lease_and_asks_again_once_quiet(
        appliance_factory) -> None:
    """Twelve streams at once through one front door, on an engine with room for all of
    them (so nothing queues and the scheduler would go on granting): the front door,
    busy, gives its leases back and asks for none, so no slot is held for a request that
    would not use it; once quiet it asks again and the next request goes on a lease."""
    # one process: the test follows one front door's own leases (each process holds and
    # gives back its own: with two, two are held while idle, and which process is busy
    # depends on how the kernel spreads the twelve connections)
    app = appliance_factory({"models": [sim_model(max_num_seqs=64, step_s=0.005)],
                             "tenants": DEMO_TENANTS,
                             "frontdoor": {"fast_path": True, "processes": 1}})
    app.wait_for(lambda: app.status()["leases"]["held"] == 1, 10, "a lease held while idle")
    stop = time.monotonic() + 4.0

    async def stream(s: aiohttp.ClientSession) -> int:
        n = 0
        while time.monotonic() < stop:
            r = await stream_chat(s, app.url, QUIET, chat_body(20))
            assert r.status == 200 and r.done
            n += 1
        return n

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        load = asyncio.gather(*(stream(s) for _ in range(12)))
        await asyncio.sleep(1.5)
        busy = app.status()["leases"]
        at_busy = await _fast_dispatches(s, app.url)
        await asyncio.sleep(1.5)
        still = app.status()["leases"]
        in_busy = await _fast_dispatches(s, app.url) - at_busy
        served = sum(await load)
        app.wait_for(lambda: app.status()["leases"]["held"] == 1, 10,
                     "the lease asked for again once quiet")
        await asyncio.sleep(0.1)
        r = await stream_chat(s, app.url, QUIET, chat_body(4))
        assert r.status == 200
        after = await _fast_dispatches(s, app.url)
    assert served > 24
    for seen in (busy, still):  # busy: nothing held, nothing wanted by it
        assert seen["held"] == 0 and not seen["wants"], seen
    assert in_busy == 0
    assert after == at_busy + 1  # quiet again: the next request went on a lease


async def test_a_leased_request_whose_submit_died_with_the_scheduler_is_charged_by_the_next(
        appliance_factory) -> None:
    """The scheduler is stopped, a quiet request runs on its lease (its Submit waits unread
    in the stopped scheduler's socket), then the scheduler is SIGKILLed: the Submit is
    lost.  The stream completes all the same, and the next scheduler, from the front
    door's Hello, charges it (exactly once: one Done, the counts balance)."""
    app = appliance_factory({"models": [sim_model(max_num_seqs=8, step_s=0.02)],
                             "tenants": DEMO_TENANTS, "frontdoor": {"fast_path": True}})
    async with aiohttp.ClientSession() as s:
        await asyncio.sleep(0.5)
        old = app.daemon_pid("scheduler")
        os.kill(old, signal.SIGSTOP)
        task = asyncio.create_task(stream_chat(s, app.url, QUIET, chat_body(60)))
        await asyncio.sleep(0.3)
        os.kill(old, signal.SIGKILL)
        os.kill(old, signal.SIGCONT)
        r = await task
        assert r.status == 200 and r.done and r.usage["completion_tokens"] == 60
        assert await _fast_dispatches(s, app.url) == 1
    app.wait_for(lambda: app.daemon_pid("scheduler") != old, 30, "a new scheduler")

    def charged() -> dict | None:
        t = _tenant(app, "quiet")
        return t if t["tokens_out"] == 60 and t["inflight"] == 0 else None

    t = app.wait_for(charged, 30, "the leased request charged by the new scheduler")
    assert t["tokens_in"] == r.usage["prompt_tokens"] > 0
    # its fairness counter too, prompt included (input weight 1, output weight 2)
    assert t["counter"] == pytest.approx(t["tokens_in"] + 2 * 60)
