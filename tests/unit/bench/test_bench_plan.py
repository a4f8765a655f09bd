"""The request plan: seeded, Poisson at the right mean, and the same requests in every arm."""

from __future__ import annotations

import numpy as np

from infergridd.bench import workload
from infergridd.bench.workload import measured, plan, poisson_times

W = workload.loads("""
name: t
duration_s: 100
warmup_s: 10
tenants:
  - {name: flooder, weight: 1, flood: true, prompt: {dist: fixed, tokens: 64}}
  - {name: quiet, rate: 5, prompt: {dist: lognormal, median: 100, sigma: 0.5, min: 8, max: 400}}
  - {name: bursty, rate: 0.1, bursts: {every_s: 20, count: 7}}
""")


def test_same_seed_same_plan_other_seed_differs() -> None:
    a = plan(W, 100, seed=3, flood_rate=20)
    b = plan(W, 100, seed=3, flood_rate=20)
    c = plan(W, 100, seed=4, flood_rate=20)
    assert a == b
    assert a != c


def test_poisson_mean_rate_and_exponential_gaps() -> None:
    t = poisson_times(50.0, 400.0, np.random.default_rng(0))
    assert abs(len(t) / 400.0 - 50.0) < 50.0 * 0.03  # 20,000 arrivals: ±3 % is ~4 sigma
    gaps = np.diff(t)
    assert abs(gaps.mean() - 1 / 50) < 0.001
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential: CV = 1
    assert np.all(np.diff(t) >= 0) and t.max() < 400.0


def test_flood_rate_is_split_by_weight() -> None:
    w8 = workload.load("tenants8")
    rates = workload.flood_rates(w8, 100.0)
    assert abs(sum(rates.values()) - 100.0) < 1e-9
    assert abs(rates["t4a"] / rates["t1a"] - 4.0) < 1e-9


def test_tenant_requests_do_not_depend_on_the_others() -> None:
    """The solo arm sends exactly the quiet tenant's requests of the full plan."""
    full = plan(W, 100, seed=1, flood_rate=30)
    alone = plan(W, 100, seed=1, flood_rate=30, tenants=["quiet"])
    assert [p for p in full if p.tenant == "quiet"] == alone
    assert plan(W, 100, seed=1, flood_rate=99, tenants=["quiet"]) == alone


def test_warmup_cut_is_identical_across_arms() -> None:
    """Arms cut on the *scheduled* time, so every arm measures the same request ids."""
    full = plan(W, 100, seed=2, flood_rate=30)
    arms = {arm: {(p.tenant, p.index) for p in plan(W, 100, seed=2, flood_rate=30)
                  if measured(p, 10.0)} for arm in ("direct", "fifo", "vtc")}
    assert arms["direct"] == arms["fifo"] == arms["vtc"]
    solo = {(p.tenant, p.index) for p in plan(W, 100, 2, 30, tenants=["quiet"])
            if measured(p, 10.0)}
    assert solo == {k for k in arms["vtc"] if k[0] == "quiet"}
    assert all(p.t >= 10.0 for p in full if (p.tenant, p.index) in arms["vtc"])
    assert any(p.t < 10.0 for p in full)


def test_bursts_and_lengths() -> None:
    p = plan(W, 100, seed=0, flood_rate=10)
    bursty = [x for x in p if x.tenant == "bursty"]
    for k in (20.0, 40.0, 60.0, 80.0):
        assert sum(1 for x in bursty if x.t == k) >= 7
    quiet = [x.prompt_tokens for x in p if x.tenant == "quiet"]
    assert min(quiet) >= 8 and max(quiet) <= 400
    assert 80 < float(np.median(quiet)) < 120
    assert {x.prompt_tokens for x in p if x.tenant == "flooder"} == {64}
    assert p == sorted(p, key=lambda x: x.t)


def test_direct_runs_again_after_the_scheduled_arms() -> None:
    """``direct#2`` brackets the run, so drift over it shows beside throughput ratios."""
    from pathlib import Path

    from infergridd.bench.engines import SimEngine
    from infergridd.bench.runner import BenchConfig

    def arms(names: list[str], **kw: object) -> list[str]:
        return BenchConfig(workload=W, engine=SimEngine("fast-test", 8), arms=names,
                           out=Path("/nonexistent"), duration_s=1, warmup_s=0,
                           **kw).expanded_arms()  # type: ignore[arg-type]

    assert arms(["solo", "direct", "fifo", "vtc"]) == \
        ["solo", "solo#2", "direct", "fifo", "vtc", "direct#2"]
    assert arms(["solo", "direct"]) == ["solo", "solo#2", "direct"]
    assert arms(["direct", "vtc"], bracket_direct=False) == ["direct", "vtc"]
