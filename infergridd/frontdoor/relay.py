"""The data path: one request, straight to the engine the scheduler picked.

Events are relayed as the engine sends them, never buffered whole (``sse.py``
does the framing and the counting).  The engine is always asked for
``include_usage`` so the scheduler is charged the engine's real token counts.

Failure rules (DESIGN §2.5): a failure before anything reached the client
raises ``EngineUnavailable`` so the caller may retry on another engine; once
the client has the response headers, a failure ends the stream with an SSE
error event and ``data: [DONE]``.  Closing (not releasing) the engine
connection is what makes the engine abort the sequence, so every path that
does not read the engine's answer to its end closes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from .. import protocol as p
from ..transport import hops
from .engine_client import EngineClient, EngineConnectError
from .errors import ApiError, engine_error
from .sse import StreamAccount, body_whole, set_created
from .validate import ParsedRequest

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}
QUEUE_HEADER = "X-InferGrid-Queue-Ms"
_CONNECT_TIMEOUT_S = 5.0
_ERROR_BODY_MAX = 64 * 1024  # an engine's error body read at most (the rest is dropped)
_encode = msgspec.json.encode


class EngineUnavailable(Exception):
    """Failed before the first byte reached the client: the request may be retried.

    ``answered``: the engine answered (a 5xx) — alive, so the scheduler keeps it;
    otherwise it was unreachable or dropped the connection, and the ``Done`` says so
    (``engine_failed``) so the retry is not sent to the same dead engine."""

    def __init__(self, message: str, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


class ClientGone(Exception):
    """The client closed its connection; the caller records the request as cancelled."""


@dataclass
class RelayResult:
    outcome: str = p.Outcome.OK
    prompt_tokens: int = 0  # 0: the engine did not say (the caller keeps its estimate)
    completion_tokens: int = 0
    ttft_s: float | None = None
    queued_s: float = 0.0  # arrival to Dispatch, set by the caller before the relay
    error: str = ""
    itl_s: list[float] = field(default_factory=list)
    response: web.StreamResponse | None = None
    rid_traced: str = ""  # the request id while the debug-only hop tracer is on (hops.py)


def client_headers(request_id: str, res: RelayResult) -> dict[str, str]:
    """On every answer after dispatch: the request id, and the time it spent queued in
    InferGrid (ms) so a client can tell InferGrid's queue from the engine's time."""
    return {"X-Request-Id": request_id, QUEUE_HEADER: f"{res.queued_s * 1000:.1f}"}


def engine_body(req: ParsedRequest, d: p.Dispatch) -> dict[str, Any]:
    """The client's body, plus what InferGrid needs from the engine (never mutates it)."""
    body = dict(req.body)
    if req.stream:
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    if d.engine_priority is not None:
        body["priority"] = d.engine_priority
    return body


def engine_headers(d: p.Dispatch, request_id: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id,
               # auto_decompress is off so bytes pass through untouched: ask for none
               "Accept-Encoding": "identity"}
    if d.api_key:
        headers["Authorization"] = f"Bearer {d.api_key}"
    return headers


def _charge_if_taken(exc: BaseException, req: ParsedRequest, res: RelayResult) -> None:
    """A failure after the engine took the request (the connection broke while it
    computed: it may have crashed on this very request) is charged the prompt estimate,
    so a request that crashes engines is not free to retry; only one that never reached
    an engine (refused, connect timeout) costs nothing (issue 14.8)."""
    if not isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                            EngineConnectError)):
        res.prompt_tokens = res.prompt_tokens or req.prompt_tokens


_TIMEOUTS: dict[float, aiohttp.ClientTimeout] = {}


def _timeout(total_s: float) -> aiohttp.ClientTimeout:
    t = _TIMEOUTS.get(total_s)
    if t is None:
        t = _TIMEOUTS[total_s] = aiohttp.ClientTimeout(total=total_s,
                                                       sock_connect=_CONNECT_TIMEOUT_S)
    return t


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
    except (ConnectionError, aiohttp.ClientConnectionResetError) as exc:
        raise ClientGone(str(exc)) from None


async def relay(engines: EngineClient, request: web.Request, req: ParsedRequest,
                d: p.Dispatch, request_id: str, t0: float, timeout_s: float,
                on_tokens: Callable[[int], None], res: RelayResult) -> RelayResult:
    """Run the request on the engine and answer the client; fills in and returns ``res``.

    ``res`` belongs to the caller so that, if this is cancelled (the client went
    away), the tokens already streamed are still there to be charged.  On return
    ``res.response`` is set.  Raises ``EngineUnavailable`` only while nothing was
    sent to the client.
    """
    if res.rid_traced:
        hops.mark(res.rid_traced, "engine_post")
    try:
        upstream = await engines.post(d.endpoint, req.path, _encode(engine_body(req, d)),
                                      engine_headers(d, request_id), timeout_s,
                                      _timeout(timeout_s))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        _charge_if_taken(exc, req, res)
        raise EngineUnavailable(f"engine {d.engine_id} unreachable: {exc!r}") from None
    if res.rid_traced:
        hops.mark(res.rid_traced, "engine_headers")
    clean = False  # read to the end: the connection may go back to the pool
    try:
        if upstream.status >= 500:
            text = (await upstream.content.read(500)).decode(errors="replace")
            raise EngineUnavailable(f"engine {d.engine_id} answered {upstream.status}: {text}",
                                    answered=True)
        if upstream.status != 200:
            await _engine_error(upstream, request_id, res)
        elif req.stream:
            await _stream(upstream, request, req, request_id, t0, on_tokens, res)
        else:
            await _whole(upstream, req, request_id, t0, res)
        clean = res.outcome == p.Outcome.OK
        return res
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        # only reachable before the client saw anything (the stream path catches its own)
        if isinstance(exc, asyncio.TimeoutError):
            err = ApiError(504, "timeout", f"the engine did not finish within {timeout_s:g}s")
            res.outcome, res.error = p.Outcome.TIMEOUT, err.message
            res.response = err.response(headers=client_headers(request_id, res))
            return res
        _charge_if_taken(exc, req, res)
        raise EngineUnavailable(f"engine {d.engine_id} failed: {exc!r}") from None
    finally:
        if clean:
            upstream.release()
        else:
            upstream.close()


async def _engine_error(upstream: aiohttp.ClientResponse, request_id: str,
                        res: RelayResult) -> None:
    """The engine's own 4xx (a prompt too long, a bad field): the client's problem, told
    in InferGrid's error shape (``errors.engine_error``), not the engine's."""
    data = await upstream.content.read(_ERROR_BODY_MAX)
    try:
        body: object = msgspec.json.decode(data)
    except msgspec.DecodeError:
        body = data
    err = engine_error(upstream.status, body)
    res.outcome = p.Outcome.ENGINE_ERROR
    res.error = f"engine answered {upstream.status}: {err.code}: {err.message[:200]}"
    res.response = err.response(headers=client_headers(request_id, res))


async def _whole(upstream: aiohttp.ClientResponse, req: ParsedRequest, request_id: str,
                 t0: float, res: RelayResult) -> None:
    data = await upstream.read()
    res.ttft_s = time.monotonic() - t0
    whole = body_whole(data)
    if whole is not None and whole.usage is not None:
        res.prompt_tokens = whole.usage.prompt_tokens
        res.completion_tokens = whole.usage.completion_tokens
    if whole is not None and req.created:
        data = set_created(data, whole.created, req.created)
    res.response = web.Response(status=200, body=data, content_type="application/json",
                                headers=client_headers(request_id, res))


async def _stream(upstream: aiohttp.ClientResponse, request: web.Request, req: ParsedRequest,
                  request_id: str, t0: float, on_tokens: Callable[[int], None],
                  res: RelayResult) -> None:
    acct = StreamAccount(t0, req.client_wants_usage, on_tokens, created=req.created)
    resp = web.StreamResponse(status=200, headers={**SSE_HEADERS,
                                                   **client_headers(request_id, res)})
    res.response = resp
    try:
        await resp.prepare(request)
        try:
            async for data in upstream.content.iter_any():
                if res.rid_traced:
                    hops.mark(res.rid_traced, "engine_first")
                out = acct.feed(data)
                if out:
                    await _write(resp, out)
                    if res.rid_traced and acct.completion_tokens:
                        hops.mark(res.rid_traced, "client_first")
            out = acct.flush()
            if out:
                await _write(resp, out)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            timeout = isinstance(exc, asyncio.TimeoutError)
            res.outcome = p.Outcome.TIMEOUT if timeout else p.Outcome.ENGINE_ERROR
            res.error = f"engine stream broke: {exc!r}"
            await _write(resp, ApiError(
                504 if timeout else 502, "timeout" if timeout else "engine_error",
                "the engine did not finish in time; the response is incomplete" if timeout
                else "the engine failed while streaming; the response is incomplete",
            ).sse_event())
        else:
            if acct.error:
                res.outcome, res.error = p.Outcome.ENGINE_ERROR, acct.error
            elif not acct.done:
                res.outcome, res.error = p.Outcome.ENGINE_ERROR, "stream ended without [DONE]"
                await _write(resp, ApiError(502, "engine_error", "the engine ended the stream "
                                            "early; the response is incomplete").sse_event())
        try:
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # everything was sent; the client closed first
    except (ClientGone, ConnectionError):
        res.outcome = p.Outcome.CANCELLED
    finally:  # also when cancelled: what streamed so far is charged
        res.ttft_s = acct.ttft_s
        res.itl_s = acct.itl_s
        # the engine took the request (it answered 200): without its usage (cut off,
        # crashed), the prompt estimate is what it did at least
        res.prompt_tokens = acct.usage_prompt or req.prompt_tokens
        res.completion_tokens = acct.completion_tokens
