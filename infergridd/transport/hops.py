"""Debug-only timestamps of one request's hops through the daemons (issue 17, the profile).

Off unless ``INFERGRID_HOPS`` names a directory in the daemons' environment (read once,
at import); the hot path then pays one module-global test per hop.  When on, each
process appends one JSON line per request to ``<dir>/<role>-<pid>.jsonl``:
``{"rid": ..., "<hop>": <ns>, ...}`` where every ``<ns>`` is ``time.perf_counter_ns()``
(``CLOCK_MONOTONIC`` on Linux: one clock for every process on the machine, so the
front door's, the scheduler's and the client's marks can be subtracted from one
another).  ``bench/hops.py`` joins the lines by request id into a per-hop breakdown.

It is a measuring tool, never a feature: nothing reads these files but the bench,
and a write that fails is ignored (the request must not notice the tracer).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO

#: the directory the lines go to; "" (the default): tracing is off
DIR = os.environ.get("INFERGRID_HOPS", "")
ON = bool(DIR)
now = time.perf_counter_ns

#: per request id, the marks so far (only while ON; a request is in it from its id on)
_open: dict[str, dict[str, int]] = {}
_files: dict[str, IO[str]] = {}


def start() -> dict[str, int] | None:
    """A new request's marks, with its arrival; None while tracing is off."""
    return {"arrival": now()} if ON else None


def attach(request_id: str, marks: dict[str, int]) -> None:
    """From here on ``mark(request_id, ...)`` (e.g. from the link's receiver) adds to ``marks``."""
    _open[request_id] = marks


def mark(request_id: str, hop: str, at: int | None = None) -> None:
    """Record ``hop`` for an attached request (first time only; a retry keeps the first)."""
    marks = _open.get(request_id)
    if marks is not None and hop not in marks:
        marks[hop] = now() if at is None else at


def close(role: str, request_id: str) -> None:
    """Write the request's line and forget it."""
    marks = _open.pop(request_id, None)
    if marks is not None:
        write(role, {"rid": request_id, **marks})


def write(role: str, line: dict[str, object]) -> None:
    """One JSON line to ``<DIR>/<role>-<pid>.jsonl`` (flushed: a killed daemon keeps it)."""
    try:
        f = _files.get(role)
        if f is None:
            path = Path(DIR) / f"{role}-{os.getpid()}.jsonl"
            f = _files[role] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        f.write(json.dumps(line) + "\n")
        f.flush()
    except OSError:
        pass


def read(directory: Path, role: str) -> dict[str, dict[str, int]]:
    """Every line ``role``'s processes wrote under ``directory``, by request id."""
    out: dict[str, dict[str, int]] = {}
    for path in sorted(directory.glob(f"{role}-*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            out[str(line.pop("rid"))] = line
    return out
