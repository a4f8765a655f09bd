"""Where the time went: the phase breakdown of the slowest 1 % of quiet TTFTs.

The loadgen reads InferGrid's queue time from the front door's
``X-InferGrid-Queue-Ms`` header; the runner splits each quiet tenant's tail (TTFT at
or above its p99) and median band into time queued in InferGrid and the rest (engine
and relay), and says which dominated; the report and the CSV show it.
"""

from __future__ import annotations

import csv
import math
from array import array
from pathlib import Path

import pytest
from aiohttp import web

from infergridd.bench import report, stats, workload
from infergridd.bench.engines import SimEngine
from infergridd.bench.loadgen import (
    OK,
    QUEUE_HEADER,
    REJECTED,
    UNFINISHED,
    Prompts,
    Result,
    Run,
    Target,
    Timeline,
    open_loop,
    queue_seconds,
)
from infergridd.bench.runner import BenchConfig, arm_stats, phase_breakdown
from infergridd.bench.workload import Planned

W = workload.load("hero")


def _results(n: int, base_ttft: float, base_queue: float | None, slow: list[tuple[float, float]],
             ) -> list[Result]:
    """``n`` fast requests (TTFT ``base_ttft`` ± a little), then the ``slow`` (ttft, queue)."""
    out = []
    for i in range(n):
        q = None if base_queue is None else base_queue
        out.append(Result("quiet", i, i * 0.1, status=OK, ttft_s=base_ttft * (1 + (i % 11) / 100),
                          e2e_s=1.0, queue_s=q))
    for j, (ttft, q) in enumerate(slow):
        out.append(Result("quiet", n + j, 0.0, status=OK, ttft_s=ttft, e2e_s=ttft + 1,
                          queue_s=None if base_queue is None else q))
    return out


def test_queue_dominates_the_tail_while_the_engine_dominates_the_median() -> None:
    rs = _results(297, 0.100, 0.005, [(2.0, 1.8), (2.2, 2.0), (2.4, 2.1)])
    ph = phase_breakdown(rs)
    tail, med = ph["tail_phases"], ph["median_phases"]
    assert tail["queue_known"] and med["queue_known"]
    # p99 of 300 lies just under the 3 slow ones' smallest (interpolated): exactly those 3
    assert tail["n"] == 3
    assert tail["queued_ms"] == pytest.approx((1800 + 2000 + 2100) / 3)
    assert tail["engine_ms"] == pytest.approx((200 + 200 + 300) / 3)
    assert tail["ttft_ms"] == pytest.approx(2200)
    assert tail["dominant"] == "queue"
    assert med["dominant"] == "engine" and med["n"] >= 25
    assert med["queued_ms"] == pytest.approx(5.0)
    assert 95 < med["engine_ms"] < 106


def test_engine_dominates_the_tail() -> None:
    rs = _results(297, 0.100, 0.005, [(2.0, 0.1), (2.2, 0.3), (2.4, 0.2)])
    tail = phase_breakdown(rs)["tail_phases"]
    assert tail["n"] == 3 and tail["dominant"] == "engine"
    assert tail["queued_ms"] == pytest.approx(200)
    assert tail["engine_ms"] == pytest.approx(2000)


def test_without_infergrid_it_is_engine_only() -> None:
    rs = _results(297, 0.100, None, [(2.0, 0), (2.2, 0), (2.4, 0)])
    tail = phase_breakdown(rs)["tail_phases"]
    assert tail["queue_known"] is False and tail["dominant"] == "engine"
    assert tail["queued_ms"] == 0 and tail["engine_ms"] == pytest.approx(2200)


def test_unanswered_and_rejected_requests_are_left_out() -> None:
    rs = _results(99, 0.1, 0.01, [(1.0, 0.9)])
    rs.append(Result("quiet", 500, 0.0, status=REJECTED, http_status=429))
    rs.append(Result("quiet", 501, 0.0, status=UNFINISHED))  # censored: no token, no split
    rs.append(Result("quiet", 502, 0.0, status=UNFINISHED, ttft_s=3.0, queue_s=0.1))
    tail = phase_breakdown(rs)["tail_phases"]
    # 101 answered: p99 falls on the 1.0 s one, so the tail is it and the 3.0 s one
    assert tail["n"] == 2 and tail["ttft_ms"] == pytest.approx(2000)
    assert tail["queued_ms"] == pytest.approx(500) and tail["engine_ms"] == pytest.approx(1500)
    assert tail["dominant"] == "engine"
    assert stats.phase_band([], [], 99)["n"] == 0


def test_queue_header_parsing() -> None:
    assert queue_seconds("12.5") == pytest.approx(0.0125)
    assert queue_seconds("0.0") == 0.0
    for bad in (None, "", "soon", "nan", "-1"):
        assert queue_seconds(bad) is None


def _run(label: str, queue: float | None) -> Run:
    res, tl = [], Timeline()
    for i in range(600):
        t = i * 0.05
        tenant = "quiet" if i % 2 == 0 else "flooder"
        slow = tenant == "quiet" and i % 100 == 0
        q = None if queue is None else (queue * 40 if slow else queue)
        res.append(Result(tenant, i, t, sent_s=t, status=OK, ttft_s=1.0 if slow else 0.05,
                          e2e_s=1.5, itl_s=array("d", [0.02]), tokens_in=10, tokens_out=2,
                          queue_s=q))
        tl.add(tenant, t, 2)
    return Run(label, res, tl, [], 31.0)


def test_arm_stats_report_and_csv(tmp_path: Path) -> None:
    cfg = BenchConfig(workload=W, engine=SimEngine("fast-test", 8), arms=["direct", "vtc"],
                      out=tmp_path, duration_s=30, warmup_s=5, n_boot=50)
    runs = {"direct": [_run("direct", None)], "vtc": [_run("vtc", 0.02)]}
    arms = {arm: arm_stats(cfg, arm, rs, None)[0] for arm, rs in runs.items()}
    vtc = arms["vtc"]["tenants"]
    assert "tail_phases" not in vtc["flooder"]  # quiet tenants only
    assert vtc["quiet"]["tail_phases"]["dominant"] == "queue"
    assert vtc["quiet"]["tail_phases"]["queued_ms"] == pytest.approx(800)
    assert vtc["quiet"]["median_phases"]["dominant"] == "engine"
    assert arms["direct"]["tenants"]["quiet"]["tail_phases"]["queue_known"] is False
    md = "\n".join(report.phases_section(arms, ["quiet"]))
    assert "Where the slowest 1% of quiet requests waited" in md
    vtc_row = next(ln for ln in md.splitlines() if ln.startswith("| vtc | quiet |"))
    direct_row = next(ln for ln in md.splitlines() if ln.startswith("| direct | quiet |"))
    assert "| queue |" in vtc_row and "| 800 |" in vtc_row
    assert "engine only" in direct_row
    report.write_requests_csv(tmp_path / "requests.csv", runs)
    rows = list(csv.DictReader(open(tmp_path / "requests.csv")))
    assert {r["queue_ms"] for r in rows if r["arm"] == "direct"} == {""}
    assert float(next(r for r in rows if r["arm"] == "vtc")["queue_ms"]) == pytest.approx(800)


async def test_loadgen_records_the_queue_header() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        who = request.headers.get("Authorization", "").removeprefix("Bearer ")
        headers = {"Content-Type": "text/event-stream"}
        if who == "via":
            headers[QUEUE_HEADER] = "37.5"
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"text":"x"}]}\n\ndata: [DONE]\n\n')
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        plan = [Planned("via", 0, 0.0, 4, 1), Planned("direct", 0, 0.0, 4, 1)]
        run = await open_loop(Target(f"http://127.0.0.1:{port}", "m",
                                     {"via": "via", "direct": "direct"}),
                              plan, Prompts(0, size=4096), label="t", duration_s=0.2,
                              drain_s=1.0, progress=False)
    finally:
        await runner.cleanup()
    by = {r.tenant: r for r in run.results}
    assert by["via"].status == OK and math.isclose(by["via"].queue_s or 0, 0.0375)
    assert by["direct"].status == OK and by["direct"].queue_s is None
