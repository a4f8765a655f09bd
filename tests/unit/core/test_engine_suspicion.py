"""A front door that finds an engine dead says so (``Done.engine_failed``); the
scheduler sends that engine nothing more until its supervisor vouches for it again.

Found by the hour-long chaos run: the supervisor SIGKILLed, then its engine; with
nobody to report the death, a request arriving 3.6 s later and its one retry were
both dispatched to the dead engine (502).  Now the retry goes to a live replica, or
waits for the supervisor's report when there is none.
"""

from __future__ import annotations

from test_scheduling_harness import SV, FakeClock, engine, make_cfg, submit

from infergridd import protocol as p
from infergridd.core.core import SchedulerCore
from infergridd.core.engine_table import SUSPECT_HOLD_S


def _engine_of(sends: list, rid: str) -> str:
    return next(s.msg.engine_id for s in sends
                if isinstance(s.msg, p.Dispatch) and s.msg.request_id == rid)


def _core(clock: FakeClock, *engines: p.EngineStatus) -> SchedulerCore:
    core = SchedulerCore(make_cfg(), clock)
    core.engines_update(SV, list(engines))
    return core


FD = "fd-test"


def test_the_retry_goes_to_another_replica_not_the_dead_engine() -> None:
    clock = FakeClock()
    core = _core(clock, engine("m-0", pid=10, generation=1), engine("m-1", pid=11, generation=1))
    first = _engine_of(core.submit(FD, submit("r1")), "r1")
    core.done(FD, p.Done(request_id="r1", outcome=p.Outcome.ENGINE_ERROR, engine_id=first,
                         engine_failed=True))
    for i in range(4):  # every request after it, the retry first, avoids the dead one
        rid = f"retry{i}"
        assert _engine_of(core.submit(FD, submit(rid)), rid) != first


def test_with_no_other_engine_requests_wait_for_the_supervisors_word() -> None:
    clock = FakeClock()
    core = _core(clock, engine("m-0", pid=10, generation=1))
    assert _engine_of(core.submit(FD, submit("r1")), "r1") == "m-0"
    core.done(FD, p.Done(request_id="r1", outcome=p.Outcome.ENGINE_ERROR, engine_id="m-0",
                         engine_failed=True))
    clock.advance(5)  # the supervisor is down: no report at all
    assert not [s for s in core.submit(FD, submit("r2")) if isinstance(s.msg, p.Dispatch)]
    # its successor reports the engine restarted: r2 goes at once
    sends = core.engines_update(SV, [engine("m-0", pid=20, generation=2)])
    assert _engine_of(sends, "r2") == "m-0"


def test_a_live_supervisor_vouching_for_it_clears_the_suspicion_after_a_hold() -> None:
    """The connection failed, not the engine: the supervisor keeps calling it ready."""
    clock = FakeClock()
    core = _core(clock, engine("m-0", pid=10, generation=1))
    core.submit(FD, submit("r1"))
    core.done(FD, p.Done(request_id="r1", outcome=p.Outcome.ENGINE_ERROR, engine_id="m-0",
                         engine_failed=True))
    clock.advance(SUSPECT_HOLD_S / 4)
    assert not [s for s in core.engines_update(SV, [engine("m-0", pid=10, generation=1)])
                if isinstance(s.msg, p.Dispatch)]
    assert not [s for s in core.submit(FD, submit("r2")) if isinstance(s.msg, p.Dispatch)]
    clock.advance(SUSPECT_HOLD_S)
    assert _engine_of(core.engines_update(SV, [engine("m-0", pid=10, generation=1)]), "r2") == "m-0"


def test_an_engine_that_answered_an_error_is_not_suspected() -> None:
    clock = FakeClock()
    core = _core(clock, engine("m-0", pid=10, generation=1))
    core.submit(FD, submit("r1"))
    core.done(FD, p.Done(request_id="r1", outcome=p.Outcome.ENGINE_ERROR, engine_id="m-0"))
    assert _engine_of(core.submit(FD, submit("r2")), "r2") == "m-0"


def test_the_flag_costs_nothing_on_the_wire_when_unset() -> None:
    plain = p.encode(p.Done(request_id="r", outcome=p.Outcome.OK))
    assert b"engine_failed" not in plain
    assert p.decode(p.encode(p.Done(request_id="r", engine_failed=True))).engine_failed
