"""The front door daemon for real (a subprocess), against a fake scheduler and a fake engine.

The fake scheduler is a ZeroMQ ROUTER in the test that speaks the link protocol
(Hello → Welcome + Snapshot, Heartbeat acks, Submit → Dispatch or Reject) and
records everything it hears, so each test can check the messages the front door
sent — above all that every Dispatch ends in exactly one Done.  The fake engine
is an aiohttp app that streams SSE like vLLM and notices when its client (the
front door) closes the connection; one test uses the simulated engine instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
import zmq
import zmq.asyncio
from aiohttp import web

from infergridd import protocol as p
from infergridd.config import Dirs
from infergridd.transport.sockets import bind_router, send_nowait

_log = logging.getLogger("test.fake_scheduler")

KEY = "sk-alpha-test"
ENGINE_KEY = "engine-secret"
PROMPT_TOKENS = 42  # what the fake engine reports in usage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- fake engine


class FakeEngine:
    """Streams ``max_tokens`` chunks ``delay`` apart, like vLLM; records what it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.aborted: list[str] = []  # X-Request-Id of streams whose client went away
        self.finished: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = _free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rid = request.headers.get("X-Request-Id", "")
        self.requests.append((body, dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {ENGINE_KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 4)
        chat = request.path.endswith("chat/completions")
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n,
                 "total_tokens": PROMPT_TOKENS + n}
        if not body.get("stream"):
            await asyncio.sleep(self.delay * n)
            choice = {"index": 0, "message": {"role": "assistant", "content": "x" * n}} \
                if chat else {"index": 0, "text": "x" * n}
            return web.json_response({"id": rid, "choices": [choice], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(n):
                piece = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
                chunk = {"id": rid, "choices": [{"index": 0, **piece, "finish_reason": None}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if self.delay:
                    await asyncio.sleep(self.delay)
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(b"data: " + json.dumps(
                    {"id": rid, "choices": [], "usage": usage}).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            self.aborted.append(rid)
            return resp
        self.finished.append(rid)
        return resp


# --------------------------------------------------------------------------- fake scheduler


class FakeScheduler:
    """A ROUTER speaking the scheduler's half of the link protocol, and a recorder."""

    def __init__(self, ctx: zmq.asyncio.Context, dirs: Dirs, engine_url: str,
                 mode: str = "dispatch", model_state: str = p.EngineState.READY) -> None:
        self.ctx = ctx
        self.dirs = dirs
        self.engine_url = engine_url
        self.mode = mode  # dispatch | reject | hold
        self.model_state = model_state
        self.instance = uuid.uuid4().hex[:12]
        self.got: list[tuple[bytes, p.Message]] = []
        self.known: set[bytes] = set()
        self.done_seq: dict[bytes, int] = {}
        self.held: list[tuple[bytes, p.Submit | p.QueuedRecord]] = []
        self.engine_priority: int | None = -7
        self.fd_ident = b""
        self.sock = bind_router(ctx, dirs.frontdoor_sock)
        self.task = asyncio.create_task(self._rx())

    def of(self, kind: type) -> list[Any]:
        return [m for _, m in self.got if isinstance(m, kind)]

    def send(self, ident: bytes, msg: p.Message) -> None:
        send_nowait(self.sock, [ident, p.encode(msg)], type(msg).__name__, _log)

    def snapshot(self) -> p.Snapshot:
        sha = hashlib.sha256(KEY.encode()).hexdigest()
        ready = 1 if self.model_state == p.EngineState.READY else 0
        return p.Snapshot(
            instance=self.instance, auth_version=1, auth=[p.AuthEntry(sha, "alpha")],
            models=[p.ModelInfo(name="demo", state=self.model_state, engines=["demo-0"],
                                ready_engines=ready)],
            tenants=[p.TenantStats(name="alpha", queued=0, inflight=0, counter=1.5)],
            engines=[p.EngineStatus(engine_id="demo-0", model="demo", kind="sim",
                                    state=self.model_state, kv_usage=0.25)],
        )

    def answer(self, ident: bytes, rec: p.Submit | p.QueuedRecord) -> None:
        if self.mode == "dispatch":
            self.dispatch(ident, rec.request_id)
        elif self.mode == "reject":
            self.send(ident, p.Reject(request_id=rec.request_id, http_status=429,
                                      code="rate_limit_exceeded", reason="tenant alpha is "
                                      "over its request rate", retry_after_s=2.2))
        else:
            self.held.append((ident, rec))

    def dispatch(self, ident: bytes, request_id: str, endpoint: str | None = None) -> None:
        self.send(ident, p.Dispatch(request_id=request_id, engine_id="demo-0",
                                    endpoint=endpoint or self.engine_url, api_key=ENGINE_KEY,
                                    engine_priority=self.engine_priority))

    async def _rx(self) -> None:
        while True:
            ident, data = await self.sock.recv_multipart()
            msg = p.decode(data)
            self.got.append((ident, msg))
            if isinstance(msg, p.Hello):
                self.known.add(ident)
                self.fd_ident = ident
                self.done_seq[ident] = max([d.seq for d in msg.undelivered_done], default=0)
                self.send(ident, p.Welcome(instance=self.instance,
                                           protocol_version=p.PROTOCOL_VERSION))
                self.send(ident, self.snapshot())
                for rec in msg.queued:
                    self.answer(ident, rec)
            elif ident not in self.known:
                self.send(ident, p.HelloRequired(instance=self.instance))
            elif isinstance(msg, p.Heartbeat):
                self.send(ident, p.Heartbeat(instance=self.instance,
                                             ack_done_seq=self.done_seq.get(ident, 0)))
            elif isinstance(msg, p.Submit):
                self.answer(ident, msg)
            elif isinstance(msg, p.Done):
                self.done_seq[ident] = max(self.done_seq.get(ident, 0), msg.seq)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close(0)


# --------------------------------------------------------------------------- the daemon


class FrontdoorProc:
    def __init__(self, root: Path, extra: dict[str, Any] | None = None) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = {"version": 1, "listen": f"127.0.0.1:{self.port}",
               "models": [{"name": "demo", "engine": "sim"},
                          {"name": "lazy", "engine": "sim", "preload": False}],
               "tenants": [{"name": "alpha", "keys": [KEY]}],
               "limits": {"max_body_bytes": 4096, "max_tokens_cap": 1000,
                          "drain_timeout_s": 20},
               # one process: the fake scheduler plays the scheduler to one peer (it
               # sends Snapshots to the last one that said Hello) and these tests read
               # one process's link messages; N processes: the test below and
               # test_frontdoor_processes.py (the real scheduler)
               "frontdoor": {"processes": 1}}
        cfg.update(extra or {})
        self.config = root / "ig.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.dirs = Dirs(runtime=root / "run", state=root / "state")
        self.dirs.runtime.mkdir(parents=True, exist_ok=True)
        self.log = root / "fd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infergridd.cli.infergridd", "frontdoor",
                 "--config", str(self.config), "--runtime-dir", str(self.dirs.runtime),
                 "--state-dir", str(self.dirs.state)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_healthy(self, http: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.logs()
            try:
                async with http.get(self.url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"front door not healthy:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class World:
    def __init__(self, fd: FrontdoorProc, sched: FakeScheduler, engine: FakeEngine,
                 http: aiohttp.ClientSession, ctx: zmq.asyncio.Context) -> None:
        self.fd, self.sched, self.engine, self.http, self.ctx = fd, sched, engine, http, ctx

    async def post(self, body: dict[str, Any], path: str = "/v1/chat/completions",
                   key: str | None = KEY, **kw: Any) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.http.post(self.fd.url + path, json=body, headers=headers, **kw) as r:
            raw = await r.read()
            return r.status, r.headers.copy(), raw

    def dones(self, request_id: str | None = None) -> list[p.Done]:
        return [d for d in self.sched.of(p.Done)
                if request_id is None or d.request_id == request_id]


def chat(max_tokens: int = 4, stream: bool = True, **kw: Any) -> dict[str, Any]:
    return {"model": "demo", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Hello there"}], **kw}


def events(raw: bytes) -> list[Any]:
    out = []
    for ev in raw.split(b"\n\n"):
        if ev.startswith(b"data: "):
            data = ev[6:]
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


Make = Callable[..., Any]


@pytest.fixture
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """``await make(delay=…, mode=…, model_state=…)``: engine, scheduler, front door, client."""
    made: list[World] = []

    async def _make(delay: float = 0.0, mode: str = "dispatch",
                    model_state: str = p.EngineState.READY,
                    config: dict[str, Any] | None = None) -> World:
        root = Path(tempfile.mkdtemp(dir="/tmp", prefix="ig"))
        ctx = zmq.asyncio.Context()
        engine = FakeEngine(delay=delay)
        await engine.start()
        fd = FrontdoorProc(root, config)
        sched = FakeScheduler(ctx, fd.dirs, engine.url, mode=mode, model_state=model_state)
        w = World(fd, sched, engine, aiohttp.ClientSession(), ctx)
        made.append(w)
        fd.start()
        if model_state == p.EngineState.READY:
            await fd.wait_healthy(w.http)
        return w

    yield _make
    failed = getattr(request.node, "rep_call", None)
    for w in made:
        w.fd.stop()
        await w.http.close()
        await w.sched.close()
        await w.engine.stop()
        w.ctx.term()
        if failed is not None and failed.failed:
            sys.stderr.write(f"\n==== front door log\n{w.fd.logs()[-6000:]}\n")
        shutil.rmtree(w.fd.root, ignore_errors=True)


# --------------------------------------------------------------------------- streaming


async def test_stream_arrives_chunk_by_chunk_with_one_done(make: Make) -> None:
    world = await make(delay=0.15)
    t0 = time.monotonic()
    arrivals: list[float] = []
    raw = b""
    async with world.http.post(world.fd.url + "/v1/chat/completions", json=chat(6),
                               headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 200
        rid = r.headers["X-Request-Id"]
        assert rid.startswith("cmpl-")
        async for piece in r.content.iter_any():
            arrivals.append(time.monotonic() - t0)
            raw += piece
    evs = events(raw)
    assert evs[-1] == "[DONE]"
    chunks = [e for e in evs[:-1]]
    assert len(chunks) == 6 and all(c["choices"] for c in chunks)  # usage chunk stripped
    # relayed as produced: the first chunk long before the last (6 × 0.15 s)
    assert arrivals[0] < 0.5 and arrivals[-1] > 0.7, arrivals
    body, headers = world.engine.requests[-1]
    assert body["stream_options"] == {"include_usage": True}
    assert body["priority"] == -7 and headers["Authorization"] == f"Bearer {ENGINE_KEY}"
    await _until(lambda: world.dones(rid), what="Done")
    await asyncio.sleep(0.3)
    (done,) = world.dones(rid)
    assert (done.outcome, done.prompt_tokens, done.completion_tokens) == ("ok", PROMPT_TOKENS, 6)
    assert done.tenant == "alpha" and done.engine_id == "demo-0" and done.ttft_s is not None
    progress = [n for m in world.sched.of(p.Progress) for r_, n in m.items if r_ == rid]
    assert progress and max(progress) <= 6


async def test_client_usage_chunk_is_kept_when_asked(make: Make) -> None:
    world = await make()
    status, _, raw = await world.post(chat(3, stream_options={"include_usage": True}))
    assert status == 200
    evs = events(raw)
    assert evs[-2]["choices"] == [] and evs[-2]["usage"]["completion_tokens"] == 3


async def test_non_streaming_and_completions(make: Make) -> None:
    world = await make()
    status, headers, raw = await world.post(chat(5, stream=False))
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 5
    rid = headers["X-Request-Id"]
    await _until(lambda: world.dones(rid), what="Done")
    assert world.dones(rid)[0].prompt_tokens == PROMPT_TOKENS
    status, _, raw = await world.post({"model": "demo", "prompt": "hi", "max_tokens": 2,
                                       "stream": True}, path="/v1/completions")
    assert status == 200 and [e["choices"][0]["text"] for e in events(raw)[:-1]] == \
        ["t0 ", "t1 "]


# --------------------------------------------------------------------------- errors


def _openai_error(raw: bytes) -> dict[str, Any]:
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


async def test_client_errors_are_openai_shaped(make: Make) -> None:
    world = await make()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"key": None}, 401, "invalid_api_key"),
        ({"key": "sk-wrong"}, 401, "invalid_api_key"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
         "invalid_json"),
        ({"json": chat(n=3)}, 400, "unsupported_value"),
        ({"json": chat(max_tokens=10**6)}, 400, "invalid_value"),
        ({"json": {**chat(), "model": "nope"}}, 404, "model_not_found"),
        ({"json": chat(pad="x" * 10_000)}, 413, "request_too_large"),
    ]
    for kw, status, code in cases:
        key = kw.pop("key", KEY)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kw.pop("headers", {}))
        async with world.http.post(world.fd.url + "/v1/chat/completions", headers=headers,
                                   **kw) as r:
            raw = await r.read()
            assert r.status == status, (kw, raw)
            assert _openai_error(raw)["code"] == code
    # a body without Content-Length is bounded while it is read

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    async with world.http.post(world.fd.url + "/v1/chat/completions", data=gen(),
                               headers={"Authorization": f"Bearer {KEY}",
                                        "Content-Type": "application/json"}) as r:
        assert r.status == 413 and _openai_error(await r.read())["code"] == "request_too_large"
    async with world.http.get(world.fd.url + "/nowhere") as r:
        assert r.status == 404 and _openai_error(await r.read())
    assert not world.sched.of(p.Submit)  # nothing bad reached the scheduler
    # and the daemon still serves
    status, _, _ = await world.post(chat(1, stream=False))
    assert status == 200


async def test_reject_is_429_with_retry_after(make: Make) -> None:
    world = await make(mode="reject")
    status, headers, raw = await world.post(chat())
    assert status == 429 and headers["Retry-After"] == "3"
    assert _openai_error(raw)["code"] == "rate_limit_exceeded"
    assert headers["X-Request-Id"].startswith("cmpl-")
    assert not world.dones()  # nothing was dispatched, so nothing ends in a Done


async def test_engine_unreachable_is_retried_once_then_502(make: Make) -> None:
    world = await make()
    world.sched.engine_url = f"http://127.0.0.1:{_free_port()}"  # nobody listens
    status, headers, raw = await world.post(chat())
    assert status == 502 and _openai_error(raw)["code"] == "engine_unavailable"
    assert "Retry-After" in headers
    await _until(lambda: len(world.dones()) == 2, what="two Dones")
    assert {d.outcome for d in world.dones()} == {"engine_error"}
    assert len({d.request_id for d in world.dones()}) == 2


# --------------------------------------------------------------------------- disconnects


async def test_client_disconnect_mid_stream_cancels_engine_and_sends_done(make: Make) -> None:
    world = await make(delay=0.05)
    async with world.http.post(world.fd.url + "/v1/chat/completions", json=chat(200),
                               headers={"Authorization": f"Bearer {KEY}"}) as r:
        rid = r.headers["X-Request-Id"]
        seen = 0
        async for _ in r.content.iter_any():
            seen += 1
            if seen >= 3:
                break
        r.close()
    await _until(lambda: rid in world.engine.aborted, what="the engine to see the close")
    await _until(lambda: world.dones(rid), what="Done")
    await asyncio.sleep(0.3)
    (done,) = world.dones(rid)
    assert done.outcome == "cancelled" and 1 <= done.completion_tokens < 200
    assert rid not in world.engine.finished


async def test_client_leaving_while_queued_sends_cancel(make: Make) -> None:
    world = await make(mode="hold")
    task = asyncio.create_task(world.post(chat()))
    await _until(lambda: world.sched.held, what="the Submit")
    rid = world.sched.held[0][1].request_id
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await _until(lambda: [c for c in world.sched.of(p.Cancel) if c.request_id == rid],
                 what="Cancel")
    # a Dispatch that crosses the Cancel still ends in exactly one Done
    world.sched.dispatch(world.sched.held[0][0], rid)
    await _until(lambda: world.dones(rid), what="Done for the late Dispatch")
    assert world.dones(rid)[0].outcome == "cancelled"
    assert not world.engine.requests


# --------------------------------------------------------------------------- the link


async def test_scheduler_away_then_back_gets_pending_and_undelivered(make: Make) -> None:
    world = await make(delay=0.1)
    # a stream runs while the scheduler goes away: it must finish anyway
    streaming = asyncio.create_task(world.post(chat(15)))
    await _until(lambda: world.engine.requests, what="the stream to start")
    old = world.sched
    await old.close()
    status, _, raw = await streaming
    assert status == 200 and events(raw)[-1] == "[DONE]"
    # a new request waits in the waiting room
    waiting = asyncio.create_task(world.post(chat(2)))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    new = FakeScheduler(world.ctx, world.fd.dirs, world.engine.url)
    world.sched = new
    hello = await _until(lambda: new.of(p.Hello), what="a Hello to the new scheduler")
    status, _, raw = await asyncio.wait_for(waiting, 10)
    assert status == 200 and events(raw)[-1] == "[DONE]"
    h = hello[0]
    assert h.role == "frontdoor" and h.protocol_version == p.PROTOCOL_VERSION
    assert len(h.queued) == 1 and h.queued[0].max_tokens == 2
    # the Done the old scheduler never heard is carried to the new one
    assert [d.outcome for d in h.undelivered_done] == ["ok"]
    assert h.undelivered_done[0].completion_tokens == 15


async def test_heartbeats_ack_dones_and_health_follows_snapshot(make: Make) -> None:
    world = await make()
    status, headers, _ = await world.post(chat(1))
    assert status == 200
    hb = await _until(lambda: world.sched.of(p.Heartbeat), what="a Heartbeat")
    assert set(hb[0].digest) == {"queued", "inflight"}
    # after an ack the Done is forgotten: a fresh Hello (HelloRequired) no longer carries it
    await asyncio.sleep(1.2)
    world.sched.known.clear()
    n = len(world.sched.of(p.Hello))
    await _until(lambda: len(world.sched.of(p.Hello)) > n, what="Hello after HelloRequired")
    assert world.sched.of(p.Hello)[-1].undelivered_done == []
    # health: the model goes away in the next Snapshot → 503 loading
    world.sched.model_state = p.EngineState.STARTING
    world.sched.send(world.sched.fd_ident, world.sched.snapshot())
    await asyncio.sleep(0.2)
    async with world.http.get(world.fd.url + "/health") as r:
        body = await r.json()
        assert r.status == 503 and body["status"] == "loading"
        assert body["missing_models"] == ["demo"]  # "lazy" is not preloaded


async def test_models_and_metrics(make: Make) -> None:
    world = await make()
    async with world.http.get(world.fd.url + "/v1/models") as r:
        assert r.status == 401
    async with world.http.get(world.fd.url + "/v1/models",
                              headers={"Authorization": f"Bearer {KEY}"}) as r:
        body = await r.json()
    assert body["object"] == "list"
    assert {(m["id"], m["object"], m["owned_by"], m["state"]) for m in body["data"]} == \
        {("demo", "model", "infergrid", "ready"), ("lazy", "model", "infergrid", "unknown")}
    await world.post(chat(2))
    await world.post(chat(), key="sk-wrong")
    async with world.http.get(world.fd.url + "/metrics") as r:
        text = await r.text()
    assert 'infergrid_requests_total{model="demo",outcome="ok",tenant="alpha"} 1.0' in text
    assert 'infergrid_tokens_total{direction="out",model="demo",tenant="alpha"} 2.0' in text
    assert "infergrid_ttft_seconds_bucket" in text and "infergrid_queue_wait_seconds" in text
    assert "infergrid_scheduler_connected 1.0" in text
    assert 'infergrid_tenant_counter{tenant="alpha"} 1.5' in text
    assert 'infergrid_engine_kv_usage{engine="demo-0",model="demo"} 0.25' in text
    assert "sk-wrong" not in text


async def test_request_phases_header_metrics_and_log_line(make: Make) -> None:
    """Held 0.4 s by the scheduler: the client is told the queue time, /metrics has the
    three phases with the queue's share, the request's log line has them too."""
    world = await make(mode="hold", delay=0.05)
    task = asyncio.create_task(world.post(chat(4)))
    await _until(lambda: world.sched.held, what="the Submit")
    await asyncio.sleep(0.4)
    ident, rec = world.sched.held[0]
    world.sched.dispatch(ident, rec.request_id)
    status, headers, raw = await task
    assert status == 200 and events(raw)[-1] == "[DONE]"
    assert headers["X-Request-Id"] == rec.request_id
    queue_ms = float(headers["X-InferGrid-Queue-Ms"])
    assert 400 <= queue_ms < 5000, queue_ms
    assert headers["X-InferGrid-Queue-Ms"] == f"{queue_ms:.1f}"
    world.sched.mode = "dispatch"  # a whole (not streamed) answer carries it too
    status, headers2, _ = await world.post(chat(2, stream=False))
    assert status == 200 and 0 <= float(headers2["X-InferGrid-Queue-Ms"]) < queue_ms
    async with world.http.get(world.fd.url + "/metrics") as r:
        text = await r.text()
    fam = "infergrid_request_phase_seconds"
    lab = 'model="demo",phase="{}",tenant="alpha"'
    assert f'{fam}_count{{{lab.format("queued")}}} 2.0' in text  # both answers
    for phase in ("engine_first_token", "generation"):  # streamed answers only
        assert f'{fam}_count{{{lab.format(phase)}}} 1.0' in text, phase
    queued_sum = float(text.split(f'{fam}_sum{{{lab.format("queued")}}} ')[1].split()[0])
    assert queued_sum >= 0.4
    gen_sum = float(text.split(f'{fam}_sum{{{lab.format("generation")}}} ')[1].split()[0])
    assert gen_sum >= 3 * 0.05 * 0.8  # three gaps of `delay` after the first token
    await _until(lambda: rec.request_id + " alpha demo ok" in world.fd.logs(), what="log line")
    line = next(ln for ln in world.fd.logs().splitlines() if rec.request_id + " alpha" in ln)
    got = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    assert float(got["queue_ms"]) == queue_ms
    assert float(got["engine_ttft_ms"]) >= 0 and float(got["generation_ms"]) >= 120
    assert float(got["ttft_ms"]) == pytest.approx(queue_ms + float(got["engine_ttft_ms"]),
                                                  abs=0.2)


# --------------------------------------------------------------------------- shutdown


async def test_sigterm_lets_the_stream_finish_then_exits_0(make: Make) -> None:
    world = await make(delay=0.1)
    streaming = asyncio.create_task(world.post(chat(15)))
    await _until(lambda: world.engine.requests, what="the stream to start")
    await asyncio.sleep(0.2)
    assert world.fd.proc is not None
    world.fd.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.4)
    with pytest.raises(ConnectionRefusedError):  # no longer accepting (systemd would hold it)
        socket.create_connection(("127.0.0.1", world.fd.port), timeout=2).close()
    status, headers, raw = await streaming
    assert status == 200 and events(raw)[-1] == "[DONE]"
    assert len(events(raw)) == 16
    rc = await asyncio.get_running_loop().run_in_executor(None, world.fd.proc.wait, 15)
    assert rc == 0, world.fd.logs()
    (done,) = world.dones(headers["X-Request-Id"])
    assert done.outcome == "ok"


async def test_sigterm_to_the_leader_stops_every_process_accepting_and_all_exit(
        make: Make) -> None:
    """One ``infergridd frontdoor`` leading two processes (no systemd to signal them all):
    its SIGTERM reaches the worker at once, so neither accepts while the streams drain
    (the old leader drained alone, its worker still accepting, then stopped the worker:
    two drains in a row)."""
    world = await make(delay=0.1, config={"frontdoor": {"processes": 2}})
    assert world.fd.proc is not None
    group = await _until(lambda: (lambda g: g if len(g) == 2 else None)(_pgrep(world.fd)),
                         what="the leader and its worker")
    await _until(lambda: len(world.sched.known) == 2, timeout=20,
                 what="both processes the scheduler's peers (both serving)")
    streams = [asyncio.create_task(world.post(chat(15))) for _ in range(6)]
    await _until(lambda: len(world.engine.requests) == 6, what="the streams to start")
    await asyncio.sleep(0.2)
    world.fd.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.4)
    with pytest.raises(ConnectionRefusedError):  # neither process accepts any more
        socket.create_connection(("127.0.0.1", world.fd.port), timeout=2).close()
    answers = await asyncio.gather(*streams)
    for status, _, raw in answers:
        assert status == 200 and events(raw)[-1] == "[DONE]" and len(events(raw)) == 16
    rc = await asyncio.get_running_loop().run_in_executor(None, world.fd.proc.wait, 15)
    assert rc == 0, world.fd.logs()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in group if pid != world.fd.proc.pid)
    for _, headers, _ in answers:  # each process's Done reached the scheduler (sent after
        rid = headers["X-Request-Id"]  # the client's last byte: read once all have exited)
        (done,) = await _until(lambda rid=rid: world.dones(rid), what=f"the Done of {rid}")
        assert done.outcome == "ok"


def _pgrep(fd: FrontdoorProc) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"infergridd frontdoor --config {fd.config}"],
                         capture_output=True, text=True).stdout.split()
    return sorted(int(x) for x in out)


# --------------------------------------------------------------------------- the simulated engine

async def test_through_the_simulated_engine(make: Make) -> None:
    world = await make()
    port_file = world.fd.root / "sim.port"
    sim = subprocess.Popen(
        [sys.executable, "-m", "infergridd.sim", "--host", "127.0.0.1", "--port", "0",
         "--port-file", str(port_file), "--model", "demo", "--max-num-seqs", "4",
         "--profile", "fast-test", "--api-key", ENGINE_KEY],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        await _until(port_file.exists, timeout=20, what="the sim engine's port")
        world.sched.engine_url = f"http://127.0.0.1:{int(port_file.read_text())}"
        world.sched.engine_priority = None
        status, headers, raw = await world.post(chat(12))
        assert status == 200, raw
        evs = events(raw)
        assert evs[-1] == "[DONE]" and all(e["choices"] for e in evs[:-1])
        rid = headers["X-Request-Id"]
        await _until(lambda: world.dones(rid), what="Done")
        done = world.dones(rid)[0]
        assert done.outcome == "ok" and done.completion_tokens == 12 and done.prompt_tokens > 0
    finally:
        sim.terminate()
        sim.wait(10)
