"""Slow clients (issue 14.7 must-show): 1,000 connections that send their headers one
byte a second do not stop a normal tenant's requests.

A real appliance (``infergrid serve``, simulated engine) started the way systemd starts
a service: with a soft open-file limit of 1024.  The attackers keep 1,000 connections
trickling headers and reconnect whenever they are cut off; the cap is below their
number (``max_connections: 800``), so the cap and the eviction are exercised too.
Meanwhile the quiet tenant sends a request every 0.2 s on a fresh connection.

On the old front door (no header deadline, no cap, no open-file headroom) the
trickling connections are kept for an hour and the descriptors run out near 1,000:
the quiet tenant's connections are no longer accepted.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from typing import Any

import aiohttp
import pytest
from appliance import DEMO_TENANTS, sim_model

pytestmark = pytest.mark.slow

SLOW = 1000
HEADER_TIMEOUT_S = 5.0
RUN_S = 15.0
HEADERS = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: infergrid\r\n"
           b"Authorization: Bearer sk-flooder-demo\r\nContent-Type: application/json\r\n"
           b"X-Padding: " + b"a" * 200 + b"\r\n\r\n")


class Attackers:
    """``n`` connections sending ``HEADERS`` a byte a second, reconnecting when cut off."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.n = n
        self.stop = asyncio.Event()
        self.lifetimes: list[float] = []  # connect → cut off by the server
        self.connects = 0
        self.refused = 0
        self.open = 0

    async def one(self, i: int) -> None:
        await asyncio.sleep(i * 0.002)  # 1,000 connects spread over 2 s
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.refused += 1
                await asyncio.sleep(1.0)
                continue
            self.connects += 1
            self.open += 1
            t0 = time.monotonic()
            try:
                for b in HEADERS:
                    if self.stop.is_set():
                        return
                    writer.write(bytes([b]))
                    await writer.drain()
                    try:  # a second per byte, unless the server closes first
                        if await asyncio.wait_for(reader.read(65536), 1.0) == b"":
                            break
                    except asyncio.TimeoutError:
                        pass
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.close()
            if not self.stop.is_set():
                self.lifetimes.append(time.monotonic() - t0)
                await asyncio.sleep(1.0)  # then comes back


async def _quiet(url: str, stop: asyncio.Event) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    body = {"model": "demo", "max_tokens": 4, "stream": False,
            "messages": [{"role": "user", "content": "hello"}]}
    timeout = aiohttp.ClientTimeout(total=10)
    while not stop.is_set():
        t0 = time.monotonic()
        try:  # a fresh connection each time: it must get through accept() and the cap
            async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(
                    force_close=True)) as http, http.post(
                    url + "/v1/chat/completions", json=body,
                    headers={"Authorization": "Bearer sk-quiet-demo"}) as r:
                await r.read()
                out.append((r.status, time.monotonic() - t0))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            out.append((0, time.monotonic() - t0))
        await asyncio.sleep(0.2)
    return out


async def test_thousand_slow_header_clients_do_not_stop_a_normal_tenant(
        appliance_factory: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 4096, "the test needs 4096 descriptors"
    # the appliance starts as systemd starts a service: soft limit 1024
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        app = appliance_factory({
            "models": [sim_model()], "tenants": DEMO_TENANTS,
            "limits": {"header_timeout_s": HEADER_TIMEOUT_S, "max_connections": 800},
            # one process: max_connections and the open-file limit are each process's
            # own, and with two (the default here) 1,000 attackers would never reach a
            # cap of 800 each: the cap and the eviction would go untested
            "frontdoor": {"processes": 1},
            "logging": {"requests": False}})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard) if hard !=
                                                     resource.RLIM_INFINITY else 8192, hard))
    fd_pid = app.daemon_pid("frontdoor")
    attackers = Attackers(app.port, SLOW)
    tasks = [asyncio.create_task(attackers.one(i)) for i in range(SLOW)]
    await asyncio.sleep(3.0)  # all 1,000 are trickling
    peak_open = attackers.open
    stop = asyncio.Event()
    quiet = asyncio.create_task(_quiet(app.url, stop))
    await asyncio.sleep(RUN_S)
    stop.set()
    answers = await quiet
    attackers.stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)

    ok = [t for s, t in answers if s == 200]
    lat = sorted(ok)
    p50 = statistics.median(lat) if lat else float("nan")
    print(f"\nslow clients: {SLOW} trickling ({peak_open} open at 3 s), "
          f"{attackers.connects} connects, {len(attackers.lifetimes)} cut off, "
          f"longest life {max(attackers.lifetimes, default=0):.1f}s; quiet tenant: "
          f"{len(ok)}/{len(answers)} answered 200, p50 {p50 * 1000:.0f} ms, "
          f"max {max(lat, default=0) * 1000:.0f} ms")
    assert peak_open >= 700, peak_open  # the attack really held the connections
    assert len(answers) >= RUN_S / 0.5, len(answers)
    assert all(s == 200 for s, _ in answers), [s for s, _ in answers if s != 200]
    assert max(lat) < 3.0, lat[-5:]
    # each trickling connection was cut off within the header deadline (+ the test's
    # one-second read granularity and scheduling on a loaded box)
    assert len(attackers.lifetimes) >= SLOW, len(attackers.lifetimes)
    assert max(attackers.lifetimes) < HEADER_TIMEOUT_S + 3.0, max(attackers.lifetimes)
    assert app.daemon_pid("frontdoor") == fd_pid
    app.wait_healthy(5)
