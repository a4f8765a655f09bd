"""results.json / report.md shape, from synthetic runs (no processes)."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

from infergridd.bench import report, workload
from infergridd.bench.engines import SimEngine
from infergridd.bench.loadgen import OK, REJECTED, UNFINISHED, Result, Run, Timeline
from infergridd.bench.runner import BenchConfig, arm_stats, ratios

W = workload.load("hero")


def _run(label: str, quiet_ttft: float, rejected: int = 0) -> Run:
    res, tl = [], Timeline()
    for i in range(300):
        t = i * 0.1
        tenant = "quiet" if i % 3 == 0 else "flooder"
        r = Result(tenant, i, t, sent_s=t + 0.001, status=OK,
                   ttft_s=quiet_ttft * (1 + (i % 7) / 10) if tenant == "quiet" else 0.5,
                   e2e_s=1.0, itl_s=array("d", [0.02, 0.021]), tokens_in=100, tokens_out=3)
        if tenant == "flooder" and 200 <= i < 200 + 3 * rejected:
            r.status, r.ttft_s = REJECTED, None
        res.append(r)
        tl.add(tenant, t, 3)
    res.append(Result("quiet", 999, 29.0, sent_s=29.0, status=UNFINISHED))
    return Run(label, res, tl, [{"t": 5.0, "engine:vllm:num_requests_waiting": 4.0}], 31.0)


def test_results_and_report_shape(tmp_path: Path) -> None:
    cfg = BenchConfig(workload=W, engine=SimEngine("fast-test", 8), arms=["solo", "direct", "vtc"],
                      out=tmp_path, duration_s=30, warmup_s=5, n_boot=100)
    arms, ttfts = {}, {}
    for arm, q in (("solo", 0.01), ("solo#2", 0.011), ("direct", 1.0), ("vtc", 0.012)):
        runs = [_run(arm, q)] if arm != "vtc" else [_run(arm, q, rejected=2)]
        arms[arm], ttfts[arm] = arm_stats(cfg, arm, runs, None)
    res = {"arms": arms, "workload": {"name": "hero", "description": "", "planned_requests": 1,
                                      "measured_requests": 1,
                                      "tenants": [{"name": "flooder", "flood": True, "weight": 1,
                                                   "rate": 0},
                                                  {"name": "quiet", "flood": False, "weight": 1,
                                                   "rate": 1}]},
           "engine": cfg.engine.describe(), "capacity": None, "flood_rate_rps": 10.0,
           "args": {"arms": cfg.expanded_arms(), "duration_s": 30, "warmup_s": 5, "seed": 0,
                    "scale": "auto", "flood_multiple": 1.5, "drain_s": 6},
           "pinning": cfg.engine.pinning(), "ratios": ratios(cfg, ttfts)}
    report.write_json(tmp_path / "results.json", res)
    back = json.loads((tmp_path / "results.json").read_text())
    q = back["arms"]["vtc"]["tenants"]["quiet"]
    for m in ("ttft_ms", "itl_ms", "e2e_ms"):
        assert set(q[m]) >= {"p50", "p90", "p99", "mean", "ci95"}
    for k in ("ok", "rejected", "failed", "tokens_in", "tokens_out"):
        assert isinstance(q[k], int)
    assert q["unfinished"] == 1 and q["ttft_censored"] == 1
    assert back["arms"]["vtc"]["tenants"]["flooder"]["rejected"] == 4
    assert back["arms"]["direct"]["throughput_tok_s"] > 0
    assert "saturation" in back["arms"]["direct"]
    assert {"workload", "engine", "capacity", "args", "pinning", "ratios"} <= set(back)
    r = back["ratios"]["direct"]["quiet"]["ttft_p50"]
    assert r["ratio"] > 50 and len(r["ci95"]) == 2
    assert set(back["ratios"]) == {"solo#2", "direct", "vtc"}
    # the measured set starts at warm-up (t >= 5 s): 250 requests of the 300 + 1 unfinished
    assert sum(t["requests"] for t in back["arms"]["vtc"]["tenants"].values()) == 251
    md = report.render(back)
    assert "| vtc |" in md and "p99 / solo" in md and "Notes on the intervals" in md
