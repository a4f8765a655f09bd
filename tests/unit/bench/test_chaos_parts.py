"""The chaos harness's pure parts (issue 16): the seeded plan and schedule, the judge of
client endings, the counter check and the traceback scan — each shown able to fail."""

from __future__ import annotations

from collections import Counter
from typing import Any

from infergridd.bench.chaos_faults import MAY_FAIL, Fault, schedule
from infergridd.bench.chaos_load import Result, plan
from infergridd.bench.chaos_verdict import judge
from infergridd.bench.chaos_watch import Sample, Watch, tracebacks

TENANTS = {"flood": "k1", "acme": "k2", "beta": "k3"}


def test_plan_is_seeded_and_mixed_as_the_issue_asks() -> None:
    a = plan(7, 600, 5.0, ["chat", "code"], TENANTS)
    assert a == plan(7, 600, 5.0, ["chat", "code"], TENANTS)
    assert a != plan(8, 600, 5.0, ["chat", "code"], TENANTS)
    n = len(a)
    assert 2700 < n < 3300  # Poisson at 5/s over 600 s
    disconnect = sum(s.disconnect_after is not None for s in a) / n
    bad = sum(s.bad is not None for s in a) / n
    assert 0.08 < disconnect < 0.12, disconnect
    assert 0.01 < bad < 0.03, bad
    assert all(s.stream for s in a if s.disconnect_after is not None)
    kinds = Counter((s.stream, s.chat, s.prompt_words > 500) for s in a)
    assert len(kinds) == 8  # streaming or not x chat or completions x short or long
    assert Counter(s.tenant for s in a).most_common(1)[0][0] == "flood"


def test_schedule_has_every_fault_kind_inside_the_load_and_is_seeded() -> None:
    f = schedule(3, 150, ["chat", "code", "slow"], stop_s=10, hang_s=5)
    assert {x.kind for x in f} == set(MAY_FAIL)
    assert all(0.08 * 150 <= x.at <= 0.85 * 150 + 10 for x in f)
    assert [x.at for x in f] == sorted(x.at for x in f)
    assert [x.line() for x in f] == [x.line() for x in schedule(3, 150, ["chat", "code", "slow"],
                                                                   stop_s=10, hang_s=5)]
    assert len(schedule(3, 3600, ["chat"], 30, 20, rounds=12)) == 12 * len(MAY_FAIL)


def _res(rid: int, cause: str, model: str = "chat", t0: float = 10.0, t1: float = 12.0,
         ends: int = 1, detail: str = "", status: int = 200) -> Result:
    return Result(rid=rid, tenant="flood", model=model, stream=True, bad=None, t0=t0, t1=t1,
                  status=status, cause=cause, detail=detail, ends=ends)


def _fault(kind: str, target: str, t0: float = 11.0, t1: float = 11.5) -> Fault:
    return Fault(at=t0, kind=kind, target=target, t0=t0, t1=t1, applied=True)


def test_judge_accepts_what_design_allows_and_flags_the_rest() -> None:
    faults = [_fault("kill9_engine", "chat"), _fault("kill9_scheduler", "scheduler")]
    ok = judge([_res(1, "completed"), _res(2, "client_disconnect"),
                _res(3, "stream_error_retryable", "chat"),  # its own engine was killed
                _res(4, "error_retryable", detail="429 rate_limited: quota")], faults)
    assert ok["violations"] == [], ok["violations"]
    assert ok["failed_by_fault"] == {"kill9_engine": 1}
    bad = judge([
        _res(5, "stream_error_retryable", "code"),  # another model's engine: no excuse
        _res(6, "conn_lost", "chat", t0=20, t1=21),  # no fault at all
        _res(7, "timeout", ends=0),  # hung
        _res(8, "unclear", detail="500: <html>"),
        _res(9, "completed", ends=2),  # ended twice
        _res(10, "error_final", status=400, detail="400 invalid: a good request refused"),
    ], faults)
    text = "\n".join(bad["violations"])
    for rid in (5, 6, 7, 8, 9, 10):
        assert f"request {rid}" in text, (rid, text)
    # a crash fails what arrived before it was known, not what arrives much later
    late = judge([_res(12, "error_retryable", t0=12.0, t1=12.1, detail="502 x: y"),
                  _res(13, "error_retryable", t0=15.0, t1=15.1, detail="502 x: y")],
                 [_fault("kill9_engine", "chat", t0=11.0, t1=14.0)])
    assert late["failed_arriving_after_crash"] == {"kill9_engine": 1}
    assert len(late["violations"]) == 1 and "request 13" in late["violations"][0]
    # a scheduler restart must fail nothing (DESIGN §3)
    only_sched = judge([_res(11, "error_retryable", detail="503 x: y")],
                       [_fault("kill9_scheduler", "scheduler")])
    assert "kill9_scheduler" in only_sched["violations"][0]


class _NoApp:
    pass


def _watch(faults: list[Fault] | None = None) -> Watch:
    w = Watch(app=_NoApp(), faults=faults or [], t_base=0.0)  # type: ignore[arg-type]
    w.now = lambda: 100.0  # type: ignore[method-assign]
    return w


def _sample(t: float, pid: int = 1, **counters: float) -> Sample:
    tenants: dict[str, dict[str, Any]] = {n: {"name": n, "counter": c}
                                          for n, c in counters.items()}
    return Sample(t, tenants, [], pid)


def _feed(w: Watch, *samples: Sample) -> None:
    for s in samples:
        w.samples.append(s)
        w._check_counters(s)


def test_counter_going_down_is_a_violation_unless_it_may_not_have_been_saved() -> None:
    w = _watch()  # one scheduler process: a counter never goes down by more than a correction
    _feed(w, _sample(1, a=10, b=5), _sample(2, a=50, b=9), _sample(3, a=12, b=9))
    assert len(w.violations) == 1 and "tenant a" in w.violations[0], w.violations
    # settling estimates / refunding requests no engine ran: a dip of a few percent
    w = _watch()
    _feed(w, _sample(1, a=23305.5), _sample(2, a=22668.5))
    assert w.violations == []
    _feed(w, _sample(3, a=20000))  # 14% under what was seen at t=1: not a correction
    assert len(w.violations) == 1, w.violations
    # across a restart not even a dip: the restarted scheduler must show what was saved
    w = _watch([_fault("term_scheduler", "scheduler", t0=5, t1=6)])
    _feed(w, _sample(4.5, a=50), _sample(7, pid=2, a=49))
    assert len(w.violations) == 1, w.violations
    # across a SIGKILL: what was charged in the last persist window may be lost...
    w = _watch([_fault("kill9_scheduler", "scheduler", t0=5, t1=6)])
    _feed(w, _sample(1, a=10), _sample(4.5, a=50), _sample(7, pid=2, a=12))
    assert w.violations == []
    # ...but not what was saved before it
    _feed(w, _sample(8, pid=2, a=3))
    assert len(w.violations) == 1, w.violations
    # a SIGKILL while SIGSTOPped: the scheduler last ran (and saved) when it was stopped
    w = _watch([Fault(at=4, kind="stop_scheduler", target="scheduler", duration_s=30, t0=4,
                      t1=34, applied=True), _fault("kill9_scheduler", "scheduler", t0=15, t1=16)])
    _feed(w, _sample(1.5, a=10), _sample(3.5, a=50), _sample(17, pid=2, a=12))
    assert w.violations == []
    _feed(w, _sample(18, pid=2, a=3))
    assert len(w.violations) == 1, w.violations
    # across a SIGTERM nothing may be lost (the scheduler saves on the way out)
    w = _watch([_fault("term_scheduler", "scheduler", t0=5, t1=6)])
    _feed(w, _sample(4.5, a=50), _sample(7, pid=2, a=12))
    assert len(w.violations) == 1, w.violations
    # while the state dir could not be written, what was charged may be lost
    w = _watch([_fault("state_full", "state", t0=10, t1=12)])
    _feed(w, _sample(1, a=10), _sample(11, a=50), _sample(20, pid=2, a=12))
    assert w.violations == []
    _feed(w, _sample(21, pid=2, a=3))
    assert len(w.violations) == 1


def test_a_tenant_that_vanishes_is_a_violation() -> None:
    w = _watch()
    _feed(w, _sample(1, a=1, b=1), _sample(2, a=1))
    assert any("tenant b disappeared" in v for v in w.violations)


def test_tracebacks_are_found_with_their_exception() -> None:
    log = ("2026 INFO x: fine\nTraceback (most recent call last):\n  File \"a.py\", line 1\n"
           "    boom()\nRuntimeError: boom\n2026 INFO y: after\n")
    assert tracebacks(log) == ["RuntimeError: boom"]
    assert tracebacks("no trouble here\n") == []


def test_an_engine_started_twice_or_orphaned_is_a_violation() -> None:
    from infergridd.bench.chaos_app import Proc

    w = _watch()
    st = {"peers": [{"role": "supervisor"}], "engines": [{"pid": 10}, {"pid": 20}]}
    two = [Proc(10, "engine", "chat"), Proc(11, "engine", "chat"), Proc(20, "engine", "code")]
    w._check_engines(two, st, 0.0)
    w._check_engines(two, st, 3.0)  # a restart's overlap: not yet
    assert w.violations == []
    w._check_engines(two, st, 6.0)
    assert any("started twice" in v for v in w.violations), w.violations
    assert not any("orphan" in v for v in w.violations)
    w._check_engines(two, st, 27.0)  # pid 11 runs, and the supervisor never reported it
    assert any("11 runs but the supervisor" in v for v in w.violations), w.violations
    # while the supervisor is away nothing is compared
    w = _watch()
    for t in (0.0, 30.0):
        w._check_engines([Proc(11, "engine", "chat")], {"peers": [], "engines": []}, t)
    assert w.violations == []


def test_an_operator_command_retries_while_the_scheduler_does_not_answer() -> None:
    """The CI run's `tenant remove` met the schedule's own SIGSTOP of the scheduler and
    the fault counted as not applied; an operator retries, and so does the harness."""
    import asyncio
    import subprocess

    from infergridd.bench import chaos_faults as cf

    answers = [(1, "infergridctl: no answer from the scheduler at x within 5s"),
               (1, "infergridctl: tenant 'temp' already exists")]

    class _App:
        def ctl(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
            rc, err = answers.pop(0)
            return subprocess.CompletedProcess(list(args), rc, "", err)

    runner = cf.FaultRunner.__new__(cf.FaultRunner)
    runner.app = _App()  # type: ignore[assignment]
    asyncio.run(runner._ctl("tenant", "add", "temp"))  # retried, then found applied
    assert answers == []
    answers[:] = [(1, "infergridctl: tenant 'temp' already exists")]  # a first try: an error
    try:
        asyncio.run(runner._ctl("tenant", "add", "temp"))
    except RuntimeError as exc:
        assert "already exists" in str(exc)
    else:
        raise AssertionError("a first-try error must not pass")


def test_fast_path_flag_reaches_the_appliance_config() -> None:
    """``bench/chaos.py`` runs the appliance with ``frontdoor.fast_path`` on, as in the
    product, ``--no-fast-path`` with it off, and the config it writes is a valid one."""
    import importlib.util
    from pathlib import Path

    import yaml

    from infergridd.bench.chaos_app import chaos_config
    from infergridd.config import loads

    assert chaos_config(8000, 0.02)["frontdoor"]["fast_path"] is True
    cfg = chaos_config(8000, 0.02, fast_path=False)
    assert loads(yaml.safe_dump(cfg)).frontdoor.fast_path is False
    assert loads(yaml.safe_dump(chaos_config(8000, 0.02))).frontdoor.fast_path is True
    # the harness signals "the" front door: one process, whatever the cores
    assert loads(yaml.safe_dump(chaos_config(8000, 0.02))).frontdoor.processes == 1
    spec = importlib.util.spec_from_file_location(
        "chaos_cli", Path(__file__).resolve().parents[3] / "bench" / "chaos.py")
    assert spec and spec.loader
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    seen: list[bool] = []
    real = cli.run_chaos
    try:
        cli.run_chaos = lambda s: seen.append(s.fast_path) or {"violations": []}
        assert cli.main([]) == 0 and cli.main(["--no-fast-path"]) == 0
    finally:
        cli.run_chaos = real
    assert seen == [True, False]
