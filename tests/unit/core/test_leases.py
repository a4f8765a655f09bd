"""Slot leases (core/leases.py): idle engine slots lent to front doors ahead of time.

Pure: the core driven with a fake clock.  What must hold: a lease is a taken slot
until it is used, given back or dropped; it is granted only while nothing queues
and revoked as soon as anything does or its engine stops being ready; a request
sent on a lease is charged exactly as one the scheduler dispatched at once, even
when it raced the lease's revocation or its Submit was lost.
"""

from __future__ import annotations

from test_scheduling_harness import SV, FakeClock, dispatched, engine, make_cfg, submit

from infergridd import protocol as p
from infergridd.core.core import SchedulerCore, Send
from infergridd.core.leases import QUIET_S
from infergridd.core.record import RecordState

FD = "fd-a"
FD2 = "fd-b"


def _hello(leases: int = 1, **kw: object) -> p.Hello:
    return p.Hello(role="frontdoor", instance="i", protocol_version=p.PROTOCOL_VERSION,
                   leases=leases, **kw)  # type: ignore[arg-type]


def _grants(sends: list[Send], peer: str = FD) -> list[p.LeaseInfo]:
    return [g for s in sends if s.peer == peer and isinstance(s.msg, p.Leases)
            for g in s.msg.grant]


def _revoked(sends: list[Send], peer: str = FD) -> list[str]:
    return [r for s in sends if s.peer == peer and isinstance(s.msg, p.Leases)
            for r in s.msg.revoke]


def _core(clock: FakeClock, max_num_seqs: int = 4, **cfg: object
          ) -> tuple[SchedulerCore, p.LeaseInfo]:
    core = SchedulerCore(make_cfg(**cfg), clock)  # type: ignore[arg-type]
    core.leases.prefix = "sched1"
    core.engines_update(SV, [engine("m-0", max_num_seqs=max_num_seqs)])
    grants = _grants(core.peer_hello(FD, _hello()))
    assert len(grants) == 1
    return core, grants[0]


def _leased(rid: str, lease: p.LeaseInfo, tenant: str = "a", prompt: int = 10) -> p.Submit:
    return p.Submit(request_id=rid, tenant=tenant, model="m", prompt_tokens=prompt,
                    max_tokens=10, lease_id=lease.lease_id, engine_id=lease.engine_id)


def test_a_lease_is_a_taken_slot_and_goes_only_to_a_front_door_that_asks() -> None:
    clock = FakeClock()
    core, lease = _core(clock)
    assert lease.engine_id == "m-0" and lease.endpoint == "http://127.0.0.1/m-0"
    assert lease.lease_id.startswith("sched1-")  # dies with this scheduler
    assert core.books.engine_occupied("m-0") == 1 and core.books.engine_inflight("m-0") == 0
    # a front door that does not ask gets none
    assert not _grants(core.peer_hello(FD2, _hello(leases=0)), FD2)
    # three normal dispatches fill the rest of the engine's 4 slots; the fourth waits
    sends = []
    for i in range(4):
        sends += core.submit(FD2, submit(f"r{i}", tenant="b"))
    assert dispatched(sends) == ["r0", "r1", "r2"]


def test_a_request_on_a_lease_is_charged_as_a_dispatch_and_needs_no_dispatch_message() -> None:
    clock = FakeClock()
    core, lease = _core(clock)
    ref = SchedulerCore(make_cfg(), FakeClock())
    ref.engines_update(SV, [engine("m-0")])
    ref.submit(FD, submit("r1", prompt=37))
    sends = core.submit(FD, _leased("r1", lease, prompt=37))
    assert not dispatched(sends)
    rec = core.books.get("r1")
    assert rec is not None and rec.state is RecordState.INFLIGHT and rec.engine_id == "m-0"
    assert core.policy.counter("a") == ref.policy.counter("a") > 0
    assert core.tenant_stats() == ref.tenant_stats()
    # the slot is the request's now; no fresh lease while the prefill guard holds heavy
    # tenants back for this light request's first token (a lease may serve anyone)
    assert not _grants(sends)
    assert core.books.engine_inflight("m-0") == 1 and core.books.engine_occupied("m-0") == 1
    done = p.Done(request_id="r1", prompt_tokens=40, completion_tokens=5, engine_id="m-0",
                  tenant="a", model="m", lease_id=lease.lease_id)
    sends = core.done(FD, done)
    ref.done(FD, done)
    assert core.policy.counter("a") == ref.policy.counter("a")
    assert core.tenant_stats() == ref.tenant_stats()
    assert len(_grants(sends)) == 1
    assert core.books.engine_inflight("m-0") == 0 and core.books.engine_occupied("m-0") == 1


def test_anything_queued_revokes_the_lease_and_its_slot_is_free_only_once_given_back() -> None:
    clock = FakeClock()
    core, lease = _core(clock)
    sends = []
    for i in range(4):
        sends += core.submit(FD2, submit(f"b{i}", tenant="b"))
    assert dispatched(sends) == ["b0", "b1", "b2"]  # b3 waits: the lease holds a slot
    assert _revoked(sends) == [lease.lease_id]
    clock.advance(0.1)
    assert not dispatched(core.tick())  # revoked, not yet back: still taken
    sends = core.lease_return(FD, [lease.lease_id])
    assert dispatched(sends) == ["b3"]
    assert core.leases.held("m-0") == 0
    # no new lease while anything is queued, nor in the QUIET_S after
    core.submit(FD2, submit("b4", tenant="b"))
    core.done(FD2, p.Done(request_id="b0", engine_id="m-0", tenant="b", model="m"))
    assert not _grants(core.done(FD2, p.Done(request_id="b1", engine_id="m-0", tenant="b",
                                             model="m")))
    clock.advance(QUIET_S)
    assert not _grants(core.tick())  # b's light requests hold the prefill guard
    for rid in ("b2", "b3", "b4"):
        core.progress(rid, 1)  # their first tokens
    assert len(_grants(core.after_progress())) == 1


def test_a_lease_used_while_its_revocation_was_on_the_way_still_runs_and_is_charged() -> None:
    clock = FakeClock()
    core, lease = _core(clock)
    sends = []
    for i in range(4):
        sends += core.submit(FD2, submit(f"b{i}", tenant="b"))
    assert _revoked(sends) == [lease.lease_id]
    # the front door had already used it: its Submit comes before its return
    sends = core.submit(FD, _leased("q1", lease))
    assert not dispatched(sends)  # the slot was the lease's: b3 still waits
    rec = core.books.get("q1")
    assert rec is not None and rec.state is RecordState.INFLIGHT and rec.engine_id == "m-0"
    assert core.policy.counter("a") > 0
    assert not dispatched(core.lease_return(FD, [lease.lease_id]))  # a no-op now
    assert core.books.engine_occupied("m-0") == 4
    # exactly one Done frees it and b3 goes
    sends = core.done(FD, p.Done(request_id="q1", prompt_tokens=10, completion_tokens=3,
                                 engine_id="m-0", tenant="a", model="m",
                                 lease_id=lease.lease_id))
    assert dispatched(sends) == ["b3"]
    assert core.books.engine_occupied("m-0") == 4 and core.books.engine_inflight("m-0") == 4


def test_a_lease_revoked_and_given_back_can_still_be_used_late_without_losing_the_request() -> None:
    """A lease the scheduler dropped (its front door said Hello) used anyway: the request
    is booked on the engine it went to, so its Done frees a slot that exists."""
    clock = FakeClock()
    core, lease = _core(clock)
    core.peer_hello(FD, _hello(leases=0))  # its leases dropped
    assert core.books.engine_occupied("m-0") == 0
    core.submit(FD, _leased("q1", lease))
    assert core.books.engine_inflight("m-0") == 1
    core.done(FD, p.Done(request_id="q1", prompt_tokens=10, engine_id="m-0", tenant="a",
                         model="m", lease_id=lease.lease_id))
    assert core.books.engine_inflight("m-0") == 0


def test_an_engine_a_front_door_found_dead_loses_its_lease_to_a_live_replica() -> None:
    clock = FakeClock()
    core = SchedulerCore(make_cfg(), clock)
    core.leases.prefix = "s"
    core.engines_update(SV, [engine("m-0", pid=10, generation=1),
                             engine("m-1", pid=11, generation=1)])
    lease = _grants(core.peer_hello(FD, _hello()))[0]
    assert lease.engine_id == "m-0"
    sends = core.done(FD2, p.Done(request_id="x", outcome=p.Outcome.ENGINE_ERROR,
                                  engine_id="m-0", engine_failed=True))
    assert _revoked(sends) == [lease.lease_id]
    assert [g.engine_id for g in _grants(sends)] == ["m-1"]


def test_a_suspected_engine_revokes_the_lease_on_it() -> None:
    clock = FakeClock()
    core, lease = _core(clock)
    sends = core.done(FD, p.Done(request_id="gone", outcome=p.Outcome.ENGINE_ERROR,
                                 engine_id="m-0", engine_failed=True))
    assert _revoked(sends) == [lease.lease_id]
    assert not _grants(sends)
    # not answered: sent again after a while
    clock.advance(2.0)
    assert _revoked(core.tick()) == [lease.lease_id]
    core.lease_return(FD, [lease.lease_id])
    assert core.leases.held("m-0") == 0


def test_an_engine_leaving_ready_or_a_model_put_to_sleep_revokes() -> None:
    clock = FakeClock()
    core, lease = _core(clock)
    sends = core.engines_update(SV, [engine("m-0", state=p.EngineState.DRAINING)])
    assert _revoked(sends) == [lease.lease_id]
    clock2 = FakeClock()
    core2, lease2 = _core(clock2, models=[{"name": "m", "max_num_seqs": 4}])
    sends = core2.model_down("m", "sleep")
    assert _revoked(sends) == [lease2.lease_id]
    # the sleep waits for the slot to come back
    assert not [s for s in sends if isinstance(s.msg, p.EngineCommand)]
    sends = core2.lease_return(FD, [lease2.lease_id])
    assert [s.msg.action for s in sends if isinstance(s.msg, p.EngineCommand)] == ["stop"]


def test_a_silent_front_door_or_its_next_hello_frees_its_leases() -> None:
    clock = FakeClock()
    core, lease = _core(clock)
    core.peer_gone(FD)
    assert core.books.engine_occupied("m-0") == 0
    sends = core.peer_hello(FD, _hello())
    assert len(_grants(sends)) == 1 and core.books.engine_occupied("m-0") == 1
    core.peer_hello(FD, _hello())  # a second Hello: the old lease is gone, one new one
    assert core.leases.held("m-0") == 1


def test_a_busy_front_door_that_wants_none_gets_none_and_its_slot_is_free() -> None:
    """``Leases.wants``: a front door too busy to use leases gives its back and asks for
    none; its slot goes to the scheduler's own dispatches, and nothing is granted to it
    until it asks again."""
    clock = FakeClock()
    core, lease = _core(clock)
    sends = core.lease_return(FD, [lease.lease_id], wants=0)
    assert not _grants(sends) and core.books.engine_occupied("m-0") == 0
    clock.advance(5.0)
    assert not _grants(core.lease_return(FD, [], wants=-1))  # -1: as it was (none)
    sends = []
    for i in range(4):  # all four slots are the scheduler's again
        sends += core.submit(FD2, submit(f"r{i}", tenant="b"))
    assert dispatched(sends) == ["r0", "r1", "r2", "r3"]
    for i in range(4):
        core.done(FD2, p.Done(request_id=f"r{i}", outcome=p.Outcome.OK, engine_id="m-0"))
    clock.advance(QUIET_S)
    sends = core.lease_return(FD, [], wants=1)  # quiet again
    assert len(_grants(sends)) == 1 and core.books.engine_occupied("m-0") == 1


def test_a_done_whose_leased_submit_was_lost_frees_the_lease_and_charges_the_prompt() -> None:
    clock = FakeClock()
    core, lease = _core(clock)
    sends = core.done(FD, p.Done(request_id="lost", prompt_tokens=50, completion_tokens=7,
                                 engine_id="m-0", tenant="a", model="m",
                                 lease_id=lease.lease_id))
    assert core.leases.held("m-0") == 1  # the old one freed, a new one granted
    assert _grants(sends)[0].lease_id != lease.lease_id
    ref = SchedulerCore(make_cfg(), FakeClock())
    ref.engines_update(SV, [engine("m-0")])
    ref.submit(FD, submit("lost", prompt=50))
    ref.done(FD, p.Done(request_id="lost", prompt_tokens=50, completion_tokens=7,
                        engine_id="m-0", tenant="a", model="m"))
    assert core.policy.counter("a") == ref.policy.counter("a") > 0


def test_a_hello_listing_a_leased_request_charges_it_never_zero_times() -> None:
    """A scheduler restart: the new one never saw the Submit (maybe nobody did)."""
    clock = FakeClock()
    core = SchedulerCore(make_cfg(), clock)
    core.engines_update(SV, [engine("m-0")])
    inflight = p.InflightRecord(request_id="q", tenant="a", model="m", engine_id="m-0",
                                prompt_tokens=30, max_tokens=10, completion_tokens=4,
                                lease_id="old-1")
    core.peer_hello(FD, _hello(inflight=[inflight]))
    plain = SchedulerCore(make_cfg(), FakeClock())
    plain.engines_update(SV, [engine("m-0")])
    plain.peer_hello(FD, _hello(inflight=[msgspec_replace(inflight, lease_id="")]))
    assert plain.policy.counter("a") == 0  # charged by the scheduler that dispatched it
    ref = SchedulerCore(make_cfg(), FakeClock())
    ref.engines_update(SV, [engine("m-0")])
    ref.submit(FD, submit("q", prompt=30))
    ref.progress("q", 4)
    assert core.policy.counter("a") == ref.policy.counter("a") > 0  # prompt and output


def test_a_hello_with_the_undelivered_done_of_a_leased_request_charges_its_prompt() -> None:
    clock = FakeClock()
    core = SchedulerCore(make_cfg(), clock)
    core.engines_update(SV, [engine("m-0")])
    done = p.Done(request_id="q", prompt_tokens=30, completion_tokens=4, engine_id="m-0",
                  tenant="a", model="m", seq=1, lease_id="old-1")
    core.peer_hello(FD, _hello(undelivered_done=[done]))
    ref = SchedulerCore(make_cfg(), FakeClock())
    ref.engines_update(SV, [engine("m-0")])
    ref.submit(FD, submit("q", prompt=30))
    ref.done(FD, msgspec_replace(done, lease_id=""))
    assert core.policy.counter("a") == ref.policy.counter("a") > 0


def msgspec_replace(r, **kw: object):  # noqa: ANN001, ANN201
    import msgspec
    return msgspec.structs.replace(r, **kw)


def test_a_leased_request_of_a_tenant_over_its_quota_runs_and_is_charged_into_debt() -> None:
    """The front door uses leases only for tenants without quotas; one that got a quota
    meanwhile is charged anyway (the request is running)."""
    clock = FakeClock()
    core, lease = _core(clock, tenants=[{"name": "a", "tpm": 100}, {"name": "b"}])
    core.submit(FD2, submit("big", tenant="a", prompt=60, out=30))
    core.submit(FD, _leased("over", lease, prompt=60))
    rec = core.books.get("over")
    assert rec is not None and rec.state is RecordState.INFLIGHT and rec.quota_tokens == 70
    assert core.quotas.levels("a", clock())["tokens"] < 0


def test_no_lease_where_the_reserve_is_for_light_tenants() -> None:
    """Leases go only where even a heavy tenant could be dispatched at once: not into
    the slots the headroom reserve keeps for light tenants."""
    for reserve, granted in ((1, 0), (0, 1)):
        clock = FakeClock()
        core = SchedulerCore(make_cfg(light_reserve=reserve, prefill_guard=False), clock)
        core.leases.prefix = "s"
        core.engines_update(SV, [engine("m-0", max_num_seqs=8)])
        core.submit(FD2, submit("q", tenant="b"))  # b is around, light
        for i in range(6):
            core.submit(FD2, submit(f"a{i}", tenant="a"))  # a past its share: heavy
        assert core.books.engine_occupied("m-0") == 7 and not core.books.model_queued("m")
        assert len(_grants(core.peer_hello(FD, _hello()))) == granted


def test_leases_hold_at_most_a_quarter_of_an_engine() -> None:
    clock = FakeClock()
    core = SchedulerCore(make_cfg(), clock)
    core.leases.prefix = "s"
    core.engines_update(SV, [engine("m-0", max_num_seqs=8)])
    granted = [len(_grants(core.peer_hello(f"fd-{i}", _hello()), f"fd-{i}")) for i in range(4)]
    assert granted == [1, 1, 0, 0] and core.books.engine_occupied("m-0") == 2


def test_a_lease_names_the_tenants_heavy_when_it_was_granted() -> None:
    clock = FakeClock()
    core = SchedulerCore(make_cfg(prefill_guard=False), clock)
    core.leases.prefix = "s"
    core.engines_update(SV, [engine("m-0", max_num_seqs=16)])
    core.submit(FD2, submit("q", tenant="b"))  # b is around, light
    for i in range(9):
        core.submit(FD2, submit(f"a{i}", tenant="a"))  # a past its share (8 of 16): heavy
    grants = _grants(core.peer_hello(FD, _hello()))
    assert [g.heavy for g in grants] == [["a"]]


def test_a_lease_names_a_tier_a_light_request_can_preempt_on_its_engine() -> None:
    """Not light (a flooder's first requests may come on leases, one per front door,
    unknown to the scheduler's dispatches racing them): neutral where InferGrid's vLLM
    step policy preempts any tier but light, heavy on SGLang-style engines, whose
    threshold 1 preempts only for a priority better by more than one tier."""
    for sign, tier in ((1, 1), (-1, 2)):
        core = SchedulerCore(make_cfg(), FakeClock())  # type: ignore[arg-type]
        core.engines_update(SV, [engine("m-0", supports_priority=True, priority_sign=sign)])
        grants = _grants(core.peer_hello(FD, _hello()))
        assert len(grants) == 1 and (grants[0].priority_sign, grants[0].tier) == (sign, tier)
