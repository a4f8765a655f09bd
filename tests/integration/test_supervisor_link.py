"""The scheduler link: a restarted scheduler gets a fresh Hello; garbage is dropped."""

from __future__ import annotations

import time

from test_supervisor_lifecycle import FakeScheduler, Harness, _hello_from, h, sched  # noqa: F401

from infergridd import protocol as p


def test_scheduler_restart_hello_required_and_garbage(
        h: Harness, sched: FakeScheduler) -> None:  # noqa: F811
    h.start(h.config())
    ident, _ = _hello_from(sched, set())
    ready = sched.engine(p.EngineState.READY)
    # Garbage and an unexpected message must not hurt the link.
    sched.sock.send_multipart([ident, b"\x00garbage"])
    sched.send(ident, p.Submit(request_id="r", tenant="t", model="m", prompt_tokens=1,
                               max_tokens=1))
    sched.engine(p.EngineState.READY, 3)
    # HelloRequired -> a full Hello again, with the engine in it.
    n = len(sched.hellos)
    sched.send(ident, p.HelloRequired(instance=sched.instance))
    sched.wait_for(lambda _i, m: isinstance(m, p.Hello), 5)
    assert len(sched.hellos) == n + 1 and sched.hellos[-1][1].engines[0].state == "ready"
    # A new scheduler instance on the same path: its first heartbeat answer triggers Hello.
    sched.sock.close(0)
    time.sleep(0.2)
    new = FakeScheduler(h.dirs)
    try:
        new.wait_for(lambda _i, m: isinstance(m, p.Hello), 10)
        (_, hello), = new.hellos[:1]
        assert hello.engines[0].pid == ready.pid and hello.engines[0].state == "ready"
        assert new.engine(p.EngineState.READY, 5).pid == ready.pid
    finally:
        new.close()
    assert "dropped undecodable message" in h.log()
