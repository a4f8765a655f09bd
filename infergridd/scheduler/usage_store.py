"""Usage accounting on disk: tokens, requests and rejections per tenant, model and hour.

The scheduler is where every request's books close (each dispatched request ends in
exactly one ``Done``, each refusal is a ``Reject`` it sends), so it is where usage
is counted.  The store is SQLite from the standard library, ``usage.sqlite3`` in the
state directory: one row per (hour, tenant, model), so a year is at most
``8784 × tenants × models`` rows, and rows older than ``RETENTION_S`` are deleted.

Never double-counted across a scheduler restart, never lost to a crash:

* events are buffered and written every ``flush()`` (the daemon's housekeeping,
  every 0.5 s, and at shutdown) in one transaction;
* a front door keeps each ``Done`` until the scheduler acknowledges its ``seq``, and
  the scheduler acknowledges only what is on disk (``ack()``): a Done lost in a
  crash before its flush comes back in the front door's next ``Hello``;
* a Done that *was* written but not yet acknowledged also comes back in that Hello:
  every event is keyed by request id in the ``seen`` table, written in the same
  transaction as its counts, so a replay changes nothing.  ``seen`` keeps the last
  ``SEEN_KEEP`` ids: a replay comes in the first Hello after a restart, before any
  new traffic, so the ids it can repeat are always among the newest.

A rejection the scheduler decided in the last half second before a crash (SIGKILL,
not a stop) can be missed: the front door got its answer and has nothing to replay.
Tokens and finished requests are exact.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import protocol as p

log = logging.getLogger("infergrid.scheduler.usage")

USAGE_FILE = "usage.sqlite3"
#: how long hourly rows are kept: a year and a day (a leap year's hours included)
RETENTION_S = 366 * 86400
#: request ids remembered for idempotency (see the module docstring)
SEEN_KEEP = 200_000
#: events kept in memory while the file cannot be written (a full or read-only state
#: directory); beyond it the oldest are dropped, counted and logged, and the front doors'
#: Dones are acknowledged again, so that neither side grows without bound
MAX_PENDING = 10_000
#: the count columns, in the order of ``Row`` and the tables
COUNTS = ("requests", "ok", "errors", "cancelled", "rejected", "prompt_tokens",
          "completion_tokens")
#: what ``--by`` may name, and the SQL expression of each
DIMENSIONS = {"tenant": "tenant", "model": "model", "hour": "hour",
              "day": "(hour / 86400) * 86400"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, ok INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0, cancelled INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, tenant, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (request_id TEXT PRIMARY KEY);
"""


@dataclass
class Event:
    """One closed request's contribution, keyed by its request id."""

    request_id: str
    at: float  # wall clock: which hour it counts in
    tenant: str
    model: str
    counts: dict[str, int]


def done_event(d: p.Done, at: float, tenant: str = "", model: str = "") -> Event:
    """What a ``Done`` counts: one request by its outcome, and the engine's token counts."""
    outcome = {p.Outcome.OK: "ok", p.Outcome.CANCELLED: "cancelled"}.get(d.outcome, "errors")
    return Event(d.request_id, at, d.tenant or tenant, d.model or model,
                 {"requests": 1, outcome: 1, "prompt_tokens": d.prompt_tokens,
                  "completion_tokens": d.completion_tokens})


def reject_event(request_id: str, at: float, tenant: str, model: str) -> Event:
    return Event(request_id, at, tenant, model, {"rejected": 1})


class UsageStore:
    """The SQLite file, the buffer of events not yet written, and which Done seqs are safe
    to acknowledge.  Unusable (``error`` set) when the file cannot be opened: the
    scheduler then runs on, acknowledging as before, and ``infergridctl usage`` says why."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / USAGE_FILE
        self.error = ""
        self._db: sqlite3.Connection | None = None
        self._pending: list[Event] = []
        #: per peer: seqs of Dones buffered but not on disk yet (acks stop below them)
        self._unwritten: dict[str, list[int]] = {}
        #: events dropped because the file could not be written for too long
        self.dropped = 0
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # before the daemon's run()
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA journal_mode=WAL")
            self.path.chmod(0o600)  # like the state file: tenants and their traffic
        except (sqlite3.Error, OSError) as exc:
            self.error = f"usage store {self.path} unusable: {exc}"
            log.error("%s; usage is not being recorded", self.error)
            self._db = None

    # ------------------------------------------------------------------ recording
    def add(self, ev: Event, peer: str = "", seq: int = 0) -> None:
        """Buffer one event; ``peer``/``seq``: the Done it came from (held unacknowledged
        until written)."""
        if self._db is None:
            return
        self._pending.append(ev)
        if seq:
            self._unwritten.setdefault(peer, []).append(seq)

    def ack(self, peer: str, applied_seq: int) -> int:
        """The Done seq to acknowledge to ``peer``: all it sent up to ``applied_seq``, but
        none at or above a seq still waiting to be written."""
        waiting = self._unwritten.get(peer)
        return min(applied_seq, min(waiting) - 1) if waiting else applied_seq

    def flush(self) -> None:
        """Write the buffered events in one transaction; a replayed request id counts once."""
        if self._db is None or not self._pending:
            return
        events, self._pending = self._pending, []
        try:
            self._write(events)
        except sqlite3.Error as exc:
            self._pending = events + self._pending
            over = len(self._pending) - MAX_PENDING
            if over > 0:
                del self._pending[:over]
                self.dropped += over
                self._unwritten.clear()  # what is dropped cannot be replayed: stop holding
            log.error("cannot write usage to %s: %s (%d events kept for the next try%s)",
                      self.path, exc, len(self._pending),
                      f", {self.dropped} dropped so far" if self.dropped else "")
            return
        self._unwritten.clear()

    def _write(self, events: list[Event]) -> None:
        assert self._db is not None
        db = self._db
        cols = ", ".join(COUNTS)
        marks = ", ".join("?" for _ in COUNTS)
        update = ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTS)
        db.execute("BEGIN IMMEDIATE")
        try:
            for ev in events:
                new = db.execute("INSERT OR IGNORE INTO seen (request_id) VALUES (?)",
                                 (ev.request_id,)).rowcount
                if not new:
                    continue  # already counted: a Done replayed after a restart
                hour = int(ev.at // 3600) * 3600
                db.execute(
                    f"INSERT INTO usage (hour, tenant, model, {cols}) VALUES (?, ?, ?, {marks}) "
                    f"ON CONFLICT (hour, tenant, model) DO UPDATE SET {update}",
                    (hour, ev.tenant, ev.model, *(int(ev.counts.get(c, 0)) for c in COUNTS)))
            db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL does): a second ROLLBACK
            # would raise "no transaction is active" and hide the real error (chaos run)
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def prune(self, now: float) -> None:
        """Keep the store bounded: a year of hourly rows, the newest ``SEEN_KEEP`` ids."""
        if self._db is None:
            return
        try:
            self._db.execute("DELETE FROM usage WHERE hour < ?", (int(now - RETENTION_S),))
            self._db.execute("DELETE FROM seen WHERE rowid <= (SELECT max(rowid) FROM seen) - ?",
                             (SEEN_KEEP,))
        except sqlite3.Error as exc:
            log.warning("cannot prune %s: %s", self.path, exc)

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------ reading
    def query(self, since: float | None, until: float | None,
              by: list[str]) -> list[dict[str, Any]]:
        """Sums of every count over the hours in ``[since, until)``, grouped by ``by``
        (``DIMENSIONS``; ``hour`` and ``day`` come back as epoch seconds), what is still
        buffered included."""
        if self._db is None:
            raise RuntimeError(self.error or "usage store closed")
        self.flush()
        keys = [DIMENSIONS[b] for b in by]
        where, params = [], []
        if since is not None:
            where.append("hour >= ?")
            params.append(int(since // 3600) * 3600)
        if until is not None:
            where.append("hour < ?")
            params.append(int(until))
        sums = ", ".join(f"sum({c})" for c in COUNTS)
        sql = (f"SELECT {', '.join([*keys, sums])} FROM usage"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + (f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}" if keys else ""))
        out = []
        for row in self._db.execute(sql, params):
            vals = dict(zip(by, row[:len(by)], strict=True))
            counts = dict(zip(COUNTS, (int(x or 0) for x in row[len(by):]), strict=True))
            if keys or counts["requests"] or counts["rejected"]:
                out.append({**vals, **counts})
        return out
