"""The per-engine dispatch window, fed synthetic status sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduling_harness import FD, SV, FakeClock, dispatched, engine, make_cfg, submit

from infergridd import protocol as p
from infergridd.core.capacity import DispatchWindow
from infergridd.core.core import SchedulerCore


def report(running: int = 0, waiting: int = 0, kv: float = 0.0, seqs: int = 8,
           generation: int = 0) -> p.EngineStatus:
    return engine(max_num_seqs=seqs, num_running=running, num_waiting=waiting, kv_usage=kv,
                  generation=generation)


def test_cap_starts_at_max_num_seqs_or_the_configured_value() -> None:
    w = DispatchWindow(8, 0.9)
    w.observe(report(seqs=6), 0, fallback_max_seqs=99)
    assert w.cap == 6 and w.has_room(5) and not w.has_room(6)
    w = DispatchWindow(0, 0.9)
    w.observe(report(seqs=0), 0, fallback_max_seqs=3)
    assert w.cap == 3


def test_waiting_pauses_dispatch_but_never_shrinks_the_cap() -> None:
    # fresh arrivals and chunked prefills show as "waiting" while the engine is far
    # from full: shrinking on that once collapsed the window to 15 of 64 slots
    w = DispatchWindow(8, 0.9)
    w.observe(report(running=5, waiting=3), 8, 8)
    assert w.cap == 8
    assert not w.has_room(8)
    assert w.has_room(7)  # one finished since it was seen waiting: its slot is free again


def test_kv_pressure_shrinks_to_what_the_engine_runs_once_per_level() -> None:
    w = DispatchWindow(8, 0.9)
    w.observe(report(running=5, waiting=3, kv=0.95), 8, 8)
    assert w.cap == 5
    w.observe(report(running=5, waiting=3, kv=0.95), 8, 8)  # same news: no further shrink
    assert w.cap == 5
    assert not w.has_room(7)
    assert w.has_room(4)


def test_kv_over_threshold_shrinks_and_blocks() -> None:
    w = DispatchWindow(8, 0.9)
    w.observe(report(running=6, kv=0.95), 6, 8)
    assert w.cap == 5 and not w.has_room(5) and w.has_room(4)


def test_waiting_with_nothing_of_ours_in_flight_blocks_until_it_clears() -> None:
    w = DispatchWindow(4, 0.9)
    w.observe(report(running=4, waiting=2), 0, 4)
    assert not w.has_room(0)
    w.observe(report(running=2), 0, 4)
    assert w.has_room(0)


def test_grows_back_slowly_when_running_full_without_pressure() -> None:
    w = DispatchWindow(8, 0.9, grow_after=3)
    w.observe(report(running=4, waiting=1, kv=0.95), 5, 8)
    assert w.cap == 4
    for _ in range(2):
        w.observe(report(running=4), 4, 8)
    assert w.cap == 4
    w.observe(report(running=4), 4, 8)
    assert w.cap == 5
    w.observe(report(running=2), 2, 8)  # not full: no evidence it could take more
    w.observe(report(running=2), 2, 8)
    w.observe(report(running=2), 2, 8)
    assert w.cap == 5


def test_a_restarted_engine_starts_from_max_again() -> None:
    w = DispatchWindow(8, 0.9)
    w.observe(report(running=2, waiting=4, kv=0.97), 6, 8)
    assert w.cap == 2
    w.observe(report(generation=1), 0, 8)
    assert w.cap == 8


@settings(max_examples=50, deadline=None)
@given(seq=st.lists(st.tuples(st.integers(0, 10), st.integers(0, 5),
                              st.floats(0, 1, allow_nan=False), st.integers(0, 12)),
                    max_size=40))
def test_cap_stays_within_one_and_max(seq: list[tuple[int, int, float, int]]) -> None:
    w = DispatchWindow(6, 0.9, grow_after=2)
    for running, waiting, kv, inflight in seq:
        w.observe(report(running=running, waiting=waiting, kv=kv, seqs=6), inflight, 6)
        assert 1 <= w.cap <= 6
        assert not w.has_room(w.cap)
        assert w.room(0) <= w.cap


def test_core_never_exceeds_the_engine_slots_and_holds_the_rest() -> None:
    core = SchedulerCore(make_cfg(), FakeClock())
    core.engines_update(SV, [engine(max_num_seqs=3)])
    sent = [r for i in range(10) for r in dispatched(core.submit(FD, submit(f"r{i}")))]
    assert sent == ["r0", "r1", "r2"]
    # the engine says one of them waits (KV full): the window shrinks, and a freed
    # slot is not refilled until in-flight is under the new cap
    core.engines_update(SV, [engine(max_num_seqs=3, num_running=2, num_waiting=1,
                                    kv_usage=0.95)])
    assert core.engine_window("m-0") == (2, 3)
    assert dispatched(core.done(FD, p.Done(request_id="r0"))) == []
    assert dispatched(core.done(FD, p.Done(request_id="r1"))) == ["r3"]


def test_engines_not_ready_get_nothing() -> None:
    core = SchedulerCore(make_cfg(), FakeClock())
    for state in ("starting", "draining", "sleeping1", "failed", "unhealthy"):
        # no dispatch (residency may send the sleeping one a wake: not a dispatch)
        assert dispatched(core.engines_update(SV, [engine(state=state)])) == []
        core.submit(FD, submit(f"r-{state}"))
    assert len(dispatched(core.engines_update(SV, [engine()]))) == 4
