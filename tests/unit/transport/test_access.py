"""One socket per role (DESIGN §10): the mode and group each socket gets, the peer
credentials libzmq hands over on IPC, and who ``SocketAccess.admits``."""

from __future__ import annotations

import grp
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from infergridd.transport import access
from infergridd.transport.access import GroupCache, PeerCred, SocketAccess, peer_cred
from infergridd.transport.sockets import bind_router


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    p = Path(tempfile.mkdtemp(prefix="igacc-", dir="/tmp"))
    yield p
    shutil.rmtree(p, ignore_errors=True)


def test_role_groups_are_one_per_socket() -> None:
    """Every role has its own group: none shares one with another (a shared group is how
    the front door could reach the supervisor's and the admin's sockets before)."""
    groups = list(access.ROLE_GROUPS.values())
    assert len(set(groups)) == len(groups)
    assert access.ROLE_GROUPS["control"] == "infergrid-admin"


def test_socket_without_its_group_is_owner_only(short_tmp: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(access.ROLE_GROUPS, "frontdoor", "no-such-group-for-infergrid")
    ctx = zmq.asyncio.Context()
    path = short_tmp / "scheduler" / "frontdoor.sock"
    sock = bind_router(ctx, path, "frontdoor")  # makes the directory too
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o007 == 0  # made 0750
    finally:
        sock.close(0)
        ctx.term()


def test_socket_with_its_group_is_0660_to_that_group(short_tmp: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A group this process belongs to (the packaged scheduler is in every role group)."""
    mine = grp.getgrgid(os.getegid()).gr_name
    monkeypatch.setitem(access.ROLE_GROUPS, "supervisor", mine)
    ctx = zmq.asyncio.Context()
    path = short_tmp / "supervisor.sock"
    sock = bind_router(ctx, path, "supervisor")
    try:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getegid()
    finally:
        sock.close(0)
        ctx.term()
    # a group that exists but we are not in: never chgrp'd to it, owner only
    other = next((g for g in grp.getgrall() if g.gr_gid != os.getegid()
                  and g.gr_gid not in os.getgroups()), None)
    if other is not None:
        monkeypatch.setitem(access.ROLE_GROUPS, "supervisor", other.gr_name)
        with caplog.at_level(logging.WARNING, logger="infergrid.transport"):
            assert access.role_gid("supervisor") is None
        assert f"group {other.gr_name} exists but this process" in caplog.text
        assert SocketAccess.for_role("supervisor").mode == 0o600


def test_peer_credentials_come_with_every_ipc_message(short_tmp: Path) -> None:
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.bind(f"ipc://{short_tmp / 's.sock'}")
    d = ctx.socket(zmq.DEALER)
    d.connect(f"ipc://{short_tmp / 's.sock'}")
    d.send(b"x")
    assert r.poll(5000)
    frames = r.recv_multipart(copy=False)
    assert peer_cred(frames[1]) == PeerCred(os.getuid(), os.getgid(), os.getpid())
    for s in (r, d):
        s.close(0)
    ctx.term()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="a second uid needs root and setpriv")
def test_peer_credentials_are_the_other_process(short_tmp: Path) -> None:
    """The kernel's view of the connecting process, not ours and not what it says."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    path = short_tmp / "s.sock"
    r.bind(f"ipc://{path}")
    path.chmod(0o666)
    short_tmp.chmod(0o755)
    code = (f"import zmq,time; d=zmq.Context().socket(zmq.DEALER); d.connect('ipc://{path}');"
            "d.send(b'x'); time.sleep(1)")
    child = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              sys.executable, "-c", code])
    try:
        assert r.poll(10000)
        cred = peer_cred(r.recv_multipart(copy=False)[1])
        assert cred == PeerCred(65534, 65534, child.pid)
        assert not SocketAccess("control", gid=None).admits(cred)
    finally:
        child.wait(10)
        r.close(0)
        ctx.term()


class FakeGroups(GroupCache):
    def __init__(self, table: dict[int, set[int]]) -> None:
        super().__init__()
        self.table = table

    def of(self, uid: int, gid: int) -> frozenset[int]:
        return frozenset(self.table.get(uid, set()) | {gid})


def test_admits_root_ourselves_and_the_group_only() -> None:
    groups = FakeGroups({5001: {777}, 5002: {778}})
    fd = SocketAccess("frontdoor", gid=777)
    me = os.geteuid()
    assert fd.admits(PeerCred(0, 0, 1), groups)
    assert fd.admits(PeerCred(me, 12345, 1), groups)
    assert fd.admits(PeerCred(5001, 100, 1), groups)  # supplementary member
    assert fd.admits(PeerCred(5003, 777, 1), groups)  # primary group
    assert not fd.admits(PeerCred(5002, 100, 1), groups)  # another role's user
    owner_only = SocketAccess("frontdoor", gid=None)
    assert not owner_only.admits(PeerCred(5001, 777, 1), groups)
    assert owner_only.mode == 0o600 and fd.mode == 0o660
    assert fd.admits(None, groups)  # no credentials on this platform: the mode is the gate


def test_peer_cred_of_garbage_is_none() -> None:
    class Frame:
        def __init__(self, addr: str) -> None:
            self.addr = addr

        def get(self, name: str) -> str:
            return self.addr

    assert peer_cred(Frame("localhost:1:2:3")) == PeerCred(1, 2, 3)  # type: ignore[arg-type]
    assert peer_cred(Frame("tcp://1.2.3.4:5")) is None  # type: ignore[arg-type]
    assert peer_cred(Frame("a:b:c:d")) is None  # type: ignore[arg-type]
