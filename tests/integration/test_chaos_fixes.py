"""Regression tests for the bugs the chaos run (bench/chaos.py, issue 16) found.

Each test is the smallest reproduction of one finding, through the real appliance.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
from appliance import DEMO_TENANTS, sim_model
from sse import chat_body, stream_chat

pytestmark = pytest.mark.slow


async def test_front_door_restart_under_serve_queues_new_connections(appliance_factory) -> None:
    """Chaos finding 1: under ``infergrid serve`` a SIGTERMed front door refused every new
    connection while it drained (up to drain_timeout_s) and until its successor bound
    the port.  serve now holds the listening socket and hands it to each front door
    (socket activation, as systemd does): new connections wait in the backlog."""
    app = appliance_factory({"models": [sim_model(step_s=0.03)], "tenants": DEMO_TENANTS})
    async with aiohttp.ClientSession() as s:
        long = asyncio.create_task(stream_chat(s, app.url, "sk-quiet-demo", chat_body(150)))
        await asyncio.sleep(1.0)  # the stream is under way (~4.5 s in all)
        old = app.daemon_pids("frontdoor")  # all of them: else another one just accepts
        assert len(old) == app.frontdoors
        for pid in old:
            os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.5)  # they have stopped accepting; one is draining the stream
        t0 = time.monotonic()
        short = await stream_chat(s, app.url, "sk-flooder-demo", chat_body(4, stream=False))
        waited = time.monotonic() - t0
        first = await long
    assert first.status == 200 and first.done and first.error is None, first.error
    assert short.status == 200, short.body  # the old code: ClientConnectorError (refused)
    # every one replaced (the one that held the stream exits once it has drained it)
    app.wait_for(lambda: (lambda ps: len(ps) == app.frontdoors and not set(ps) & set(old))(
        app.daemon_pids("frontdoor")), what="every front door replaced")
    assert waited < 30, waited


async def test_an_engine_dead_while_its_supervisor_is_away_gets_no_more_requests(
        appliance_factory) -> None:
    """The hour-long chaos run's one violation: the supervisor down (here SIGSTOPped,
    so serve does not restart it and nobody reports anything), then one of two
    replicas SIGKILLed.  The scheduler still listed the dead engine ready, so a request
    and its one retry could both go to it: 502.  Now the front door's ``Done`` says the
    engine could not be reached (``engine_failed``), the scheduler sends it nothing
    more, and every request is served by the live replica."""
    model = {**sim_model(max_num_seqs=4, step_s=0.01), "replicas": 2}
    app = appliance_factory({"models": [model], "tenants": DEMO_TENANTS})
    app.wait_for(lambda: len([e for e in app.status()["engines"]
                              if e["state"] == "ready"]) == 2 or None,
                 timeout=30, what="both replicas ready")
    sup = app.daemon_pid("supervisor")
    victim = app.status()["engines"][0]
    os.kill(sup, signal.SIGSTOP)
    try:
        os.kill(victim["pid"], signal.SIGKILL)
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as s:
            got = []
            for i in range(12):  # one by one: the dead engine always looks the idlest
                got.append(await stream_chat(s, app.url, "sk-quiet-demo",
                                             chat_body(4, stream=i % 2 == 0)))
        statuses = [r.status for r in got]
        assert statuses == [200] * 12, [(r.status, r.body) for r in got if r.status != 200]
        # the scheduler still has no word from the supervisor: the engine is not
        # dropped from its table, only held back
        assert any(e["engine_id"] == victim["engine_id"] for e in app.status()["engines"])
    finally:
        os.kill(sup, signal.SIGCONT)
    app.wait_for(lambda: (lambda es: es if len(es) == 2 and all(
        e["state"] == "ready" for e in es) and victim["pid"] not in {e["pid"] for e in es}
        else None)(app.status()["engines"]), timeout=40,
        what="the supervisor back, the dead replica restarted")
    async with aiohttp.ClientSession() as s:
        after = await asyncio.gather(*[stream_chat(s, app.url, "sk-quiet-demo", chat_body(4))
                                       for _ in range(8)])
    assert all(r.status == 200 and r.done for r in after)
