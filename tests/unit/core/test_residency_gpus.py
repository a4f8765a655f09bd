"""Residency per GPU (DESIGN §6), through ``SchedulerCore`` with fake supervisor reports:
a load fits only on every GPU of its engines, victims are only engines on the GPUs that
are short, and a replica on another GPU keeps serving while one makes room."""

from __future__ import annotations

from typing import Any

import msgspec
from test_residency import Farm, actions
from test_scheduling_harness import FD, FakeClock, dispatched, engine, make_cfg, submit

from infergridd import protocol as p
from infergridd.config.placement import configured_devices, place
from infergridd.core.core import SchedulerCore

GiB = 1024**3


def cfg(models: list[dict[str, Any]], n_gpus: int) -> Any:
    c = make_cfg(models=models, residency={"swap_window_s": 60, "max_swaps_per_window": 6,
                                           "load_deadline_s": 30})
    gpus = [{"index": i, "total_memory": "24GiB"} for i in range(n_gpus)]
    return msgspec.convert({**msgspec.to_builtins(c), "gpu": {"devices": gpus}},
                           type(c), strict=True)


class GpuFarm(Farm):
    """``Farm`` whose engines report the GPUs placement gives them, as the supervisor does."""

    def __init__(self, core: SchedulerCore, states: dict[str, str]) -> None:
        super().__init__(core, states)
        self.placed = place(core.cfg, configured_devices(core.cfg))
        self.commands_seen: list[p.EngineCommand] = []

    def take(self, sends):  # type: ignore[no-untyped-def]
        self.commands_seen += [s.msg for s in sends if isinstance(s.msg, p.EngineCommand)]
        return super().take(sends)

    def status(self, eid: str) -> p.EngineStatus:
        return engine(eid, eid.rsplit("-", 1)[0], state=self.states[eid], supports_sleep=True,
                      unloaded=eid in self.unloaded, devices=list(self.placed[eid]))


def setup(models: list[dict[str, Any]], states: dict[str, str], n_gpus: int):
    clock = FakeClock()
    core = SchedulerCore(cfg(models, n_gpus), clock)
    farm = GpuFarm(core, states)
    farm.report()
    return core, farm, clock


def m(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "max_num_seqs": 4, "memory": "16GiB", **kw}


TWO = [m("big", memory="12GiB", gpus=2, preload=False), m("chat", devices=[1]),
       m("coder", devices=[1], preload=False), m("embed", memory="4GiB", devices=[0])]


def test_swaps_on_the_shared_gpu_never_touch_the_other() -> None:
    core, farm, clock = setup(TWO, {"big-0": "stopped", "chat-0": "ready",
                                    "coder-0": "stopped", "embed-0": "ready"}, 2)
    assert farm.placed == {"big-0": (0, 1), "chat-0": (1,), "coder-0": (1,), "embed-0": (0,)}
    assert actions(farm.take(core.submit(FD, submit("c1", model="coder")))) == [
        ("chat-0", "sleep")]
    farm.execute()
    assert dispatched(farm.execute()) == ["c1"]
    core.done(FD, p.Done(request_id="c1"))
    clock.advance(30)
    assert actions(farm.take(core.submit(FD, submit("h1", model="chat")))) == [
        ("coder-0", "sleep")]
    farm.execute()
    assert dispatched(farm.execute()) == ["h1"]
    assert not any(c.engine_id == "embed-0" for c in farm.commands_seen), farm.commands_seen


def test_the_tensor_parallel_model_starts_only_when_both_gpus_have_room() -> None:
    core, farm, clock = setup(TWO, {"big-0": "stopped", "chat-0": "ready",
                                    "coder-0": "stopped", "embed-0": "ready"}, 2)
    # GPU 0: embed 4 of 24, room for big's 12; GPU 1: chat 16 of 24, 8 free: short 4
    sends = farm.take(core.submit(FD, submit("b1", model="big")))
    assert actions(sends) == [("chat-0", "sleep")]  # not a start: GPU 1 lacks room
    big = next(i for i in core.model_infos() if i.name == "big")
    assert big.reason == "waiting for GPU memory: draining chat (0 in flight)", big.reason
    farm.execute()  # chat asleep (0 bytes kept) -> now both GPUs have room
    assert ("big-0", "start") in actions(farm.sends)
    assert dispatched(farm.execute()) == ["b1"]
    assert not any(c.engine_id == "embed-0" for c in farm.commands_seen)


def test_a_tp_load_says_which_gpu_is_short_when_nothing_can_go() -> None:
    models = [m("big", memory="12GiB", gpus=2, preload=False),
              m("chat", devices=[1], pinned=True), m("embed", memory="4GiB", devices=[0])]
    core, farm, clock = setup(models, {"big-0": "stopped", "chat-0": "ready",
                                       "embed-0": "ready"}, 2)
    assert actions(farm.take(core.submit(FD, submit("b1", model="big")))) == []
    big = next(i for i in core.model_infos() if i.name == "big")
    assert "needs 4.0 GiB more of 24.0 GiB on GPU 1" in big.reason, big.reason
    assert "chat is pinned" in big.reason and "GPU 0" not in big.reason


def test_room_on_one_gpu_takes_only_the_replica_there() -> None:
    models = [m("r", replicas=4), m("x", devices=[2], preload=False)]
    states = {f"r-{i}": "ready" for i in range(4)} | {"x-0": "stopped"}
    core, farm, clock = setup(models, states, 4)
    assert sorted(farm.placed[f"r-{i}"] for i in range(4)) == [(0,), (1,), (2,), (3,)]
    on2 = next(e for e, d in farm.placed.items() if d == (2,) and e.startswith("r-"))
    assert actions(farm.take(core.submit(FD, submit("x1", model="x")))) == [(on2, "sleep")]
    r = next(i for i in core.model_infos() if i.name == "r")
    assert r.state == "ready"  # its other replicas serve on
    sent = dispatched(farm.take(core.submit(FD, submit("r1", model="r"))))
    assert sent == ["r1"]
    farm.execute()
    farm.execute()
    assert "x1" in [s.msg.request_id for s in farm.sends if isinstance(s.msg, p.Dispatch)]
    r = next(i for i in core.model_infos() if i.name == "r")
    assert r.ready_engines == 3 and r.state == "ready"
    assert [c.engine_id for c in farm.commands_seen if c.action == "sleep"] == [on2]


def test_the_swap_limit_is_per_gpu() -> None:
    """One swap per window per GPU: GPU 1's swap does not use up GPU 0's, and a second
    one on GPU 1 waits, saying where."""
    models = [m("a0", devices=[0]), m("b0", devices=[0], preload=False),
              m("a1", devices=[1]), m("b1", devices=[1], preload=False)]
    clock = FakeClock()
    c = cfg(models, 2)
    c = msgspec.structs.replace(c, scheduler=msgspec.structs.replace(
        c.scheduler, residency=msgspec.structs.replace(c.scheduler.residency,
                                                       max_swaps_per_window=1)))
    core = SchedulerCore(c, clock)
    farm = GpuFarm(core, {"a0-0": "ready", "b0-0": "stopped", "a1-0": "ready",
                          "b1-0": "stopped"})
    farm.report()
    assert actions(farm.take(core.submit(FD, submit("x1", model="b1")))) == [("a1-0", "sleep")]
    farm.execute()
    farm.execute()
    assert actions(farm.take(core.submit(FD, submit("x0", model="b0")))) == [("a0-0", "sleep")]
    farm.execute()
    farm.execute()
    core.done(FD, p.Done(request_id="x1"))
    clock.advance(1)
    farm.take(core.submit(FD, submit("y1", model="a1")))  # back on GPU 1: over its budget
    a1 = next(i for i in core.model_infos() if i.name == "a1")
    assert a1.reason.startswith("swap limit reached: 1 swaps in the last 60s on GPU 1"), \
        a1.reason
