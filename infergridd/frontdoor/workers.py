"""Several front-door processes on one scheduler (issue 17.3): how many, and what they share.

Each process is a whole front door: its own event loop, its own link to the one
scheduler (its own random instance id, so its own peer identity ``fd-<id>``: a
restart of one is, to the scheduler, one peer leaving and another arriving, and
never touches another's requests), and its own random request ids.  They accept
on one listening socket: the one ``infergrid serve`` holds and hands to each
(socket activation, as systemd does for the packaged units), or, started by hand
without one, each binds ``listen`` with ``SO_REUSEPORT``.

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
