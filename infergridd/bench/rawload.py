"""A lean open-loop load generator for short streamed requests, on raw asyncio.

Why: the front-door ceiling (``bench/overhead.py``, issue 17) sends hundreds to
thousands of short streamed requests per second from the same 2-core machine, and
the aiohttp generator (``loadgen.open_loop``/``stream_one``: a task, a request and
response object, a header dict, a stream reader and several coroutine hops per
request) cost about as much CPU as the front door it measured, so its "ceiling"
said as much about the generator as about InferGrid.  This one keeps only what the
figures need: a hand-written HTTP/1.1 client on ``asyncio.Protocol`` (loopback TCP
to the front door, the engine's Unix socket for the direct arm), no task per
request once a connection is pooled, the response parsed in ``data_received``.

It measures what ``loadgen.stream_one`` measures, into the same ``Result``, so the
two can be swapped under ``ceiling_rows`` and the stats: TTFT at the first read
carrying an SSE ``data:`` event with a non-empty ``text`` or ``delta.content`` (a
role-only first chunk does not count), ITL between such reads, tokens from the
``usage`` event, the end at the end of the HTTP body (``[DONE]`` skipped, as
there), 429 ``rejected``, any other non-200 ``failed`` with the body as the error,
an SSE ``error`` event ``failed``, a connection that ends before its body does
``failed``, and what the drain cuts off ``unfinished``, its connection aborted (so
the engine aborts it).  Send lag and TTFT count from the send (a connect
included).  "A read" is one ``data_received`` call, timed as it happens; aiohttp
adds a task's wake-up to it, so under load this TTFT holds less of the generator.

Connections: HTTP/1.1 keep-alive, pooled per target, a new one only when none is
idle (as aiohttp's unlimited pool); not reused after ``Connection: close`` or a
body that ended with the connection.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec

from ..engines.unixhttp import socket_of_host
from .loadgen import (
    FAILED,
    OK,
    QUEUE_HEADER,
    REJECTED,
    UNFINISHED,
    Progress,
    Prompts,
    Result,
    Run,
    Target,
    Timeline,
    body_for,
    event_tokens,
)
from .loadgen import queue_seconds as _queue_seconds
from .workload import Planned

_QUEUE = QUEUE_HEADER.lower().encode()
#: response heads larger than this are a broken server, not a slow one
MAX_HEAD = 64 * 1024
#: body modes
_CHUNKED, _LENGTH, _EOF = 1, 2, 3
TokenSink = Callable[[str, float, int], None]


class Exchange:
    """One request's response as it arrives: fills its ``Result`` like ``stream_one``."""

    __slots__ = ("res", "start", "tenant", "t0", "on_tokens", "sse", "last", "ok_status",
                 "err_body")

    def __init__(self, res: Result, tenant: str, t0: float, on_tokens: TokenSink | None) -> None:
        self.res, self.tenant, self.t0, self.on_tokens = res, tenant, t0, on_tokens
        self.start = self.last = 0.0
        self.sse = b""
        self.ok_status = False
        self.err_body = bytearray()

    def head(self, status: int, queue: str | None) -> None:
        self.res.http_status = status
        self.res.queue_s = _queue_seconds(queue)
        self.ok_status = status == 200

    def feed(self, piece: bytes, t: float) -> bool:
        """One read's worth of body; False once the request has failed (stop reading)."""
        if not self.ok_status:
            self.err_body += piece
            return True
        res = self.res
        self.sse += piece
        k = 0
        while True:  # events end at a blank line; lines other than data: are ignored
            i = self.sse.find(b"\n\n")
            if i < 0:
                break
            event, self.sse = self.sse[:i], self.sse[i + 2:]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                try:
                    obj = msgspec.json.decode(data)
                    if not isinstance(obj, dict):
                        raise ValueError(f"an SSE event that is not an object: {data[:60]!r}")
                except (ValueError, msgspec.DecodeError) as exc:
                    self.fail(f"{type(exc).__name__}: {exc}", t)
                    return False
                n = event_tokens(obj, res)  # None: an error event, failed as stream_one
                if n is None:
                    return False
                k += n
        if k:
            if res.ttft_s is None:
                res.ttft_s = t - self.start
            else:
                res.itl_s.append(t - self.last)
            self.last = t
            if self.on_tokens is not None:
                self.on_tokens(self.tenant, t - self.t0, k)
        return True

    def finish(self, t: float) -> None:
        """The body ended: the outcome, as ``stream_one`` decides it."""
        res = self.res
        res.e2e_s = t - self.start
        if not self.ok_status:
            res.status = REJECTED if res.http_status == 429 else FAILED
            res.error = self.err_body.decode(errors="replace")[:200]
        elif res.ttft_s is not None:
            res.status = OK
        else:
            res.status = FAILED
            res.error = "stream ended without content"

    def fail(self, error: str, t: float) -> None:
        self.res.status = FAILED
        self.res.error = error[:200]
        self.res.e2e_s = t - self.start


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: writes a request, parses its response."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.ex: Exchange | None = None
        self.buf = bytearray()
        self.in_head, self.mode = True, 0
        self.left = 0  # bytes left in this chunk / the body; -1: need a chunk size line
        self.reusable, self.closed = True, False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex, self.ex = self.ex, None
        if ex is not None:
            if self.mode == _EOF and not self.in_head:
                ex.finish(time.monotonic())  # a body delimited by the close: it ended
            else:
                ex.fail(f"{type(exc).__name__}: {exc}" if exc else "ServerDisconnected: "
                        "the connection closed before the response ended", time.monotonic())
            self.pool.done(self)
        self.pool.forget(self)

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        ex = self.ex
        if ex is None:  # bytes nobody asked for: the connection is not one to reuse
            self.reusable = False
            self.abort()
            return
        self.buf += data
        try:
            piece, ended = self._parse(ex)
        except ValueError as exc:
            ex.fail(f"ValueError: bad HTTP response: {exc}", t)
            self._end(reuse=False)
            return
        if piece and not ex.feed(piece, t):  # failed mid-stream: stop reading, drop it
            self._end(reuse=False)
        elif ended:
            ex.finish(t)
            self._end(reuse=self.reusable and not self.buf)

    # the client side
    def send(self, ex: Exchange, request: bytes) -> None:
        self.ex = ex
        self.in_head, self.mode, self.left = True, 0, 0
        assert self.transport is not None
        self.transport.write(request)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _end(self, reuse: bool) -> None:
        self.ex = None
        self.pool.done(self)
        if reuse and not self.closed:
            self.pool.idle.append(self)
        else:
            self.abort()

    def _parse(self, ex: Exchange) -> tuple[bytes, bool]:
        """What ``buf`` holds now: (decoded body bytes, whether the body ended)."""
        buf = self.buf
        if self.in_head:
            while True:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > MAX_HEAD:
                        raise ValueError("response head too large")
                    return b"", False
                lines = bytes(buf[:i]).split(b"\r\n")
                del buf[:i + 4]
                version, _, rest = lines[0].partition(b" ")
                status = int(rest[:3])
                if 100 <= status < 200:
                    continue  # an interim response; the real one follows
                break
            hdr = {n.strip().lower(): v.strip() for n, _, v in (x.partition(b":") for x in lines[1:])}
            q = hdr.get(_QUEUE)
            ex.head(status, q.decode() if q is not None else None)
            self.in_head = False
            conn = hdr.get(b"connection", b"").lower()
            self.reusable = (version == b"HTTP/1.1" and conn != b"close") or conn == b"keep-alive"
            if b"chunked" in hdr.get(b"transfer-encoding", b"").lower():
                self.mode, self.left = _CHUNKED, -1
            elif b"content-length" in hdr:
                self.mode, self.left = _LENGTH, int(hdr[b"content-length"])
            else:
                self.mode, self.reusable = _EOF, False
            if status in (204, 304):
                self.mode, self.left = _LENGTH, 0
        if self.mode == _CHUNKED:
            return self._chunks()
        n = len(buf) if self.mode == _EOF else min(self.left, len(buf))
        out = bytes(buf[:n])
        del buf[:n]
        self.left -= n
        return out, self.mode == _LENGTH and self.left == 0

    def _chunks(self) -> tuple[bytes, bool]:
        """Chunked transfer coding: size line, data, CRLF; size 0, trailers, blank line."""
        buf, parts = self.buf, []
        while True:
            if self.left == -1:  # a chunk-size line
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 1024:
                        raise ValueError("chunk size line too long")
                    break
                size = int(bytes(buf[:i]).split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError("negative chunk size")
                del buf[:i + 2]
                self.left = size if size else -2
            elif self.left == -2:  # after the last chunk: trailers, then a blank line
                i = -2 if buf[:2] == b"\r\n" else buf.find(b"\r\n\r\n")
                if i == -1:
                    break
                del buf[:i + 4]
                return b"".join(parts), True
            elif self.left == 0:  # the CRLF after a chunk's data
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
                del buf[:2]
                self.left = -1
            else:
                n = min(self.left, len(buf))
                if not n:
                    break
                parts.append(bytes(buf[:n]))
                del buf[:n]
                self.left -= n
        return b"".join(parts), False


class Pool:
    """Keep-alive connections to one target (TCP or a Unix socket), and its requests."""

    def __init__(self, target: Target) -> None:
        u = urlsplit(target.url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"rawload speaks plain http:// only, not {target.url!r}")
        self.unix = socket_of_host(u.hostname)
        self.addr = (u.hostname, u.port or 80)
        self.path, self.host = (u.path.rstrip("/") + "/v1/completions").encode(), u.netloc.encode()
        self.model, self.keys = target.model, target.keys
        self.heads: dict[str, bytes] = {}
        self.idle: list[Conn] = []
        self.busy: set[Conn] = set()
        self.connecting: dict[asyncio.Task[None], Exchange] = {}
        self.opened = self.outstanding = 0
        self.quiet = asyncio.Event()  # set while nothing is outstanding
        self.quiet.set()

    def request(self, tenant: str, prompt: list[int], max_tokens: int) -> bytes:
        """The request's bytes: the tenant's header block (built once), length, body."""
        head = self.heads.get(tenant)
        if head is None:
            key = self.keys.get(tenant, "")
            auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
            head = self.heads[tenant] = (b"POST " + self.path + b" HTTP/1.1\r\nHost: " + self.host
                                         + b"\r\nContent-Type: application/json\r\n" + auth
                                         + b"Content-Length: ")
        body = body_for(self.model, prompt, max_tokens)
        return head + str(len(body)).encode() + b"\r\n\r\n" + body

    def submit(self, ex: Exchange, request: bytes) -> None:
        """Send now on an idle connection, or open one (the only await on the path)."""
        self.outstanding += 1
        self.quiet.clear()
        ex.start = time.monotonic()  # TTFT counts from here, a connect included
        ex.res.sent_s = ex.start - ex.t0
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                self.busy.add(c)
                c.send(ex, request)
                return
        task = asyncio.get_running_loop().create_task(self._open_and_send(ex, request))
        self.connecting[task] = ex

    async def _open_and_send(self, ex: Exchange, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.unix is not None:
                _, c = await loop.create_unix_connection(lambda: Conn(self), self.unix)
            else:
                _, c = await loop.create_connection(lambda: Conn(self), *self.addr)
        except OSError as exc:
            ex.fail(f"{type(exc).__name__}: {exc}", time.monotonic())
            self._finished()
            return
        finally:
            self.connecting.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        self.opened += 1
        if c.closed:  # closed before a byte was sent: a failed request, not a hung one
            ex.fail("ServerDisconnected: closed on connect", time.monotonic())
            self._finished()
            return
        self.busy.add(c)
        c.send(ex, request)

    def done(self, c: Conn) -> None:
        if c in self.busy:
            self.busy.discard(c)
            self._finished()

    def forget(self, c: Conn) -> None:
        if c in self.idle:
            self.idle.remove(c)

    def _finished(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.quiet.set()

    def cut(self) -> None:
        """The drain is over: what still runs is ``unfinished`` and its connection aborted."""
        for task, ex in list(self.connecting.items()):
            task.cancel()
            ex.res.status, ex.res.e2e_s = UNFINISHED, None
        for c in list(self.busy):
            ex = c.ex
            if ex is not None:
                ex.res.status, ex.res.e2e_s = UNFINISHED, None
                c.ex = None
            self.busy.discard(c)
            c.abort()
        self.outstanding = 0
        self.quiet.set()

    def close(self) -> None:
        for c in self.idle:
            c.abort()
        self.idle.clear()


@dataclass
class RawRun(Run):
    """``loadgen.Run`` plus how many connections the pool opened (keep-alive at work)."""

    connections: int = 0


async def open_loop(target: Target, plan: list[Planned], prompts: Prompts, *, label: str,
                    duration_s: float, drain_s: float, progress: bool = True,
                    on_tokens: TokenSink | None = None) -> RawRun:
    """Send ``plan`` open-loop, as ``loadgen.open_loop`` (same prompts, drain, results)."""
    results: list[Result] = []
    timeline, pool, loop = Timeline(), Pool(target), asyncio.get_running_loop()
    sink, prog = on_tokens or timeline.add, Progress(label, duration_s, progress)
    t0 = time.monotonic()

    async def ticker() -> None:
        while True:
            prog.show(time.monotonic() - t0, results, len(results))
            await asyncio.sleep(0.5)

    tick = waiter = loop.create_task(ticker())
    try:
        for p in plan:
            delay = t0 + p.t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            res = Result(p.tenant, p.index, p.t)
            results.append(res)
            prompt = prompts.get(p.prompt_tokens, zlib.crc32(p.tenant.encode()) + 104729 * p.index)
            pool.submit(Exchange(res, p.tenant, t0, sink),
                        pool.request(p.tenant, prompt, p.max_tokens))
        rest = t0 + duration_s - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        waiter = loop.create_task(pool.quiet.wait())
        await asyncio.wait([waiter], timeout=drain_s)
    finally:
        pool.cut()
        pool.close()
        tick.cancel()
        await asyncio.gather(tick, waiter, *pool.connecting, return_exceptions=True)
    elapsed = time.monotonic() - t0
    prog.show(elapsed, results, len(results), final=True)
    return RawRun(label, results, timeline, [], elapsed, connections=pool.opened)


async def send_one(target: Target, p: Planned, prompt: list[int], t0: float, res: Result,
                   pool: Pool | None = None) -> Pool:
    """One request on ``pool`` (a new one if None), awaited with all the pool has in flight."""
    pool = pool or Pool(target)
    pool.submit(Exchange(res, p.tenant, t0, None), pool.request(p.tenant, prompt, p.max_tokens))
    await pool.quiet.wait()
    return pool
