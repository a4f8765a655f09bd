"""The OpenAI endpoints both personalities serve: completions, models, health, metrics.

A client that goes away is noticed either by aiohttp cancelling the handler
(``handler_cancellation=True`` on the runner) or by a failed write; both reach
the handler's ``finally``, which aborts the sequence in the model at once: its
KV blocks are freed and it is out of the next step.

Only ``/metrics`` and ``owned_by`` differ between vLLM and SGLang here; each
dialect's own control endpoints are in ``http_vllm`` and ``http_sglang``, and the URL
map in ``server.build_app``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

from aiohttp import web

from infergridd.sim import api
from infergridd.sim.model import SimRequest
from infergridd.sim.steploop import SimEngine, TokenSink

__all__ = ["ENGINE", "auth", "chat_completions", "collect", "completions", "error_response",
           "health", "metrics", "models"]

log = logging.getLogger("infergridd.sim")

_JSON = "application/json"

ENGINE = web.AppKey("sim_engine", SimEngine)


def error_response(exc: api.ApiError) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type=_JSON)


@web.middleware
async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """With a key, every route needs it: ``/health``, ``/metrics`` and the control routes
    (``/sleep``, ``/wake_up``, SGLang's memory calls) too, not only ``/v1`` as vLLM does —
    an engine reachable by others must not be put to sleep by them (DESIGN §10)."""
    key = request.app[ENGINE].options.api_key
    if key and not hmac.compare_digest(request.headers.get("Authorization", ""),
                                       f"Bearer {key}"):
        return error_response(api.ApiError(401, "Unauthorized"))
    return await handler(request)


async def _completions(request: web.Request, chat: bool) -> web.StreamResponse:
    created = int(time.time())  # the request's time, as vLLM sets it (not the engine's start)
    eng = request.app[ENGINE]
    err = eng.unavailable()
    if err is not None:
        return error_response(err)
    o = eng.options
    try:
        parsed = api.parse_request(
            await request.read(), chat=chat, served_model=o.model,
            max_model_len=eng.profile.max_model_len,
            priority_enabled=o.scheduling_policy == "priority",
            strict_priority=o.personality == "vllm")
        req = eng.admit(parsed, "chatcmpl" if chat else "cmpl")
    except api.ApiError as exc:
        return error_response(exc)
    try:
        if parsed.stream:
            return await _stream(request, eng, req, parsed, created)
        return await collect(eng, req, parsed, created)
    finally:
        if req.finish_reason is None:  # cancelled, write failed, or engine slept
            eng.abort(req)


async def _stream(request: web.Request, eng: SimEngine, req: SimRequest,
                  parsed: api.ParsedRequest, created: int) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache"})
    enc = api.ChunkEncoder(parsed.chat, req.request_id, created, eng.options.model)
    sink: TokenSink = req.sink
    o = eng.options
    stall_at = -1
    if o.stall_mid_stream_s > 0 and (o.stall_prob >= 1 or eng.rng.random() < o.stall_prob):
        stall_at = max(1, req.max_tokens // 2)
    sent = 0
    try:
        # inside the try: a client gone before the headers is no traceback (chaos run)
        await resp.prepare(request)
        while True:
            await sink.wait()
            if sink.error is not None:
                await resp.write(api.stream_error(sink.error, 503))
                await resp.write(api.DONE)
                return resp
            toks, sink.buf = sink.buf, []
            parts = []
            if sent == 0 and parsed.chat and toks:
                parts.append(enc.role())
            last = len(toks) - 1
            fin = sink.finish
            for i, t in enumerate(toks):
                parts.append(enc.token(t, fin if i == last else None))
            sent += len(toks)
            if fin is not None and parsed.include_usage:
                parts.append(enc.usage(req.prompt_tokens, req.num_output))
            if fin is not None:
                parts.append(api.DONE)
            await resp.write(b"".join(parts))
            if fin is not None:
                return resp
            if 0 <= stall_at <= sent:
                stall_at = -1
                await asyncio.sleep(o.stall_mid_stream_s * eng.scale)
    except ConnectionError as exc:  # client gone mid-write
        log.debug("stream %s: client went away: %r", req.request_id, exc)
        return resp


async def collect(eng: SimEngine, req: SimRequest, parsed: api.ParsedRequest,
                  created: int | None = None) -> web.Response:
    sink: TokenSink = req.sink
    text: list[str] = []
    while True:
        await sink.wait()
        if sink.error is not None:
            return error_response(api.ApiError(503, sink.error))
        text.extend(sink.buf)
        sink.buf = []
        if sink.finish is not None:
            break
    if created is None:
        created = int(time.time())
    body = api.full_response(parsed.chat, req.request_id, created, eng.options.model,
                             "".join(text), sink.finish, req.prompt_tokens, req.num_output)
    return web.Response(body=body, content_type=_JSON)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, chat=False)


async def models(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    name = eng.options.model
    owner = "sglang" if eng.options.personality == "sglang" else "vllm"
    return web.json_response({"object": "list", "data": [{
        "id": name, "object": "model", "created": eng.created, "owned_by": owner, "root": name,
        "parent": None, "max_model_len": eng.profile.max_model_len}]})


async def health(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    return web.Response(status=200 if eng.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    if eng.options.personality == "sglang":
        text = eng.metrics.render_sglang(eng.model, eng.options.model)
    else:
        text = eng.metrics.render_vllm(eng.model, eng.options.model)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})
