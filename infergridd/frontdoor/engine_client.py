"""HTTP/1.1 to an engine on its Unix socket, in a few hundred lines instead of aiohttp's client.

Every request the front door relays is one POST to an engine.  With aiohttp's
``ClientSession`` that POST costs ~0.8 ms of CPU on this project's 2-core machine (URL
and header objects, cookie jar, tracing hooks, timers, the response parser in Python
glue) and ~0.35 ms more to the engine's first header than this client (issue 17's hop
breakdown, ``bench/results/frontdoor-hops.md``).  Engines InferGrid launches listen on
a Unix socket it made (``engines/unixhttp.py``) and speak plain HTTP/1.1, so for them
the front door writes the request itself and reads the answer with a small parser:
status line, headers, then a body framed by ``Transfer-Encoding: chunked``,
``Content-Length`` or the end of the connection.  Anything else (an external engine
over TCP or TLS) goes through aiohttp as before (``EngineClient.post``).

The response object offers what ``relay.py`` uses of aiohttp's (``status``,
``content.read(n)``, ``content.iter_any()``, ``read()``, ``release()``, ``close()``) and
fails the same way: ``ClientConnectorError``-like ``EngineConnectError`` when the engine
was never reached (nothing to charge), another ``aiohttp.ClientError`` when the
connection broke, ``TimeoutError`` past the request's total timeout.  Connections are
kept alive per socket while idle less than ``IDLE_S`` (under uvicorn's 5 s, vLLM's);
closing (not releasing) a response closes its connection, which is what makes an
engine abort the sequence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ..engines.unixhttp import engine_url, is_unix, split_unix

IDLE_S = 4.0
MAX_HEAD = 64 * 1024  # a response's status line and headers, at most
CONNECT_TIMEOUT_S = 5.0


class EngineHTTPError(aiohttp.ClientPayloadError):
    """The engine's connection broke or spoke something that is not HTTP/1.1."""


class EngineConnectError(aiohttp.ClientConnectionError):
    """The engine's socket could not be connected to: it never saw the request."""


class _Conn(asyncio.Protocol):
    """One kept-alive connection: bytes in, a waiter woken on each change."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """The request's timer: the reader raises ``exc``."""
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def more(self) -> None:
        """Until more bytes, the end, or the request's timeout (raised)."""
        if self.error is not None:
            raise self.error
        if self.eof:
            raise EngineHTTPError("the engine closed the connection")
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def usable(self, now: float) -> bool:
        t = self.transport
        return (t is not None and not t.is_closing() and not self.eof and not self.buf
                and now - self.idle_since < IDLE_S)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class EngineResponse:
    """An engine's answer, read as it arrives; ``content`` is itself (aiohttp's shape)."""

    def __init__(self, client: EngineClient, path: str, conn: _Conn, timer: asyncio.TimerHandle,
                 status: int, headers: dict[str, str]) -> None:
        self._client, self._path, self._conn, self._timer = client, path, conn, timer
        self.status = status
        self.headers = headers
        self.content = self
        te = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        cl = headers.get("content-length")
        self._left: int | None = None if self._chunked or cl is None else int(cl)
        self._keep = (headers.get("connection", "").lower() != "close"
                      and (self._chunked or self._left is not None))
        self._chunk_left = 0  # chunked: bytes of the current chunk still to come
        self._trailer = False  # chunked: the last chunk was seen, trailers follow
        self._need_crlf = False  # chunked: a chunk's data ended, its CRLF not yet read
        self.done = False

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunk framing removed)."""
        while not self.done:
            piece = self._take()
            if piece:
                yield piece
            elif not self.done:
                await self._more()

    async def read(self, n: int = -1) -> bytes:
        """The body (all of it, or at most ``n`` bytes)."""
        out = bytearray()
        async for piece in self.iter_any():
            out += piece
            if 0 <= n <= len(out):
                break
        return bytes(out if n < 0 else out[:n])

    async def _more(self) -> None:
        try:
            await self._conn.more()
        except EngineHTTPError:
            if self._left is None and not self._chunked:  # framed by the connection's end
                self.done = True
                return
            raise

    def _take(self) -> bytes:
        """What of the buffer is body now (may be empty: wait for more)."""
        buf = self._conn.buf
        if not self._chunked:
            if self._left is None:
                data = bytes(buf)
            else:
                data = bytes(buf[:self._left])
                self._left -= len(data)
                self.done = self._left == 0
            del buf[:len(data)]
            return data
        out = bytearray()
        while True:
            if self._trailer:  # after the last chunk: trailers (usually none), an empty line
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    self.done = True
                    break
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                del buf[:end + 4]
                self.done = True
                break
            if self._chunk_left:
                n = min(len(buf), self._chunk_left)
                if n == 0:
                    break
                out += buf[:n]
                del buf[:n]
                self._chunk_left -= n
                if self._chunk_left:
                    break
                self._need_crlf = True
            if self._need_crlf:  # a chunk's data ends with CRLF
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise EngineHTTPError("a chunk did not end with CRLF")
                del buf[:2]
                self._need_crlf = False
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > MAX_HEAD:
                    raise EngineHTTPError("a chunk size line too long")
                break
            try:
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            except ValueError:
                raise EngineHTTPError(f"bad chunk size {bytes(buf[:line_end])[:40]!r}") from None
            del buf[:line_end + 2]
            if size == 0:
                self._trailer = True
            else:
                self._chunk_left = size
        return bytes(out)


    def release(self) -> None:
        """Done with it: the connection goes back to the pool if the body was read whole."""
        self._timer.cancel()
        if self.done and self._keep and not self._conn.buf:
            self._client.put_back(self._path, self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Close the connection (an engine aborts a sequence whose client went away)."""
        self._timer.cancel()
        self._conn.close()


class EngineClient:
    """POSTs to engines: this module's client on ``unix:`` endpoints, aiohttp otherwise."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self._idle: dict[str, list[_Conn]] = {}

    def put_back(self, path: str, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        conn.error = None
        self._idle.setdefault(path, []).append(conn)

    async def _connect(self, path: str, fresh: bool = False) -> tuple[_Conn, bool]:
        """A kept-alive connection to ``path`` (and True), or a new one (and False)."""
        pool = self._idle.get(path)
        now = time.monotonic()
        while pool and not fresh:
            conn = pool.pop()
            if conn.usable(now):
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_unix_connection(_Conn, path)
        except TimeoutError:
            raise EngineConnectError(f"connecting to {path} timed out") from None
        except OSError as exc:
            raise EngineConnectError(f"cannot connect to {path}: {exc}") from exc
        return conn, False

    async def post(self, endpoint: str, path: str, body: bytes, headers: dict[str, str],
                   timeout_s: float, aiohttp_timeout: aiohttp.ClientTimeout) -> Any:
        """POST ``body`` to ``endpoint + path``; the response (this module's or aiohttp's)."""
        if not is_unix(endpoint):
            return await self.http.post(engine_url(endpoint + path), data=body,
                                        headers=headers, timeout=aiohttp_timeout)
        sock, target = split_unix(endpoint + path)  # a base path after .sock is kept
        head = [f"POST {target} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
        for k, v in headers.items():
            if "\r" in v or "\n" in v or "\r" in k or "\n" in k:
                raise ValueError(f"header {k!r} has a line break")
            head.append(f"{k}: {v}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for attempt in (0, 1):
            conn, reused = await self._connect(sock, fresh=attempt > 0)
            timer = loop.call_at(deadline, conn.fail, TimeoutError())
            try:
                assert conn.transport is not None
                conn.transport.write(data)
                while True:
                    end = conn.buf.find(b"\r\n\r\n")
                    if end >= 0:
                        break
                    if len(conn.buf) > MAX_HEAD:
                        raise EngineHTTPError("the engine's response head is too long")
                    await conn.more()
                status, fields = _parse_head(bytes(conn.buf[:end]))
                del conn.buf[:end + 4]
                resp = EngineResponse(self, sock, conn, timer, status, fields)
            except EngineHTTPError:
                timer.cancel()
                conn.close()
                if reused and not conn.buf and attempt == 0:
                    continue  # a kept-alive connection the engine closed as we sent: again
                raise
            except BaseException:
                timer.cancel()
                conn.close()
                raise
            return resp
        raise AssertionError("unreachable")

    def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise EngineHTTPError(f"not an HTTP/1.1 status line: {lines[0][:60]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise EngineHTTPError(f"bad header line {line[:60]!r}")
        fields[name.strip().lower()] = value.strip()
    cl = fields.get("content-length")
    if cl is not None and not cl.isdigit():
        raise EngineHTTPError(f"bad Content-Length {cl[:20]!r}")
    if parts[0] == "HTTP/1.0" and fields.get("connection", "").lower() != "keep-alive":
        fields["connection"] = "close"
    return int(parts[1]), fields
