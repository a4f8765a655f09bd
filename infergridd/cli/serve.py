"""``infergrid serve``: the three daemons as child processes — the pip user's way in.

It plays the part systemd plays in a package install: starts the scheduler
first (it binds the sockets the others connect to), then the supervisor and
the front door; restarts any one that dies, with backoff, without touching
the other two; and on SIGINT/SIGTERM stops them in the order that loses
nothing: front door (drains its streams), supervisor, every engine, scheduler.

It starts nothing in a runtime dir that is not ours alone (owner us, no access for
group or others, not a symlink: ``config/dirs.py``), and nothing on a runtime dir
another instance runs on (its ``serve.lock``,
or a scheduler's or supervisor's lock there, ``runlock.py``): it prints
"InferGrid is already running (pid N, runtime dir D)" and exits 1 at once, so a
second ``infergrid serve`` can never adopt, restart or stop the first one's engines.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, Dirs
from ..config.dirs import UnsafeDirError, ensure_private_dir
from ..frontdoor import workers
from ..runlock import EX_IN_USE, LockHeld, RunLock, holder

log = logging.getLogger("infergrid.serve")

START_ORDER = ("scheduler", "supervisor", "frontdoor")
STOP_ORDER = ("frontdoor", "supervisor", "scheduler")
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # a child up this long has its backoff reset
EXIT_ALREADY_RUNNING = 1
EXIT_UNSAFE_DIR = 78  # EX_CONFIG: the runtime dir is not ours alone; retrying cannot help


@dataclass
class Child:
    role: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 1.0
    next_start: float = 0.0
    restarts: int = 0
    exits: list[int] = field(default_factory=list)

    #: the front door's listening socket, held by serve (``bind_listen``)
    listen_sock: socket.socket | None = None
    #: which front-door process this is ("": not a front door; frontdoor/workers.py)
    index: str = ""

    def start(self) -> None:
        # Own process group: a terminal's Ctrl-C reaches only us, and we stop the
        # children in order.  PDEATHSIG: if we are SIGKILLed, they do not linger.
        index = self.index
        if self.listen_sock is not None:  # socket activation, as systemd does it
            fd = self.listen_sock.fileno()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         start_new_session=True, close_fds=False,
                                         preexec_fn=lambda: _pass_listen_socket(fd, index))
        else:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         start_new_session=True,
                                         preexec_fn=lambda: _die_with_parent(index))
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.role, self.proc.pid)


def _die_with_parent(index: str = "") -> None:
    if index:  # which of the front-door processes (frontdoor/workers.py)
        os.environ[workers.INDEX_ENV] = index
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _pass_listen_socket(fd: int, index: str = "") -> None:
    """In the front door's child, before exec: its listening socket as fd 3 with
    LISTEN_FDS/LISTEN_PID (sd_listen_fds), what ``systemd.listen_fds`` reads.  Every
    other fd of ours is close-on-exec (PEP 446), so ``close_fds=False`` passes only it."""
    _die_with_parent(index)
    if fd == 3:
        os.set_inheritable(3, True)
    else:
        os.dup2(fd, 3)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(os.getpid())


def bind_listen(listen: str) -> socket.socket | None:
    """The front door's listening socket, bound and held by serve for the whole run.

    As systemd's socket activation does for the packaged units (DESIGN §3): while the
    front door drains after a SIGTERM, or is restarted after a crash, new connections
    wait in this socket's backlog instead of being refused.  None when it cannot be
    bound here: the front door then binds itself and reports why it cannot."""
    host, _, port = listen.rpartition(":")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, ValueError):
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError:
        sock.close()
        return None
    return sock


def running_pid(dirs: Dirs, serve: bool = True) -> int | None:
    """The pid of an InferGrid already running on ``dirs.runtime`` (0: running, pid not
    readable), or None: a serve (unless ``serve`` is false: it is us), a scheduler or a
    supervisor holds its lock there."""
    paths = (dirs.serve_lock,) if serve else ()
    for path in (*paths, dirs.scheduler_lock, dirs.supervisor_lock):
        pid = holder(path)
        if pid is not None:
            return pid
    return None


def already_running(pid: int, dirs: Dirs) -> None:
    """The one line a second ``infergrid serve`` prints, on stderr."""
    print(f"InferGrid is already running (pid {pid or 'unknown'}, runtime dir {dirs.runtime});"
          " stop it first, or give this one its own --runtime-dir and --listen",
          file=sys.stderr, flush=True)


def child_argv(role: str, config: str, dirs: Dirs, listen: str | None) -> list[str]:
    argv = [sys.executable, "-m", "infergridd.cli.infergridd", role, "--config", config,
            "--runtime-dir", str(dirs.runtime), "--state-dir", str(dirs.state)]
    if listen and role == "frontdoor":
        argv += ["--listen", listen]
    return argv


class Serve:
    def __init__(self, cfg: Config, config_path: str, dirs: Dirs, listen: str | None) -> None:
        self.cfg = cfg
        self.dirs = dirs
        self.listen = listen
        self.children = {
            r: Child(r, child_argv(r, os.path.abspath(config_path), dirs, listen))
            for r in START_ORDER
        }
        # frontdoor.processes front doors on one listening socket: "frontdoor" (index 0),
        # "frontdoor@1", ... each restarted on its own (frontdoor/workers.py)
        self.frontdoors = workers.processes(cfg.frontdoor.processes)
        self.children["frontdoor"].index = "0"
        for i in range(1, self.frontdoors):
            c = Child(f"frontdoor@{i}", self.children["frontdoor"].argv, index=str(i))
            self.children[c.role] = c
        self._stopping = False
        #: pid of another instance found holding this runtime dir after we started
        self._taken: int | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self._stopping = True

    def run(self) -> int:
        try:  # ours alone, or nothing starts (DESIGN §10; config/dirs.py)
            ensure_private_dir(self.dirs.runtime)
        except (UnsafeDirError, OSError) as exc:
            print(f"infergrid serve: {exc}", file=sys.stderr, flush=True)
            return EXIT_UNSAFE_DIR
        self.dirs.state.mkdir(mode=0o750, parents=True, exist_ok=True)
        lock = RunLock(self.dirs.serve_lock, "infergrid serve")
        try:
            lock.acquire(wait_s=0.2)
            pid = running_pid(self.dirs, serve=False)
        except LockHeld as exc:
            pid = exc.pid
        if pid is not None:  # never start a second scheduler or supervisor beside theirs
            lock.release()
            already_running(pid, self.dirs)
            return EXIT_ALREADY_RUNNING
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("InferGrid on http://%s (runtime %s, state %s)", self.listen or self.cfg.listen,
                 self.dirs.runtime, self.dirs.state)
        sock = bind_listen(self.listen or self.cfg.listen)
        if self.frontdoors > 1:
            workers.clear_metrics(self.dirs.runtime)
        for c in self.children.values():
            if c.index:
                c.listen_sock = sock
            c.start()
            if c.role == "scheduler":
                self._wait_for(self.dirs.control_sock, 10.0)
        while not self._stopping:
            self._reap_and_restart()
            time.sleep(0.2)
        self.shutdown()
        if self._taken is not None:
            already_running(self._taken, self.dirs)
            return EXIT_ALREADY_RUNNING
        return 0

    def _wait_for(self, path: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not path.exists() and not self._stopping:
            time.sleep(0.05)

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for c in self.children.values():
            if c.proc is not None:
                rc = c.proc.poll()
                if rc is None:
                    if now - c.started_at > STABLE_AFTER_S:
                        c.backoff_s = 1.0
                    continue
                c.exits.append(rc)
                if c.index and self.frontdoors > 1:  # its in-flight gauge stops counting
                    workers.process_gone(self.dirs.runtime, c.proc.pid)
                c.proc = None
                if rc == EX_IN_USE:  # another instance took this runtime dir meanwhile
                    self._taken = running_pid(self.dirs, serve=False) or 0
                    self._stopping = True
                    return
                c.next_start = now + c.backoff_s
                log.warning("%s exited with status %s; restarting in %.0fs", c.role, rc,
                            c.backoff_s)
                c.backoff_s = min(c.backoff_s * 2, BACKOFF_MAX_S)
            elif now >= c.next_start:
                c.restarts += 1
                c.start()

    def shutdown(self) -> None:
        for role in STOP_ORDER:
            if role == "frontdoor":  # all of them drain at once
                doors = [c for c in self.children.values() if c.index]
                for c in doors:
                    if c.proc is not None and c.proc.poll() is None:
                        c.proc.send_signal(signal.SIGTERM)
                for c in doors:
                    self._stop_child(c, self.cfg.limits.drain_timeout_s + 5)
                sock = doors[0].listen_sock
                for c in doors:
                    c.listen_sock = None
                if sock is not None:  # no front door will take its backlog any more
                    sock.close()
                continue
            c = self.children[role]
            self._stop_child(c, 10.0)
            if role == "supervisor" and self._taken is None:  # else they are not ours
                try:
                    from ..supervisor.procs import stop_all_engines

                    stop_all_engines(self.dirs, 15.0)
                except Exception:  # noqa: BLE001 - never leave the scheduler running
                    log.exception("stopping engines failed")
        log.info("stopped")

    @staticmethod
    def _stop_child(c: Child, bound_s: float) -> None:
        if c.proc is None or c.proc.poll() is not None:
            return
        c.proc.send_signal(signal.SIGTERM)
        try:
            c.proc.wait(bound_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", c.role, bound_s)
            c.proc.kill()
            c.proc.wait()
