"""Engine processes: launch detached, read their logs, stop them for good.

Engines must outlive the supervisor (DESIGN §3: a supervisor restart must not
cut a stream), so each starts in its own session and process group, with
stdin from /dev/null and output to its own log file rather than a pipe that
would break when the supervisor goes.  Stopping is always by process group
and only after the pid's start time proves the process is the one we
launched.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from .. import logs
from ..config import Dirs
from ..engines.base import LaunchSpec, proc_start_time, stop_process_group
from ..fsutil import write_atomic
from ..runlock import RunLock
from . import identity, runas, statefile
from .runas import RunAs

log = logging.getLogger("infergrid.supervisor")

#: The previous run's log is kept as ``.log.1`` (one generation back is what an
#: operator needs to see why it was restarted), and trimmed if larger than this.
LOG_KEEP_BYTES = 4 * 1024 * 1024


def free_port() -> int:
    """A free loopback port (bind 0, read, close).  Racy in theory; the engine fails to
    bind in the rare loss and is restarted with another port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_api_key() -> str:
    """A random key for one engine.  Hex, not URL-safe base64: it once went on the
    engine's command line, where a key starting with ``-`` is taken by argparse for an
    option; now it goes in the environment or a 0600 file, and hex is safe in both."""
    return secrets.token_hex(24)


def rotate_log(path: Path) -> None:
    """Move the previous run's output to ``.log.1`` (trimmed), so the new log starts empty."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):  # a symlink or worse: not ours to move or read
        log.warning("not rotating %s: not a regular file", path)
        path.unlink(missing_ok=True)
        return
    size = st.st_size
    old = path.with_name(path.name + ".1")
    try:
        if size > LOG_KEEP_BYTES:
            with open(path, "rb") as f:
                f.seek(size - LOG_KEEP_BYTES)
                data = f.read()
            old.write_bytes(data)
            path.unlink()
        else:
            os.replace(path, old)
    except OSError as exc:
        log.warning("cannot rotate %s: %s", path, exc)


def journal_identifier(log_file: Path) -> str:
    return f"infergrid-engine-{log_file.stem}"


def _journal_stream(identifier: str) -> int | None:
    """A stream connected to journald, as ``sd_journal_stream_fd`` makes one.

    Under systemd an engine's output belongs in the journal under its own
    identifier (``journalctl -t infergrid-engine-demo-0``).  journald owns the
    stream, so the engine keeps logging across supervisor restarts, and the
    engine's pid stays its own (no ``systemd-cat`` process in between, which
    re-adoption by pid and start time depends on).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(JOURNAL_STDOUT)
        # identifier, unit id, priority, level prefix, syslog, kmsg, console
        sock.sendall(f"{identifier}\n\n6\n0\n0\n0\n0\n".encode())
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        sock.close()
        return None
    return sock.detach()


def tail(path: Path, lines: int = 15, max_bytes: int = 8192) -> str:
    """The last lines of an engine log, for the error that says why it failed.

    Read from the engine's log file, or from the journal when its output went
    there (the supervisor unit is in group ``systemd-journal`` to read it).
    """
    if not path.exists() and logs.under_journald():
        try:
            r = subprocess.run(["journalctl", "-q", "--no-pager", "-o", "cat", "-n", str(lines),
                                "-t", journal_identifier(path)],
                               capture_output=True, text=True, timeout=5)
            return r.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


JOURNAL_STDOUT = "/run/systemd/journal/stdout"


#: engines create their files (a Unix socket above all) group-accessible: the front door
#: may run as another user of the runtime dir's group, and needs write access to connect
ENGINE_UMASK = 0o007


def prepare_listen(sock: Path | None, who: RunAs | None) -> None:
    """Make way for an engine's Unix socket: its directory when it runs as its own user
    (``who``: ours, its group ``who.own_gid``, 0771: the engine may create its socket
    there, the daemons that passed the engines dir may reach it, write nobody else;
    no chown needed), and no leftover socket file (vLLM's bind fails on one).  Never
    through a symlink."""
    if sock is None:
        return
    if who is not None:
        runas.give_dir(sock.parent, who.own_gid, 0o771)
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise OSError(f"{sock} is a directory, not a socket")
    sock.unlink()


def write_files(spec: LaunchSpec, who: RunAs | None) -> None:
    """The spec's files (an engine's key for SGLang): 0600 ours, or 0640 with the engine
    user's own group when it runs as that user (it reads them; the front door cannot)."""
    for name, data in spec.files.items():
        write_atomic(Path(name), data, mode=0o600)
        if who is not None:
            os.chown(name, -1, who.own_gid, follow_symlinks=False)
            os.chmod(name, 0o640)


def launch(spec: LaunchSpec, log_file: Path, who: RunAs | None = None) -> subprocess.Popen[bytes]:
    """Start a detached engine writing to ``log_file``; raises OSError if it cannot exec.

    ``who``: run it as that user with the engines' socket group and its own group only
    (``runas.py``: never the journal group or ours); else as ourselves."""
    log_file.parent.mkdir(mode=0o710, parents=True, exist_ok=True)
    rotate_log(log_file)
    write_files(spec, who)
    env = {**os.environ, **spec.env}
    runas.engine_env(who, env)
    # Our own systemd notify/watchdog/socket-activation variables belong to us, not it.
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
              "LISTEN_FDNAMES", "INFERGRID_STOP_ENGINES_ON_EXIT"):
        env.pop(k, None)
    fd = _journal_stream(journal_identifier(log_file)) if logs.under_journald() else None
    if fd is not None:
        log_file.unlink(missing_ok=True)  # the journal has it; tail() reads it from there
    else:
        # never through a symlink planted in the runtime dir (it would append to, or with
        # O_CREAT create, a file of the planter's choosing with our privileges)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o640)
    try:
        user: dict[str, object] = {}
        if who is not None:
            user = {"user": who.uid, "group": who.gid, "extra_groups": [who.own_gid]}
        return subprocess.Popen(
            spec.argv, env=env, cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=fd,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            umask=ENGINE_UMASK, **user,  # type: ignore[arg-type]
        )
    except OSError as exc:
        os.write(fd, f"infergrid: cannot start {spec.argv[0]!r}: {exc}\n".encode())
        raise
    finally:
        os.close(fd)


def start_time_of(pid: int) -> int:
    """Start time of a process we just launched (0 if it already vanished)."""
    return proc_start_time(pid) or 0


def stop_all_engines(dirs: Dirs, timeout: float = 30.0) -> int:
    """Stop every engine recorded in ``<runtime>/engines`` and remove the records.

    For ``infergrid serve`` on exit and the supervisor unit's ``ExecStopPost``:
    the whole appliance is going down, so nothing should keep GPU memory.
    Signals every engine first and then waits, so N engines take one timeout,
    not N.  Returns how many were running.  Only while no supervisor runs on
    ``dirs``: it holds the supervisor lock meanwhile (``LockHeld`` otherwise),
    so it never stops the engines of a live instance.
    """
    if not dirs.supervisor_dir.is_dir():
        return 0
    with RunLock(dirs.supervisor_lock, "supervisor"):
        return _stop_all(dirs, timeout)


def _stop_all(dirs: Dirs, timeout: float) -> int:
    records = statefile.load_all(dirs.engines_dir)
    running = []
    for r in records:  # a record is a claim: signal only what is provably our engine
        why = identity.why_not_ours(r)
        if not why:
            running.append(r)
        elif proc_start_time(r.pid) is not None:
            log.warning("not stopping pid %d of engine record %s: %s", r.pid, r.engine_id, why)
    for r in running:
        log.info("stopping engine %s (pid %d)", r.engine_id, r.pid)
        try:
            runas.as_engine(lambda r=r: os.killpg(r.pid, signal.SIGTERM) or True)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    for r in running:  # waits out one shared deadline, then SIGKILLs laggards
        stop_process_group(r.pid, r.start_time, max(0.1, deadline - time.monotonic()))
    for r in records:
        statefile.remove(dirs.engines_dir, r.engine_id)
    for intent in dirs.engines_dir.glob("*.stopped"):  # the next start begins afresh
        intent.unlink(missing_ok=True)
    return len(running)
