"""The open-loop load generator: every request leaves at its scheduled time.

Open loop (not a fixed number of workers) because a flooder that waits for its
answers before sending more cannot flood: a closed loop slows down exactly when
the system is overloaded and hides the queueing the benchmark is about.  So each
request is sent at its planned time whatever happened to the others, on a
connection pool with no limit (``TCPConnector(limit=0)``: a pool limit would be
one more FIFO queue that knows nothing of tenants, PEERS.md).

Per request: TTFT (first chunk carrying content), the gaps between content
chunks (ITL; tokens that arrive in one read count as one gap, as a client
sees them), end-to-end time, tokens from the engine's usage, and the outcome.
Through InferGrid, the time the request spent in InferGrid's queue comes back in
the ``X-InferGrid-Queue-Ms`` response header (``queue_s``); straight to an engine
there is no such header and ``queue_s`` stays ``None``.
The *send lag* (actual minus scheduled send time) is recorded too: if the
generator itself falls behind, the arrival process is not the one planned and
the report says so.

When the plan ends, requests still running get ``drain_s`` to finish; the rest
are cancelled (closing the stream, so the engine aborts them) and counted
``unfinished``.  Their TTFT, if no token came, is *censored*: the harness uses the
time they waited as a lower bound rather than dropping them, which would flatter
exactly the arm that made them wait.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import msgspec
import numpy as np

from ..engines import promtext
from .workload import Planned

OK, REJECTED, FAILED, UNFINISHED = "ok", "rejected", "failed", "unfinished"
#: First id used in prompts: the tiny vLLM model's special tokens take the ids below.
FIRST_ID = 7
#: Prompt ids stay under this, inside every tokenizer the harness meets (tiny: ~1000).
ID_SPAN = 700
BIN_S = 1.0
#: The front door's response header: ms the request waited in InferGrid before dispatch.
QUEUE_HEADER = "X-InferGrid-Queue-Ms"


@dataclass(slots=True)
class Result:
    """One request as the client saw it; times in seconds from the arm's start."""

    tenant: str
    index: int
    scheduled_s: float
    sent_s: float = 0.0
    status: str = UNFINISHED
    http_status: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: array = field(default_factory=lambda: array("d"))
    tokens_in: int = 0
    tokens_out: int = 0
    error: str = ""
    queue_s: float | None = None  # queued in InferGrid (its header); None: no InferGrid

    @property
    def lag_s(self) -> float:
        return self.sent_s - self.scheduled_s


@dataclass
class Target:
    """Where requests go: a base URL, the model name and each tenant's API key."""

    url: str
    model: str
    keys: dict[str, str] = field(default_factory=dict)


class Prompts:
    """Token-id prompts of an exact length, cheap to make at send time.

    Ids (not text) so every engine sees exactly the planned length whatever its
    tokenizer; slices of one seeded pool at per-request offsets so consecutive
    prompts differ (no prefix-cache hits) without drawing random numbers in the
    send path.
    """

    def __init__(self, seed: int, size: int = 1 << 20) -> None:
        rng = np.random.default_rng(seed)
        self.pool = rng.integers(FIRST_ID, FIRST_ID + ID_SPAN, size=size).tolist()
        self.size = size

    def get(self, n: int, key: int) -> list[int]:
        n = min(n, self.size // 2)
        off = (key * 7919) % (self.size - n)
        return self.pool[off:off + n]


def body_for(model: str, prompt: list[int], max_tokens: int) -> bytes:
    return msgspec.json.encode({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
        "ignore_eos": True, "temperature": 0.0, "stream_options": {"include_usage": True}})


def queue_seconds(value: str | None) -> float | None:
    """The queue header's milliseconds as seconds; ``None`` if absent or malformed."""
    if not value:
        return None
    try:
        ms = float(value)
    except ValueError:
        return None
    return ms / 1000.0 if math.isfinite(ms) and ms >= 0 else None


def event_tokens(obj: dict, res: Result) -> int | None:
    """One SSE event's object: the content tokens it carries, its usage kept in ``res``;
    None for an error event (``res`` failed, no end-to-end time).  Shared by both load
    generators (``stream_one`` and ``rawload``) so they count alike."""
    if obj.get("error"):
        res.status = FAILED
        res.error = str(obj["error"])[:200]
        return None
    usage = obj.get("usage")
    if usage:
        res.tokens_in = int(usage.get("prompt_tokens") or 0)
        res.tokens_out = int(usage.get("completion_tokens") or 0)
    return sum(1 for ch in obj.get("choices") or ()
               if ch.get("text") or (ch.get("delta") or {}).get("content"))


async def stream_one(http: aiohttp.ClientSession, target: Target, p: Planned, prompt: list[int],
                     t0: float, res: Result,
                     on_tokens: Callable[[str, float, int], None] | None = None) -> None:
    """Send one streamed completion and fill ``res`` as it goes (so a cancel keeps it)."""
    headers = {"Content-Type": "application/json"}
    key = target.keys.get(p.tenant, "")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = body_for(target.model, prompt, p.max_tokens)
    now = time.monotonic
    start = now()
    res.sent_s = start - t0
    last = 0.0
    try:
        async with http.post(target.url + "/v1/completions", data=data, headers=headers) as r:
            res.http_status = r.status
            res.queue_s = queue_seconds(r.headers.get(QUEUE_HEADER))
            if r.status != 200:
                res.status = REJECTED if r.status == 429 else FAILED
                res.error = (await r.text())[:200]
                res.e2e_s = now() - start
                return
            buf = b""
            async for piece in r.content.iter_any():
                t = now()
                buf += piece
                k = 0
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        data_ = line[5:].strip()
                        if data_ == b"[DONE]":
                            continue
                        n = event_tokens(msgspec.json.decode(data_), res)
                        if n is None:
                            return
                        k += n
                if k:
                    if res.ttft_s is None:
                        res.ttft_s = t - start
                    else:
                        res.itl_s.append(t - last)
                    last = t
                    if on_tokens is not None:
                        on_tokens(p.tenant, t - t0, k)
            res.e2e_s = now() - start
            res.status = OK if res.ttft_s is not None else FAILED
            if res.status == FAILED:
                res.error = "stream ended without content"
    except asyncio.CancelledError:
        res.status = UNFINISHED
        res.e2e_s = None
        raise
    except (aiohttp.ClientError, OSError, ValueError, msgspec.DecodeError) as exc:
        res.status = FAILED
        res.error = f"{type(exc).__name__}: {exc}"[:200]
        res.e2e_s = now() - start


@dataclass
class Timeline:
    """Output tokens per tenant per 1-s bin: throughput over the window and the plot."""

    bins: dict[str, list[int]] = field(default_factory=dict)

    def add(self, tenant: str, t: float, k: int) -> None:
        b = self.bins.setdefault(tenant, [])
        i = int(t / BIN_S)
        if i >= len(b):
            b.extend([0] * (i + 1 - len(b)))
        b[i] += k

    def tokens(self, tenant: str, start_s: float, end_s: float) -> int:
        b = self.bins.get(tenant, [])
        return sum(b[int(start_s / BIN_S):int(end_s / BIN_S)])


@dataclass
class Sampler:
    """Polls ``/metrics`` endpoints every ``interval_s`` (saturation evidence)."""

    urls: dict[str, str]  # label -> full URL of a /metrics page
    names: tuple[str, ...]
    interval_s: float = 0.5
    samples: list[dict[str, float]] = field(default_factory=list)

    async def run(self, http: aiohttp.ClientSession, t0: float) -> None:
        while True:
            row: dict[str, float] = {"t": time.monotonic() - t0}
            for label, url in self.urls.items():
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                        s = promtext.parse(await r.text())
                    for n in self.names:
                        if n in s:
                            row[f"{label}:{n}"] = s[n]
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                    pass
            self.samples.append(row)
            await asyncio.sleep(self.interval_s)


@dataclass
class Run:
    label: str
    results: list[Result]
    timeline: Timeline
    samples: list[dict[str, float]]
    elapsed_s: float


class Progress:
    """One ``\\r`` line on stderr: arm, elapsed/total, sent/ok/rejected/failed."""

    def __init__(self, label: str, total_s: float, enabled: bool = True) -> None:
        self.label, self.total_s, self.enabled = label, total_s, enabled
        self.tty = sys.stderr.isatty()
        self.last = -1e9

    def show(self, elapsed: float, results: list[Result], sent: int, final: bool = False) -> None:
        if not self.enabled:
            return
        if not self.tty and not final and elapsed - self.last < 10:
            return  # a log file gets a line every 10 s, not a \r spinner
        self.last = elapsed
        c = {OK: 0, REJECTED: 0, FAILED: 0}
        for r in results:
            if r.status in c and r.e2e_s is not None:
                c[r.status] += 1
        sys.stderr.write(f"\r[{self.label}] {elapsed:6.1f}/{self.total_s:.0f} s  sent {sent}  "
                         f"ok {c[OK]}  rejected {c[REJECTED]}  failed {c[FAILED]}   ")
        if final or not self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))


async def open_loop(target: Target, plan: list[Planned], prompts: Prompts, *, label: str,
                    duration_s: float, drain_s: float, sampler: Sampler | None = None,
                    progress: bool = True) -> Run:
    """Send ``plan`` open-loop; return every request's result (unfinished ones included)."""
    results: list[Result] = []
    tasks: set[asyncio.Task[None]] = set()
    timeline = Timeline()
    prog = Progress(label, duration_s, progress)
    async with session() as http:
        t0 = time.monotonic()
        bg: list[asyncio.Task[None]] = []
        if sampler is not None:
            bg.append(asyncio.create_task(sampler.run(http, t0)))

        async def ticker() -> None:
            while True:
                prog.show(time.monotonic() - t0, results, len(results))
                await asyncio.sleep(0.5)

        bg.append(asyncio.create_task(ticker()))
        for p in plan:
            delay = t0 + p.t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            res = Result(p.tenant, p.index, p.t)
            results.append(res)
            prompt = prompts.get(p.prompt_tokens, zlib.crc32(p.tenant.encode()) + 104729 * p.index)
            tasks.add(asyncio.create_task(stream_one(http, target, p, prompt, t0, res,
                                                     timeline.add)))
        rest = t0 + duration_s - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        if tasks:
            await asyncio.wait(tasks, timeout=drain_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - t0
        for t in bg:
            t.cancel()
        await asyncio.gather(*bg, return_exceptions=True)
        prog.show(elapsed, results, len(results), final=True)
    return Run(label, results, timeline, sampler.samples if sampler else [], elapsed)


@dataclass
class Capacity:
    """What the engine sustains for one request shape, closed-loop and saturated."""

    tokens_per_s: float
    requests_per_s: float
    concurrency: int
    requests: int
    window_s: float


async def closed_loop(target: Target, shape: list[Planned], prompts: Prompts, *,
                      concurrency: int, duration_s: float, warmup_s: float) -> Capacity:
    """``concurrency`` workers back to back; rates counted over [warmup, duration].

    More workers than the engine's batch keeps its waiting queue non-empty, so
    this is its saturated throughput for ``shape`` (cycled through in order).
    """
    timeline = Timeline()
    done_at: list[float] = []
    async with session() as http:
        t0 = time.monotonic()
        stop = t0 + duration_s
        counter = iter(range(1 << 30))

        async def worker() -> None:
            while time.monotonic() < stop:
                i = next(counter)
                p = shape[i % len(shape)]
                res = Result(p.tenant, i, 0.0)
                await stream_one(http, target, p, prompts.get(p.prompt_tokens, i), t0, res,
                                 timeline.add)
                if res.status == OK:
                    done_at.append(time.monotonic() - t0)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(duration_s)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    window = duration_s - warmup_s
    toks = sum(timeline.tokens(t, warmup_s, duration_s) for t in timeline.bins)
    reqs = sum(1 for d in done_at if d >= warmup_s)
    return Capacity(tokens_per_s=toks / window, requests_per_s=reqs / window,
                    concurrency=concurrency, requests=len(done_at), window_s=window)
