"""``infergridd/bench/rawload.py`` against a scripted raw HTTP server (no daemons).

Each response shape is sent to both generators, ``loadgen.stream_one`` (aiohttp)
and ``rawload``, and their ``Result`` must agree: the raw one replaces the aiohttp
one under the ceiling only if it counts the same things.  The server writes its
bytes in awkward pieces (a chunk's size line apart from its data, an event cut in
the middle, one byte at a time) so the chunked decoding is exercised, not just the
happy path where every read is one whole chunk.  Also: 429/503 and dropped
connections are failures, keep-alive reuses one connection, the open loop does
not wait for earlier requests, and the drain leaves ``unfinished`` results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infergridd.bench import rawload
from infergridd.bench.appliance import free_port
from infergridd.bench.loadgen import (
    FAILED,
    OK,
    REJECTED,
    UNFINISHED,
    Prompts,
    Result,
    Target,
    stream_one,
)
from infergridd.bench.overhead_arms import http_session
from infergridd.bench.workload import Planned
from infergridd.engines.unixhttp import engine_url, unix_endpoint

ROLE = b'data: {"choices":[{"text":""}]}\n\n'  # a role-only first chunk: not a token
TOK = b'data: {"choices":[{"index":0,"text":" x","finish_reason":null}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":3}}\n\n'
DONE = b"data: [DONE]\n\n"
PREFILL_S, STEP_S = 0.03, 0.012
STREAM = [ROLE, b"", TOK, b"", TOK, b"", TOK + USAGE + DONE]  # b"": a pause of STEP_S
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def _chunk(b: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(b), b)


class Script:
    """What the server does, chosen by the request's API key; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.release = asyncio.Event()
        self.closed_at: list[float] = []

    async def serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                hdr = dict(x.split(": ", 1) for x in head.decode().split("\r\n")[1:] if x)
                await r.readexactly(int(hdr["Content-Length"]))
                key = hdr.get("Authorization", "").removeprefix("Bearer ")
                if not await getattr(self, key.replace("-", "_"))(w, r):
                    break  # the behaviour closed (or will close) the connection
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed_at.append(time.monotonic())
            w.close()

    async def _stream(self, w: asyncio.StreamWriter, pieces: list[bytes], split: int = 0) -> None:
        """The SSE stream chunked, each write cut at ``split`` bytes (0: whole chunks)."""
        await asyncio.sleep(PREFILL_S)
        for ev in pieces:
            if not ev:
                await asyncio.sleep(STEP_S)
                continue
            data = _chunk(ev)
            step = split or len(data)
            for i in range(0, len(data), step):
                w.write(data[i:i + step])
                await w.drain()
                if split:
                    await asyncio.sleep(0.0005)

    async def ok(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        w.write(SSE_HEAD + b"X-InferGrid-Queue-Ms: 1.5\r\nTransfer-Encoding: chunked\r\n\r\n")
        await self._stream(w, STREAM)
        w.write(b"0\r\n\r\n")
        return True

    async def ragged(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        """Every 7 bytes apart (size lines, CRLFs and events cut), and a trailer."""
        w.write(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        await self._stream(w, STREAM, split=7)
        w.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        return True

    async def sized(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        body = b"".join(STREAM)
        w.write(SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body))
        await asyncio.sleep(PREFILL_S)
        w.write(body)  # in one read: a first token, no gaps
        return True

    async def eof(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        w.write(SSE_HEAD + b"Connection: close\r\n\r\n")
        await asyncio.sleep(PREFILL_S)
        for ev in STREAM:
            w.write(ev)
            await asyncio.sleep(STEP_S)
        return False

    async def limited(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        body = b'{"error":{"message":"slow down","code":"rate_limit_exceeded"}}'
        w.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True

    async def unavailable(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
                + _chunk(b'{"error":{"message":"no engine') + _chunk(b' ready"}}') + b"0\r\n\r\n")
        return True

    async def drop(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        """A token, then the connection dies mid-body."""
        w.write(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        await self._stream(w, [ROLE, TOK])
        await asyncio.sleep(STEP_S)
        w.transport.abort()
        return False

    async def drop_early(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        w.transport.abort()
        return False

    async def sse_error(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        w.write(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        await self._stream(w, [ROLE, TOK, b"", b'data: {"error":{"message":"engine died"}}\n\n'])
        w.write(b"0\r\n\r\n")
        return True

    async def empty(self, w: asyncio.StreamWriter, _: asyncio.StreamReader) -> bool:
        w.write(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        await self._stream(w, [ROLE, USAGE, DONE])
        w.write(b"0\r\n\r\n")
        return True

    async def stuck(self, w: asyncio.StreamWriter, r: asyncio.StreamReader) -> bool:
        """No token ever; ends when the client closes (or the test does)."""
        w.write(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(ROLE))
        eof = asyncio.ensure_future(r.read())
        await asyncio.wait([eof, asyncio.ensure_future(self.release.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        return False


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Script, str, str]]:
    """(script, TCP base URL, Unix-socket base URL as ``engine_target`` builds it)."""
    s = Script()
    tcp = await asyncio.start_server(s.serve, "127.0.0.1", 0)
    sock = tmp_path / "e.sock"
    unix = await asyncio.start_unix_server(s.serve, str(sock))
    port = tcp.sockets[0].getsockname()[1]
    yield s, f"http://127.0.0.1:{port}", engine_url(unix_endpoint(sock)).rstrip("/")
    s.release.set()
    for srv in (tcp, unix):
        srv.close()


KEYS = ["ok", "ragged", "sized", "eof", "limited", "unavailable", "drop", "drop-early",
        "sse-error", "empty"]


def _target(url: str) -> Target:
    return Target(url, "m", {k: k for k in KEYS + ["stuck"]})


async def _both(url: str, key: str) -> tuple[Result, Result]:
    p, prompt = Planned(key, 0, 0.0, 8, 3), list(range(7, 15))
    a, b = Result(key, 0, 0.0), Result(key, 0, 0.0)
    async with http_session() as http:
        await stream_one(http, _target(url), p, prompt, time.monotonic(), a)
    pool = await rawload.send_one(_target(url), p, prompt, time.monotonic(), b)
    pool.close()
    return a, b


EXPECT = {  # key: (status, http status, tokens out, a first token seen)
    "ok": (OK, 200, 3, True), "ragged": (OK, 200, 3, True), "sized": (OK, 200, 3, True),
    "eof": (OK, 200, 3, True), "limited": (REJECTED, 429, 0, False),
    "unavailable": (FAILED, 503, 0, False), "drop": (FAILED, 200, 0, True),
    "drop-early": (FAILED, 0, 0, False), "sse-error": (FAILED, 200, 0, True),
    "empty": (FAILED, 200, 3, False)}


@pytest.mark.parametrize("key", KEYS)
async def test_raw_and_aiohttp_results_agree(server: tuple[Script, str, str], key: str) -> None:
    _, url, _ = server
    a, b = await _both(url, key)
    for r in (a, b):
        assert (r.status, r.http_status, r.tokens_out, r.ttft_s is not None) == EXPECT[key], r
    assert (a.tokens_in, a.e2e_s is None, bool(a.error)) == (b.tokens_in, b.e2e_s is None,
                                                             bool(b.error)), (a, b)
    if a.status == OK:
        # the role-only chunk is no token: TTFT waits for the first text, after the prefill
        assert b.ttft_s is not None and PREFILL_S <= b.ttft_s <= b.e2e_s  # type: ignore[operator]
        assert a.ttft_s is not None and PREFILL_S <= a.ttft_s
        assert len(b.itl_s) == len(a.itl_s) == (0 if key == "sized" else 2), (a.itl_s, b.itl_s)
        assert all(g >= STEP_S * 0.8 for g in b.itl_s), b.itl_s
        assert abs(b.ttft_s - a.ttft_s) < 0.02
    assert b.queue_s == a.queue_s == (0.0015 if key == "ok" else None)
    if a.http_status not in (0, 200):
        assert b.error == a.error  # the error body, as aiohttp read it
    if key == "limited":
        assert "slow down" in b.error
    if key == "unavailable":
        assert b.error == '{"error":{"message":"no engine ready"}}'  # both chunks, decoded
    if key == "sse-error":
        assert "engine died" in b.error


async def test_unix_socket_and_keep_alive(server: tuple[Script, str, str]) -> None:
    """The direct arm's Unix socket; sequential requests share one connection."""
    script, _, unix = server
    pool = None
    for i in range(4):
        r = Result("ok", i, 0.0)
        pool = await rawload.send_one(_target(unix), Planned("ok", i, 0.0, 8, 3),
                                      [7] * 8, time.monotonic(), r, pool)
        assert r.status == OK and r.tokens_out == 3, r
    assert pool is not None and pool.opened == 1 and script.connections == 1
    pool.close()


async def test_connection_close_is_not_reused(server: tuple[Script, str, str]) -> None:
    script, url, _ = server
    pool = None
    for i in range(3):
        r = Result("eof", i, 0.0)
        pool = await rawload.send_one(_target(url), Planned("eof", i, 0.0, 8, 3), [7] * 8,
                                      time.monotonic(), r, pool)
        assert r.status == OK, r
    assert pool is not None and pool.opened == 3 and script.connections == 3


async def test_open_loop_sends_on_time_and_pools(server: tuple[Script, str, str]) -> None:
    """Five at once need five connections; later ones reuse them; nobody waits."""
    script, url, _ = server
    plan = [Planned("ok", i, 0.0, 8, 3) for i in range(5)]
    plan += [Planned("ok", 5 + i, 0.3 + 0.02 * i, 8, 3) for i in range(5)]
    run = await rawload.open_loop(_target(url), plan, Prompts(0), label="t", duration_s=0.4,
                                  drain_s=2.0, progress=False)
    assert [r.status for r in run.results] == [OK] * 10
    assert run.connections == script.connections == 5
    assert max(r.lag_s for r in run.results) < 0.05
    assert sum(len(b) for b in run.timeline.bins.values()) and \
        sum(sum(b) for b in run.timeline.bins.values()) == 30  # 3 tokens each, counted


async def test_drain_leaves_unfinished_and_closes(server: tuple[Script, str, str]) -> None:
    """Stuck requests: open loop keeps sending, then they are cut, their sockets closed."""
    script, url, _ = server
    plan = [Planned("stuck", i, 0.05 * i, 8, 3) for i in range(4)]
    t = time.monotonic()
    run = await rawload.open_loop(_target(url), plan, Prompts(0), label="t", duration_s=0.2,
                                  drain_s=0.2, progress=False)
    assert time.monotonic() - t < 1.0
    assert [r.status for r in run.results] == [UNFINISHED] * 4
    assert all(r.e2e_s is None and r.ttft_s is None for r in run.results)
    assert max(r.lag_s for r in run.results) < 0.05  # none waited for the stuck ones
    await asyncio.sleep(0.1)
    assert len(script.closed_at) == 4  # the server saw every connection go


async def test_connect_refused_is_a_failure() -> None:
    r = Result("ok", 0, 0.0)
    pool = await rawload.send_one(_target(f"http://127.0.0.1:{free_port()}"),
                                  Planned("ok", 0, 0.0, 8, 3), [7], time.monotonic(), r)
    assert r.status == FAILED and "Connect" in r.error and pool.outstanding == 0, r


def test_https_is_refused() -> None:
    with pytest.raises(ValueError, match="http://"):
        rawload.Pool(Target("https://example.invalid", "m"))
