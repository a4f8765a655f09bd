"""Request traces and usage events, driven through a real ``SchedulerCore`` the way the
scheduler daemon drives it (``observe.Observer``), and ``infergridctl trace`` on top."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from infergridd import protocol as p
from infergridd.core.core import SchedulerCore
from infergridd.scheduler.commands import CommandContext, CommandError, registry
from infergridd.scheduler.observe import Observer
from infergridd.scheduler.peers import PeerTable
from infergridd.scheduler.traces import Trace, TraceRing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_scheduling_harness import FakeClock, engine, make_cfg, submit  # noqa: E402

FD, SV = "fd-test", "sv-test"


class Wall:
    def __init__(self) -> None:
        self.t = 1_796_000_400.0

    def __call__(self) -> float:
        return self.t


def _world(tmp_path: Path, seats: int = 1) -> tuple[SchedulerCore, Observer, Wall, FakeClock]:
    clock = FakeClock()
    cfg = make_cfg(models=[{"name": "m", "max_num_seqs": seats}],
                   tenants=[{"name": "quiet"}, {"name": "flooder"}])
    core = SchedulerCore(cfg, clock)
    wall = Wall()
    obs = Observer(core, tmp_path, wall=wall)
    core.engines_update(SV, [engine("m-0", max_num_seqs=seats, supports_priority=True)])
    return core, obs, wall, clock


def _submit(core: SchedulerCore, obs: Observer, s: p.Submit) -> list[Any]:
    sends = core.submit(FD, s)
    obs.submitted(FD, s, sends)
    obs.sent(sends)
    return sends


def test_phases_and_why_it_waited(tmp_path: Path) -> None:
    core, obs, wall, clock = _world(tmp_path)
    _submit(core, obs, submit("f1", "flooder", "m", at=wall.t))
    wall.t += 0.01
    _submit(core, obs, submit("f2", "flooder", "m", at=wall.t))
    wall.t += 0.01
    q = submit("q1", "quiet", "m", at=wall.t - 0.002)
    sends = _submit(core, obs, q)
    assert not sends, "the one seat is the flooder's: the quiet request is queued"
    t = obs.traces.get("q1")
    assert t is not None and t.admitted == t.queued == wall.t and t.dispatched is None
    # who holds the seat, and that the quiet tenant's lower counter puts it first
    assert "engine seats full (m-0 1/1) held by flooder 1" in t.waited_because, t.waited_because
    assert "counters (lowest served first)" in t.waited_because
    assert obs.traces.get("f1").waited_because == ""  # dispatched at once: it did not wait
    # the flooder's first request ends; the quiet one goes next
    obs.progress([("f1", 1)])
    wall.t += 0.5
    clock.advance(0.5)
    d = p.Done(request_id="f1", tenant="flooder", model="m", prompt_tokens=7,
               completion_tokens=10, seq=1)
    obs.done(FD, d)
    sends = core.done(FD, d)
    obs.sent(sends)
    assert [s.msg.request_id for s in sends if isinstance(s.msg, p.Dispatch)] == ["q1"]
    assert t.dispatched == wall.t and t.engine_id == "m-0" and t.queue_wait_s == 0.5
    assert t.standing == "light"
    wall.t += 0.05
    obs.progress([("q1", 1)])
    wall.t += 0.1
    obs.progress([("q1", 4)])
    obs.progress([("q1", 4)])  # no new tokens: not a later last token
    wall.t += 0.01
    obs.done(FD, p.Done(request_id="q1", tenant="quiet", model="m", prompt_tokens=9,
                        completion_tokens=4, ttft_s=0.56, seq=2))
    offsets = [round(x - t.dispatched, 6) for x in (t.first_token, t.last_token, t.done)]
    assert offsets == [0.05, 0.15, 0.16]
    assert (t.outcome, t.prompt_tokens, t.completion_tokens) == ("ok", 9, 4)
    # usage: both Dones counted, by tenant
    rows = {r["tenant"]: r for r in obs.usage.query(None, None, ["tenant"])}
    assert rows["quiet"]["completion_tokens"] == 4 and rows["flooder"]["prompt_tokens"] == 7
    # the command and its rendering
    ctx = CommandContext(core=core, cfg=core.cfg, instance="t", started_at=0.0,
                         peers=PeerTable(), apply=lambda s: None, persist=lambda: None,
                         observe=obs)
    cls = registry()["trace"]
    one = cls({"request_id": "q1"}).execute(ctx)
    text = cls.render(one)
    for label in ("received", "admitted", "queued", "dispatched", "engine first token",
                  "last token", "done"):
        assert label in text, (label, text)
    assert "why it waited: engine seats full" in text and "(light)" in text
    listing = cls.render(cls({"request_id": "", "last": 2}).execute(ctx))
    assert listing.splitlines()[1].startswith("q1") and "f2" in listing
    try:
        cls({"request_id": "nope"}).execute(ctx)
    except CommandError as exc:
        assert "no trace of 'nope'" in str(exc)
    else:
        raise AssertionError("an unknown id must be refused")


def test_a_rejection_is_traced_and_counted(tmp_path: Path) -> None:
    core, obs, wall, _ = _world(tmp_path)
    sends = _submit(core, obs, submit("x", "quiet", "no-such-model", at=wall.t))
    assert any(isinstance(s.msg, p.Reject) for s in sends)
    t = obs.traces.get("x")
    assert t.rejected == wall.t and t.reject_code and t.admitted is None
    (row,) = obs.usage.query(None, None, ["tenant", "model"])
    assert (row["tenant"], row["model"], row["rejected"], row["requests"]) == (
        "quiet", "no-such-model", 1, 0)


def test_hello_after_a_restart_counts_undelivered_dones_once(tmp_path: Path) -> None:
    core, obs, wall, _ = _world(tmp_path)
    d = p.Done(request_id="a", tenant="quiet", model="m", prompt_tokens=5,
               completion_tokens=3, seq=4)
    obs.done(FD, d)
    assert obs.ack(FD, 4) == 3  # not on disk yet: not acknowledged
    obs.housekeeping()
    assert obs.ack(FD, 4) == 4
    obs.close()
    # a new scheduler: the front door did not see the ack and says Hello with the Done
    core2, obs2, _, _ = _world(tmp_path)
    hello = p.Hello(role="frontdoor", instance="x", protocol_version=p.PROTOCOL_VERSION,
                    undelivered_done=[d, p.Done(request_id="b", tenant="quiet", model="m",
                                                prompt_tokens=1, completion_tokens=1, seq=5)],
                    queued=[p.QueuedRecord(request_id="held", tenant="quiet", model="m",
                                           prompt_tokens=3, max_tokens=2,
                                           submitted_at=wall.t - 1)])
    obs2.hello(FD, hello)
    sends = core2.peer_hello(FD, hello)
    obs2.hello_applied(hello, sends)
    obs2.sent(sends)
    (row,) = obs2.usage.query(None, None, ["tenant"])
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (2, 6, 4)
    held = obs2.traces.get("held")
    assert held.via == "hello" and held.admitted is not None and held.dispatched is not None


def test_the_ring_is_bounded_and_keeps_the_first_trace() -> None:
    ring = TraceRing(keep=3)
    for i in range(5):
        ring.add(Trace(request_id=f"r{i}", tenant="a", model="m", received=float(i)))
    assert len(ring) == 3 and ring.get("r0") is None and ring.get("r4") is not None
    again = ring.add(Trace(request_id="r4", tenant="other", model="m"))
    assert again.tenant == "a"
    assert [t.request_id for t in ring.recent(2)] == ["r4", "r3"]


def test_the_tail_of_a_stream_comes_with_its_done(tmp_path: Path) -> None:
    """The front door drops its last Progress batch when the stream ends: the last token
    is then the Done's time, and the token count the Done's."""
    core, obs, wall, _ = _world(tmp_path, seats=2)
    _submit(core, obs, submit("r", "quiet", "m", at=wall.t))
    wall.t += 0.02
    obs.progress([("r", 1)])
    wall.t += 0.3
    obs.done(FD, p.Done(request_id="r", tenant="quiet", model="m", prompt_tokens=3,
                        completion_tokens=10, seq=1))
    t = obs.traces.get("r")
    assert t.first_token == wall.t - 0.3 and t.last_token == t.done == wall.t
    assert t.completion_so_far == 10


def test_a_long_queue_is_explained_from_per_tenant_counts(tmp_path: Path, monkeypatch) -> None:
    """Above ``DETAIL_MAX`` queued requests the reason costs tenants, not the queue."""
    from infergridd.core import waitreason

    monkeypatch.setattr(waitreason, "DETAIL_MAX", 1)
    core, obs, wall, _ = _world(tmp_path)
    for i in range(3):
        _submit(core, obs, submit(f"f{i}", "flooder", "m", at=wall.t + i))
    _submit(core, obs, submit("q", "quiet", "m", at=wall.t + 5))
    why = obs.traces.get("q").waited_because
    assert "engine seats full (m-0 1/1) held by flooder 1 (in flight over all models)" in why
    assert "3 queued for m (over all models per tenant: flooder 2, quiet 1)" in why, why
