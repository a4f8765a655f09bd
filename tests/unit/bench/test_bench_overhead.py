"""``bench/overhead.py``'s statistics and table, from synthetic results (no processes)."""

from __future__ import annotations

import importlib.util
from array import array
from pathlib import Path

import numpy as np

from infergridd.bench.loadgen import OK, Result

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "overhead.py"


def _load():  # noqa: ANN202 - the script as a module
    spec = importlib.util.spec_from_file_location("bench_overhead", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(ttft_s: float, n: int, rng: np.random.Generator) -> list[Result]:
    return [Result("bench", i, 1.0, sent_s=1.5, status=OK,
                   ttft_s=ttft_s + float(rng.exponential(0.0005)),
                   itl_s=array("d", rng.normal(0.002, 0.0001, 8).tolist()))
            for i in range(n)]


def test_added_latency_and_table() -> None:
    ov = _load()
    rng = np.random.default_rng(0)
    res = {"direct": _results(0.004, 300, rng), "infergrid": _results(0.005, 300, rng)}
    t = ov.latency_stats(res, seed=1, n_boot=200)
    added = t["ttft"]["added_p50_ms"]
    assert added["ci95"][0] <= 1.0 <= added["ci95"][1]
    itl = t["itl"]["added_p50_ms"]
    assert abs(itl["diff"]) < 0.02  # same ITL distribution on both paths
    assert t["n_direct"] == t["n_infergrid"] == 300
    md = ov.table({"1": t})
    assert md.count("\n") == 3 and "| 1 | ttft |" in md and "| 1 | itl |" in md
    empty = ov.latency_stats({"direct": [], "infergrid": []}, seed=1, n_boot=50)
    assert "| 64 | ttft | – |" in ov.table({"64": empty})
