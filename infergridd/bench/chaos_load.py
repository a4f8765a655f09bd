"""The chaos run's client fleet: a seeded, mixed, open-loop load and a strict judge of
what each client saw.

Open loop: every request starts at its planned time whatever happened to the ones
before it (a fleet does not slow down because the appliance is in trouble).  The mix
is drawn from one seed: streaming and not, chat and completions, short and long
prompts, ~10 % of streaming clients hanging up mid-stream, ~2 % bad requests.

Each request ends in exactly one ``Result`` whose ``cause`` says how it ended for the
client.  ``judge`` (``chaos_verdict.py``) later decides which causes are allowed given
the faults that overlapped the request; here we only record, strictly, what arrived:
a stream that sends data after ``[DONE]`` or two error events has ended twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

#: kinds of deliberately bad requests (each must get a clear 4xx, never a 5xx or a 200)
BAD_KINDS = ("bad_json", "no_messages", "negative_max_tokens", "unknown_model", "wrong_key")
#: statuses an OpenAI client retries (the SDKs' rule): the error says "try again"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
RETRYABLE_TYPES = frozenset({"server_error", "service_unavailable", "timeout_error",
                             "rate_limit_error"})


@dataclass
class Spec:
    """One planned request."""

    rid: int
    at: float  # seconds after the load starts
    tenant: str
    key: str
    model: str
    chat: bool
    stream: bool
    prompt_words: int
    max_tokens: int
    disconnect_after: int | None = None  # content chunks, then the client hangs up
    bad: str | None = None


@dataclass
class Result:
    """How one request ended for its client (exactly one per Spec)."""

    rid: int
    tenant: str
    model: str
    stream: bool
    bad: str | None
    t0: float
    t1: float = 0.0
    status: int = 0
    #: completed | client_disconnect | bad_rejected | error_retryable | error_final |
    #: stream_error_retryable | stream_error_final | conn_refused | conn_lost |
    #: timeout | unclear
    cause: str = ""
    detail: str = ""
    chunks: int = 0
    completion_tokens: int = 0
    ends: int = 0  # terminal signals seen ([DONE], error events, final JSON bodies)


def plan(seed: int, duration_s: float, rate: float, models: list[str],
         tenants: dict[str, str], long_words: int = 1500) -> list[Spec]:
    """The whole run's requests, from one seed (Poisson arrivals at ``rate`` per second).

    Tenants get unequal shares (the first one floods), so the fairness counters
    the run checks across restarts really differ."""
    rng = random.Random(seed)
    names = list(tenants)
    weights = [4.0] + [1.0] * (len(names) - 1)
    specs: list[Spec] = []
    t = 0.0
    rid = 0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return specs
        tenant = rng.choices(names, weights)[0]
        stream = rng.random() < 0.7
        long = rng.random() < 0.15
        model = rng.choices(models, ([0.45, 0.35, 0.2] + [0.2] * len(models))[: len(models)])[0]
        spec = Spec(rid=rid, at=t, tenant=tenant, key=tenants[tenant], model=model,
                    chat=rng.random() < 0.6, stream=stream,
                    prompt_words=rng.randint(long_words // 2, long_words) if long
                    else rng.randint(3, 60), max_tokens=rng.randint(8, 160))
        if stream and rng.random() < 0.10 / 0.7:  # ~10 % of all clients (70 % stream)
            spec.disconnect_after = rng.randint(1, max(1, spec.max_tokens // 2))
        if rng.random() < 0.02:
            spec.bad = rng.choice(BAD_KINDS)
            spec.disconnect_after = None
        specs.append(spec)
        rid += 1


def body_of(spec: Spec, rng: random.Random) -> tuple[str, bytes, str]:
    """(path, body bytes, api key) for one planned request, its bad variant included."""
    words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "fair", "share", "token"))
                     for _ in range(spec.prompt_words))
    body: dict[str, Any] = {"model": spec.model, "max_tokens": spec.max_tokens,
                            "stream": spec.stream}
    if spec.chat:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": words}]
    else:
        path = "/v1/completions"
        body["prompt"] = words
    if spec.stream:
        body["stream_options"] = {"include_usage": True}
    key = spec.key
    if spec.bad == "no_messages":
        body.pop("messages", None)
        body.pop("prompt", None)
    elif spec.bad == "negative_max_tokens":
        body["max_tokens"] = -5
    elif spec.bad == "unknown_model":
        body["model"] = "no-such-model"
    elif spec.bad == "wrong_key":
        key = "sk-not-a-key"
    raw = json.dumps(body).encode()
    if spec.bad == "bad_json":
        raw = raw[: len(raw) // 2]
    return path, raw, key


def _error_of(data: Any) -> dict[str, Any] | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        if isinstance(err.get("message"), str) and err.get("message"):
            return err
    return None


def _classify_error(res: Result, status: int, data: Any, stream_event: bool) -> None:
    """An error answer: clear (OpenAI shape, says retry or not) or ``unclear``."""
    err = _error_of(data)
    if err is None:
        res.cause, res.detail = "unclear", f"{status}: {str(data)[:200]}"
        return
    res.detail = f"{status} {err.get('code')}: {str(err.get('message'))[:160]}"
    if res.bad is not None and not stream_event and 400 <= status < 500 and status != 429:
        res.cause = "bad_rejected"
        return
    retry = (err.get("type") in RETRYABLE_TYPES) if stream_event else (status in RETRYABLE_STATUS)
    prefix = "stream_error" if stream_event else "error"
    res.cause = f"{prefix}_{'retryable' if retry else 'final'}"


async def _read_stream(resp: aiohttp.ClientResponse, spec: Spec, res: Result) -> None:
    buf = b""
    done = False
    async for piece in resp.content.iter_any():
        buf += piece
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if done:
                    res.ends += 1  # anything after [DONE] is a second ending
                    res.cause, res.detail = "unclear", "data after [DONE]"
                    continue
                if payload == b"[DONE]":
                    done = True
                    res.ends += 1 if not res.cause else 0
                    if not res.cause:
                        res.cause = "completed"
                    continue
                data = json.loads(payload)
                if _error_of(data) is not None:
                    if res.cause.startswith("stream_error"):
                        res.ends += 1
                    res.ends += 1
                    _classify_error(res, 200, data, stream_event=True)
                    continue
                if data.get("usage"):
                    res.completion_tokens = int(data["usage"].get("completion_tokens") or 0)
                for ch in data.get("choices") or []:
                    if (ch.get("delta") or {}).get("content") or ch.get("text"):
                        res.chunks += 1
                if spec.disconnect_after is not None and res.chunks >= spec.disconnect_after:
                    res.cause, res.ends = "client_disconnect", 1
                    return  # leaving the context manager closes the connection
    if not done and not res.cause:
        res.cause, res.detail = "conn_lost", "stream ended without [DONE]"
        res.ends = 1


async def run_one(session: aiohttp.ClientSession, url: str, spec: Spec, t_base: float,
                  timeout_s: float, seed: int) -> Result:
    """Send one request and record how it ended; never raises."""
    res = Result(rid=spec.rid, tenant=spec.tenant, model=spec.model, stream=spec.stream,
                 bad=spec.bad, t0=time.monotonic() - t_base)
    try:
        await asyncio.wait_for(_attempt(session, url, spec, res, seed), timeout_s)
    except (TimeoutError, asyncio.TimeoutError):
        res.cause, res.detail, res.ends = "timeout", f"no end within {timeout_s:g}s", 0
    except aiohttp.ClientConnectorError as exc:
        res.cause, res.detail, res.ends = "conn_refused", str(exc)[:160], 1
    except (aiohttp.ClientError, ConnectionError, ValueError) as exc:
        if res.cause != "client_disconnect":
            res.cause, res.detail = "conn_lost", f"{type(exc).__name__}: {exc}"[:160]
            res.ends = 1
    res.t1 = time.monotonic() - t_base
    return res


async def _attempt(session: aiohttp.ClientSession, url: str, spec: Spec, res: Result,
                   seed: int) -> None:
    path, raw, key = body_of(spec, random.Random(seed * 1_000_003 + spec.rid))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with session.post(url + path, data=raw, headers=headers) as resp:
        res.status = resp.status
        ctype = resp.headers.get("Content-Type", "")
        if resp.status != 200:
            text = await resp.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = text
            res.ends = 1
            _classify_error(res, resp.status, data, stream_event=False)
        elif spec.bad is not None:
            res.cause, res.ends = "unclear", 1
            res.detail = f"bad request ({spec.bad}) answered 200"
        elif spec.stream and ctype.startswith("text/event-stream"):
            await _read_stream(resp, spec, res)
        else:
            data = await resp.json(content_type=None)
            res.ends = 1
            if _error_of(data) is not None:
                _classify_error(res, 200, data, stream_event=True)
            else:
                res.cause = "completed"
                res.completion_tokens = int((data.get("usage") or {})
                                            .get("completion_tokens") or 0)


@dataclass
class Fleet:
    """Runs a plan open-loop; ``results`` fills in as requests end."""

    url: str
    specs: list[Spec]
    seed: int
    timeout_s: float = 120.0
    results: list[Result] = field(default_factory=list)
    started: int = 0

    async def run(self, t_base: float, stop: asyncio.Event | None = None) -> None:
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn) as session:
            tasks = []
            for spec in self.specs:
                delay = spec.at - (time.monotonic() - t_base)
                if delay > 0:
                    await asyncio.sleep(delay)
                if stop is not None and stop.is_set():
                    break
                self.started += 1
                tasks.append(asyncio.create_task(self._one(session, spec, t_base)))
            await asyncio.gather(*tasks)

    async def _one(self, session: aiohttp.ClientSession, spec: Spec, t_base: float) -> None:
        self.results.append(await run_one(session, self.url, spec, t_base, self.timeout_s,
                                          self.seed))

    def in_flight(self) -> int:
        return self.started - len(self.results)
