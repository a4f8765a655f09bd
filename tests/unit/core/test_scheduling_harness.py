"""A fake clock and a fake engine farm that drive ``SchedulerCore`` in discrete steps.

Other scheduling tests import it (``from test_scheduling_harness import ...``);
the few tests at the bottom check the harness itself, so a broken harness
cannot make the property tests pass vacuously.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from infergridd import protocol as p
from infergridd.config import Config
from infergridd.core.core import SchedulerCore, Send
from infergridd.keys import new_key

FD = "fd-test"
SV = "sv-test"


def make_cfg(tenants: list[dict[str, Any]] | None = None, models: list[dict[str, Any]] | None = None,
             **scheduler: Any) -> Config:
    raw: dict[str, Any] = {
        "version": 1,
        "models": models if models is not None else [{"name": "m", "max_num_seqs": 4}],
        "tenants": tenants if tenants is not None else [{"name": "a"}, {"name": "b"}],
    }
    auth = scheduler.pop("auth", None)
    if auth:
        raw["auth"] = auth
    if scheduler:
        raw["scheduler"] = scheduler
    return msgspec.convert(raw, Config, strict=True)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def engine(eid: str = "m-0", model: str = "m", max_num_seqs: int = 4, **kw: Any) -> p.EngineStatus:
    return p.EngineStatus(engine_id=eid, model=model, kind="sim", state=kw.pop("state", "ready"),
                          endpoint=f"http://127.0.0.1/{eid}", api_key=f"key-{eid}",
                          max_num_seqs=max_num_seqs, **kw)


def submit(rid: str, tenant: str = "a", model: str = "m", prompt: int = 10, out: int = 10,
           at: float = 0.0) -> p.Submit:
    return p.Submit(request_id=rid, tenant=tenant, model=model, prompt_tokens=prompt,
                    max_tokens=out, submitted_at=at)


def dispatched(sends: list[Send]) -> list[str]:
    return [s.msg.request_id for s in sends if isinstance(s.msg, p.Dispatch)]


def rejected(sends: list[Send]) -> list[p.Reject]:
    return [s.msg for s in sends if isinstance(s.msg, p.Reject)]


@dataclass
class Running:
    request_id: str
    tenant: str
    prompt: int
    target: int  # completion tokens it will produce
    done_tokens: int = 0


@dataclass
class Sim:
    """Engines that run up to ``max_num_seqs`` sequences, ``rate`` tokens per step each.

    Requests beyond ``max_num_seqs`` wait inside the engine (and are reported
    as ``num_waiting``), like a real engine, so a scheduler that forwards too
    much is visible.  ``served`` counts weighted tokens actually produced.
    """

    cfg: Config
    engines: dict[str, int] = field(default_factory=lambda: {"m-0": 4})  # id -> max_num_seqs
    rate: int = 1
    w_in: float = 1.0
    w_out: float = 2.0
    clock: FakeClock = field(default_factory=FakeClock)
    core: SchedulerCore = field(init=False)
    running: dict[str, list[Running]] = field(init=False)
    meta: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # rid -> tenant, p, out
    log: list[tuple[str, str]] = field(default_factory=list)  # (request_id, engine_id)
    served: dict[str, float] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    rejects: list[p.Reject] = field(default_factory=list)
    dt: float = 0.1

    def __post_init__(self) -> None:
        self.core = SchedulerCore(self.cfg, self.clock, new_key)
        self.running = {e: [] for e in self.engines}
        self.w_in = self.cfg.scheduler.input_weight
        self.w_out = self.cfg.scheduler.output_weight
        self.apply(self.core.engines_update(SV, self.statuses()))

    def statuses(self) -> list[p.EngineStatus]:
        out = []
        for eid, cap in self.engines.items():
            n = len(self.running[eid])
            out.append(engine(eid, self.cfg.models[0].name, cap,
                              num_running=min(n, cap), num_waiting=max(0, n - cap)))
        return out

    def apply(self, sends: list[Send]) -> None:
        for s in sends:
            if isinstance(s.msg, p.Dispatch):
                rid = s.msg.request_id
                tenant, prompt, out = self.meta[rid]
                self.log.append((rid, s.msg.engine_id))
                self.running[s.msg.engine_id].append(Running(rid, tenant, prompt, out))
                self.served[tenant] = self.served.get(tenant, 0.0) + prompt * self.w_in
            elif isinstance(s.msg, p.Reject):
                self.rejects.append(s.msg)

    def submit(self, rid: str, tenant: str, prompt: int, out: int) -> None:
        self.meta[rid] = (tenant, prompt, out)
        self.apply(self.core.submit(FD, submit(rid, tenant, self.cfg.models[0].name, prompt, out,
                                               at=self.clock.t)))

    def step(self) -> None:
        """One time step: every running sequence (up to the engine's slots) makes progress."""
        self.clock.advance(self.dt)
        for eid, cap in self.engines.items():
            still = []
            for i, r in enumerate(self.running[eid]):
                if i < cap and r.done_tokens < r.target:
                    n = min(self.rate, r.target - r.done_tokens)
                    r.done_tokens += n
                    self.served[r.tenant] = self.served.get(r.tenant, 0.0) + n * self.w_out
                    self.core.progress(r.request_id, r.done_tokens)
                if r.done_tokens >= r.target:
                    self.finished.append(r.request_id)
                    self.apply(self.core.done(FD, p.Done(
                        request_id=r.request_id, prompt_tokens=r.prompt,
                        completion_tokens=r.done_tokens, engine_id=eid)))
                else:
                    still.append(r)
            self.running[eid] = still
        self.apply(self.core.engines_update(SV, self.statuses()))
        self.apply(self.core.tick())

    def queued(self, tenant: str) -> int:
        return next(t.queued for t in self.core.tenant_stats() if t.name == tenant)


def assert_work_conserving(core: SchedulerCore) -> None:
    """Nothing waits for a model while one of its ready engines has room for it.

    "Room for it": the window has room and the headroom rules (a reserve of slots
    and a short prefill guard, both only against tenants over their fair share)
    let the waiting request's tenant start there.
    """
    waiting: dict[tuple[str, str], None] = {}
    for rec in core._records.values():
        if rec.state == "queued":
            waiting[(rec.model, rec.tenant)] = None
    for model, tenant in waiting:
        for e in core.engine_statuses():
            if e.model != model or e.state != p.EngineState.READY:
                continue
            cap, n = core.engine_window(e.engine_id)  # type: ignore[misc]
            assert not core.may_dispatch(model, e.engine_id, tenant), (
                f"{tenant} waits for {model} while {e.engine_id} has room for it "
                f"({n} in flight, cap {cap})")


# --------------------------------------------------------------------------- the harness itself


def test_sim_runs_requests_to_completion() -> None:
    sim = Sim(make_cfg())
    for i in range(10):
        sim.submit(f"r{i}", "a" if i % 2 else "b", 5, 3)
    for _ in range(50):
        sim.step()
    assert sorted(sim.finished) == sorted(f"r{i}" for i in range(10))
    assert sum(t.inflight + t.queued for t in sim.core.tenant_stats()) == 0
    # served == what the core was charged with real usage: 10 × (5×1 + 3×2)
    assert sum(sim.served.values()) == 10 * (5 + 6)
    assert sum(t.tokens_in for t in sim.core.tenant_stats()) == 50


def test_sim_never_runs_more_than_the_engine_slots() -> None:
    sim = Sim(make_cfg(), engines={"m-0": 3})
    for i in range(20):
        sim.submit(f"r{i}", "a", 1, 5)
        assert len(sim.running["m-0"]) <= 3
    sim.step()
    assert len(sim.running["m-0"]) == 3
