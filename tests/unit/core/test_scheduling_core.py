"""SchedulerCore: admission, idempotency, peers coming and going, deadlines, state."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduling_harness import (
    FD,
    SV,
    FakeClock,
    Sim,
    dispatched,
    engine,
    make_cfg,
    rejected,
    submit,
)

from infergridd import protocol as p
from infergridd.core.core import SchedulerCore


def core_with_engine(cfg=None, slots: int = 2, clock=None) -> SchedulerCore:
    core = SchedulerCore(cfg or make_cfg(), clock or FakeClock())
    core.engines_update(SV, [engine(max_num_seqs=slots)])
    return core


def stats(core: SchedulerCore) -> dict[str, p.TenantStats]:
    return {t.name: t for t in core.tenant_stats()}


# --------------------------------------------------------------------------- admission


def test_dispatch_carries_the_engine_and_queue_wait() -> None:
    clock = FakeClock()
    core = SchedulerCore(make_cfg(), clock)
    assert core.submit(FD, submit("r1")) == []  # no engine yet: queued, not rejected
    clock.advance(2.5)
    [send] = core.engines_update(SV, [engine()])
    assert send.peer == FD
    assert send.msg == p.Dispatch(request_id="r1", engine_id="m-0",
                                  endpoint="http://127.0.0.1/m-0", api_key="key-m-0",
                                  queue_wait_s=2.5)


def test_rejects_name_the_reason() -> None:
    core = core_with_engine(make_cfg(tenants=[{"name": "a", "max_queued": 1}]), slots=1)
    [r] = rejected(core.submit(FD, submit("x1", "nobody")))
    assert (r.http_status, r.code) == (401, "invalid_api_key")
    [r] = rejected(core.submit(FD, submit("x2", "a", model="nope")))
    assert (r.http_status, r.code) == (404, "model_not_found")
    assert dispatched(core.submit(FD, submit("r1", "a")))  # runs
    assert not core.submit(FD, submit("r2", "a"))  # queued (1 allowed)
    [r] = rejected(core.submit(FD, submit("r3", "a")))
    assert (r.http_status, r.code, r.retry_after_s) == (429, "tenant_queue_full", 1.0)
    assert stats(core)["a"].rejected == {"model_not_found": 1, "tenant_queue_full": 1}


def test_a_busy_engine_never_causes_a_rejection() -> None:
    core = core_with_engine(slots=1)
    sends = [core.submit(FD, submit(f"r{i}", "ab"[i % 2])) for i in range(200)]
    assert not any(rejected(s) for s in sends)
    assert stats(core)["a"].queued + stats(core)["b"].queued == 199


def test_submit_and_done_are_idempotent() -> None:
    core = core_with_engine(slots=1)
    assert dispatched(core.submit(FD, submit("r1", prompt=10)))
    assert core.submit(FD, submit("r1", prompt=10)) == []
    core.submit(FD, submit("r2"))
    assert stats(core)["a"].queued == 1 and stats(core)["a"].inflight == 1
    done = p.Done(request_id="r1", prompt_tokens=10, completion_tokens=5)
    assert dispatched(core.done(FD, done)) == ["r2"]
    counter = core.policy.counter("a")
    assert core.done(FD, done) == []  # duplicate: no slot freed twice, no double charge
    assert core.policy.counter("a") == counter
    assert stats(core)["a"].inflight == 1 and stats(core)["a"].tokens_out == 5
    assert core.submit(FD, submit("r1")) == []  # a finished request cannot come back


def test_cancel_removes_a_queued_request_only() -> None:
    core = core_with_engine(slots=1)
    core.submit(FD, submit("r1"))
    core.submit(FD, submit("r2"))
    core.cancel(FD, "r1")  # in flight: ends by Done, not Cancel
    core.cancel("fd-other", "r2")  # not that peer's
    assert stats(core)["a"].queued == 1
    core.cancel(FD, "r2")
    assert stats(core)["a"].queued == 0
    assert core.done(FD, p.Done(request_id="r1")) == []


def test_failed_request_without_usage_is_refunded() -> None:
    core = core_with_engine()
    core.submit(FD, submit("r1", prompt=100))
    core.done(FD, p.Done(request_id="r1", outcome=p.Outcome.ENGINE_ERROR))
    assert core.policy.counter("a") == 0


# --------------------------------------------------------------------------- quotas


def test_rpm_quota_gives_429_with_retry_after_and_refills() -> None:
    clock = FakeClock()
    core = core_with_engine(make_cfg(tenants=[{"name": "a", "rpm": 60, "burst": 2},
                                              {"name": "b"}]), slots=10, clock=clock)
    assert dispatched(core.submit(FD, submit("r1")))
    assert dispatched(core.submit(FD, submit("r2")))
    [r] = rejected(core.submit(FD, submit("r3")))
    assert (r.http_status, r.code, r.retry_after_s) == (429, "rate_limit_exceeded", 1.0)
    assert dispatched(core.submit(FD, submit("b1", "b")))  # others unaffected
    clock.advance(1.0)
    assert dispatched(core.submit(FD, submit("r3")))  # the same id may retry
    assert rejected(core.submit(FD, submit("r4")))


def test_tpm_quota_charges_the_maximum_then_refunds_unused_tokens() -> None:
    clock = FakeClock()
    core = core_with_engine(make_cfg(tenants=[{"name": "a", "tpm": 600}]), slots=10, clock=clock)
    assert dispatched(core.submit(FD, submit("r1", prompt=100, out=400)))  # takes 500 of 600
    [r] = rejected(core.submit(FD, submit("r2", prompt=100, out=100)))
    # 100 tokens short at 10 tokens/s
    assert r.code == "rate_limit_exceeded" and r.retry_after_s == 10.0
    core.done(FD, p.Done(request_id="r1", prompt_tokens=100, completion_tokens=20))
    assert dispatched(core.submit(FD, submit("r2", prompt=100, out=100)))  # 380 refunded


def test_a_request_larger_than_the_bucket_runs_when_it_is_full() -> None:
    clock = FakeClock()
    core = core_with_engine(make_cfg(tenants=[{"name": "a", "tpm": 60}]), slots=10, clock=clock)
    assert dispatched(core.submit(FD, submit("big", prompt=500, out=500)))
    [r] = rejected(core.submit(FD, submit("next", prompt=1, out=1)))
    assert r.retry_after_s and r.retry_after_s > 60  # in debt: 942 tokens at 1 token/s


def test_quota_change_at_run_time_takes_effect() -> None:
    core = core_with_engine(slots=10)
    core.tenants.set_rate("a", rpm=60, burst=1)
    assert dispatched(core.submit(FD, submit("r1")))
    assert rejected(core.submit(FD, submit("r2")))
    core.tenants.set_rate("a", unlimited=True)
    assert dispatched(core.submit(FD, submit("r2")))


# --------------------------------------------------------------------------- deadlines, tenants


def test_queue_deadline_rejects_with_503() -> None:
    clock = FakeClock()
    cfg = make_cfg(tenants=[{"name": "a"}, {"name": "b", "queue_deadline_s": 1}],
                   queue_deadline_s=5)
    core = core_with_engine(cfg, slots=1, clock=clock)
    core.submit(FD, submit("run"))
    core.submit(FD, submit("a1", "a"))
    core.submit(FD, submit("b1", "b"))
    clock.advance(1.5)
    [r] = rejected(core.tick())
    assert (r.request_id, r.http_status, r.code) == ("b1", 503, "queue_timeout")
    assert r.retry_after_s == 1.0
    clock.advance(4)
    assert [r.request_id for r in rejected(core.tick())] == ["a1"]
    assert core.model_infos()[0].queued == 0


def test_removed_tenant_loses_its_queue_but_not_its_streams() -> None:
    core = core_with_engine(slots=1)
    core.submit(FD, submit("a1", "a"))
    core.submit(FD, submit("a2", "a"))
    core.submit(FD, submit("b1", "b"))
    core.tenants.remove("a")
    sends = core.tick()
    assert [(r.request_id, r.code) for r in rejected(sends)] == [("a2", "invalid_api_key")]
    assert dispatched(core.done(FD, p.Done(request_id="a1"))) == ["b1"]
    assert [t.name for t in core.tenant_stats()] == ["b"]


def test_auth_none_has_one_implicit_tenant() -> None:
    core = core_with_engine(make_cfg(tenants=[], auth="none"))
    assert [t.name for t in core.tenant_stats()] == ["default"]
    assert dispatched(core.submit(FD, submit("r1", "default")))
    assert dispatched(core.submit(FD, submit("r2", "")))


# --------------------------------------------------------------------------- peers


def test_peer_gone_drops_its_queue_and_frees_its_slots() -> None:
    core = core_with_engine(slots=2)
    core.submit("fd-1", submit("x1", prompt=10))
    core.submit("fd-1", submit("x2", prompt=10))
    core.submit("fd-1", submit("x3"))
    core.progress("x1", 7)
    core.submit("fd-2", submit("y1", "b"))
    core.submit("fd-2", submit("y2", "b"))
    counter = core.policy.counter("a")
    sends = core.peer_gone("fd-1")
    assert dispatched(sends) == ["y1", "y2"]
    assert all(s.peer == "fd-2" for s in sends)
    assert core.policy.counter("a") == counter  # usage so far stays charged
    s = stats(core)["a"]
    assert (s.queued, s.inflight, s.tokens_in, s.tokens_out) == (0, 0, 20, 7)
    # the lost request's real usage, if it turns up later, corrects the charge
    core.done("fd-1", p.Done(request_id="x1", prompt_tokens=10, completion_tokens=9))
    assert core.policy.counter("a") == counter + 2 * 2
    assert stats(core)["a"].tokens_out == 9


def test_supervisor_gone_keeps_engines_dispatchable() -> None:
    core = core_with_engine(slots=2)
    core.peer_gone(SV)
    assert dispatched(core.submit(FD, submit("r1")))
    # a new supervisor instance takes the engines over; what it does not list is gone
    core.engines_update("sv-new", [engine("m-1", max_num_seqs=1)])
    assert [e.engine_id for e in core.engine_statuses()] == ["m-1"]


def test_hello_after_scheduler_restart_restores_queue_and_inflight() -> None:
    core = core_with_engine(slots=3)  # a fresh core: it knows nothing of the front door
    hello = p.Hello(
        role="frontdoor", instance="i1", protocol_version=p.PROTOCOL_VERSION,
        queued=[p.QueuedRecord(request_id="q2", tenant="a", model="m", prompt_tokens=5,
                               max_tokens=5, submitted_at=20.0),
                p.QueuedRecord(request_id="q1", tenant="b", model="m", prompt_tokens=5,
                               max_tokens=5, submitted_at=10.0),
                p.QueuedRecord(request_id="q3", tenant="a", model="m", prompt_tokens=5,
                               max_tokens=5, submitted_at=30.0)],
        inflight=[p.InflightRecord(request_id="i1", tenant="a", model="m", engine_id="m-0",
                                   prompt_tokens=50, max_tokens=10, completion_tokens=4)],
        undelivered_done=[p.Done(request_id="d1", tenant="a", model="m", prompt_tokens=7,
                                 completion_tokens=3)],
    )
    sends = core.peer_hello(FD, hello)
    # one slot held by the adopted stream: two left.  "a" was charged the output of its
    # undelivered Done, so "b" goes first; "a"'s own requests keep their submit order.
    assert dispatched(sends) == ["q1", "q2"]
    assert core.engine_window("m-0") == (3, 3)
    assert stats(core)["a"].tokens_out == 3 and stats(core)["a"].tokens_in == 7
    counter_a = core.policy.counter("a")
    core.progress("i1", 6)  # only the new tokens are charged
    assert core.policy.counter("a") == counter_a + 2 * 2
    # the same Hello again changes nothing (the Done is not applied twice)
    core.peer_hello(FD, hello)
    assert stats(core)["a"].tokens_out == 3


def test_hello_requeues_a_dispatch_that_never_arrived() -> None:
    core = core_with_engine(slots=1)
    assert dispatched(core.submit(FD, submit("r1", prompt=40, at=5.0)))
    core.submit(FD, submit("r2", "b", at=6.0))
    hello = p.Hello(role="frontdoor", instance="i", protocol_version=p.PROTOCOL_VERSION,
                    queued=[p.QueuedRecord(request_id="r1", tenant="a", model="m",
                                           prompt_tokens=40, max_tokens=10, submitted_at=5.0),
                            p.QueuedRecord(request_id="r2", tenant="b", model="m",
                                           prompt_tokens=10, max_tokens=10, submitted_at=6.0)])
    sends = core.peer_hello(FD, hello)
    # r1's charge was refunded (then, back in line, "a" is lifted to "b"'s counter):
    # it keeps its place before r2 and is charged once, not twice
    assert dispatched(sends) == ["r1"]
    assert stats(core)["a"].inflight == 1 and stats(core)["b"].queued == 1
    assert core.policy.counter("a") == core.policy.counter("b") + 40


def test_hello_forgets_what_the_front_door_no_longer_holds() -> None:
    core = core_with_engine(slots=1)
    core.submit(FD, submit("r1"))
    core.submit(FD, submit("r2"))
    sends = core.peer_hello(FD, p.Hello(role="frontdoor", instance="i",
                                        protocol_version=p.PROTOCOL_VERSION))
    assert sends == []
    assert stats(core)["a"].queued == 0 and stats(core)["a"].inflight == 0


def test_supervisor_hello_reports_engines() -> None:
    core = SchedulerCore(make_cfg(), FakeClock())
    core.submit(FD, submit("r1"))
    sends = core.peer_hello(SV, p.Hello(role="supervisor", instance="s",
                                        protocol_version=p.PROTOCOL_VERSION,
                                        engines=[engine()]))
    assert dispatched(sends) == ["r1"]


# --------------------------------------------------------------------------- views and state


def test_model_infos_show_the_best_engine_state_and_why_not_ready() -> None:
    cfg = make_cfg(models=[{"name": "m"}, {"name": "lazy", "preload": False}])
    core = SchedulerCore(cfg, FakeClock())
    core.engines_update(SV, [engine("m-0", state="failed", last_error="CUDA OOM"),
                             engine("m-1", state="starting")])
    core.submit(FD, submit("r1"))
    m, lazy = core.model_infos()
    assert (m.state, m.reason, m.ready_engines, m.queued) == ("starting", "CUDA OOM", 0, 1)
    assert (lazy.state, lazy.preload, lazy.reason) == ("stopped", False, "no engine reported yet")
    sends = core.engines_update(SV, [engine("m-0", state="failed"), engine("m-1")])
    assert dispatched(sends) == ["r1"]
    m = core.model_infos()[0]
    assert (m.state, m.ready_engines, m.inflight, m.engines) == ("ready", 1, 1, ["m-0", "m-1"])


def test_least_loaded_engine_first() -> None:
    core = SchedulerCore(make_cfg(), FakeClock())
    core.engines_update(SV, [engine("m-0", max_num_seqs=4), engine("m-1", max_num_seqs=2)])
    engines = [s.msg.engine_id for i in range(6)
               for s in core.submit(FD, submit(f"r{i}"))]
    assert engines == ["m-0", "m-1", "m-0", "m-1", "m-0", "m-0"]


def test_export_import_round_trip_keeps_counters_quotas_and_tenants() -> None:
    clock = FakeClock()
    cfg = make_cfg(tenants=[{"name": "a", "rpm": 6, "burst": 1}, {"name": "b"}])
    sim = Sim(cfg, clock=clock)
    for i in range(6):
        sim.submit(f"r{i}", "b", 10, 5)
    sim.submit("a0", "a", 10, 5)
    for _ in range(10):
        sim.step()
    key = sim.core.tenants.add("c", weight=2)
    sim.core.tenants.remove("b")
    sim.core.tick()
    state = json.loads(json.dumps(sim.core.export_state()))
    again = SchedulerCore(cfg, clock)
    again.import_state(state)
    assert again.export_state() == state
    assert again.policy.counter("a") == sim.core.policy.counter("a") > 0
    assert [t.name for t in again.tenant_stats()] == ["a", "c"]
    assert again.tenants.tenant_for_key(key) == "c"
    assert rejected(again.submit(FD, submit("a1", "a")))  # the rpm bucket is still empty
    # the restored counter is not forgotten: "c" arriving fresh is lifted, "a" keeps its debt
    assert again.policy.counter("a") == sim.core.policy.counter("a")


def test_export_is_stable_while_nothing_happens() -> None:
    clock = FakeClock()
    core = core_with_engine(clock=clock)
    core.submit(FD, submit("r1"))
    first = core.export_state()
    clock.advance(100)
    core.tick()
    assert core.export_state() == first


# --------------------------------------------------------------------------- reconciliation


class FrontDoor:
    """What a front door believes, with messages to and from the scheduler sometimes lost."""

    def __init__(self, core: SchedulerCore) -> None:
        self.core = core
        self.queued: dict[str, p.QueuedRecord] = {}
        self.inflight: dict[str, p.InflightRecord] = {}
        self.undelivered: list[p.Done] = []
        self.n = 0

    def receive(self, sends: list, lose: bool = False) -> None:
        for s in sends:
            if lose:
                continue
            if isinstance(s.msg, p.Dispatch) and s.msg.request_id in self.queued:
                q = self.queued.pop(s.msg.request_id)
                self.inflight[q.request_id] = p.InflightRecord(
                    request_id=q.request_id, tenant=q.tenant, model=q.model,
                    engine_id=s.msg.engine_id, prompt_tokens=q.prompt_tokens,
                    max_tokens=q.max_tokens)
            elif isinstance(s.msg, p.Reject):
                self.queued.pop(s.msg.request_id, None)

    def submit(self, tenant: str, lose_reply: bool) -> None:
        self.n += 1
        rid = f"r{self.n}"
        self.queued[rid] = p.QueuedRecord(request_id=rid, tenant=tenant, model="m",
                                          prompt_tokens=10, max_tokens=10, submitted_at=self.n)
        self.receive(self.core.submit(FD, submit(rid, tenant, at=self.n)), lose=lose_reply)

    def finish_oldest(self, lose: bool) -> None:
        if not self.inflight:
            return
        rid = next(iter(self.inflight))
        self.inflight.pop(rid)
        done = p.Done(request_id=rid, prompt_tokens=10, completion_tokens=10)
        if lose:
            self.undelivered.append(done)
        else:
            self.receive(self.core.done(FD, done))

    def hello(self) -> None:
        h = p.Hello(role="frontdoor", instance="i", protocol_version=p.PROTOCOL_VERSION,
                    queued=list(self.queued.values()), inflight=list(self.inflight.values()),
                    undelivered_done=list(self.undelivered))
        self.undelivered = []
        self.receive(self.core.peer_hello(FD, h))


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["submit", "finish", "hello"]),
                              st.sampled_from(["a", "b"]), st.booleans()), max_size=50),
       restart=st.booleans())
def test_hello_makes_the_core_agree_with_the_front_door(ops, restart: bool) -> None:
    clock = FakeClock()
    core = core_with_engine(slots=3, clock=clock)
    fd = FrontDoor(core)
    for op, tenant, lose in ops:
        if op == "submit":
            fd.submit(tenant, lose_reply=lose)
        elif op == "finish":
            fd.finish_oldest(lose)
        else:
            fd.hello()
    if restart:  # the scheduler restarts: a fresh core, state from the file, then Hello
        state = core.export_state()
        core = core_with_engine(slots=3, clock=clock)
        core.import_state(state)
        fd.core = core
    fd.hello()
    s = stats(core)
    assert sum(t.inflight for t in s.values()) == len(fd.inflight)
    assert sum(t.queued for t in s.values()) == len(fd.queued)
    assert core.engine_window("m-0") == (3, len(fd.inflight))
    if fd.queued:  # still waiting only because the engine is full
        assert len(fd.inflight) == 3
