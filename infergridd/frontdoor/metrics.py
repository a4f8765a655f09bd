"""``/metrics``: what the front door measured itself, plus the scheduler's latest Snapshot.

Latencies are measured where the client sees them (here).  Queue depths,
fairness counters and engine state come from the scheduler's Snapshot via a
custom collector, so they are as fresh as the last Snapshot (≤ 0.5 s) and cost
nothing between scrapes.  Label values are bounded: tenants are configured or
added names only (a wrong key is never a label), models are configured names.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .. import protocol as p
from .gpu_metrics import gpu_families

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5,
                   2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
#: Phases of one request (``phase`` label): ``queued`` (arrival to Dispatch: InferGrid's
#: queue and the link), ``engine_first_token`` (Dispatch to the first token sent),
#: ``generation`` (first token to the last byte).  Finer at the short end than
#: LATENCY_BUCKETS: a phase of a quiet request is often a few milliseconds.
PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
                 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
#: a /metrics page younger than this is served again rather than rendered again (short:
#: a scraper polling for a change still sees it within a tenth of a second)
CACHE_S = 0.1
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


class SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: p.Snapshot | None = None
        self.received_at = 0.0
        self.connected = lambda: False

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("infergrid_scheduler_connected",
                               "1 while the front door is connected to the scheduler")
        up.add_metric([], 1.0 if self.connected() else 0.0)
        yield up
        snap = self.snapshot
        if snap is None:
            return
        age = GaugeMetricFamily("infergrid_snapshot_age_seconds",
                                "age of the scheduler state exported below")
        age.add_metric([], time.monotonic() - self.received_at)
        yield age
        t_fams = {
            "queued": GaugeMetricFamily("infergrid_tenant_queued", "requests waiting in "
                                        "InferGrid's queue", labels=["tenant"]),
            "inflight": GaugeMetricFamily("infergrid_tenant_inflight", "requests dispatched "
                                          "to engines", labels=["tenant"]),
            "counter": GaugeMetricFamily("infergrid_tenant_counter", "fairness counter "
                                         "(weighted tokens of service)", labels=["tenant"]),
            "weight": GaugeMetricFamily("infergrid_tenant_weight", "effective weight",
                                        labels=["tenant"]),
        }
        served = GaugeMetricFamily("infergrid_tenant_tokens_served", "tokens served, as "
                                   "charged by the scheduler", labels=["tenant", "direction"])
        rejected = GaugeMetricFamily("infergrid_tenant_rejected", "requests rejected by the "
                                     "scheduler", labels=["tenant", "reason"])
        for t in snap.tenants:
            for key, fam in t_fams.items():
                fam.add_metric([t.name], float(getattr(t, key)))
            served.add_metric([t.name, "in"], float(t.tokens_in))
            served.add_metric([t.name, "out"], float(t.tokens_out))
            for reason, n in sorted(t.rejected.items()):
                rejected.add_metric([t.name, reason], float(n))
        yield from t_fams.values()
        yield served
        yield rejected
        state = GaugeMetricFamily("infergrid_engine_state", "1 for the engine's current state",
                                  labels=["engine", "model", "state"])
        e_fams = {
            "num_running": GaugeMetricFamily("infergrid_engine_running", "requests running "
                                             "in the engine", labels=["engine", "model"]),
            "num_waiting": GaugeMetricFamily("infergrid_engine_waiting", "requests waiting "
                                             "inside the engine", labels=["engine", "model"]),
            "kv_usage": GaugeMetricFamily("infergrid_engine_kv_usage", "KV cache use, 0..1",
                                          labels=["engine", "model"]),
            "restarts": GaugeMetricFamily("infergrid_engine_restarts", "engine restarts",
                                          labels=["engine", "model"]),
            "memory_bytes": GaugeMetricFamily("infergrid_engine_memory_bytes", "GPU memory "
                                              "held, per the ledger", labels=["engine", "model"]),
        }
        assist = GaugeMetricFamily("infergrid_engine_assist", "1 when the engine runs "
                                   "InferGrid's step policy (reported by the engine itself)",
                                   labels=["engine", "model", "state"])
        acts = CounterMetricFamily("infergrid_engine_assist_actions", "what the step policy "
                                   "in the engine did", labels=["engine", "model", "action"])
        for e in snap.engines:
            state.add_metric([e.engine_id, e.model, e.state], 1.0)
            for key, fam in e_fams.items():
                fam.add_metric([e.engine_id, e.model], float(getattr(e, key)))
            if e.assist:
                assist.add_metric([e.engine_id, e.model, e.assist],
                                  1.0 if e.assist == "on" else 0.0)
            for action, n in sorted(e.assist_counters.items()):
                acts.add_metric([e.engine_id, e.model, action], float(n))
        yield state
        yield from e_fams.values()
        yield assist
        yield acts
        ready = GaugeMetricFamily("infergrid_model_ready_engines", "ready engines per model",
                                  labels=["model"])
        for m in snap.models:
            ready.add_metric([m.name], float(m.ready_engines))
        yield ready
        yield from gpu_families(snap)  # per GPU: infergrid_gpu_memory_bytes{device,state}


class _Watched(Collector):
    """Gauges read when scraped, from this process's own state (``FrontdoorMetrics.watch``);
    labelled ``process`` when there are several front-door processes."""

    def __init__(self, process: str) -> None:
        self.process = process
        self.gauges: list[tuple[str, str, Callable[[], float]]] = []

    def collect(self) -> Iterator[Metric]:
        labels = ["process"] if self.process else []
        for name, help_text, read in self.gauges:
            fam = GaugeMetricFamily(name, help_text, labels=labels)
            fam.add_metric([self.process] if self.process else [], float(read()))
            yield fam


class _Merged(Collector):
    """Every front-door process's counters and histograms, summed from their files, and
    the family (HELP and TYPE, no sample) of each one no process has written yet: one
    process alone exports them all from its start, and the dashboards and alert rules
    read them (a family missing until its first rejection reads as "no data")."""

    def __init__(self, files: MultiProcessCollector, declared: list[Collector]) -> None:
        self.files = files
        self.declared = declared

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for fam in self.files.collect():
            seen.add(fam.name)
            yield fam
        for m in self.declared:
            for fam in m.describe():
                if fam.name not in seen:
                    yield fam


class RequestMetrics:
    """One (tenant, model)'s labelled children, looked up once and kept
    (``FrontdoorMetrics.of``): ``labels()`` takes a lock and builds a key each time, and
    a request used to call it a dozen times."""

    __slots__ = ("e2e", "inflight", "itl", "phase_first", "phase_generation", "phase_queued",
                 "queue_wait", "requests", "tokens_in", "tokens_out", "ttft", "_m", "_key")

    def __init__(self, m: FrontdoorMetrics, tenant: str, model: str) -> None:
        self._m, self._key = m, (tenant, model)
        self.queue_wait = m.queue_wait.labels(tenant, model)
        self.inflight = m.inflight.labels(tenant, model)
        self.ttft = m.ttft.labels(tenant, model)
        self.itl = m.itl.labels(tenant, model)
        self.e2e = m.e2e.labels(tenant, model)
        self.phase_queued = m.phase.labels(tenant, model, "queued")
        self.phase_first = m.phase.labels(tenant, model, "engine_first_token")
        self.phase_generation = m.phase.labels(tenant, model, "generation")
        self.tokens_in = m.tokens.labels(tenant, model, "in")
        self.tokens_out = m.tokens.labels(tenant, model, "out")
        self.requests: dict[str, Counter] = {}

    def outcome(self, outcome: str) -> Counter:
        """The ``infergrid_requests`` child of this outcome."""
        c = self.requests.get(outcome)
        if c is None:
            c = self.requests[outcome] = self._m.requests.labels(*self._key, outcome)
        return c


class FrontdoorMetrics:
    """The front door's registry; with ``multiproc_dir`` (several front-door processes,
    ``workers.py``) the counters and histograms are prometheus_client's multiprocess
    values and the page sums every process's files."""

    def __init__(self, multiproc_dir: Path | None = None, process: str = "") -> None:
        self.multiproc_dir = multiproc_dir
        if multiproc_dir is not None:  # before any metric below is made: they take this class
            multiproc_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
            values.ValueClass = values.MultiProcessValue()
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("infergrid_requests", "finished requests by outcome",
                                ["tenant", "model", "outcome"], registry=r)
        self.ttft = Histogram("infergrid_ttft_seconds", "time to first token, as the client "
                              "sees it", ["tenant", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("infergrid_queue_wait_seconds", "time from arrival to "
                                    "dispatch", ["tenant", "model"], buckets=LATENCY_BUCKETS,
                                    registry=r)
        self.phase = Histogram("infergrid_request_phase_seconds", "where an answered "
                               "request's time went: queued (arrival to dispatch), "
                               "engine_first_token (dispatch to first token sent), "
                               "generation (first token to last byte)",
                               ["tenant", "model", "phase"], buckets=PHASE_BUCKETS, registry=r)
        self.itl = Histogram("infergrid_itl_seconds", "time between streamed tokens",
                             ["tenant", "model"], buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("infergrid_request_duration_seconds", "arrival to last byte",
                             ["tenant", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("infergrid_tokens", "tokens by direction (engine usage)",
                              ["tenant", "model", "direction"], registry=r)
        self.inflight = Gauge("infergrid_inflight", "requests being relayed now",
                              ["tenant", "model"], registry=r, multiprocess_mode="livesum")
        self.rejections = Counter("infergrid_rejections", "requests refused",
                                  ["tenant", "reason"], registry=r)
        # a gauge by name since it was one (a count read from the link), now summed over
        # the processes, the exited ones included, like a counter
        self.fast_dispatches = Gauge("infergrid_frontdoor_fast_path_dispatches", "requests "
                                     "sent to an engine on a slot lease, without waiting for "
                                     "the scheduler", registry=r, multiprocess_mode="sum")
        self.snapshot = SnapshotCollector()
        self._watched = _Watched(process if multiproc_dir is not None else "")
        if multiproc_dir is not None:  # the page: every process's files, plus ours
            own = [self.requests, self.ttft, self.queue_wait, self.phase, self.itl, self.e2e,
                   self.tokens, self.inflight, self.rejections, self.fast_dispatches]
            r = self.registry = CollectorRegistry()
            r.register(_Merged(MultiProcessCollector(None, str(multiproc_dir)), own))
        r.register(self.snapshot)
        r.register(self._watched)
        self._children: dict[tuple[str, str], RequestMetrics] = {}
        self._page: bytes | None = None
        self._page_at = 0.0
        self._rendering: asyncio.Future[bytes] | None = None

    def of(self, tenant: str, model: str) -> RequestMetrics:
        """The children a request of ``tenant`` on ``model`` updates (made once per pair;
        both names are bounded: configured or added tenants, configured models)."""
        rm = self._children.get((tenant, model))
        if rm is None:
            rm = self._children[(tenant, model)] = RequestMetrics(self, tenant, model)
        return rm

    def summed(self, *metrics: Counter | Histogram) -> Iterator[Metric]:
        """``metrics``' families summed over every front-door process (this one's alone
        when it is the only one): what the status page's history samples.  With several
        it reads every process's files: call it off the event loop."""
        if self.multiproc_dir is None:
            for m in metrics:
                yield from m.collect()
            return
        names = {fam.name for m in metrics for fam in m.describe()}
        for fam in MultiProcessCollector(None, str(self.multiproc_dir)).collect():
            if fam.name in names:
                yield fam

    def watch(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge read when scraped (the waiting room's bytes, open connections, ...)."""
        self._watched.gauges.append((name, help_text, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def render_cached(self) -> bytes:
        """The page, rendered at most once per ``CACHE_S`` and never on the event loop.

        Rendering every tenant's histograms takes milliseconds to tens of them, and
        every token a tenant streams crosses the same loop: a scraper (or anyone who
        can reach ``/metrics``) polling in a tight loop would stall the streams.  So
        the page is rendered in a worker thread, concurrent scrapes share one render,
        and a page younger than ``CACHE_S`` is served as it is.
        """
        now = time.monotonic()
        if self._page is not None and now - self._page_at < CACHE_S:
            return self._page
        if self._rendering is None:
            self._rendering = asyncio.ensure_future(asyncio.to_thread(self.render))
        fut = self._rendering
        try:
            page = await asyncio.shield(fut)
        finally:
            if fut.done() and self._rendering is fut:
                self._rendering = None
        self._page, self._page_at = page, time.monotonic()
        return page
