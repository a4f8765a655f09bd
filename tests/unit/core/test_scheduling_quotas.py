"""Quota buckets on an injected clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from infergridd.core.quotas import Bucket, Limits, Quotas


def test_bucket_refills_over_the_clock_up_to_capacity() -> None:
    b = Bucket(rate=2.0, capacity=4.0, level=0.0, stamp=0.0)
    assert b.wait_for(1, 0.0) == 0.5
    assert b.wait_for(1, 0.5) == 0.0
    b.refill(100.0)
    assert b.level == 4.0


def test_rpm_retry_after_is_the_time_to_the_next_token() -> None:
    q = Quotas()
    lim = Limits(rpm=6)  # one every 10 s, burst = 6
    for _ in range(6):
        assert q.check("r", "t", 10, lim, 0.0) is None
        q.charge("t", 10, 0.0)
    r = q.check("r", "t", 10, lim, 0.0)
    assert r is not None and r.retry_after_s == 10.0 and r.http_status == 429
    assert q.check("r", "t", 10, lim, 4.0).retry_after_s == 6.0
    assert q.check("r", "t", 10, lim, 10.0) is None


def test_unlimited_tenants_have_no_buckets_and_limits_can_change() -> None:
    q = Quotas()
    assert q.check("r", "t", 10**9, Limits(), 0.0) is None
    q.charge("t", 100, 0.0)
    assert q.export(0.0) == {}
    lim = Limits(tpm=60)
    q.check("r", "t", 30, lim, 0.0)
    q.charge("t", 60, 0.0)
    assert q.check("r", "t", 1, lim, 0.0) is not None
    assert q.check("r", "t", 1, Limits(tpm=6000), 0.0) is not None  # debt is kept
    assert q.check("r", "t", 1, Limits(), 0.0) is None  # quota removed


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(1, 500), st.floats(0, 30, allow_nan=False)),
                    max_size=30))
def test_admitted_tokens_never_exceed_capacity_plus_refill(ops: list[tuple[int, float]]) -> None:
    q, lim, now, admitted = Quotas(), Limits(tpm=600), 0.0, 0
    for tokens, dt in ops:
        now += dt
        if q.check("r", "t", tokens, lim, now) is None:
            q.charge("t", tokens, now)
            admitted += tokens
    largest = max((t for t, _ in ops), default=0)
    # a bucket of 600, 10 tokens/s, and at most one oversized request of debt
    assert admitted <= 600 + 10 * now + largest
