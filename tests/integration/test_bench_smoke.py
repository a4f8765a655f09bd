"""``infergrid bench`` end to end on the fast simulated engine: the files and their shape.

A few seconds per arm: this checks the harness (processes, arms, outputs), not
any fairness claim (``test_hero.py`` does that).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ARMS = ["solo", "solo#2", "direct", "vtc", "direct#2"]  # direct again: the drift bracket


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "infergridd.cli.infergrid", "bench", "--workload", "hero-dense",
         "--engine", "sim:fast-test", "--arms", "solo,direct,vtc", "--duration", "4",
         "--warmup", "1", "--drain", "3", "--scale", "40", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["arms"]) == ARMS
    assert {"workload", "engine", "capacity", "args", "pinning", "ratios"} <= set(res)
    for arm in ARMS:
        a = res["arms"][arm]
        assert a["throughput_tok_s"] > 0 and "saturation" in a
        q = a["tenants"]["quiet"]
        for m in ("ttft_ms", "itl_ms", "e2e_ms"):
            assert {"p50", "p90", "p99", "mean", "ci95"} <= set(q[m]), (arm, m)
            assert q[m]["p50"] is not None, (arm, m)
        for k in ("ok", "rejected", "failed", "tokens_in", "tokens_out"):
            assert isinstance(q[k], int)
        assert q["ok"] > 0 and q["failed"] == 0
    assert set(res["arms"]["vtc"]["tenants"]) == {"quiet", "flooder"}
    assert "flooder" not in res["arms"]["solo"]["tenants"]
    assert res["arms"]["vtc"]["tenants"]["flooder"]["rejected"] == 0
    assert res["flood_rate_rps"] == 40.0
    # every arm measured the same quiet requests (same plan, same warm-up cut)
    n = {arm: res["arms"][arm]["tenants"]["quiet"]["requests"] for arm in ARMS}
    assert len(set(n.values())) == 1, n
    assert set(res["ratios"]) == {"solo#2", "direct", "vtc", "direct#2"}
    assert res["ratios"]["vtc"]["quiet"]["ttft_p99"]["ratio"] > 0
    md = (out / "report.md").read_text()
    assert "| vtc |" in md and "| direct |" in md
    for png in ("ttft_cdf.png", "throughput.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "requests.csv").read_text().count("\n") > 10
