"""``/status`` on the admin listener: the appliance at a glance, as one plain HTML page.

Engines, models and their residency, per-tenant queues and TTFT, and the last minutes
of throughput — read-only, no tenant key anywhere (the Snapshot's auth table and the
engines' keys are never read here), refreshed by the browser itself
(``<meta http-equiv="refresh">``), no JavaScript at all (a strict
Content-Security-Policy says so).

Two halves: ``History`` keeps a sample of the front door's own counters every
``SAMPLE_EVERY_S`` (fed from each scheduler Snapshot, ~0.5 s apart, so the page has
minutes of history even before anyone opens it), and ``render`` is a pure function
from a ``StatusInput`` to the HTML, which the unit tests drive without a daemon.
"""

from __future__ import annotations

import asyncio
import html
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from aiohttp import web

from .. import protocol as p
from .app import FD

if TYPE_CHECKING:
    from .main import Frontdoor
    from .metrics import FrontdoorMetrics

SAMPLE_EVERY_S = 5.0
#: how much history the page shows: throughput per minute for this many minutes
MINUTES = 10
REFRESH_S = 5
#: TTFT on the page: over this recent window (seconds), from the histogram's buckets
TTFT_WINDOW_S = 300.0
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


@dataclass
class Sample:
    """Cumulative counters of the front door at one moment (monotonic ``t``)."""

    t: float
    tokens_out: dict[str, float] = field(default_factory=dict)  # per tenant
    tokens_in: dict[str, float] = field(default_factory=dict)
    #: per tenant: TTFT histogram buckets (upper bound → cumulative count)
    ttft: dict[str, dict[float, float]] = field(default_factory=dict)


def read_sample(m: FrontdoorMetrics, t: float) -> Sample:
    """The counters the page needs, summed over models and over every front-door
    process (any one of them may answer the page: each shows the whole appliance)."""
    s = Sample(t=t)
    for fam in m.summed(m.tokens, m.ttft):
        for x in fam.samples:
            if x.name.endswith("_total"):
                d = s.tokens_out if x.labels.get("direction") == "out" else s.tokens_in
                tenant = x.labels.get("tenant", "")
                d[tenant] = d.get(tenant, 0.0) + x.value
            elif x.name.endswith("_bucket"):
                b = s.ttft.setdefault(x.labels.get("tenant", ""), {})
                le = float(x.labels["le"])
                b[le] = b.get(le, 0.0) + x.value
    return s


class History:
    """Samples for the last ``MINUTES`` (+1), at most one per ``SAMPLE_EVERY_S``."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S, minutes: int = MINUTES) -> None:
        self.every_s = every_s
        self.samples: deque[Sample] = deque(maxlen=int((minutes + 1) * 60 / every_s) + 2)
        #: a sample being read in a worker thread (several processes: ``observe``)
        self.reading = False

    def due(self, t: float) -> bool:
        return not self.samples or t - self.samples[-1].t >= self.every_s

    def add(self, s: Sample) -> None:
        self.samples.append(s)

    def at_or_before(self, t: float) -> Sample | None:
        best = None
        for s in self.samples:
            if s.t <= t:
                best = s
            else:
                break
        return best


_HISTORIES: weakref.WeakKeyDictionary[object, History] = weakref.WeakKeyDictionary()


def history_of(fd: object) -> History:
    h = _HISTORIES.get(fd)
    if h is None:
        h = _HISTORIES[fd] = History()
    return h


def observe(fd: Frontdoor) -> None:
    """Called on each Snapshot: take a sample when one is due (cheap otherwise)."""
    h = history_of(fd)
    now = time.monotonic()
    if h.reading or not h.due(now):
        return
    if fd.metrics.multiproc_dir is None:
        h.add(read_sample(fd.metrics, now))
        return
    # several processes: every process's files are read, in a thread, as /metrics is
    h.reading = True

    def added(f: asyncio.Future[Sample]) -> None:
        h.reading = False
        if not f.cancelled() and f.exception() is None:
            h.add(f.result())

    asyncio.get_running_loop().run_in_executor(None, read_sample, fd.metrics, now
                                               ).add_done_callback(added)


# ---------------------------------------------------------------------- the pure half
@dataclass
class StatusInput:
    snapshot: p.Snapshot | None
    history: History
    now_mono: float
    now_wall: float
    scheduler_connected: bool
    snapshot_age_s: float | None = None
    draining: bool = False


def rates_per_minute(h: History, now: float, minutes: int = MINUTES,
                     ) -> list[tuple[int, dict[str, float] | None]]:
    """Output tokens/s per tenant in each of the last ``minutes`` minutes, oldest first:
    ``(minutes ago at the window's end, rates)``; ``None`` where history does not reach."""
    out: list[tuple[int, dict[str, float] | None]] = []
    for k in range(minutes, 0, -1):
        start, end = now - k * 60, now - (k - 1) * 60
        a, b = h.at_or_before(start), h.at_or_before(end)
        if a is None or b is None or b.t <= a.t:
            out.append((k - 1, None))
            continue
        dt = b.t - a.t
        out.append((k - 1, {t: max(0.0, b.tokens_out.get(t, 0.0) - a.tokens_out.get(t, 0.0))
                            / dt for t in set(a.tokens_out) | set(b.tokens_out)}))
    return out


def rate_now(h: History, now: float, window_s: float = 30.0) -> dict[str, float] | None:
    """Output tokens/s per tenant over the last ``window_s`` (or since the first sample):
    the page has a number from its second sample on, before a minute has passed."""
    if len(h.samples) < 2:
        return None
    a, b = h.at_or_before(now - window_s) or h.samples[0], h.samples[-1]
    if b.t <= a.t:
        return None
    return {t: max(0.0, b.tokens_out.get(t, 0.0) - a.tokens_out.get(t, 0.0)) / (b.t - a.t)
            for t in set(a.tokens_out) | set(b.tokens_out)}


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """``histogram_quantile`` over cumulative buckets (linear within a bucket)."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank, prev_le, prev_n = q * items[-1][1], 0.0, 0.0
    for le, n in items:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n
                                                else 1.0)
        prev_le, prev_n = le, n
    return prev_le


def recent_ttft(h: History, now: float, window_s: float = TTFT_WINDOW_S,
                ) -> dict[str, tuple[int, float | None, float | None]]:
    """Per tenant over the last ``window_s``: (answers, p50, p90) of the TTFT."""
    if not h.samples:
        return {}
    last = h.samples[-1]
    first = h.at_or_before(now - window_s) or h.samples[0]
    out = {}
    for tenant, b in last.ttft.items():
        before = first.ttft.get(tenant, {}) if first is not last else {}
        delta = {le: n - before.get(le, 0.0) for le, n in b.items()}
        count = int(max(delta.values(), default=0))
        out[tenant] = (count, quantile(delta, 0.5), quantile(delta, 0.9))
    return out


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _table(cls: str, headers: list[str], rows: list[list[object]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.0f} ms"


def _gib(b: int) -> str:
    return f"{b / 2**30:.1f} GiB" if b else "-"


def _spark(per_min: list[tuple[int, dict[str, float] | None]]) -> str:
    """Total output tokens/s per minute as an inline SVG bar chart (no script)."""
    vals = [sum(r.values()) if r is not None else None for _, r in per_min]
    top = max([v for v in vals if v is not None] or [0.0]) or 1.0
    w, h, bw = 300, 60, 300 // max(1, len(vals))
    bars = "".join(
        f'<rect x="{i * bw + 1}" y="{h - h * v / top:.1f}" width="{bw - 2}" '
        f'height="{h * v / top:.1f}" fill="#3b7dd8"><title>{v:.1f} tok/s</title></rect>'
        for i, v in enumerate(vals) if v is not None)
    return (f'<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'role="img" aria-label="output tokens per second, last {len(vals)} minutes">'
            f'<rect width="{w}" height="{h}" fill="#f3f5f8"/>{bars}</svg>')


def render(i: StatusInput) -> str:
    """The whole page for one moment: a pure function of ``i``."""
    snap = i.snapshot
    stamp = datetime.fromtimestamp(i.now_wall, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    link = "connected" if i.scheduler_connected else "NOT CONNECTED"
    age = "" if i.snapshot_age_s is None else f", state {i.snapshot_age_s:.1f} s old"
    head = (f'<p class="meta">{_e(stamp)} · scheduler <b class="{"ok" if i.scheduler_connected else "bad"}">'
            f'{_e(link)}</b>{_e(age)} · policy {_e(snap.policy if snap else "-")}'
            + (' · <b class="bad">draining</b>' if i.draining else "") + "</p>")
    engines = sorted(snap.engines, key=lambda e: e.engine_id) if snap else []
    eng = _table("engines", ["engine", "model", "state", "pid", "running", "waiting", "KV use",
                             "GPU memory", "restarts", "assist", "last error"],
                 [[e.engine_id, e.model, e.state, e.pid or "-", e.num_running, e.num_waiting,
                   f"{100 * e.kv_usage:.0f}%", _gib(e.memory_bytes), e.restarts,
                   e.assist or "-", (e.last_error or "")[:120]] for e in engines],
                 "no engines reported yet")
    models = _table("models", ["model", "state", "ready engines", "engines", "GPU memory",
                               "queued", "in flight", "preload", "why not ready"],
                    [[m.name, m.state, m.ready_engines, ", ".join(m.engines) or "-",
                      _gib(m.memory_bytes), m.queued, m.inflight, "yes" if m.preload else "no",
                      m.reason or ""] for m in (snap.models if snap else [])],
                    "no models reported yet")
    ttft = recent_ttft(i.history, i.now_mono)
    tenants = _table("tenants", ["tenant", "weight", "band", "queued", "in flight",
                                 f"answers ({TTFT_WINDOW_S / 60:.0f} min)", "TTFT p50",
                                 "TTFT p90", "tokens in", "tokens out", "rejected"],
                     [[t.name, f"{t.weight:g}", t.band, t.queued, t.inflight,
                       ttft.get(t.name, (0, None, None))[0], _ms(ttft.get(t.name, (0, None, None))[1]),
                       _ms(ttft.get(t.name, (0, None, None))[2]), t.tokens_in, t.tokens_out,
                       sum(t.rejected.values())] for t in (snap.tenants if snap else [])],
                     "no tenants")
    per_min = rates_per_minute(i.history, i.now_mono)
    now_rates = rate_now(i.history, i.now_mono)
    names = sorted({n for _, r in per_min if r for n in r} | set(now_rates or {}))
    rows = [[label, *(f"{r.get(n, 0.0):.1f}" for n in names), f"{sum(r.values()):.1f}"]
            for label, r in [("last 30 s", now_rates)]
            + [(f"{k}-{k + 1} min ago", r) for k, r in reversed(per_min)] if r is not None]
    thr = _table("throughput", ["window", *names, "total"], rows,
                 "collecting: throughput appears a few seconds after the front door starts")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>InferGrid status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2733}}
h1{{font-size:1.4em;margin:0}} h2{{font-size:1.1em;margin:1.4em 0 .4em}}
table{{border-collapse:collapse}} th,td{{padding:.25em .7em;border-bottom:1px solid #dde3ea;text-align:left}}
th{{background:#eef2f6}} .ok{{color:#1a7f37}} .bad{{color:#c62828}} .meta,.empty{{color:#5a6b7d}}
</style></head><body>
<h1>InferGrid status</h1>
{head}
<h2>Engines</h2>
{eng}
<h2>Models and residency</h2>
{models}
<h2>Tenants</h2>
{tenants}
<h2>Throughput, output tokens/s (last {MINUTES} minutes)</h2>
{_spark(per_min)}
{thr}
<p class="meta">Refreshes every {REFRESH_S} s. Read-only; no keys are shown.</p>
</body></html>
"""


# ---------------------------------------------------------------------- the handler
def status_input(fd: Frontdoor) -> StatusInput:
    received = fd.metrics.snapshot.received_at
    return StatusInput(snapshot=fd.snapshot, history=history_of(fd), now_mono=time.monotonic(),
                       now_wall=time.time(), scheduler_connected=fd.link.connected,
                       snapshot_age_s=(time.monotonic() - received) if fd.snapshot else None,
                       draining=fd.draining)


async def status(request: web.Request) -> web.Response:
    """GET /status (admin listener)."""
    page = render(status_input(request.app[FD]))
    return web.Response(text=page, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff"})
