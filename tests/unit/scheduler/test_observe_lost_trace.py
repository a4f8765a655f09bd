"""A front door SIGKILLed while it held dispatched requests comes back (a new process,
same peer) without them: the core ends them LOST (seat freed, charge kept) and no Done
will ever come.  Their traces must say so — found by the systemd chaos run
(tests/systemd/test_chaos_live.py): ``infergridctl trace`` showed such requests as
dispatched and never done, exactly like a lost Done."""

from __future__ import annotations

import sys
from pathlib import Path

from infergridd import protocol as p
from infergridd.core.core import SchedulerCore
from infergridd.scheduler.observe import Observer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_scheduling_harness import FakeClock, engine, make_cfg, submit  # noqa: E402

FD, SV = "fd-test", "sv-test"


def test_a_request_its_front_door_lost_has_a_closed_trace(tmp_path: Path) -> None:
    cfg = make_cfg(models=[{"name": "m", "max_num_seqs": 4}], tenants=[{"name": "quiet"}])
    core = SchedulerCore(cfg, FakeClock())
    obs = Observer(core, tmp_path, wall=lambda: 1_796_000_400.0)
    core.engines_update(SV, [engine("m-0", max_num_seqs=4)])
    for rid in ("gone", "kept"):
        s = submit(rid, "quiet", "m")
        sends = core.submit(FD, s)
        obs.submitted(FD, s, sends)
        obs.sent(sends)
        assert obs.traces.get(rid).dispatched is not None
    # the front door's Hello lists only "kept" (still relayed); "gone" died with the old
    # process
    kept = p.InflightRecord(request_id="kept", tenant="quiet", model="m", prompt_tokens=3,
                            max_tokens=4, engine_id="m-0")
    hello = p.Hello(role="frontdoor", instance="y", protocol_version=p.PROTOCOL_VERSION,
                    inflight=[kept])
    obs.hello(FD, hello)
    sends = core.peer_hello(FD, hello)
    obs.hello_applied(hello, sends)
    assert core.books.lost("gone") is not None
    gone = obs.traces.get("gone")
    assert gone.done is not None and gone.outcome == "lost", gone
    assert obs.traces.get("kept").done is None  # still in flight, its Done will come


def test_a_request_of_a_front_door_gone_silent_has_a_closed_trace(tmp_path: Path) -> None:
    """The path the chaos run took: ``systemctl kill -s SIGKILL`` of the front door; its
    successor is a new peer (a new instance id), the old one expires (``peer_gone``)."""
    cfg = make_cfg(models=[{"name": "m", "max_num_seqs": 4}], tenants=[{"name": "quiet"}])
    core = SchedulerCore(cfg, FakeClock())
    obs = Observer(core, tmp_path, wall=lambda: 1_796_000_400.0)
    core.engines_update(SV, [engine("m-0", max_num_seqs=4)])
    s = submit("held", "quiet", "m")
    sends = core.submit(FD, s)
    obs.submitted(FD, s, sends)
    obs.sent(sends)
    other = submit("elsewhere", "quiet", "m")
    obs_sends = core.submit("fd-other", other)
    obs.submitted("fd-other", other, obs_sends)
    obs.sent(obs_sends)
    core.peer_gone(FD)
    obs.peer_gone(FD)
    t = obs.traces.get("held")
    assert t.done is not None and t.outcome == "lost" and "went silent" in t.notes[-1], t
    assert obs.traces.get("elsewhere").done is None  # another front door's: untouched
