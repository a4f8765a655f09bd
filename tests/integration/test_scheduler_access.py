"""Least privilege between the units (issue 14 item 4), against a real scheduler daemon:
one socket per peer role, the role taken from the socket (never from the Hello), a
read-only control socket, and the peer's kernel credentials checked behind each file's
mode.  The packaged groups do not exist here (one user runs everything, as under
``infergrid serve``), so every socket is 0600; the systemd tier checks the groups."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zmq
from appliance import DEMO_TENANTS, short_tmpdir, sim_model

from infergridd import protocol as p

V = p.PROTOCOL_VERSION
SOCKS = ("frontdoor.sock", "supervisor.sock", "control.sock", "control-ro.sock")
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
need_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                               reason="a second uid needs root and setpriv")


@pytest.fixture(scope="module")
def sched():
    root = short_tmpdir()
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "models": [sim_model()],
                                   "tenants": DEMO_TENANTS}))
    argv = [sys.executable, "-m", "infergridd.cli.infergridd", "scheduler", "--config", str(cfg),
            "--runtime-dir", str(root / "run"), "--state-dir", str(root / "state")]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    sd = root / "run" / "scheduler"
    deadline = time.monotonic() + 15
    while not all((sd / n).exists() for n in SOCKS):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield sd
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(root, ignore_errors=True)


def _dealer(path: Path, identity: bytes) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, identity)
    s.connect(f"ipc://{path}")
    return s


def _answer(s: zmq.Socket, timeout_ms: int = 5000) -> p.Message | None:
    return p.decode(s.recv()) if s.poll(timeout_ms) else None


def _ctl(path: Path, command: str, **args: object) -> p.ControlReply:
    s = _dealer(path, b"ctl-test")
    try:
        s.send(p.encode(p.ControlRequest(command=command, args=dict(args), protocol_version=V)))
        reply = _answer(s)
    finally:
        s.close(0)
    assert isinstance(reply, p.ControlReply), reply
    return reply


def _reachable(sched: Path) -> None:
    """Let another user reach the socket files (not use them): the directories 0o005 more."""
    for d in (sched.parent.parent, sched.parent, sched):
        d.chmod(d.stat().st_mode | 0o005)


def test_one_socket_per_role_each_owner_only_here(sched: Path) -> None:
    for name in SOCKS:
        st = (sched / name).stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, name
    assert not (sched.parent / "scheduler.sock").exists()


def test_front_door_socket_refuses_a_supervisors_hello(sched: Path) -> None:
    """Old: one scheduler.sock for both roles, and the Hello's role believed."""
    engine = p.EngineStatus(engine_id="demo-0", model="demo", kind="sim", state="ready",
                            endpoint="http://127.0.0.1:1", api_key="stolen")
    s = _dealer(sched / "frontdoor.sock", b"fd-mallory")
    try:
        s.send(p.encode(p.Hello(role="supervisor", instance="m", protocol_version=V,
                                engines=[engine])))
        w = _answer(s)
        assert isinstance(w, p.Welcome) and not w.accepted and "for frontdoors" in w.reason
        # welcomed as a front door, it still cannot report engines
        s.send(p.encode(p.Hello(role="frontdoor", instance="m", protocol_version=V,
                                engines=[engine])))
        w = _answer(s)
        assert isinstance(w, p.Welcome) and w.accepted
        s.send(p.encode(p.EngineUpdate(instance="m", engines=[engine])))
        time.sleep(0.3)
    finally:
        s.close(0)
    status = _ctl(sched / "control.sock", "status")
    assert status.ok and status.result["engines"] == [], status.result["engines"]


def test_supervisor_identity_on_the_front_door_socket_is_dropped(sched: Path) -> None:
    s = _dealer(sched / "frontdoor.sock", b"sv-mallory")
    try:
        s.send(p.encode(p.Hello(role="frontdoor", instance="m", protocol_version=V)))
        assert _answer(s, 1000) is None
    finally:
        s.close(0)


def test_read_only_socket_reads_but_never_writes(sched: Path) -> None:
    assert _ctl(sched / "control-ro.sock", "tenant.list").ok
    r = _ctl(sched / "control-ro.sock", "tenant.add", name="mallory")
    assert not r.ok and r.exit_code == 1 and "infergrid-admin" in r.error
    names = [t["name"] for t in _ctl(sched / "control.sock", "tenant.list").result]
    assert "mallory" not in names


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AS_NOBODY, sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=30)


@need_root
def test_another_user_cannot_connect_to_any_socket(sched: Path) -> None:
    """The file mode is the gate: connect() needs write permission on the socket."""
    _reachable(sched)
    for name in SOCKS:
        r = _as_nobody(f"import socket; s=socket.socket(socket.AF_UNIX);\n"
                       f"try:\n s.connect({str(sched / name)!r}); print('connected')\n"
                       f"except PermissionError: print('denied')")
        assert r.stdout.strip() == "denied", (name, r.stdout, r.stderr)


@need_root
def test_credentials_are_checked_behind_a_widened_mode(sched: Path) -> None:
    """A socket whose mode someone widened by hand still refuses a stranger: the scheduler
    checks the kernel's SO_PEERCRED of the sender (old: no check at all)."""
    _reachable(sched)  # not left to the test before it: each runs alone too
    ctl = sched / "control.sock"
    ctl.chmod(0o666)
    try:
        code = ("import zmq, infergridd.protocol as p\n"
                "s=zmq.Context().socket(zmq.DEALER); s.setsockopt(zmq.LINGER,0)\n"
                f"s.connect('ipc://{ctl}')\n"
                "s.send(p.encode(p.ControlRequest(command='tenant.add', args={'name':'eve'},"
                " protocol_version=p.PROTOCOL_VERSION)))\n"
                "print(p.decode(s.recv()).error if s.poll(5000) else 'no answer')")
        r = subprocess.run([*AS_NOBODY, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=30, env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert "permission denied" in r.stdout, (r.stdout, r.stderr)
    finally:
        ctl.chmod(0o600)
    names = [t["name"] for t in _ctl(ctl, "tenant.list").result]
    assert "eve" not in names
