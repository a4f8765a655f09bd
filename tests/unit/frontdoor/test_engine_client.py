"""The front door's own HTTP/1.1 client for engines on Unix sockets (engine_client.py):
every body framing, split anywhere; connections kept alive and a stale one retried;
the failures relay.py tells apart (never reached, broke, timed out)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from infergridd.engines.unixhttp import unix_endpoint
from infergridd.frontdoor.engine_client import EngineClient, EngineConnectError, EngineHTTPError

SSE = [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(x), x) for x in parts) + b"0\r\n\r\n"


class Engine:
    """A Unix-socket server answering each request with ``answer(request_bytes)``, written
    ``split`` bytes at a time; counts connections and keeps the requests it got."""

    def __init__(self, path: Path, answer: Callable[[bytes], bytes], split: int = 0,
                 close_after: bool = False) -> None:
        self.path, self.answer, self.split, self.close_after = path, answer, split, close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._conn, str(self.path))

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(w)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                             if line.lower().startswith(b"content-length")))
                req = head + await r.readexactly(n)
                self.requests.append(req)
                out = self.answer(req)
                step = self.split or len(out)
                for i in range(0, len(out), step):
                    w.write(out[i:i + step])
                    await w.drain()
                    await asyncio.sleep(0)
                if self.close_after:
                    w.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()


@pytest.fixture
async def where() -> AsyncIterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="igec-", dir="/tmp"))
    yield d / "e.sock"
    shutil.rmtree(d, ignore_errors=True)


async def _client() -> EngineClient:
    return EngineClient(aiohttp.ClientSession())


async def _post(c: EngineClient, path: Path, timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    return await c.post(unix_endpoint(path), "/v1/completions", b'{"x":1}',
                        {"Content-Type": "application/json", "X-Request-Id": "r1"}, timeout_s,
                        aiohttp.ClientTimeout(total=timeout_s))


@pytest.mark.parametrize("split", [0, 1, 3, 7])
async def test_a_chunked_stream_split_anywhere_comes_out_whole(where: Path, split: int) -> None:
    eng = Engine(where, lambda _: b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n" + chunked(SSE), split)
    await eng.start()
    c = await _client()
    try:
        for _ in range(3):  # and the connection is reused
            r = await _post(c, where)
            assert r.status == 200 and r.headers["content-type"] == "text/event-stream"
            got = b"".join([x async for x in r.content.iter_any()])
            assert got == b"".join(SSE)
            r.release()
        assert eng.connections == 1
        req = eng.requests[0]
        assert req.startswith(b"POST /v1/completions HTTP/1.1\r\n")
        assert b"X-Request-Id: r1\r\n" in req and req.endswith(b'\r\n\r\n{"x":1}')
    finally:
        c.close()
        await c.http.close()
        eng.server.close()


async def test_a_base_path_after_the_socket_is_kept(where: Path) -> None:
    eng = Engine(where, lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await eng.start()
    c = await _client()
    try:
        r = await c.post(unix_endpoint(where) + "/base", "/v1/completions", b"{}", {}, 5.0,
                         aiohttp.ClientTimeout(total=5.0))
        assert await r.read() == b""
        r.release()
        assert eng.requests[0].startswith(b"POST /base/v1/completions HTTP/1.1\r\n")
    finally:
        c.close()
        await c.http.close()
        eng.server.close()


async def test_content_length_and_read_to_the_end_of_the_connection(where: Path) -> None:
    bodies = iter([b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\n{\"e\":\"bad\"}",
                   b"HTTP/1.0 200 OK\r\n\r\nuntil the end"])
    eng = Engine(where, lambda _: next(bodies), split=4)
    await eng.start()
    c = await _client()
    try:
        r = await _post(c, where)
        assert r.status == 400 and await r.content.read(64 * 1024) == b'{"e":"bad"}'
        r.release()
        eng.close_after = True
        r = await _post(c, where)
        assert r.status == 200 and await r.read() == b"until the end"
        r.release()  # not kept: its end was the connection's
        assert not c._idle.get(str(where))
    finally:
        c.close()
        await c.http.close()
        eng.server.close()


async def test_a_kept_alive_connection_the_engine_closed_is_replaced(where: Path) -> None:
    eng = Engine(where, lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await eng.start()
    c = await _client()
    try:
        r = await _post(c, where)
        assert await r.read() == b"ok"
        r.release()
        for w in eng.writers:  # the engine drops the idle connection ...
            w.transport.abort()
        r = await _post(c, where)  # ... as ours is sent: once more, on a new one
        assert await r.read() == b"ok" and eng.connections == 2
        r.release()
    finally:
        c.close()
        await c.http.close()
        eng.server.close()


async def test_failures_are_told_apart(where: Path) -> None:
    c = await _client()
    try:
        with pytest.raises(EngineConnectError):  # nobody listens: never reached
            await _post(c, where)
        eng = Engine(where, lambda _: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")  # then nothing: the engine hangs mid-stream
        await eng.start()
        r = await _post(c, where, timeout_s=0.3)
        with pytest.raises(TimeoutError):
            [x async for x in r.content.iter_any()]
        r.close()
        eng.answer = lambda _: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
        eng.close_after = True
        r = await _post(c, where)
        with pytest.raises(EngineHTTPError) as e:  # broke mid-body: a ClientError
            [x async for x in r.content.iter_any()]
        assert isinstance(e.value, aiohttp.ClientError)
        r.close()
        eng.answer = lambda _: b"SSH-2.0-OpenSSH\r\n\r\n"
        with pytest.raises(EngineHTTPError):
            await _post(c, where)
        eng.server.close()
    finally:
        c.close()
        await c.http.close()
