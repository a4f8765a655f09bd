"""The systemd variant's pure parts (``chaos_booted``): its schedule, and the judge
with its fault kinds (a fault on ``all`` engines reaches every model)."""

from __future__ import annotations

from infergridd.bench.chaos_booted import SYSTEMD_CRASH_KINDS, SYSTEMD_MAY_FAIL, systemd_schedule
from infergridd.bench.chaos_faults import Fault
from infergridd.bench.chaos_load import Result
from infergridd.bench.chaos_verdict import judge


def test_schedule_is_seeded_and_has_every_kind_once() -> None:
    a = systemd_schedule(1, 120.0, ["chat", "code", "slow"])
    assert [f.line() for f in a] == [f.line() for f in systemd_schedule(1, 120, ["chat", "code",
                                                                                  "slow"])]
    assert sorted(f.kind for f in a) == sorted(SYSTEMD_MAY_FAIL)
    assert all(10.0 <= f.at <= 0.85 * 120 for f in a)
    assert [f.at for f in a] == sorted(f.at for f in a)


def _failed(model: str, t0: float) -> Result:
    return Result(rid=1, tenant="acme", model=model, stream=True, bad=None, t0=t0, t1=t0 + 1,
                  status=200, cause="conn_lost", ends=1)


def _at(kind: str, target: str, t0: float) -> Fault:
    return Fault(at=t0, kind=kind, target=target, t0=t0, t1=t0 + 2, applied=True)


def test_judge_with_the_systemd_kinds() -> None:
    kill_all = _at("kill9_supervisor_unit", "all", 10.0)
    ok = judge([_failed("code", 9.5)], [kill_all], SYSTEMD_MAY_FAIL, SYSTEMD_CRASH_KINDS)
    assert ok["violations"] == [] and ok["failed_by_fault"] == {"kill9_supervisor_unit": 1}
    # arrived well after the crash: not excused
    late = judge([_failed("code", 14.0)], [kill_all], SYSTEMD_MAY_FAIL, SYSTEMD_CRASH_KINDS)
    assert len(late["violations"]) == 1
    # a scheduler restart by systemctl fails nothing
    restart = _at("restart_scheduler", "scheduler", 10.0)
    bad = judge([_failed("chat", 9.5)], [restart], SYSTEMD_MAY_FAIL, SYSTEMD_CRASH_KINDS)
    assert len(bad["violations"]) == 1 and "restart_scheduler" in bad["violations"][0]
    # the memory limit reaches only its model's requests
    oom = _at("memory_limit", "slow", 10.0)
    other = judge([_failed("chat", 9.5)], [oom], SYSTEMD_MAY_FAIL, SYSTEMD_CRASH_KINDS)
    assert len(other["violations"]) == 1
