"""Chaos finding 2 (bench/chaos.py, issue 16): an operator's ``model load`` that reaches a
restarted scheduler before its supervisor has reconnected was lost.

The planner saw no engines for the model, took "every engine ready" (``all`` of none)
as the load done and dropped ``want_up``; the supervisor's first report then showed the
engine stopped by the earlier unload, which a fresh scheduler reads as "the operator
unloaded it", so the model stayed down and every request for it got 503 — after the
operator had loaded it."""

from __future__ import annotations

from test_residency import Farm, actions, cfg, m
from test_scheduling_harness import FD, FakeClock, rejected, submit

from infergridd.core.core import SchedulerCore


def test_load_before_the_supervisor_reconnects_is_not_lost() -> None:
    core = SchedulerCore(cfg([m("a", preload=False)]), FakeClock())  # just restarted
    core.model_up("a")  # infergridctl model load a, before any supervisor said Hello
    core.tick()
    farm = Farm(core, {"a-0": "stopped"})
    farm.unloaded.add("a-0")  # the supervisor remembers the operator's earlier unload
    farm.report()
    assert ("a-0", "start") in actions(farm.sends)
    assert not rejected(core.submit(FD, submit("r1", model="a")))
    farm.execute()
    assert core.model_settled("a", "up")
