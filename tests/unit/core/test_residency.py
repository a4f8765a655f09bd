"""Residency decisions through ``SchedulerCore`` with a fake clock and fake supervisor reports:
lazy loads, draining before eviction, victim choice, the thrash limit, deadlines, failures."""

from __future__ import annotations

from typing import Any

import msgspec
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
from infergridd.core.core import SchedulerCore, Send

GiB = 1024**3


def cfg(models: list[dict[str, Any]], total: str = "10GiB", **residency: Any) -> Any:
    c = make_cfg(models=models, residency={"swap_window_s": 60, "max_swaps_per_window": 6,
                                           "load_deadline_s": 30, **residency})
    return msgspec.structs.replace(c, gpu=msgspec.structs.replace(c.gpu, total_memory=total))


def m(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "max_num_seqs": 4, "memory": "6GiB", **kw}


class Farm:
    """Engines whose states follow the core's commands, one report per ``report()``."""

    def __init__(self, core: SchedulerCore, states: dict[str, str]) -> None:
        self.core = core
        self.states = dict(states)
        self.unloaded: set[str] = set()  # what the supervisor remembers as unloaded
        self.commands: list[p.EngineCommand] = []
        self.sends: list[Send] = []

    def status(self, eid: str) -> p.EngineStatus:
        # memory_bytes 0: the core counts an up engine at its configured cost anyway
        return engine(eid, eid.rsplit("-", 1)[0], state=self.states[eid], supports_sleep=True,
                      unloaded=eid in self.unloaded)

    def take(self, sends: list[Send]) -> list[Send]:
        self.sends += sends
        for s in sends:
            if isinstance(s.msg, p.EngineCommand):
                self.commands.append(s.msg)
        return sends

    def report(self) -> list[Send]:
        return self.take(self.core.engines_update(SV, [self.status(e) for e in self.states]))

    def execute(self) -> list[Send]:
        """Carry out every command not yet carried out, answer it and report."""
        out: list[Send] = []
        for c in list(self.commands):
            self.states[c.engine_id] = {"start": "ready", "wake": "ready", "stop": "stopped",
                                        "sleep": f"sleeping{c.level}"}[c.action]
            if c.action == "stop" and c.unload:
                self.unloaded.add(c.engine_id)
            elif c.action in ("start", "wake"):
                self.unloaded.discard(c.engine_id)
            out += self.take(self.core.command_result(SV, p.EngineCommandResult(
                command_id=c.command_id, engine_id=c.engine_id, ok=True)))
        self.commands.clear()
        return out + self.report()


def actions(sends: list[Send]) -> list[tuple[str, str]]:
    return [(s.msg.engine_id, s.msg.action) for s in sends if isinstance(s.msg, p.EngineCommand)]


def setup(models: list[dict[str, Any]], states: dict[str, str], **residency: Any):
    clock = FakeClock()
    core = SchedulerCore(cfg(models, **residency), clock)
    farm = Farm(core, states)
    farm.report()
    return core, farm, clock


def test_lazy_load_starts_a_stopped_model_and_dispatches_when_ready() -> None:
    core, farm, clock = setup([m("a"), m("b", preload=False)],
                              {"a-0": "ready", "b-0": "stopped"})
    sends = farm.take(core.submit(FD, submit("r1", model="b")))
    # 6 + 6 > 10: a must go first; it is idle, so it is put to sleep at once
    assert actions(sends) == [("a-0", "sleep")]
    assert dispatched(sends) == []
    farm.execute()  # a asleep → b started
    assert ("b-0", "start") in actions(farm.sends)
    assert dispatched(farm.execute()) == ["r1"]
    info = {i.name: i for i in core.model_infos()}
    assert info["a"].reason == "making room for b" and info["b"].state == "ready"


def test_a_busy_model_is_drained_before_it_sleeps() -> None:
    core, farm, clock = setup([m("a"), m("b", preload=False)],
                              {"a-0": "ready", "b-0": "stopped"}, max_swaps_per_window=6,
                              swap_window_s=6)
    assert dispatched(core.submit(FD, submit("x1", model="a"))) == ["x1"]
    clock.advance(5)  # a resident long enough to be a victim while busy
    sends = farm.take(core.submit(FD, submit("y1", model="b")))
    assert actions(sends) == []  # draining: nothing is slept while x1 runs
    assert dispatched(core.submit(FD, submit("x2", model="a"))) == []  # no new dispatch to a
    farm.report()
    sends = farm.take(core.done(FD, p.Done(request_id="x1", completion_tokens=3)))
    assert actions(sends) == [("a-0", "sleep")]  # the moment it is drained
    farm.execute()
    assert dispatched(farm.execute()) == ["y1"]


def test_pinned_and_higher_priority_busy_models_are_not_evicted() -> None:
    core, farm, clock = setup([m("a", pinned=True), m("b", preload=False)],
                              {"a-0": "ready", "b-0": "stopped"})
    assert farm.take(core.submit(FD, submit("r1", model="b"))) == []
    assert "a is pinned" in core.model_infos()[1].reason
    core, farm, clock = setup([m("a", priority=5), m("b", preload=False)],
                              {"a-0": "ready", "b-0": "stopped"})
    core.submit(FD, submit("x1", model="a"))
    clock.advance(100)
    assert actions(farm.take(core.submit(FD, submit("r1", model="b")))) == []
    assert "higher priority" in core.model_infos()[1].reason


def test_victims_lowest_priority_then_coldest_first() -> None:
    models = [m("a", memory="4GiB"), m("b", memory="4GiB", priority=1), m("c", preload=False)]
    core, farm, clock = setup(models, {"a-0": "ready", "b-0": "ready", "c-0": "stopped"})
    for i in range(5):
        core.submit(FD, submit(f"a{i}", model="a"))
        core.done(FD, p.Done(request_id=f"a{i}"))
    sends = farm.take(core.submit(FD, submit("c1", model="c")))
    assert actions(sends) == [("a-0", "sleep")]  # lower priority, despite being hotter


def test_thrash_limit_bounds_swaps_and_says_why() -> None:
    models = [m("a"), m("b", preload=False)]
    core, farm, clock = setup(models, {"a-0": "ready", "b-0": "stopped"},
                              max_swaps_per_window=2, swap_window_s=10)
    for i in range(6):  # alternate: each request wants the model that is not resident
        want = "ab"[(i + 1) % 2]
        farm.take(core.submit(FD, submit(f"r{i}", model=want)))
        for _ in range(3):
            farm.execute()
        for s in list(farm.sends):
            if isinstance(s.msg, p.Dispatch):
                farm.take(core.done(FD, p.Done(request_id=s.msg.request_id)))
        farm.sends.clear()
        clock.advance(0.5)
    swaps = core.residency.swaps_total
    assert swaps == 2
    waiting = [i for i in core.model_infos() if i.queued]
    assert waiting and "swap limit reached" in waiting[0].reason
    clock.advance(10)  # the window moves on: the next swap is allowed
    farm.take(core.tick())
    farm.execute()
    assert core.residency.swaps_total == 3


def test_load_deadline_answers_503_with_retry_after_and_reason() -> None:
    core, farm, clock = setup([m("a", pinned=True), m("b", preload=False)],
                              {"a-0": "ready", "b-0": "stopped"}, load_deadline_s=5)
    core.submit(FD, submit("r1", model="b"))
    clock.advance(4)
    assert rejected(core.tick()) == []
    clock.advance(2)
    [r] = rejected(core.tick())
    assert (r.http_status, r.code) == (503, "model_unavailable")
    assert "not ready after 5s" in r.reason and "a is pinned" in r.reason
    assert r.retry_after_s is not None and r.retry_after_s >= 1


def test_failed_load_rejects_queued_and_new_requests() -> None:
    core, farm, clock = setup([m("a", memory="2GiB"), m("b", preload=False, memory="2GiB")],
                              {"a-0": "ready", "b-0": "stopped"})
    core.submit(FD, submit("r1", model="b"))
    farm.states["b-0"] = "starting"
    farm.report()
    st = engine("b-0", "b", state="failed",
                last_error="exited with status 3; last log lines:\nlog tail")
    rej = rejected(core.engines_update(SV, [farm.status("a-0"), st]) + core.tick())
    assert [r.request_id for r in rej] == ["r1"]
    assert rej[0].reason == "model 'b' failed to load: exited with status 3"
    [r] = rejected(core.submit(FD, submit("r2", model="b")))
    assert r.http_status == 503 and r.retry_after_s
    assert dispatched(core.submit(FD, submit("r3", model="a"))) == ["r3"]  # others serve
    assert core.model_infos()[1].reason.startswith("failed: exited with status 3")


def test_crash_while_serving_is_not_a_load_failure() -> None:
    core, farm, clock = setup([m("a")], {"a-0": "ready"})
    core.engines_update(SV, [engine("a-0", "a", state="failed", last_error="killed")])
    assert rejected(core.submit(FD, submit("r1", model="a"))) == []  # waits for the restart


def test_idle_ladder_sleeps_then_stops() -> None:
    core, farm, clock = setup([m("a", keep_alive_s=30)], {"a-0": "ready"}, stop_after_s=60)
    clock.advance(29)
    assert actions(farm.take(core.tick())) == []
    clock.advance(2)
    assert actions(farm.take(core.tick())) == [("a-0", "sleep")]
    farm.execute()
    assert core.model_infos()[0].reason.startswith("idle for")
    clock.advance(61)
    assert actions(farm.take(core.tick())) == [("a-0", "stop")]
    farm.execute()
    assert core.model_infos()[0].state == "stopped"
    farm.take(core.submit(FD, submit("r1", model="a")))  # demand brings it back
    assert ("a-0", "start") in actions(farm.sends)


def test_operator_unload_drains_and_keeps_it_down() -> None:
    core, farm, clock = setup([m("a")], {"a-0": "ready"})
    assert dispatched(core.submit(FD, submit("r1", model="a"))) == ["r1"]
    assert dispatched(core.submit(FD, submit("r2", model="a"))) == ["r2"]
    assert actions(farm.take(core.model_down("a", "stop"))) == []
    assert not core.model_settled("a", "down")
    farm.take(core.done(FD, p.Done(request_id="r1")))
    assert actions(farm.take(core.done(FD, p.Done(request_id="r2")))) == [("a-0", "stop")]
    farm.execute()
    assert core.model_settled("a", "down")
    [r] = rejected(core.submit(FD, submit("r3", model="a")))
    assert "unloaded by the operator" in r.reason
    farm.take(core.model_up("a"))
    assert ("a-0", "start") in actions(farm.sends)


def test_refused_start_is_retried_after_a_pause() -> None:
    core, farm, clock = setup([m("a", preload=False)], {"a-0": "stopped"})
    [cmd] = [s.msg for s in core.submit(FD, submit("r1", model="a"))
             if isinstance(s.msg, p.EngineCommand)]
    core.command_result(SV, p.EngineCommandResult(command_id=cmd.command_id, engine_id="a-0",
                                                  ok=False, error="not enough GPU memory"))
    assert actions(core.tick()) == []
    assert "not enough GPU memory" in core.model_infos()[0].reason
    clock.advance(1)
    assert actions(core.tick()) == [("a-0", "start")]


def test_unlimited_memory_never_evicts() -> None:
    core, farm, clock = setup([m("a"), m("b", preload=False)],
                              {"a-0": "ready", "b-0": "stopped"}, total="0")
    assert actions(core.submit(FD, submit("r1", model="b"))) == [("b-0", "start")]


def test_a_draining_model_shows_draining_and_takes_nothing_new() -> None:
    core, farm, clock = setup([m("a")], {"a-0": "ready"})
    assert dispatched(core.submit(FD, submit("r1", model="a"))) == ["r1"]
    farm.take(core.model_down("a", "sleep", 1))
    [info] = core.model_infos()
    assert (info.state, info.ready_engines, info.inflight) == ("draining", 1, 1)
    assert info.reason == "draining: put to sleep by the operator"
    assert dispatched(core.submit(FD, submit("r2", model="a"))) == []
    assert actions(farm.take(core.done(FD, p.Done(request_id="r1")))) == [("a-0", "sleep")]
    farm.execute()
    assert core.model_infos()[0].state == "sleeping1"


def test_an_unload_survives_a_scheduler_restart() -> None:
    """The supervisor keeps the unload (EngineStatus.unloaded): a new core that sees the
    engine for the first time refuses the model's requests instead of loading it."""
    core, farm, clock = setup([m("a")], {"a-0": "ready"})
    farm.take(core.model_down("a", "stop"))
    [cmd] = farm.commands
    assert (cmd.action, cmd.unload) == ("stop", True)
    farm.execute()
    assert core.model_settled("a", "down")
    fresh = SchedulerCore(core.cfg, clock)  # the scheduler restarted
    farm.core = fresh
    farm.report()
    [r] = rejected(fresh.submit(FD, submit("r1", model="a")))
    assert r.http_status == 503 and "unloaded by the operator" in r.reason
    [info] = fresh.model_infos()
    assert info.reason == "unloaded by the operator"
    assert not info.preload  # /health does not wait for it
    farm.take(fresh.model_up("a"))
    assert ("a-0", "start") in actions(farm.sends)
    farm.execute()
    assert "a-0" not in farm.unloaded and fresh.model_infos()[0].preload
    assert dispatched(fresh.submit(FD, submit("r2", model="a"))) == ["r2"]


def test_unloading_a_model_already_stopped_still_records_the_unload() -> None:
    core, farm, clock = setup([m("a", preload=False)], {"a-0": "stopped"})
    farm.take(core.model_down("a", "stop"))
    assert [(c.action, c.unload) for c in farm.commands] == [("stop", True)]
    assert not core.model_settled("a", "down")  # until the supervisor has it
    farm.execute()
    assert core.model_settled("a", "down") and farm.unloaded == {"a-0"}
    assert actions(farm.take(core.tick())) == []  # said once, not again


def test_a_model_with_a_serving_replica_evicts_nobody_for_its_other_replica() -> None:
    core, farm, clock = setup([m("a", replicas=2, memory="4GiB"), m("b", memory="4GiB")],
                              {"a-0": "ready", "a-1": "stopped", "b-0": "ready"})
    sends = farm.take(core.submit(FD, submit("r1", model="a")))
    assert dispatched(sends) == ["r1"] and actions(sends) == []  # a-1 needs b evicted: no
    assert core.residency.swaps_total == 0
    core, farm, clock = setup([m("a", replicas=2, memory="3GiB"), m("b", memory="4GiB")],
                              {"a-0": "ready", "a-1": "stopped", "b-0": "ready"})
    sends = farm.take(core.submit(FD, submit("r1", model="a")))
    assert actions(sends) == [("a-1", "start")]  # it fits beside b: brought up


def test_the_shipped_multi_model_config_swaps_out_of_the_box() -> None:
    """configs/multi_model.yaml: two simulated models that cannot both be resident, the
    quickstart's demo tenants and keys."""
    from pathlib import Path

    from infergridd.config import load, model_memory, parse_size

    root = Path(__file__).resolve().parents[3] / "configs"
    multi, quick = load(root / "multi_model.yaml"), load(root / "quickstart_fairness.yaml")
    total = parse_size(multi.gpu.total_memory)
    assert [mc.engine for mc in multi.models] == ["sim", "sim"]
    assert sum(model_memory(mc, total) for mc in multi.models) > total
    assert all(model_memory(mc, total) <= total for mc in multi.models)
    assert [(t.name, t.keys) for t in multi.tenants] == [(t.name, t.keys) for t in quick.tenants]
    assert [mc.preload for mc in multi.models] == [True, False]


def test_an_engine_whose_sleep_keeps_failing_is_stopped_instead() -> None:
    core, farm, clock = setup([m("a")], {"a-0": "ready"})
    farm.take(core.model_down("a", "sleep", 1))
    for _ in range(2):
        [cmd] = farm.commands
        assert cmd.action == "sleep"
        farm.commands.clear()
        farm.take(core.command_result(SV, p.EngineCommandResult(
            command_id=cmd.command_id, engine_id="a-0", ok=False, error="HTTP 500")))
        clock.advance(1)
        farm.take(core.tick())
    assert [c.action for c in farm.commands] == ["stop"]
    farm.execute()
    assert core.model_settled("a", "down") and core.model_infos()[0].state == "stopped"
