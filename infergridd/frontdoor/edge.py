"""The HTTP edge under abuse: a cap on connections, and deadlines for the idle ones.

aiohttp reads a request's headers with no deadline of its own, so a client that
sends its headers one byte a second holds a connection (and a socket, and a
buffer) as long as it likes; a thousand such clients exhaust a server's file
descriptors.  This guard wraps each connection's protocol and keeps, for every
connection with no request in progress, a deadline:

* a new connection must deliver a whole request line and headers within
  ``limits.header_timeout_s``;
* after an answer, an idle keep-alive connection is closed after
  ``limits.keepalive_timeout_s``, and once the next request's first byte
  arrives its headers get ``header_timeout_s`` too (the sooner of the two);
* a request in progress is the handler's business (``body.py`` bounds its body;
  streams are bounded by ``limits.request_timeout_s``).

At most ``limits.max_connections`` connections are open.  A new one over the
cap does not get refused while others merely wait: the oldest connection with
no request in progress is closed to make room — one still trickling its
headers first, then an idle one.  A flood of slow clients therefore evicts
itself, and a normal client's connection always gets in; only when every
connection is busy with a request is the new one answered ``503 overloaded``.
(No per-address cap: behind a proxy or a NAT every client has one address.)

The guard sees connections through ``guarded(factory)``, which wraps the
protocol factory aiohttp gives to ``loop.create_server`` (``EdgeRunner.server``),
and requests through ``middleware`` (a request has begun once its handler runs).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .errors import ApiError

log = logging.getLogger("infergrid.frontdoor.edge")

#: connections at once whose unread body is read away after the answer (see middleware)
MAX_DRAINING = 16

_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s")
_FULL_BODY = (b'{"error":{"message":"too many connections are busy; try again shortly",'
              b'"type":"service_unavailable","param":null,"code":"overloaded"}}')


class Conn:
    """One client connection as the guard sees it."""

    __slots__ = ("transport", "requests", "active", "partial", "deadline", "timer", "draining")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.requests = 0  # begun on this connection
        self.active = False  # a request is in its handler
        self.partial = False  # bytes of the next request arrived, its headers not yet whole
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.draining = False  # answered before its body was read: aiohttp reads it away


class EdgeGuard:
    """Connection cap, header and keep-alive deadlines, requests per connection."""

    def __init__(self, *, max_connections: int, header_timeout_s: float,
                 keepalive_timeout_s: float, max_requests_per_connection: int) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_requests = max_requests_per_connection
        self.conns: dict[Any, Conn] = {}
        #: connections with no request in progress, oldest first: trickling, then idle
        self._partial: OrderedDict[Any, Conn] = OrderedDict()
        self._idle: OrderedDict[Any, Conn] = OrderedDict()
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        #: connections whose unread body aiohttp is reading to discard it (so the client
        #: sees the answer, not a reset); each may buffer up to a body, so few at once
        self.draining = 0
        self.max_draining = MAX_DRAINING
        self.closed_undrained = 0

    # ------------------------------------------------------------------ connections
    def guarded(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that puts ``factory``'s behind us."""
        return lambda: _Guarded(self, _openai_errors(factory()))

    def opened(self, transport: asyncio.Transport) -> bool:
        """A new connection: admit it (making room if need be) or answer 503 and close."""
        if len(self.conns) >= self.max_connections and not self._evict_one():
            self.refused += 1
            transport.write(_FULL % (len(_FULL_BODY), _FULL_BODY))
            transport.close()
            return False
        conn = Conn(transport)
        self.conns[transport] = conn
        self._wait(conn, self.header_timeout_s, partial=False)
        return True

    def closed(self, transport: asyncio.Transport) -> None:
        conn = self.conns.pop(transport, None)
        if conn is not None:
            self._unwait(conn)
            self._drained(conn)

    def _drained(self, conn: Conn) -> None:
        if conn.draining:
            conn.draining = False
            self.draining -= 1

    def data(self, transport: asyncio.Transport) -> None:
        """Bytes arrived: between requests, they start the next one's header deadline."""
        conn = self.conns.get(transport)
        if conn is None or conn.active or conn.partial:
            return
        self._unwait(conn)
        loop = asyncio.get_running_loop()
        left = max(0.0, conn.deadline - loop.time())
        self._wait(conn, min(left, self.header_timeout_s), partial=True)

    def _evict_one(self) -> bool:
        for queue in (self._partial, self._idle):
            if queue:
                _, conn = queue.popitem(last=False)
                self._unwait(conn)
                self.evicted += 1
                conn.transport.close()
                self.conns.pop(conn.transport, None)
                self._drained(conn)
                return True
        return False

    def _wait(self, conn: Conn, timeout_s: float, partial: bool) -> None:
        loop = asyncio.get_running_loop()
        conn.partial = partial
        conn.deadline = loop.time() + timeout_s
        conn.timer = loop.call_at(conn.deadline, self._expire, conn)
        (self._partial if partial else self._idle)[conn.transport] = conn

    def _unwait(self, conn: Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self._partial.pop(conn.transport, None)
        self._idle.pop(conn.transport, None)

    def _expire(self, conn: Conn) -> None:
        conn.timer = None
        if conn.active or conn.transport not in self.conns:
            return
        self.timed_out += 1
        self._unwait(conn)
        conn.transport.close()

    # ------------------------------------------------------------------ requests
    def begin(self, transport: Any) -> Conn | None:
        conn = self.conns.get(transport)
        if conn is not None:
            self._unwait(conn)
            self._drained(conn)
            conn.active = True
            conn.partial = False
            conn.requests += 1
        return conn

    def end(self, conn: Conn) -> None:
        conn.active = False
        if conn.transport in self.conns and not conn.transport.is_closing():
            self._wait(conn, self.keepalive_timeout_s, partial=False)

    @web.middleware
    async def middleware(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        """Marks the connection busy while its request runs; the last request a connection
        may carry closes it (``max_requests_per_connection``)."""
        conn = self.begin(request.transport)
        try:
            resp = await handler(request)
            if conn is not None and conn.requests >= self.max_requests:
                resp.force_close()
            elif conn is not None and not request.content.is_eof():
                # refused before its body was read (429, 413, 415, 401, ...): aiohttp reads
                # the rest to discard it, buffering up to a body meanwhile; past a few such
                # connections at once, close instead (that client may see a reset)
                if self.draining >= self.max_draining:
                    self.closed_undrained += 1
                    resp.force_close()
                else:
                    conn.draining = True
                    self.draining += 1
            return resp
        finally:
            if conn is not None:
                self.end(conn)


class _OpenAIErrors(RequestHandler):
    """aiohttp's handler, answering what it cannot parse (a malformed request line or
    header, a header too long) in OpenAI's error shape like every other error, and
    logging it at debug level: on an internet-facing port garbage is routine, and an
    ERROR line with a traceback for each would let anyone fill the journal."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for another answer
            raise ConnectionError("response already started; cannot send an error")
        log.debug("unparsable request from %s: %s", request.remote, exc or message)
        if status >= 500:
            err = ApiError(500, "internal_error", "internal error in the front door")
        else:
            code = {400: "bad_request", 413: "request_too_large",
                    431: "headers_too_large"}.get(status, "http_error")
            text = str(message or exc or "bad request").splitlines()[0][:200]
            err = ApiError(status, code, f"the request could not be parsed: {text}")
        resp = err.response()
        resp.force_close()
        return resp


def _openai_errors(proto: Any) -> Any:
    """``proto`` (aiohttp's RequestHandler) with ``_OpenAIErrors.handle_error``; the class
    adds no state (empty ``__slots__``), so swapping the class is safe.  Anything else
    (another aiohttp's layout) is left as it is."""
    if type(proto) is RequestHandler:
        proto.__class__ = _OpenAIErrors
    return proto


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard told what happens to it."""

    def __init__(self, guard: EdgeGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they quack alike
        t: asyncio.Transport = transport  # type: ignore[assignment]
        if self.guard.opened(t):
            self.transport = t
            self.inner.connection_made(t)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.guard.data(self.transport)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.transport is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.guard.closed(self.transport)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.inner.resume_writing()


class EdgeRunner(web.AppRunner):
    """An ``AppRunner`` whose sites accept connections through an ``EdgeGuard``."""

    def __init__(self, app: web.Application, guard: EdgeGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    @property
    def server(self) -> Any:  # what TCPSite and SockSite hand to loop.create_server
        inner = super().server
        return None if inner is None else self.guard.guarded(inner)


#: descriptors besides client connections: engine streams (one per request in flight),
#: the scheduler link, logs, the admin listener
_FD_HEADROOM = 1024


def raise_fd_limit(max_connections: int) -> None:
    """Lift the soft ``RLIMIT_NOFILE`` toward the hard one so ``max_connections`` clients
    (plus a stream to an engine each) fit; say so when they cannot."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * max_connections + _FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        log.warning("open-file limit %d is under the %d that limits.max_connections=%d "
                    "needs; lower max_connections or raise LimitNOFILE", soft, want,
                    max_connections)
