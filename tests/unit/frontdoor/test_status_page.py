"""The status page's pure half: ``render`` from a snapshot and a history of counters to
plain HTML (refreshing itself, no script, no key), and the history's arithmetic."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from infergridd import protocol as p
from infergridd.frontdoor.metrics import FrontdoorMetrics
from infergridd.frontdoor.status_page import (
    History,
    Sample,
    StatusInput,
    quantile,
    rates_per_minute,
    read_sample,
    recent_ttft,
    render,
)

NOW_WALL = 1_796_515_200.0  # 2026-12-06T00:00:00Z


class Tables(HTMLParser):
    """The page's tables as lists of rows, by class; and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._table = ""
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._table = dict(attrs).get("class") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _snapshot() -> p.Snapshot:
    return p.Snapshot(
        instance="s1", policy="vtc",
        auth=[p.AuthEntry(key_sha256="hash-of-sk-acme-secret", tenant="acme")],
        tenants=[p.TenantStats(name="acme", weight=2.0, queued=3, inflight=1, tokens_in=50,
                               tokens_out=70, rejected={"rate_limit_exceeded": 2}),
                 p.TenantStats(name="<b>evil</b>", queued=0)],
        engines=[p.EngineStatus(engine_id="demo-0", model="demo", kind="sim", state="ready",
                                api_key="sk-engine-secret", pid=42, num_running=5,
                                num_waiting=1, kv_usage=0.25, memory_bytes=2 * 2**30,
                                last_error="<script>alert(1)</script>")],
        models=[p.ModelInfo(name="demo", state="ready", engines=["demo-0"], ready_engines=1),
                p.ModelInfo(name="big", state="sleeping1", reason="parked to make room")])


def _history() -> History:
    """Two tenants' counters, a sample every 5 s for 11 minutes: acme makes 10 tok/s,
    bob 2 tok/s; acme's TTFTs all fall in the (0.1, 0.25] bucket."""
    h = History()
    for i in range(0, 11 * 60 + 1, 5):
        h.add(Sample(t=1000.0 + i, tokens_out={"acme": 10.0 * i, "bob": 2.0 * i},
                     ttft={"acme": {0.1: 0.0, 0.25: i / 5, float("inf"): i / 5}}))
    return h


def _page(**kw) -> str:
    i = StatusInput(snapshot=kw.pop("snapshot", _snapshot()), history=kw.pop("history", _history()),
                    now_mono=1000.0 + 11 * 60, now_wall=NOW_WALL, scheduler_connected=True,
                    snapshot_age_s=0.3, **kw)
    return render(i)


def test_render_shows_engines_models_tenants_and_throughput() -> None:
    page = _page()
    t = Tables()
    t.feed(page)
    meta = [a for tag, a in t.tags if tag == "meta" and a.get("http-equiv") == "refresh"]
    assert meta and int(meta[0]["content"]) > 0, "the page refreshes itself"
    assert not any(tag == "script" for tag, _ in t.tags), "no JavaScript at all"
    eng = t.tables["engines"]
    assert eng[0][:5] == ["engine", "model", "state", "pid", "running"]
    assert eng[1][:7] == ["demo-0", "demo", "ready", "42", "5", "1", "25%"]
    assert eng[1][7] == "2.0 GiB"
    models = {r[0]: r for r in t.tables["models"][1:]}
    assert models["big"][1] == "sleeping1" and models["big"][-1] == "parked to make room"
    tenants = {r[0]: r for r in t.tables["tenants"][1:]}
    acme = tenants["acme"]
    assert acme[1:5] == ["2", "0", "3", "1"]
    assert acme[5] == "60"  # answers in the last 5 minutes: 300 s / 5 s per sample
    p50, p90 = (int(x.removesuffix(" ms")) for x in acme[6:8])
    assert 100 <= p50 <= p90 <= 250  # inside the bucket every answer fell in
    assert acme[-1] == "2"  # rejected
    thr = t.tables["throughput"]
    assert thr[0] == ["window", "acme", "bob", "total"]
    assert thr[1] == ["last 30 s", "10.0", "2.0", "12.0"]
    assert len(thr) == 12 and thr[2] == ["0-1 min ago", "10.0", "2.0", "12.0"]
    assert "<svg" in page and page.count("<rect") >= 11


def test_no_key_and_everything_escaped() -> None:
    page = _page()
    assert "sk-engine-secret" not in page and "hash-of" not in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page


def test_before_the_first_snapshot_and_without_history() -> None:
    page = render(StatusInput(snapshot=None, history=History(), now_mono=5.0,
                              now_wall=NOW_WALL, scheduler_connected=False))
    assert "NOT CONNECTED" in page and "no engines reported yet" in page
    assert "collecting" in page
    assert rates_per_minute(History(), 5.0) == [(k, None) for k in range(9, -1, -1)]


def test_history_arithmetic() -> None:
    h = _history()
    per_min = rates_per_minute(h, 1000.0 + 11 * 60)
    assert all(r == {"acme": 10.0, "bob": 2.0} for _, r in per_min)
    assert round(quantile({0.1: 0.0, 0.2: 10.0, float("inf"): 10.0}, 0.5), 9) == 0.15
    assert quantile({0.1: 4.0, float("inf"): 8.0}, 0.9) == 0.1  # the +Inf bucket: its floor
    assert quantile({}, 0.5) is None
    assert recent_ttft(h, 1000.0 + 11 * 60)["acme"][0] == 60
    # at most one sample per interval, and bounded
    small = History(every_s=5.0, minutes=1)
    assert small.due(0.0)
    small.add(Sample(t=0.0))
    assert not small.due(4.9) and small.due(5.0)
    for i in range(100):
        small.add(Sample(t=float(i * 5)))
    assert len(small.samples) == small.samples.maxlen


def test_read_sample_sums_the_front_doors_counters() -> None:
    m = FrontdoorMetrics()
    m.tokens.labels("acme", "demo", "out").inc(7)
    m.tokens.labels("acme", "other", "out").inc(3)
    m.tokens.labels("acme", "demo", "in").inc(5)
    m.ttft.labels("acme", "demo").observe(0.2)
    s = read_sample(m, 12.0)
    assert s.t == 12.0 and s.tokens_out == {"acme": 10.0} and s.tokens_in == {"acme": 5.0}
    assert s.ttft["acme"][0.25] == 1.0 and s.ttft["acme"][0.1] == 0.0
    assert re.search(r"inf", str(max(s.ttft["acme"])))
