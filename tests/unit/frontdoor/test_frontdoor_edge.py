"""The connection guard (frontdoor/edge.py) on a real aiohttp server in this process:
slow headers are cut off, idle keep-alive is bounded, the connection cap makes room by
closing slow or idle connections (never one with a request in progress), and the last
request a connection may carry closes it.

Each of these fails on a plain ``web.AppRunner``: aiohttp has no header deadline, keeps
an idle connection for an hour (3630 s) and has no connection cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from infergridd.frontdoor.edge import EdgeGuard, EdgeRunner

REQUEST = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"


class Server:
    def __init__(self, guard: EdgeGuard) -> None:
        self.guard = guard
        self.release = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def hold(_: web.Request) -> web.Response:
            await self.release.wait()
            return web.Response(text="held")

        async def refuse(_: web.Request) -> web.Response:
            return web.Response(status=429, text="full")  # its body never read

        app = web.Application(middlewares=[self.guard.middleware])
        app.router.add_get("/ok", ok)
        app.router.add_get("/hold", hold)
        app.router.add_post("/refuse", refuse)
        self.runner = EdgeRunner(app, self.guard, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site.port


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    kw = dict(max_connections=100, header_timeout_s=0.5, keepalive_timeout_s=0.8,
              max_requests_per_connection=1000)
    kw.update(getattr(request, "param", {}))
    s = Server(EdgeGuard(**kw))
    await s.start()
    yield s
    s.release.set()
    await s.runner.cleanup()


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> float | None:
    """Seconds until the server closed the connection, or None if it was still open."""
    t0 = time.monotonic()
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), limit)
            if not data:
                return time.monotonic() - t0
    except (asyncio.TimeoutError, ConnectionError):
        return None if time.monotonic() - t0 >= limit else time.monotonic() - t0


async def test_headers_one_byte_a_time_are_cut_off(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    t0 = time.monotonic()
    closed = False
    for b in REQUEST[:-4]:  # never finishes its headers
        try:
            writer.write(bytes([b]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        await asyncio.sleep(0.05)
        if reader.at_eof() or writer.is_closing():
            closed = True
            break
        try:
            if await asyncio.wait_for(reader.read(1), 0.001) == b"":
                closed = True
                break
        except asyncio.TimeoutError:
            pass
    took = time.monotonic() - t0
    assert closed, "a client trickling its headers was never cut off"
    assert 0.4 <= took < 1.5, took
    assert server.guard.timed_out == 1
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    took = await _closed_after(reader, 3.0)
    assert took is not None and 0.4 <= took < 1.5, took
    writer.close()


async def test_idle_keepalive_is_bounded_and_a_prompt_client_is_served(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(REQUEST)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"ok"), 2)
    assert head.startswith(b"HTTP/1.1 200")
    took = await _closed_after(reader, 3.0)  # keep-alive 0.8 s, longer than the header 0.5 s
    assert took is not None and 0.7 <= took < 1.8, took
    writer.close()


@pytest.mark.parametrize("server", [{"max_connections": 5}], indirect=True)
async def test_cap_evicts_slow_connections_and_never_a_busy_one(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        busy = asyncio.create_task(http.get(f"http://127.0.0.1:{server.port}/hold"))
        await asyncio.sleep(0.1)
        slow = []
        for _ in range(4):  # the cap is now full: one busy, four trickling
            _, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(b"GET /ok HT")
            slow.append(w)
        await asyncio.sleep(0.05)
        assert len(server.guard.conns) == 5
        # a normal client still gets in: the oldest slow connection makes room
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as h2:
            for _ in range(3):
                async with h2.get(f"http://127.0.0.1:{server.port}/ok") as r:
                    assert r.status == 200 and await r.text() == "ok"
        assert server.guard.evicted >= 1  # (each closed request connection frees its slot)
        assert len(server.guard.conns) <= 5
        server.release.set()
        r = await busy
        assert r.status == 200 and await r.text() == "held"  # the busy one was never touched
        r.release()
        for w in slow:
            w.close()


@pytest.mark.parametrize("server", [{"max_connections": 2}], indirect=True)
async def test_cap_with_every_connection_busy_answers_503(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        busy = [asyncio.create_task(http.get(f"http://127.0.0.1:{server.port}/hold"))
                for _ in range(2)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        answer = await asyncio.wait_for(reader.read(), 2)
        assert answer.startswith(b"HTTP/1.1 503")
        assert b'"code":"overloaded"' in answer and b"Retry-After: 1" in answer
        assert server.guard.refused == 1
        writer.close()
        server.release.set()
        for t in busy:
            (await t).release()


@pytest.mark.parametrize("server", [{"max_requests_per_connection": 3}], indirect=True)
async def test_keepalive_carries_a_bounded_number_of_requests(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for i in range(3):
        writer.write(REQUEST)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        await asyncio.wait_for(reader.readexactly(2), 2)
        assert (b"Connection: close" in head) == (i == 2), (i, head)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


@pytest.mark.parametrize("server", [{"max_connections": 10}], indirect=True)
async def test_few_refused_bodies_are_read_away_at_once(server: Server) -> None:
    """A body refused unread is read away by aiohttp so the client sees its answer; each
    such connection can buffer up to a body, so past ``max_draining`` the answer closes."""
    server.guard.max_draining = 1
    head = (b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 10)
    answers = []
    writers = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)
        answers.append(await asyncio.wait_for(reader.readuntil(b"full"), 2))
        writers.append((reader, writer))
    assert all(a.startswith(b"HTTP/1.1 429") for a in answers)
    assert b"Connection: close" not in answers[0]  # read away: the connection lives on
    assert b"Connection: close" in answers[1]  # over the bound: closed instead
    assert server.guard.draining == 1 and server.guard.closed_undrained == 1
    assert await asyncio.wait_for(writers[1][0].read(), 2) == b""
    writers[0][1].close()
    writers[1][1].close()
    await asyncio.sleep(0.1)
    assert server.guard.draining == 0
