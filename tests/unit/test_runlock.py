"""Runtime-dir locks (``infergridd/runlock.py``): one holder per role, its pid readable,
released when the holder dies however it dies, and a look never takes one away."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from infergridd.runlock import LockHeld, RunLock, holder

HOLD = """
import sys, time
from pathlib import Path
from infergridd.runlock import RunLock
RunLock(Path(sys.argv[1]), "supervisor").acquire()
print("held", flush=True)
time.sleep(60)
"""


def _hold_in_child(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_free_held_and_released_on_death(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.lock"
    assert holder(path) is None and not path.exists()  # a look creates nothing
    proc = _hold_in_child(path)
    try:
        assert holder(path) == proc.pid
        t0 = time.monotonic()
        with pytest.raises(LockHeld) as err:
            RunLock(path, "supervisor").acquire(wait_s=0.2)
        assert err.value.pid == proc.pid and time.monotonic() - t0 < 2
        assert f"another supervisor holds {path} (pid {proc.pid})" in str(err.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert holder(path) is None  # the kernel dropped it with the process
    with RunLock(path, "supervisor") as lock:
        assert lock.held and holder(path) == os.getpid()
    assert holder(path) is None


def test_a_look_does_not_make_a_start_fail(tmp_path: Path) -> None:
    """``holder`` takes a shared lock for an instant; ``acquire`` retries past it."""
    path = tmp_path / "scheduler.lock"
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a look, frozen in the middle

    def release_soon() -> None:
        time.sleep(0.1)
        os.close(fd)

    threading.Thread(target=release_soon).start()
    lock = RunLock(path, "scheduler")
    lock.acquire(wait_s=1.0)
    assert lock.held
    lock.release()


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "serve.lock").symlink_to(target)
    with pytest.raises(OSError):
        RunLock(tmp_path / "serve.lock", "infergrid serve").acquire()
    assert target.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_leaves_the_lock_file_to_the_dirs_owner(tmp_path: Path) -> None:
    """``sudo infergridd stop-engines`` on /run/infergrid (owned by the daemons' user)
    must not leave a root-only lock file the supervisor could never open again."""
    os.chown(tmp_path, 12345, 12345)
    with RunLock(tmp_path / "supervisor.lock", "supervisor"):
        pass
    st = (tmp_path / "supervisor.lock").stat()
    assert (st.st_uid, st.st_gid) == (12345, 12345)


def test_serve_refuses_a_runtime_dir_a_unit_runs_on(tmp_path: Path, capsys) -> None:
    """A packaged instance (systemd units, no ``serve.lock``) on the same runtime dir: a
    ``infergrid serve`` there starts nothing and names the holder's pid."""
    from infergridd.cli.serve import Serve
    from infergridd.config import Dirs, loads

    dirs = Dirs(runtime=tmp_path / "run", state=tmp_path / "state")
    dirs.runtime.mkdir()
    proc = _hold_in_child(dirs.supervisor_lock)
    try:
        rc = Serve(loads("version: 1"), str(tmp_path / "x.yaml"), dirs, None).run()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith(f"InferGrid is already running (pid {proc.pid}, runtime dir "
                             f"{dirs.runtime})")
    assert not dirs.control_sock.exists() and not dirs.engines_dir.exists()
