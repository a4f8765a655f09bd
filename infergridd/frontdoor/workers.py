"""Several front-door processes on one scheduler (issue 17.3): how many, and what they share.

Each process is a whole front door: its own event loop, its own link to the one
scheduler (its own random instance id, so its own peer identity ``fd-<id>``: a
restart of one is, to the scheduler, one peer leaving and another arriving, and
never touches another's requests), and its own random request ids.  They accept
on one listening socket.  Who starts them:

* ``infergrid serve`` starts N front-door children on the socket it holds, each
  restarted on its own (``cli/serve.py``);
* one ``infergridd frontdoor`` (the packaged unit, socket-activated) leads: it
  serves as front door 0 and starts 1..N-1 on the socket systemd passed it,
  restarting any that exits (``Workers``); the unit file is unchanged.
* Without a passed socket each binds ``listen`` itself with ``SO_REUSEPORT``.

Metrics: a scrape reaches whichever process accepts it, so with more than one
process the counters and histograms are kept in prometheus_client's multiprocess
mode (one mmap file per process under ``<runtime>/frontdoor/metrics``) and any
process's ``/metrics`` sums them all; the in-flight gauge sums the live processes
only.  Gauges read from one process's own state (open connections, waiting
requests) are that process's, labelled ``process``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: ``frontdoor.processes: 0`` means the number of cores, at most this many
AUTO_MAX = 4
#: which of the N processes this is (set by ``infergrid serve`` or the unit's instance)
INDEX_ENV = "INFERGRID_FRONTDOOR_INDEX"


def processes(configured: int, cores: int | None = None) -> int:
    """The number of front-door processes: ``configured``, or for 0 the cores, capped."""
    if configured > 0:
        return configured
    return max(1, min(cores if cores is not None else (os.cpu_count() or 1), AUTO_MAX))


def metrics_dir(runtime: Path) -> Path:
    """Where the processes' metric files live (cleared by whoever starts them all)."""
    return runtime / "frontdoor" / "metrics"


def index() -> str:
    """This process's index among the front doors ("0" when started alone)."""
    return os.environ.get(INDEX_ENV, "0")


def clear_metrics(runtime: Path) -> None:
    """Before the first process starts: no file of an earlier run is summed in."""
    d = metrics_dir(runtime)
    if d.is_dir():
        for f in d.glob("*.db"):
            f.unlink(missing_ok=True)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)


def process_gone(runtime: Path, pid: int) -> None:
    """A front-door process exited: its live gauges (in flight) stop counting; its
    counters stay in the sums (counters never go down)."""
    from prometheus_client import multiprocess

    d = metrics_dir(runtime)
    if d.is_dir():
        multiprocess.mark_process_dead(pid, str(d))


# ---------------------------------------------------------------------- one unit, N processes
#: how often the leader looks for a worker that exited, and the restart backoff bounds
_POLL_S = 0.2
_BACKOFF_MAX_S = 30.0


class Workers:
    """Under one socket-activated unit (``infergrid-frontdoor.service``): the process
    systemd started leads, serving as front door 0, and starts front doors 1..N-1 on the
    same listening socket(s), restarting any that exits (alone, with backoff).

    The workers are plain ``infergridd frontdoor`` processes with ``INDEX_ENV`` set and
    the fds passed on (``LISTEN_FDS``), and without systemd's notify and watchdog
    variables (only the leader talks to systemd).  On stop, systemd signals the whole
    cgroup, so every process drains its own streams; ``stop`` covers the rest.
    """

    def __init__(self, n: int, fds: list[int], runtime: Path) -> None:
        import sys
        import threading

        self.n = n
        self.fds = fds
        self.runtime = runtime
        self.argv = [sys.executable, "-m", "infergridd.cli.infergridd", *sys.argv[1:]]
        self.procs: dict[int, Any] = {}
        self.backoff: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="frontdoor-workers",
                                        daemon=True)

    def start(self) -> None:
        clear_metrics(self.runtime)
        for i in range(1, self.n):
            self._spawn(i)
        self._thread.start()

    def _spawn(self, i: int) -> None:
        import subprocess

        fds = self.fds

        def child_env() -> None:
            """In the child, before exec (its environment is what exec passes on): which
            worker it is, the fds for ``systemd.listen_fds``, no systemd notify socket."""
            os.environ[INDEX_ENV] = str(i)
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(k, None)
            for fd in fds:
                os.set_inheritable(fd, True)
            if fds:
                os.environ["LISTEN_FDS"] = str(len(fds))
                os.environ["LISTEN_PID"] = str(os.getpid())
            else:
                os.environ.pop("LISTEN_FDS", None)
                os.environ.pop("LISTEN_PID", None)

        self.procs[i] = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, close_fds=False,
                                         preexec_fn=child_env)

    def _watch(self) -> None:
        import time

        due: dict[int, float] = {}
        while not self._stop.wait(_POLL_S):
            now = time.monotonic()
            for i, proc in list(self.procs.items()):
                if proc is None:
                    if now >= due.get(i, 0.0) and not self._stop.is_set():
                        self._spawn(i)
                    continue
                if proc.poll() is None:
                    continue
                process_gone(self.runtime, proc.pid)
                wait = self.backoff.get(i, 0.5)
                self.backoff[i] = min(wait * 2, _BACKOFF_MAX_S)
                due[i] = now + wait
                self.procs[i] = None

    def terminate(self) -> None:
        """The leader was told to stop: every worker starts draining now, beside it (not
        after it: none keeps accepting while the leader drains, and the stop takes one
        drain, not two).  Under systemd the whole cgroup got the signal already; a second
        SIGTERM changes nothing.  None is restarted from here on."""
        import signal

        self._stop.set()
        for p in self.procs.values():
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float) -> None:
        """After the leader drained: the workers (told by ``terminate``) are waited for."""
        import subprocess

        if not self._stop.is_set():
            self.terminate()
        live = [p for p in self.procs.values() if p is not None and p.poll() is None]
        for p in live:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
