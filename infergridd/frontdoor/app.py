"""Routes of the OpenAI-compatible API, ``/health`` and ``/metrics``.

The public ``/health`` says only the status and which models are missing; the
reasons (engines' log lines) and, when ``admin_listen`` is set, ``/metrics``
are on the admin listener only (``admin.py``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from .. import protocol as p
from ..engines import fields as engine_fields
from ..logs import fields
from ..transport import hops
from .body import read_body
from .edge import EdgeGuard
from .errors import ApiError, error_middleware
from .relay import EngineUnavailable, RelayResult, relay
from .validate import CHAT, COMPLETIONS, ParsedRequest, check_context, parse

if TYPE_CHECKING:
    from .main import Frontdoor
    from .room import Ticket

log = logging.getLogger("infergrid.frontdoor")

FD: web.AppKey[Frontdoor] = web.AppKey("frontdoor")
RETRIES_BEFORE_FIRST_BYTE = 1


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(obj),
                        content_type="application/json")


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions and /v1/completions: auth, bound, queue, relay, account."""
    fd = request.app[FD]
    t0 = time.monotonic()
    marks = hops.start()  # None unless INFERGRID_HOPS is set (a debug-only tracer)
    await fd.auth.wait_ready()  # a restarted front door: the scheduler's key table
    tenant = fd.auth.tenant(request.headers.get("Authorization"))
    arrived = time.time()  # a retry keeps the request's place in line
    try:
        # counted in the waiting room from its first byte until dispatched (room.py)
        ticket = fd.room.enter(tenant)
    except ApiError as exc:
        fd.metrics.rejections.labels(tenant, exc.code).inc()
        raise
    with ticket:
        return await _completions(fd, request, tenant, arrived, t0, ticket, marks)


async def _completions(fd: Frontdoor, request: web.Request, tenant: str, arrived: float,
                       t0: float, ticket: Ticket, marks: dict[str, int] | None
                       ) -> web.StreamResponse:
    try:
        raw = await read_body(request, fd.cfg.limits, ticket)
        if marks is not None:
            marks["body"] = hops.now()
        req = parse(request.path, raw, fd.cfg.limits, fd.model_names)  # one copy of the body
        # only the allowlisted fields reach the engine (engines/fields.py, DESIGN §10)
        req.body = engine_fields.shape(fd.cfg.model(req.model), req.path, req.body)
        # too long for the model: refused here, so neither queued nor charged
        check_context(req, *fd.context[req.model])
        if marks is not None:
            marks["parsed"] = hops.now()
    except ApiError as exc:
        fd.metrics.rejections.labels(tenant, exc.code).inc()
        raise
    req.created = int(arrived)  # every response's ``created``: the request's time
    attempt = 0
    while True:
        rid = "cmpl-" + uuid.uuid4().hex
        rec = p.QueuedRecord(request_id=rid, tenant=tenant, model=req.model,
                             prompt_tokens=req.prompt_tokens, max_tokens=req.max_tokens,
                             priority=req.priority, submitted_at=arrived)
        if marks is not None:
            hops.attach(rid, marks)
        # an idle slot leased ahead of time (core/leases.py): in flight at once, no round
        # trip; a retry goes the scheduler's way (it knows the failed engine by then)
        leased = fd.fast_lease(tenant, req.model) if attempt == 0 else None
        answer: p.Dispatch | p.Reject
        if leased is not None:
            answer = fd.link.start_leased(rec, *leased)  # in flight: no await until the try
        else:
            answer = await fd.link.submit(rec)  # cancelled here (client left) → Cancel
        ticket.leave()  # answered: no longer waiting (a dispatched body is the engine's seat's)
        if isinstance(answer, p.Reject):
            fd.metrics.rejections.labels(tenant, answer.code).inc()
            fd.metrics.requests.labels(tenant, req.model, "rejected").inc()
            raise ApiError(answer.http_status, answer.code, answer.reason,
                           retry_after_s=answer.retry_after_s, request_id=rid)
        # From here on exactly one Done: no await between started() and the try.
        if leased is None:
            fd.link.started(rec, answer)
        if marks is not None:
            hops.mark(rid, "resumed")
        queued = time.monotonic() - t0  # InferGrid's queue and the link (a retry: both tries)
        rm = fd.metrics.of(tenant, req.model)
        rm.queue_wait.observe(queued)
        gauge = rm.inflight
        gauge.inc()
        # ours, so a cancelled relay still leaves its token counts
        res = RelayResult(queued_s=queued, rid_traced=rid if marks is not None else "")
        outcome, error = p.Outcome.CANCELLED, ""  # what an exception or cancellation means
        engine_failed = False
        try:
            await relay(fd.engines, request, req, answer, rid, t0, fd.cfg.limits.request_timeout_s,
                        lambda n, rid=rid: fd.link.progress(rid, n), res)
            outcome, error = res.outcome, res.error
        except EngineUnavailable as exc:
            outcome, error = p.Outcome.ENGINE_ERROR, str(exc)
            engine_failed = not exc.answered  # the retry must not go back to it
            retry = attempt < RETRIES_BEFORE_FIRST_BYTE
            log.warning("%s; %s", exc, "retrying once" if retry else "giving up",
                        extra=fields(tenant=tenant, model=req.model, request_id=rid,
                                     engine=answer.engine_id))
            if not retry:
                raise ApiError(502, "engine_unavailable",
                               f"the engine for {req.model!r} failed before answering; "
                               "try again", retry_after_s=1, request_id=rid) from None
        except Exception as exc:
            outcome, error = p.Outcome.ENGINE_ERROR, f"front door error: {exc!r}"
            raise
        finally:
            gauge.dec()
            _account(fd, rid, tenant, req, t0, outcome, error, res, engine_failed)
        if res.response is not None:
            return res.response
        attempt += 1


def _account(fd: Frontdoor, rid: str, tenant: str, req: ParsedRequest, t0: float,
             outcome: str, error: str, res: RelayResult, engine_failed: bool = False) -> None:
    """The single place a dispatched request's books are closed: exactly one Done."""
    model = req.model
    # the engine's count when it gave one; an engine that failed without output did no
    # work worth charging, anything else is charged our estimate
    failed_empty = outcome == p.Outcome.ENGINE_ERROR and not res.completion_tokens
    prompt = res.prompt_tokens or (0 if failed_empty else req.prompt_tokens)
    completion = res.completion_tokens
    ttft = res.ttft_s
    fd.link.finish(rid, outcome, prompt, completion, ttft_s=ttft, error=error,
                   engine_failed=engine_failed)
    if res.rid_traced:
        hops.close("frontdoor", rid)
    e2e = time.monotonic() - t0
    # the phases after dispatch need a first token the client saw before the end: a
    # streamed answer's (a whole answer's "first token" is its last byte)
    first = ttft if req.stream else None
    m = fd.metrics.of(tenant, model)
    m.outcome(outcome).inc()
    if completion or outcome == p.Outcome.OK:
        m.tokens_in.inc(prompt)
        m.tokens_out.inc(completion)
    if outcome == p.Outcome.OK:
        if ttft is not None and req.stream:
            m.ttft.observe(ttft)
        if res.itl_s:
            h = m.itl
            for x in res.itl_s:
                h.observe(x)
        m.e2e.observe(e2e)
        m.phase_queued.observe(res.queued_s)
        if first is not None:
            m.phase_first.observe(max(0.0, first - res.queued_s))
            m.phase_generation.observe(max(0.0, e2e - first))
    if fd.cfg.logging.requests:
        level = logging.INFO if outcome in (p.Outcome.OK, p.Outcome.CANCELLED) else logging.WARNING
        log.log(level, "%s %s %s %s", rid, tenant, model, outcome + (f": {error}" if error else ""),
                extra=fields(request_id=rid, tenant=tenant, model=model, outcome=outcome,
                             prompt_tokens=prompt, completion_tokens=completion,
                             ttft_ms=None if ttft is None else round(ttft * 1000, 1),
                             queue_ms=round(res.queued_s * 1000, 1),
                             engine_ttft_ms=None if first is None
                             else round(max(0.0, first - res.queued_s) * 1000, 1),
                             generation_ms=None if first is None
                             else round(max(0.0, e2e - first) * 1000, 1)))


async def models(request: web.Request) -> web.Response:
    fd = request.app[FD]
    await fd.auth.wait_ready()
    fd.auth.tenant(request.headers.get("Authorization"))
    infos = {m.name: m for m in (fd.snapshot.models if fd.snapshot else [])}
    data = []
    for m in fd.cfg.models:
        info = infos.get(m.name)
        data.append({"id": m.name, "object": "model", "created": int(fd.started_at),
                     "owned_by": "infergrid",
                     "state": info.state if info else "unknown",
                     "ready_engines": info.ready_engines if info else 0,
                     "memory_bytes": info.memory_bytes if info else 0})
    return _json({"object": "list", "data": data})


#: A preloaded model in one of these states is not "missing": it was loaded and
#: is parked (put to sleep or stopped to make room, or unloaded by the operator)
#: and comes back on demand.  Only never-ready or broken models fail /health,
#: so a swap in a multi-model setup does not make the appliance look down.
_PARKED = {p.EngineState.READY, p.EngineState.DRAINING, p.EngineState.SLEEPING1,
           p.EngineState.SLEEPING2, p.EngineState.WAKING, p.EngineState.STOPPING,
           p.EngineState.STOPPED}


def missing_models(fd: Frontdoor) -> list[str]:
    infos = {m.name: m for m in (fd.snapshot.models if fd.snapshot else [])}
    out = []
    for m in fd.cfg.models:
        info = infos.get(m.name)
        if not m.preload or (info is not None and info.ready_engines > 0):
            continue
        if info is None or info.state not in _PARKED or m.name not in fd.ever_ready:
            out.append(m.name)
    return out


async def health(request: web.Request) -> web.Response:
    """Public: the status and the missing models' names, nothing an outsider could use."""
    fd = request.app[FD]
    if fd.draining:
        return _json({"status": "draining"}, 503)
    missing = missing_models(fd)
    if missing:
        return _json({"status": "loading", "missing_models": missing}, 503)
    return _json({"status": "ok"})


async def health_detail(request: web.Request) -> web.Response:
    """The admin listener's ``/health``: model states, the link, and each missing model's
    reason (the engine's last log lines)."""
    fd = request.app[FD]
    states = {m.name: m.state for m in (fd.snapshot.models if fd.snapshot else [])}
    missing = missing_models(fd)
    body: dict[str, object] = {"models": states, "scheduler_connected": fd.link.connected}
    if fd.draining:
        return _json({"status": "draining", **body}, 503)
    if missing:
        reasons = {m.name: m.reason for m in (fd.snapshot.models if fd.snapshot else [])
                   if m.name in missing and m.reason}
        return _json({"status": "loading", "missing_models": missing, "reasons": reasons,
                      **body}, 503)
    return _json({"status": "ok", **body})


async def metrics(request: web.Request) -> web.Response:
    fd = request.app[FD]
    return web.Response(body=await fd.metrics.render_cached(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """While draining, answers close their connection: the client's next request goes to
    the listening socket (and so to the next instance), not to this one via keep-alive."""
    if request.app[FD].draining:
        response.force_close()


@web.middleware
async def track_active(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Count requests in progress, so a drain knows when it is done."""
    fd = request.app[FD]
    fd.active += 1
    try:
        return await handler(request)
    finally:
        fd.active -= 1
        if fd.active == 0:
            fd.idle.set()


def build_app(fd: Frontdoor, guard: EdgeGuard | None = None) -> web.Application:
    """The public app; ``guard`` (edge.py) sees each request begin and end."""
    outer = [guard.middleware] if guard is not None else []
    app = web.Application(middlewares=[*outer, track_active, error_middleware],
                          client_max_size=fd.cfg.limits.max_body_bytes + 1)
    app[FD] = fd
    app.on_response_prepare.append(_on_prepare)
    app.router.add_post(CHAT, completions)
    app.router.add_post(COMPLETIONS, completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    if not fd.cfg.admin_listen:  # else only on the admin listener (admin.py)
        app.router.add_get("/metrics", metrics)
    return app


__all__ = ["FD", "build_app", "health_detail", "metrics", "missing_models"]
