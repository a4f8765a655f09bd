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
    dirs.runtime.mkdir(mode=0o700)
    dirs.supervisor_dir.mkdir()
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


# --------------------------------------------------------------------------- issue 14, item 5
# Without XDG_RUNTIME_DIR ``infergrid serve`` falls back to /tmp/infergrid-<uid>, which
# anyone could create first: the runtime dir must be ours alone or nothing starts.

def _serve_in(tmp_path: Path, runtime: Path) -> int:
    from infergridd.cli.serve import Serve
    from infergridd.config import Dirs, loads

    dirs = Dirs(runtime=runtime, state=tmp_path / "state")
    return Serve(loads("version: 1"), str(tmp_path / "x.yaml"), dirs, None).run()


def test_serve_creates_its_runtime_dir_0700(tmp_path: Path) -> None:
    from infergridd.config.dirs import ensure_private_dir

    old = os.umask(0o002)  # a permissive umask must not matter
    try:
        path = ensure_private_dir(tmp_path / "infergrid-1000")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o700


def test_serve_refuses_a_runtime_dir_someone_else_owns(tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    """Another user made /tmp/infergrid-<uid> first: refused, and nothing is written in it
    (no lock, no socket).  The foreign owner is simulated by our uid appearing to differ
    (the real ``chown`` needs root)."""
    run = tmp_path / "infergrid-1000"
    run.mkdir(mode=0o700)
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 4242)
    rc = _serve_in(tmp_path, run)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 78, err
    assert f"runtime dir {run} is owned by uid {me}, not by us (uid {me + 4242})" in err
    assert list(run.iterdir()) == []  # no serve.lock followed or created


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_serve_refuses_a_runtime_dir_others_can_write(tmp_path: Path, capsys,
                                                      mode: int) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, mode)
    assert _serve_in(tmp_path, run) == 78
    assert "is writable by others" in capsys.readouterr().err
    assert list(run.iterdir()) == []


def test_serve_refuses_a_symlinked_runtime_dir(tmp_path: Path, capsys) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(real)
    assert _serve_in(tmp_path, tmp_path / "run") == 78
    assert "is not a directory" in capsys.readouterr().err
    assert list(real.iterdir()) == []


def test_our_own_readable_runtime_dir_is_tightened(tmp_path: Path) -> None:
    """Ours but 0755 (an older InferGrid made it 0750): nobody else could write into it,
    so it is made 0700 rather than refused."""
    from infergridd.config.dirs import ensure_private_dir

    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, 0o755)
    if os.geteuid() == 0:  # a user's dir (root's is refused instead: the next test)
        os.chown(run, 12345, 12345)
        ensure_private_dir(run, uid=12345)
    else:
        ensure_private_dir(run)
    assert run.stat().st_mode & 0o777 == 0o700


def test_roots_readable_runtime_dir_is_refused_not_changed(tmp_path: Path) -> None:
    """``sudo infergrid serve`` beside the packaged units: their /run/infergrid (0755)
    must not be made 0700 under them; it is refused, unchanged."""
    from infergridd.config.dirs import UnsafeDirError, ensure_private_dir

    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, 0o755)
    with pytest.raises(UnsafeDirError, match="readable by others"):
        ensure_private_dir(run, uid=0) if os.geteuid() == 0 else _as_root(run)
    assert run.stat().st_mode & 0o777 == 0o755


def _as_root(run: Path) -> None:
    """Non-root: a dir we own, checked as if we were root (its owner must then be 0)."""
    from unittest import mock

    from infergridd.config.dirs import ensure_private_dir

    real = os.lstat(run)
    fake = os.stat_result((real.st_mode, *real[1:4], 0, *real[5:]))
    with mock.patch("infergridd.config.dirs.os.lstat", return_value=fake):
        ensure_private_dir(run, uid=0)
