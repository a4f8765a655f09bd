"""The front door's side of slot leases (frontdoor/link.py, core/leases.py).

A lease is used only under the scheduler that granted it, after that scheduler
welcomed our latest Hello, while it is reachable and nothing of ours waits for a
dispatch; every revoked id is given back (one already used had its Submit sent
first on the same pipe); the Submit and the Done of a leased request name it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import zmq.asyncio

from infergridd import protocol as p
from infergridd.frontdoor.link import FrontdoorLink
from infergridd.transport import peerlink

SCHED = "sched1"


def _lease(lid: str = "sched1-1", model: str = "m") -> p.LeaseInfo:
    return p.LeaseInfo(lease_id=lid, model=model, engine_id="m-0", endpoint="unix:/e",
                       api_key="k", priority_sign=1)


def _rec(rid: str = "r1") -> p.QueuedRecord:
    return p.QueuedRecord(request_id=rid, tenant="t", model="m", prompt_tokens=5,
                          max_tokens=8, submitted_at=1.0)


#: what the link put on the wire, decoded (the autouse fixture below)
_WIRE: list[p.Message] = []


@pytest.fixture(autouse=True)
def _wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record at the socket: the link's own ``send`` (and its ordering rules) runs."""
    _WIRE.clear()
    monkeypatch.setattr(peerlink, "send_nowait",
                        lambda sock, frames, *a, **k: _WIRE.append(p.decode(frames[-1])))


def _link(tmp_path: Path) -> tuple[FrontdoorLink, list[p.Message]]:
    link = FrontdoorLink(zmq.asyncio.Context.instance(), tmp_path / "fd.sock", "fd1",
                         lambda snap: None, leases=1)
    link.send_hello()
    link._on_message(p.Welcome(instance=SCHED, protocol_version=p.PROTOCOL_VERSION))
    return link, _WIRE


def test_the_hello_asks_for_leases_and_a_welcomed_grant_is_used_once(tmp_path: Path) -> None:
    async def go() -> None:
        link, sent = _link(tmp_path)
        hello = sent[0]
        assert isinstance(hello, p.Hello) and hello.leases == 1
        link._on_message(p.Leases(instance=SCHED, grant=[_lease()]))
        lease = link.take_lease("m", "t")
        assert lease is not None and link.take_lease("m", "t") is None
        d = link.start_leased(_rec(), lease, band=2)
        assert (d.engine_id, d.endpoint, d.api_key, d.engine_priority) == (
            "m-0", "unix:/e", "k", 2000)
        assert not isinstance(sent[-1], p.Submit)  # not before the engine POST is written
        await asyncio.sleep(0)  # the end of the loop's iteration
        sub = sent[-1]
        assert isinstance(sub, p.Submit) and (sub.lease_id, sub.engine_id) == ("sched1-1", "m-0")
        assert link.inflight["r1"].lease_id == "sched1-1"
        link.finish("r1", p.Outcome.OK, 5, 3)
        done = sent[-1]
        assert isinstance(done, p.Done) and done.lease_id == "sched1-1"
        assert link.fast_dispatches == 1
        link.close()

    asyncio.run(go())


def test_a_leased_submit_goes_before_any_later_word_of_its_request(tmp_path: Path) -> None:
    """The Submit waits for the end of the loop's iteration, but a Done (the engine failed
    at once), a lease given back or a Hello sent before then takes it along first: the
    scheduler must book the request before it reads anything that presumes it."""
    async def go() -> None:
        link, sent = _link(tmp_path)
        link._on_message(p.Leases(instance=SCHED, grant=[_lease(), _lease("sched1-2")]))
        for rid, then in (("r1", "done"), ("r2", "revoke")):
            n = len(sent)
            lease = link.take_lease("m", "t")
            assert lease is not None
            link.start_leased(_rec(rid), lease, band=0)
            if then == "done":
                link.finish(rid, p.Outcome.ENGINE_ERROR, 5, 0)
            else:  # the scheduler revoked the very lease it used
                link._on_message(p.Leases(instance=SCHED, revoke=[lease.lease_id]))
            kinds = [type(m).__name__ for m in sent[n:]]
            assert kinds == ["Submit", "Done" if then == "done" else "Leases"], kinds
            assert sent[n].request_id == rid  # type: ignore[union-attr]
        await asyncio.sleep(0)
        assert sum(isinstance(m, p.Submit) for m in sent) == 2  # each sent once
        link.close()

    asyncio.run(go())


def test_grants_of_another_scheduler_or_before_the_welcome_are_not_used(tmp_path: Path) -> None:
    link, sent = _link(tmp_path)
    link._on_message(p.Leases(instance="old-scheduler", grant=[_lease("old-1")]))
    assert link.take_lease("m", "t") is None
    link._on_message(p.Leases(instance=SCHED, grant=[_lease()]))
    link.send_hello()  # e.g. a reconnect: the scheduler drops our leases when it reads it
    assert link.take_lease("m", "t") is None
    link._on_message(p.Leases(instance=SCHED, grant=[_lease("sched1-2")]))  # sent before
    assert link.take_lease("m", "t") is None
    link._on_message(p.Welcome(instance=SCHED, protocol_version=p.PROTOCOL_VERSION))
    link._on_message(p.Leases(instance=SCHED, grant=[_lease("sched1-3")]))
    lease = link.take_lease("m", "t")
    assert lease is not None and lease.lease_id == "sched1-3"
    link.close()


def test_revoked_ids_all_go_back_and_leave_the_pool(tmp_path: Path) -> None:
    link, sent = _link(tmp_path)
    link._on_message(p.Leases(instance=SCHED, grant=[_lease("sched1-1"), _lease("sched1-2")]))
    used = link.take_lease("m", "t")
    assert used is not None
    link._on_message(p.Leases(instance=SCHED, revoke=["sched1-1", "sched1-2"]))
    back = sent[-1]
    assert isinstance(back, p.Leases) and back.instance == "fd1"
    assert back.revoke == ["sched1-1", "sched1-2"]
    assert link.take_lease("m", "t") is None
    link.close()


def test_no_lease_while_a_request_of_ours_waits_or_the_scheduler_is_away(tmp_path: Path) -> None:
    async def go() -> None:
        link, sent = _link(tmp_path)
        link._on_message(p.Leases(instance=SCHED, grant=[_lease()]))
        waiting = asyncio.ensure_future(link.submit(_rec("q")))
        await asyncio.sleep(0)
        assert link.take_lease("m", "t") is None  # q waits for the scheduler: it orders
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        link.last_heard = time.monotonic() - 60  # silent for a minute: away
        assert link.take_lease("m", "t") is None
        link.last_heard = time.monotonic()
        assert link.take_lease("m", "t") is not None
        link.close()

    asyncio.run(go())


def test_draining_gives_the_leases_back_with_a_hello_asking_none(tmp_path: Path) -> None:
    link, sent = _link(tmp_path)
    link._on_message(p.Leases(instance=SCHED, grant=[_lease()]))
    link.give_up_leases()
    hello = sent[-1]
    assert isinstance(hello, p.Hello) and hello.leases == 0
    assert link.take_lease("m", "t") is None
    link.close()


def test_a_lease_naming_the_tenant_heavy_is_not_for_it(tmp_path: Path) -> None:
    async def go() -> None:
        link, sent = _link(tmp_path)
        heavy = p.LeaseInfo(lease_id="sched1-1", model="m", engine_id="m-0",
                            endpoint="unix:/e", heavy=["flooder"])
        link._on_message(p.Leases(instance=SCHED, grant=[heavy]))
        assert link.take_lease("m", "flooder") is None
        lease = link.take_lease("m", "quiet")
        assert lease is not None and lease.lease_id == "sched1-1"
        assert link.start_leased(_rec(), lease, band=0).engine_priority is None  # none taken
        link.close()

    asyncio.run(go())


def test_a_busy_front_door_gives_its_leases_back_and_asks_again_once_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From LEASE_BUSY_AT requests of its own it holds none (one it cannot use would only
    keep a slot from the scheduler's dispatches): it gives them back and asks for none,
    returns a grant that crossed that message, and asks again only once it has been at
    LEASE_QUIET_AT for LEASE_QUIET_S (a closed-loop client dips between requests)."""
    from infergridd.frontdoor import link as link_mod

    monkeypatch.setattr(link_mod, "LEASE_QUIET_S", 0.05)
    busy_at, quiet_at = link_mod.LEASE_BUSY_AT, link_mod.LEASE_QUIET_AT

    def start(link: FrontdoorLink, i: int) -> None:
        link.started(_rec(f"r{i}"), p.Dispatch(request_id=f"r{i}", engine_id="m-0",
                                               endpoint="unix:/e"))

    def asks(sent: list[p.Message]) -> list[p.Leases]:
        return [m for m in sent if isinstance(m, p.Leases) and m.wants > 0]

    async def go() -> None:
        link, sent = _link(tmp_path)
        link._on_message(p.Leases(instance=SCHED, grant=[_lease()]))
        for i in range(busy_at - 1):
            start(link, i)
        assert not [m for m in sent if isinstance(m, p.Leases)]  # not busy yet
        start(link, busy_at - 1)
        busy = sent[-1]
        assert isinstance(busy, p.Leases) and (busy.revoke, busy.wants) == (["sched1-1"], 0)
        assert link.take_lease("m", "t") is None
        link._on_message(p.Leases(instance=SCHED, grant=[_lease("sched1-2")]))  # crossed it
        back = sent[-1]
        assert isinstance(back, p.Leases) and back.revoke == ["sched1-2"] and back.wants == -1
        link.send_hello()  # a reconnect while busy asks for none either
        assert isinstance(sent[-1], p.Hello) and sent[-1].leases == 0
        link._on_message(p.Welcome(instance=SCHED, protocol_version=p.PROTOCOL_VERSION))
        down = busy_at - quiet_at
        for k in range(down):  # a dip to LEASE_QUIET_AT ...
            link.finish(f"r{k}", p.Outcome.OK, 1, 1)
        start(link, 100)  # ... that ends at once (the client's next request)
        await asyncio.sleep(0.1)
        assert not asks(sent) and link.take_lease("m", "t") is None  # still busy
        link.finish("r100", p.Outcome.OK, 1, 1)  # down for good
        assert not asks(sent)  # not at once ...
        await asyncio.sleep(0.1)
        ask = asks(sent)  # ... but after LEASE_QUIET_S
        assert len(ask) == 1 and (ask[0].wants, ask[0].revoke) == (1, [])
        link._on_message(p.Leases(instance=SCHED, grant=[_lease("sched1-3")]))
        lease = link.take_lease("m", "t")
        assert lease is not None and lease.lease_id == "sched1-3"
        link.close()

    asyncio.run(go())
