"""Stopping engines: only provably ours, whole group, SIGTERM then SIGKILL; state files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from infergridd.config import Dirs
from infergridd.engines.base import is_alive, proc_start_time, stop_process_group
from infergridd.supervisor import procs, statefile
from infergridd.supervisor.statefile import EngineRecord


def _argv(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _spawn(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(_argv(code), start_new_session=True)
    time.sleep(0.3)  # let it install its handlers
    return proc


def test_start_time_identifies_a_process() -> None:
    st = proc_start_time(os.getpid())
    assert isinstance(st, int) and st > 0
    assert is_alive(os.getpid(), st)
    assert not is_alive(os.getpid(), st + 1)  # same pid, other start: a stranger
    assert proc_start_time(2**22 + 7) is None


def test_zombie_counts_as_gone() -> None:
    proc = subprocess.Popen(["true"])
    time.sleep(0.2)
    assert proc_start_time(proc.pid) is None  # exited, not yet reaped
    proc.wait()


def test_sigterm_then_sigkill_whole_group() -> None:
    # A leader that ignores SIGTERM, with a child in its group.
    proc = _spawn("import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                  "subprocess.Popen(['sleep', '30']); time.sleep(30)")
    st = proc_start_time(proc.pid)
    assert st
    t0 = time.monotonic()
    assert stop_process_group(proc.pid, st, timeout_s=0.5)
    assert 0.4 < time.monotonic() - t0 < 5
    assert proc.poll() is not None or proc.wait(2) is not None
    for _ in range(40):  # the orphaned child is reaped by init, not by us: give it a moment
        out = subprocess.run(["ps", "-o", "stat=", "-g", str(proc.pid)], capture_output=True)
        if all(s.startswith(b"Z") for s in out.stdout.split()):
            break
        time.sleep(0.05)
    assert all(s.startswith(b"Z") for s in out.stdout.split()), out.stdout


def test_never_signals_a_stranger() -> None:
    proc = _spawn("import time; time.sleep(30)")
    try:
        st = proc_start_time(proc.pid)
        assert st
        assert not stop_process_group(proc.pid, st + 5, timeout_s=0.2)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_statefile_roundtrip_mode_and_stop_all(tmp_path: Path) -> None:
    root = tmp_path
    dirs = Dirs(runtime=root, state=root)
    code = "import time; time.sleep(30)"
    proc = _spawn(code)
    rec = EngineRecord(engine_id="m-0", model="m", kind="sim", pid=proc.pid,
                       start_time=proc_start_time(proc.pid) or 0, port=1, api_key="k",
                       generation=3, argv=_argv(code))
    statefile.save(dirs.engines_dir, rec)
    path = statefile.record_path(dirs.engines_dir, "m-0")
    assert path.stat().st_mode & 0o777 == 0o600
    assert statefile.load(dirs.engines_dir, "m-0") == rec
    (dirs.engines_dir / "junk.json").write_text("{not json")
    assert [r.engine_id for r in statefile.load_all(dirs.engines_dir)] == ["m-0"]
    assert procs.stop_all_engines(dirs, 2.0) == 1
    assert proc.wait(2) is not None
    assert statefile.load(dirs.engines_dir, "m-0") is None


def test_log_rotation_and_tail(tmp_path: Path) -> None:
    root = tmp_path
    log = root / "e.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert procs.tail(log, 3) == "line 97\nline 98\nline 99"
    procs.rotate_log(log)
    assert not log.exists() and (root / "e.log.1").exists()
    assert procs.tail(log) == ""
