"""The scheduler daemon on its own: the lock, garbage on its sockets, version mismatch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zmq
from appliance import DEMO_TENANTS, short_tmpdir, sim_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infergridd import protocol as p


@pytest.fixture(scope="module")
def scheduler():
    root = short_tmpdir()
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "models": [sim_model()], "tenants": DEMO_TENANTS}))
    argv = [sys.executable, "-m", "infergridd.cli.infergridd", "scheduler", "--config", str(cfg),
            "--runtime-dir", str(root / "run"), "--state-dir", str(root / "state")]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not (root / "run" / "scheduler" / "control.sock").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield root, argv, proc
    proc.terminate()
    proc.wait(10)


def _ctl(root: Path, command: str = "status") -> p.ControlReply:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{root / 'run' / 'scheduler' / 'control.sock'}")
    s.send(p.encode(p.ControlRequest(command=command, protocol_version=p.PROTOCOL_VERSION)))
    assert s.poll(5000), "scheduler did not answer"
    reply = p.decode(s.recv())
    s.close(0)
    return reply


def test_sockets_are_not_world_accessible(scheduler) -> None:
    root, _, _ = scheduler
    for name in ("control.sock", "control-ro.sock", "frontdoor.sock", "supervisor.sock"):
        mode = os.stat(root / "run" / "scheduler" / name).st_mode & 0o777
        assert mode & 0o007 == 0, f"{name} mode {oct(mode)}"


def test_second_scheduler_refuses_to_steal_the_socket(scheduler) -> None:
    root, argv, proc = scheduler
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "another scheduler holds" in r.stderr
    assert _ctl(root).ok and proc.poll() is None


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_random_frames_never_crash_the_receive_loops(scheduler, frames) -> None:
    root, _, proc = scheduler
    ctx = zmq.Context.instance()
    for sock_name in ("frontdoor.sock", "supervisor.sock", "control.sock", "control-ro.sock"):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"ipc://{root / 'run' / 'scheduler' / sock_name}")
        s.send_multipart(frames)
        s.close(0)
    assert proc.poll() is None


def test_alive_after_fuzzing_and_answers_hello_required(scheduler) -> None:
    root, _, proc = scheduler
    assert _ctl(root).ok
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, b"fd-test")
    s.connect(f"ipc://{root / 'run' / 'scheduler' / 'frontdoor.sock'}")
    s.send(p.encode(p.Heartbeat(instance="x")))
    assert s.poll(5000)
    assert isinstance(p.decode(s.recv()), p.HelloRequired)
    s.send(p.encode(p.Hello(role="frontdoor", instance="x", protocol_version="99.0")))
    assert s.poll(5000)
    w = p.decode(s.recv())
    assert isinstance(w, p.Welcome) and not w.accepted and "99.0" in w.reason
    s.close(0)
    assert proc.poll() is None


def test_unknown_control_command_is_bad_input(scheduler) -> None:
    root, _, _ = scheduler
    r = _ctl(root, "no.such")
    assert not r.ok and r.exit_code == 2
