"""Headroom for intermittent tenants: the reserve of slots and the prefill guard."""

from __future__ import annotations

import pytest
from test_scheduling_harness import FD, SV, FakeClock, dispatched, engine, make_cfg, submit

from infergridd import protocol as p
from infergridd.config import ConfigError, loads
from infergridd.core.core import SchedulerCore
from infergridd.core.headroom import GUARD_MAX_S

TENANTS = [{"name": "flood"}, {"name": "quiet"}]


def setup(slots: int = 64, **sched: object) -> tuple[SchedulerCore, FakeClock]:
    """A core with one engine of ``slots``; a reserve of 2 unless told otherwise."""
    sched.setdefault("light_reserve", 2)
    clock = FakeClock()
    core = SchedulerCore(make_cfg(tenants=TENANTS, **sched), clock)
    core.engines_update(SV, [engine(max_num_seqs=slots)])
    return core, clock


def flood(core: SchedulerCore, n: int, start: int = 0) -> list[str]:
    out: list[str] = []
    for i in range(start, start + n):
        out += dispatched(core.submit(FD, submit(f"f{i}", "flood")))
    return out


def finish(core: SchedulerCore, rid: str) -> list[str]:
    return dispatched(core.done(FD, p.Done(request_id=rid, prompt_tokens=10,
                                           completion_tokens=10, engine_id="m-0")))


def quiet_was_around(core: SchedulerCore) -> None:
    """The quiet tenant sent one request, which ran and finished: it is around, idle."""
    core.submit(FD, submit("q0", "quiet"))
    core.progress("q0", 1)
    finish(core, "q0")


def test_a_lone_flooder_gets_every_slot() -> None:
    core, _ = setup(light_reserve=6)
    assert len(flood(core, 100)) == 64


def test_the_reserve_keeps_slots_for_an_intermittent_tenant() -> None:
    core, clock = setup()
    # quiet has been around (one request, already finished)
    assert dispatched(core.submit(FD, submit("q0", "quiet"))) == ["q0"]
    core.progress("q0", 1)
    finish(core, "q0")
    clock.advance(1.0)
    assert len(flood(core, 100)) == 62  # 64 - reserve 2
    assert dispatched(core.submit(FD, submit("q1", "quiet"))) == ["q1"]  # at once


def test_no_reserve_without_anyone_to_keep_it_for() -> None:
    core, clock = setup()
    quiet_was_around(core)
    clock.advance(11.0)  # quiet has not been around for longer than ACTIVE_S
    assert len(flood(core, 100)) == 64


def test_the_prefill_guard_holds_heavy_tenants_until_the_first_token() -> None:
    core, clock = setup()
    quiet_was_around(core)
    running = flood(core, 100)
    assert len(running) == 62
    assert dispatched(core.submit(FD, submit("q1", "quiet"))) == ["q1"]
    # slots free (61 in flight, flood may go up to 62), but quiet's prompt is computing
    assert finish(core, running[0]) == [] and finish(core, running[1]) == []
    core.progress("q1", 1)  # its first token: the guard lifts
    assert dispatched(core.tick()) == ["f62"]
    # a guard never outlives GUARD_MAX_S, whatever happens to the first token
    assert dispatched(core.submit(FD, submit("q2", "quiet"))) == ["q2"]
    assert finish(core, running[2]) == [] and finish(core, running[3]) == []
    clock.advance(GUARD_MAX_S / 2)
    assert dispatched(core.tick()) == []
    clock.advance(GUARD_MAX_S / 2 + 0.01)
    assert dispatched(core.tick()) == ["f63"]


def test_a_backlogged_tenant_takes_no_reserve_and_no_guard() -> None:
    """Two backlogged tenants: VTC alone decides and every slot is used."""
    core, _ = setup(slots=16)
    sent = []
    for i in range(40):
        sent += dispatched(core.submit(FD, submit(f"f{i}", "flood")))
        sent += dispatched(core.submit(FD, submit(f"q{i}", "quiet")))
    assert len(sent) == 16
    assert finish(core, sent[0]) != []  # no guard: the freed slot is used at once


def test_a_lifted_tenant_wins_the_tie_with_the_flooder() -> None:
    """Lifted to exactly the flooder's counter, the tenant with less in flight goes first."""
    core, clock = setup(slots=8, light_reserve=0, prefill_guard=False)
    running = flood(core, 50)
    assert len(running) == 8
    clock.advance(1.0)
    core.submit(FD, submit("q1", "quiet"))
    assert core.policy.counter("quiet") == core.policy.counter("flood")
    assert finish(core, running[0]) == ["q1"]


def test_small_engines_reserve_nothing() -> None:
    core, _ = setup(slots=7, light_reserve=6)
    quiet_was_around(core)
    assert len(flood(core, 20)) == 7


@pytest.mark.parametrize("bad", ["-1", "1.5", "x"])
def test_light_reserve_must_be_a_count(bad: str) -> None:
    text = f"version: 1\nmodels: [{{name: m}}]\nscheduler: {{light_reserve: {bad}}}\n"
    with pytest.raises(ConfigError, match="light_reserve"):
        loads(text)


def test_a_light_tenant_passes_a_pause_that_engine_side_waiting_caused() -> None:
    core, clock = setup(slots=64, prefill_guard=False)
    quiet_was_around(core)
    running = flood(core, 100)
    assert len(running) == 62
    # the engine still shows some of them waiting: the window pauses until one finishes
    core.engines_update(SV, [engine(max_num_seqs=64, num_running=60, num_waiting=2)])
    assert dispatched(core.submit(FD, submit("q1", "quiet"))) == ["q1"]
    # KV pressure pauses everyone, light or not
    core.engines_update(SV, [engine(max_num_seqs=64, num_running=63, kv_usage=0.95)])
    clock.advance(0.1)
    assert dispatched(core.submit(FD, submit("q2", "quiet"))) == []


def test_the_reserve_is_at_most_an_eighth_of_the_engine() -> None:
    core, _ = setup(slots=16, light_reserve=6)
    quiet_was_around(core)
    assert len(flood(core, 40)) == 14


def test_the_prefill_window_bounds_prompts_in_the_engine() -> None:
    """Long prompts from a backlogged tenant go one window's worth at a time."""
    core, _ = setup(slots=64, prefill_window_tokens=4096)
    sent = []
    for i in range(20):
        sent += dispatched(core.submit(FD, submit(f"f{i}", "flood", prompt=3000)))
    # light while it starts (< 4 prompts computing, <= 2 queued), then the window holds
    assert sent == ["f0", "f1", "f2", "f3"]
    for rid in sent[:3]:
        core.progress(rid, 1)  # three prompts computed: 3000 tokens in the window
    assert dispatched(core.tick()) == ["f4"]  # then 6000: full again
    # a light tenant is not held by it
    assert dispatched(core.submit(FD, submit("q1", "quiet", prompt=3000))) == ["q1"]


def test_a_ramping_flooder_stops_being_light() -> None:
    core, _ = setup(slots=64, prefill_window_tokens=0, light_reserve=0)
    for i in range(10):
        core.submit(FD, submit(f"f{i}", "flood"))
    standing = core.headroom.standing("m", 64, core._queued_n, core.tenants.weight, 1000.0)
    assert not standing.light("flood")  # 10 prompts computing
    core.submit(FD, submit("q0", "quiet"))
    standing = core.headroom.standing("m", 64, core._queued_n, core.tenants.weight, 1000.0)
    assert standing.light("quiet")


def test_engine_priority_follows_standing() -> None:
    """Light first (0), heavy last (2): the engine admits a quiet prompt before
    flooder prompts sent a moment earlier."""
    core, _ = setup(slots=64)
    core.engines_update(SV, [engine(max_num_seqs=64, supports_priority=True)])
    quiet_was_around(core)
    prios = {}
    for i in range(80):
        for s in core.submit(FD, submit(f"f{i}", "flood")):
            if isinstance(s.msg, p.Dispatch):
                core.progress(s.msg.request_id, 1)
                prios[s.msg.request_id] = s.msg.engine_priority
    [d] = [s.msg for s in core.submit(FD, submit("q1", "quiet")) if isinstance(s.msg, p.Dispatch)]
    assert d.engine_priority == 0
    assert prios["f0"] == 0 and prios["f40"] == 2  # light while starting, heavy once over its share
