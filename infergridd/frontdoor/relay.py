"""The data path: one request, straight to the engine the scheduler picked.

Events are relayed one by one as the engine sends them, never buffered whole.
The engine is always asked for ``include_usage`` so the scheduler is charged
the engine's real token counts; the usage-only chunk is passed on only to
clients that asked for it themselves.
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
from .errors import ApiError
from .validate import ParsedRequest

_decode = msgspec.json.decode
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


class EngineUnavailable(Exception):
    """Failed before the first byte reached the client: the request may be retried."""


class ClientGone(Exception):
    """The client closed its connection; the caller records the request as cancelled."""


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
        raise ClientGone(str(exc)) from None


@dataclass
class RelayResult:
    outcome: str = p.Outcome.OK
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    error: str = ""
    count: int = 0  # content chunks relayed
    itl_s: list[float] = field(default_factory=list)
    response: web.StreamResponse | None = None


def engine_body(req: ParsedRequest, d: p.Dispatch) -> dict[str, Any]:
    body = dict(req.body)
    if req.stream:
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    if d.engine_priority is not None:
        body["priority"] = d.engine_priority
    return body


async def relay(http: aiohttp.ClientSession, request: web.Request, req: ParsedRequest,
                d: p.Dispatch, request_id: str, t0: float, timeout_s: float,
                on_tokens: Callable[[int], None]) -> RelayResult:
    """Run the request on the engine and answer the client.

    Raises ``EngineUnavailable`` if nothing was sent to the client yet, so the
    caller may retry on another engine; any later failure ends the stream
    with an SSE error event.
    """
    headers = {"Authorization": f"Bearer {d.api_key}"} if d.api_key else {}
    headers["X-Request-Id"] = request_id
    try:
        upstream = await http.post(
            d.endpoint + req.path, json=engine_body(req, d), headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=5))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise EngineUnavailable(f"engine {d.engine_id} unreachable: {exc!r}") from None
    clean = False  # read to the end: the connection may go back to the pool
    try:
        if upstream.status >= 500:
            text = (await upstream.read())[:500].decode(errors="replace")
            raise EngineUnavailable(f"engine {d.engine_id} answered {upstream.status}: {text}")
        if upstream.status != 200:
            # the engine's own 4xx (OpenAI-shaped): the client's problem, passed through
            data = await upstream.read()
            res = RelayResult(outcome=p.Outcome.ENGINE_ERROR,
                              error=f"engine answered {upstream.status}")
            res.response = web.Response(status=upstream.status, body=data,
                                        content_type="application/json",
                                        headers={"X-Request-Id": request_id})
            clean = True
            return res
        if not req.stream:
            res = await _whole(upstream, request_id, t0)
        else:
            res = await _stream(upstream, request, req, request_id, t0, on_tokens)
        clean = res.outcome == p.Outcome.OK
        return res
    finally:
        # Closing (not releasing) the connection is what makes the engine abort the
        # sequence when the client went away or the stream broke.
        if clean:
            upstream.release()
        else:
            upstream.close()


async def _whole(upstream: aiohttp.ClientResponse, request_id: str, t0: float) -> RelayResult:
    data = await upstream.read()
    res = RelayResult(ttft_s=time.monotonic() - t0)
    try:
        usage = _decode(data).get("usage") or {}
    except (msgspec.DecodeError, AttributeError):
        usage = {}
    res.prompt_tokens = int(usage.get("prompt_tokens", 0))
    res.completion_tokens = int(usage.get("completion_tokens", 0))
    res.response = web.Response(status=200, body=data, content_type="application/json",
                                headers={"X-Request-Id": request_id})
    return res


async def _stream(upstream: aiohttp.ClientResponse, request: web.Request, req: ParsedRequest,
                  request_id: str, t0: float, on_tokens: Callable[[int], None]) -> RelayResult:
    res = RelayResult()
    resp = web.StreamResponse(status=200, headers={**SSE_HEADERS, "X-Request-Id": request_id})
    await resp.prepare(request)
    res.response = resp
    try:
        await _relay_events(upstream, resp, req, res, t0, on_tokens)
    except ClientGone:
        res.outcome = p.Outcome.CANCELLED
        return res
    if not res.completion_tokens:
        res.completion_tokens = res.count
    try:
        await resp.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass  # everything was sent; the client closed first
    return res


async def _relay_events(upstream: aiohttp.ClientResponse, resp: web.StreamResponse,
                        req: ParsedRequest, res: RelayResult, t0: float,
                        on_tokens: Callable[[int], None]) -> None:
    last = 0.0
    event: list[bytes] = []
    try:
        async for line in upstream.content:
            if line.strip():
                event.append(line)
                continue
            if not event:
                continue
            raw = b"".join(event)
            event.clear()
            payload = raw[6:].strip() if raw.startswith(b"data: ") else b""
            forward = True
            if payload and payload != b"[DONE]":
                try:
                    chunk = _decode(payload)
                except msgspec.DecodeError:
                    chunk = None
                if isinstance(chunk, dict):
                    if chunk.get("error"):
                        res.outcome = p.Outcome.ENGINE_ERROR
                        res.error = str(chunk["error"])[:300]
                    usage = chunk.get("usage")
                    if usage:
                        res.prompt_tokens = int(usage.get("prompt_tokens", 0))
                        res.completion_tokens = int(usage.get("completion_tokens", 0))
                    choices = chunk.get("choices")
                    if choices:
                        c0 = choices[0]
                        if (c0.get("delta") or {}).get("content") or c0.get("text"):
                            now = time.monotonic()
                            if res.ttft_s is None:
                                res.ttft_s = now - t0
                            else:
                                res.itl_s.append(now - last)
                            last = now
                            res.count += 1
                            on_tokens(res.count)
                    elif usage and not req.client_wants_usage:
                        forward = False
            if forward:
                await _write(resp, raw + b"\n")
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
            asyncio.TimeoutError) as exc:
        res.outcome = p.Outcome.TIMEOUT if isinstance(exc, asyncio.TimeoutError) \
            else p.Outcome.ENGINE_ERROR
        res.error = f"engine stream broke: {exc!r}"
        await _write(resp, ApiError(502, "engine_error",
                                    "the engine failed while streaming; the response is "
                                    "incomplete").sse_event())
