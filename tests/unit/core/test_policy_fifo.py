"""The comparison policies: ``fifo`` order and ``token_bucket`` admission."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduling_harness import FD, FakeClock, dispatched, engine, make_cfg, rejected, submit

from infergridd import protocol as p
from infergridd.core.core import SchedulerCore


def test_fifo_dispatches_in_submit_order_across_tenants() -> None:
    core = SchedulerCore(make_cfg(policy="fifo"), FakeClock())
    order = [("r1", "a", 5.0), ("r2", "b", 1.0), ("r3", "a", 3.0), ("r4", "b", 3.0)]
    for rid, tenant, at in order:
        core.submit(FD, submit(rid, tenant, prompt=1000 if tenant == "a" else 1, at=at))
    sends = core.engines_update("sv", [engine(max_num_seqs=4)])
    # by submitted_at, then arrival: r3 came before r4 at the same timestamp
    assert dispatched(sends) == ["r2", "r3", "r4", "r1"]
    assert core.policy.counter("a") == 0.0


@settings(max_examples=30, deadline=None)
@given(ts=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=30),
       slots=st.integers(1, 3))
def test_fifo_order_is_total_and_stable(ts: list[float], slots: int) -> None:
    core = SchedulerCore(make_cfg(policy="fifo"), FakeClock())
    for i, at in enumerate(ts):
        core.submit(FD, submit(f"r{i}", "ab"[i % 2], at=at))
    out = dispatched(core.engines_update("sv", [engine(max_num_seqs=slots)]))
    running = list(out)
    while running:
        new = dispatched(core.done(FD, p.Done(request_id=running.pop(0))))
        running += new
        out += new
    expect = [f"r{i}" for i, _ in sorted(enumerate(ts), key=lambda x: (x[1], x[0]))]
    assert out == expect


def test_fifo_bands_are_strict() -> None:
    cfg = make_cfg(policy="fifo", tenants=[{"name": "a", "band": 1}, {"name": "b"}])
    core = SchedulerCore(cfg, FakeClock())
    core.submit(FD, submit("a1", "a", at=1))
    core.submit(FD, submit("b1", "b", at=2))
    assert dispatched(core.engines_update("sv", [engine(max_num_seqs=1)])) == ["b1"]


def test_token_bucket_rejects_beyond_rate_and_refills() -> None:
    clock = FakeClock()
    core = SchedulerCore(make_cfg(policy="token_bucket",
                                  token_bucket={"rate_per_s": 2, "burst": 3}), clock)
    core.engines_update("sv", [engine(max_num_seqs=100)])
    out = [core.submit(FD, submit(f"r{i}", "a")) for i in range(5)]
    assert [len(dispatched(o)) for o in out] == [1, 1, 1, 0, 0]
    rej = rejected(out[3])[0]
    assert (rej.http_status, rej.code, rej.retry_after_s) == (429, "rate_limit_exceeded", 1.0)
    # another tenant is not affected by "a"'s bucket, even with the engine busy
    assert dispatched(core.submit(FD, submit("b1", "b")))
    clock.advance(0.5)  # one token back
    assert dispatched(core.submit(FD, submit("r5", "a")))
    assert rejected(core.submit(FD, submit("r6", "a")))
    stats = {t.name: t for t in core.tenant_stats()}
    assert stats["a"].rejected == {"rate_limit_exceeded": 3}


def test_token_bucket_levels_survive_export() -> None:
    clock = FakeClock()
    cfg = make_cfg(policy="token_bucket", token_bucket={"rate_per_s": 1, "burst": 2})
    core = SchedulerCore(cfg, clock)
    core.submit(FD, submit("r1", "a"))
    core.submit(FD, submit("r2", "a"))
    state = core.export_state()
    again = SchedulerCore(cfg, clock)
    again.import_state(state)
    assert rejected(again.submit(FD, submit("r3", "a")))
