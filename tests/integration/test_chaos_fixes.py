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
        old = app.daemon_pid("frontdoor")
        os.kill(old, signal.SIGTERM)
        await asyncio.sleep(0.5)  # it has stopped accepting and is draining the stream
        t0 = time.monotonic()
        short = await stream_chat(s, app.url, "sk-flooder-demo", chat_body(4, stream=False))
        waited = time.monotonic() - t0
        first = await long
    assert first.status == 200 and first.done and first.error is None, first.error
    assert short.status == 200, short.body  # the old code: ClientConnectorError (refused)
    assert app.daemon_pid("frontdoor") != old
    assert waited < 30, waited
