"""Bootstrap intervals: they cover the true percentile, narrow with n, and are seeded."""

from __future__ import annotations

import math

import numpy as np

from infergridd.bench import stats


def test_ci_covers_true_percentiles_of_a_known_distribution() -> None:
    """Exponential(1): p50 = ln 2, p99 = ln 100.  A 95 % CI must cover them ~95 % of runs."""
    true = {"p50": math.log(2), "p99": math.log(100)}
    covered = {"p50": 0, "p99": 0}
    runs = 40
    for i in range(runs):
        x = np.random.default_rng(100 + i).exponential(1.0, 2000)
        s = stats.summarize(x, seed=i, n_boot=400, scale=1.0)
        for k, v in true.items():
            lo, hi = s["ci95"][k]
            covered[k] += lo <= v <= hi
    assert covered["p50"] >= 0.85 * runs, covered
    assert covered["p99"] >= 0.80 * runs, covered  # the bootstrap is a little narrow in tails


def test_ci_narrows_with_n() -> None:
    """(For p99, n=200 is not used: its bootstrap cannot reach past the sample maximum,
    so it is narrow *and* biased; that is what the < 100-samples flag is about.)"""
    rng = np.random.default_rng(0)
    for q, ns in (("p50", (200, 2000, 20000)), ("p90", (200, 2000, 20000)),
                  ("p99", (2000, 20000))):
        widths = []
        for n in ns:
            s = stats.summarize(rng.lognormal(0, 1, n), seed=1, n_boot=300)
            lo, hi = s["ci95"][q]
            widths.append(hi - lo)
        assert widths == sorted(widths, reverse=True), (q, widths)


def test_seeded_and_flags() -> None:
    x = np.random.default_rng(5).exponential(1.0, 50)
    a = stats.summarize(x, seed=7, n_boot=200)
    assert a == stats.summarize(x, seed=7, n_boot=200)
    assert any("p99: only 50 samples" in f for f in a["flags"])
    big = stats.summarize(np.random.default_rng(5).normal(100, 1, 5000), seed=7, n_boot=200)
    assert big["flags"] == []
    assert set(big) >= {"n", "p50", "p90", "p99", "mean", "ci95", "flags"}
    assert set(big["ci95"]) == {"p50", "p90", "p99", "mean"}
    assert stats.summarize([], seed=0)["p50"] is None


def test_ratio_of_same_distribution_covers_one() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.exponential(1.0, 3000), rng.exponential(1.0, 3000)
    r = stats.ratio(a, b, 50, seed=1, n_boot=300)
    assert r["ci95"][0] <= 1.0 <= r["ci95"][1]
    r2 = stats.ratio(a * 3, b, 50, seed=1, n_boot=300)
    assert 2.5 < r2["ratio"] < 3.5 and r2["ci95"][0] > 1.0
    few = stats.ratio(a[:40], b[:40], 99, seed=1, n_boot=100)
    assert any("< 100" in f for f in few["flags"])


def test_difference_covers_the_shift_and_flags_a_thin_p99() -> None:
    """The overhead benchmark's "added ms": a known 2 ms shift is inside the interval."""
    rng = np.random.default_rng(3)
    a, b = rng.exponential(0.005, 4000) + 0.002, rng.exponential(0.005, 4000)
    d = stats.difference(a, b, 50, seed=1, n_boot=300)
    assert d["ci95"][0] <= 2.0 <= d["ci95"][1] and d["flags"] == []
    same = stats.difference(b[:2000], b[2000:], 50, seed=1, n_boot=300)
    assert same["ci95"][0] <= 0.0 <= same["ci95"][1]
    thin = stats.difference(a[:30], b[:30], 99, seed=1, n_boot=100)
    assert any("< 100" in f for f in thin["flags"])
    assert stats.difference([], b, 50)["diff"] is None
