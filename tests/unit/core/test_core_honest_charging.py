"""Quotas and fairness charge what the engine really did (issue 14, item 1).

The engine's reported usage settles the tenant's ``tpm`` bucket and its fairness
counter both ways: an overestimate is refunded, an underestimate is debited, into
debt if need be; a cancelled or crashed request keeps what the engine did.
"""

from __future__ import annotations

from test_scheduling_harness import (
    FD,
    SV,
    FakeClock,
    dispatched,
    engine,
    make_cfg,
    rejected,
    submit,
)

from infergridd import protocol as p
from infergridd.core.core import SchedulerCore


def _core(tpm: float = 600, clock: FakeClock | None = None, **sched: object) -> SchedulerCore:
    core = SchedulerCore(make_cfg(tenants=[{"name": "a", "tpm": tpm}, {"name": "b"}], **sched),
                         clock or FakeClock())
    core.engines_update(SV, [engine(max_num_seqs=100)])
    return core


def _level(core: SchedulerCore, tenant: str = "a") -> float:
    return core.quotas.levels(tenant, core.clock())["tokens"]


def _tokens(core: SchedulerCore, tenant: str = "a") -> tuple[int, int]:
    s = {t.name: t for t in core.tenant_stats()}[tenant]
    return s.tokens_in, s.tokens_out


def test_a_tenant_whose_prompts_the_estimate_missed_is_refused_once_its_bucket_is_spent() -> None:
    """The issue's reproduction, in the core: ``tpm: 600``, 100 requests whose estimate
    says 5 prompt tokens while the engine counts 100,000 each.  Before the fix the
    negative correction was dropped and ~30 went through at once; now the first one's
    real usage puts the bucket 99,000 tokens in debt and the other 99 get 429."""
    clock = FakeClock()
    core = _core(clock=clock)
    admitted = refused = 0
    for i in range(100):
        sends = core.submit(FD, submit(f"r{i}", prompt=5, out=16))
        if dispatched(sends):
            admitted += 1
            core.done(FD, p.Done(request_id=f"r{i}", prompt_tokens=100_000,
                                 completion_tokens=16))
        else:
            [r] = rejected(sends)
            assert (r.http_status, r.code) == (429, "rate_limit_exceeded")
            assert r.retry_after_s is not None and r.retry_after_s > 60
            refused += 1
        clock.advance(0.1)
    assert (admitted, refused) == (1, 99)
    assert _level(core) < -99_000
    assert _tokens(core) == (100_000, 16)


def test_an_overestimate_is_refunded_and_an_underestimate_debited() -> None:
    core = _core(tpm=6000)
    assert dispatched(core.submit(FD, submit("over", prompt=1000, out=100)))
    assert _level(core) == 6000 - 1100
    core.done(FD, p.Done(request_id="over", prompt_tokens=10, completion_tokens=5))
    assert _level(core) == 6000 - 15  # 1,085 back
    assert dispatched(core.submit(FD, submit("under", prompt=10, out=10)))
    core.done(FD, p.Done(request_id="under", prompt_tokens=3000, completion_tokens=10))
    assert _level(core) == 6000 - 15 - 3010  # 2,990 more taken


def test_the_fairness_counter_is_corrected_to_the_engines_count_both_ways() -> None:
    def counter(estimate: int, used: int) -> float:
        core = _core(tpm=0)
        assert dispatched(core.submit(FD, submit("r", prompt=estimate, out=10)))
        core.done(FD, p.Done(request_id="r", prompt_tokens=used, completion_tokens=10))
        return core.policy.counter("a")

    # the same real usage costs the same, whatever the estimate said
    assert counter(5, 100_000) == counter(100_000, 100_000) == counter(400_000, 100_000)
    assert counter(5, 100_000) > 1000 * counter(5, 5)


def test_a_cancelled_stream_keeps_the_prompt_and_what_streamed() -> None:
    core = _core(tpm=6000)
    assert dispatched(core.submit(FD, submit("c", prompt=200, out=500)))
    core.progress("c", 40)
    # the engine was cut off before its usage: the front door says nothing it knows
    core.done(FD, p.Done(request_id="c", outcome=p.Outcome.CANCELLED))
    assert _tokens(core) == (200, 40)
    assert _level(core) == 6000 - 240


def test_a_request_the_engine_took_then_crashed_on_is_charged_its_prompt() -> None:
    """The front door reports the prompt estimate for a request the engine accepted and
    then failed on (``relay.py``); only one that never reached an engine is free."""
    core = _core(tpm=6000)
    assert dispatched(core.submit(FD, submit("crash", prompt=300, out=100)))
    core.done(FD, p.Done(request_id="crash", outcome=p.Outcome.ENGINE_ERROR, prompt_tokens=300))
    assert _tokens(core) == (300, 0) and _level(core) == 6000 - 300
    assert dispatched(core.submit(FD, submit("refused", prompt=300, out=100)))
    core.done(FD, p.Done(request_id="refused", outcome=p.Outcome.ENGINE_ERROR))
    assert _tokens(core) == (300, 0) and _level(core) == 6000 - 300  # all of it back


def test_a_lost_requests_late_done_settles_the_bucket_both_ways() -> None:
    core = _core(tpm=6000)
    assert dispatched(core.submit(FD, submit("l", prompt=10, out=10)))
    core.peer_gone(FD)  # the front door went silent: the reservation stays charged
    assert _level(core) == 6000 - 20
    core.done(FD, p.Done(request_id="l", prompt_tokens=2000, completion_tokens=10))
    assert _level(core) == 6000 - 2010
    assert _tokens(core) == (2000, 10)


def test_a_request_adopted_after_a_scheduler_restart_is_not_charged_twice() -> None:
    """Its reservation is in the restored bucket (the state file); the new core made none,
    so its Done must not debit the whole usage a second time."""
    clock = FakeClock()
    first = _core(tpm=6000, clock=clock)
    assert dispatched(first.submit(FD, submit("r", prompt=100, out=100)))
    state = first.export_state()
    again = _core(tpm=6000, clock=clock)
    again.import_state(state)
    assert _level(again) == 6000 - 200
    again.peer_hello(FD, p.Hello(
        role="frontdoor", instance="i", protocol_version=p.PROTOCOL_VERSION,
        inflight=[p.InflightRecord(request_id="r", tenant="a", model="m", engine_id="m-0",
                                   prompt_tokens=100, max_tokens=100)]))
    again.done(FD, p.Done(request_id="r", prompt_tokens=150, completion_tokens=50))
    assert _level(again) == 6000 - 200
    assert _tokens(again) == (150, 50)
