"""The role of a peer is the socket it came in on (issue 14 item 4): what ``screen``
lets through from each socket, and what the control handler lets each socket do."""

from __future__ import annotations

import pytest

from infergridd import protocol as p
from infergridd.scheduler.control import ControlHandler
from infergridd.scheduler.endpoints import PEER_ROLES, Refused, role_of, screen
from infergridd.transport.access import PeerCred, SocketAccess

V = p.PROTOCOL_VERSION
OPEN = SocketAccess("frontdoor", gid=None)  # the binder's own uid is always admitted
ME = PeerCred(__import__("os").geteuid(), 0, 1)


def _engine(endpoint: str = "http://evil:1") -> p.EngineStatus:
    return p.EngineStatus(engine_id="demo-0", model="demo", kind="sim", state=p.EngineState.READY,
                          endpoint=endpoint, api_key="k")


def test_a_front_door_cannot_say_hello_as_a_supervisor() -> None:
    hello = p.Hello(role="supervisor", instance="x", protocol_version=V, engines=[_engine()])
    with pytest.raises(Refused, match="for frontdoors"):
        screen("frontdoor", "fd-x", hello, ME, OPEN)


def test_identities_carry_their_sockets_prefix() -> None:
    """A front door naming itself like a supervisor would share its peer-table entry."""
    hello = p.Hello(role="frontdoor", instance="x", protocol_version=V)
    assert screen("frontdoor", "sv-abc", hello, ME, OPEN) is None
    assert screen("supervisor", "fd-abc", p.Heartbeat(instance="x"), ME, OPEN) is None
    assert role_of("fd-1") == "frontdoor" and role_of("sv-1") == "supervisor"
    assert role_of("ctl-1") is None


def test_leftovers_of_a_replaced_connection_are_dropped_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    """After a scheduler pause its peers reconnect under the same identity; libzmq
    renames the old connection ``\\x00...`` and delivers what was queued on it.
    Dropped, and not as a warning: 113 such lines after a 10 s SIGSTOP read like an attack."""
    caplog.set_level("DEBUG", logger="infergrid.scheduler")
    done = p.Done(request_id="r", outcome=p.Outcome.OK)
    assert screen("frontdoor", "\x00k\x8bEg", done, ME, OPEN) is None
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    caplog.clear()
    assert screen("frontdoor", "zz-k", done, ME, OPEN) is None  # a wrong prefix still warns
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_a_hello_keeps_only_its_roles_state() -> None:
    q = p.QueuedRecord(request_id="r", tenant="t", model="demo", prompt_tokens=1,
                       max_tokens=1, submitted_at=0.0)
    fd = screen("frontdoor", "fd-x", p.Hello(role="frontdoor", instance="x",
                                             protocol_version=V, queued=[q],
                                             engines=[_engine()]), ME, OPEN)
    assert isinstance(fd, p.Hello) and fd.engines == [] and fd.queued == [q]
    sv = screen("supervisor", "sv-x", p.Hello(role="supervisor", instance="x",
                                              protocol_version=V, queued=[q],
                                              engines=[_engine("http://127.0.0.1:9")]),
                ME, SocketAccess("supervisor", gid=None))
    assert isinstance(sv, p.Hello) and sv.queued == [] and len(sv.engines) == 1


def test_each_role_sends_only_its_own_messages() -> None:
    upd = p.EngineUpdate(instance="x", engines=[_engine()])
    assert screen("frontdoor", "fd-x", upd, ME, OPEN) is None
    res = p.EngineCommandResult(command_id="c", engine_id="demo-0", ok=True)
    assert screen("frontdoor", "fd-x", res, ME, OPEN) is None
    sub = p.Submit(request_id="r", tenant="t", model="demo", prompt_tokens=1, max_tokens=1)
    sv = SocketAccess("supervisor", gid=None)
    assert screen("supervisor", "sv-x", sub, ME, sv) is None
    assert screen("supervisor", "sv-x", upd, ME, sv) is upd
    assert screen("frontdoor", "fd-x", sub, ME, OPEN) is sub
    assert set(PEER_ROLES) == {"frontdoor", "supervisor"}


def test_a_hello_from_a_process_the_socket_does_not_admit_is_refused() -> None:
    stranger = PeerCred(uid=54321, gid=54321, pid=7)
    hello = p.Hello(role="frontdoor", instance="x", protocol_version=V)
    with pytest.raises(Refused, match="uid 54321"):
        screen("frontdoor", "fd-x", hello, stranger, OPEN)


class _Ctx:
    """Just enough CommandContext for a refusal: a command that ran would need more."""


def _ctl(command: str, **args: object) -> bytes:
    return p.encode(p.ControlRequest(command=command, args=dict(args), protocol_version=V))


def test_the_read_only_socket_refuses_writes() -> None:
    h = ControlHandler(_Ctx(), after_write=lambda: None)  # type: ignore[arg-type]
    r = h.handle(_ctl("tenant.add", name="mallory"), writable=False)
    assert isinstance(r, p.ControlReply) and not r.ok and r.exit_code == 1
    assert "permission denied" in r.error and "infergrid-admin" in r.error


def test_a_stranger_gets_nothing_not_even_a_read() -> None:
    h = ControlHandler(_Ctx(), after_write=lambda: None)  # type: ignore[arg-type]
    for cmd in ("status", "tenant.add"):
        r = h.handle(_ctl(cmd), writable=True, admitted=False)
        assert isinstance(r, p.ControlReply) and not r.ok and "permission denied" in r.error
