"""``infergridctl usage [--since DATE] [--until DATE] [--by tenant|model|hour|day] [--json|--csv]``:
who used how much — requests, rejections and tokens from the scheduler's usage store
(``scheduler/usage_store.py``: hourly rows in the state directory, kept a year)."""

from __future__ import annotations

import argparse
import csv
import io
import re
import time
from datetime import datetime, timezone
from typing import Any

from ..usage_store import COUNTS, DIMENSIONS
from ._render import table
from .base import Arg, Command, CommandContext, CommandError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_HEADERS = {"requests": "REQUESTS", "ok": "OK", "errors": "ERRORS", "cancelled": "CANCELLED",
            "rejected": "REJECTED", "prompt_tokens": "PROMPT_TOKENS",
            "completion_tokens": "COMPLETION_TOKENS"}


def parse_when(flag: str, text: str | None, now: float) -> float | None:
    """``2026-12-06``, ``2026-12-06T13:00`` (UTC unless it carries an offset), or a
    time ago: ``90m``, ``24h``, ``7d``, ``2w``.  Bad input names the flag."""
    if not text:
        return None
    m = _RELATIVE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{flag}: {text!r} is not a date (2026-12-06, 2026-12-06T13:00, "
                           "or a time ago: 90m, 24h, 7d, 2w)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso_hour(ts: int, day: bool = False) -> str:
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%d") if day else dt.strftime("%Y-%m-%dT%H:00Z")


class Usage(Command):
    name = "usage"
    help = "show usage per tenant, model, hour or day: requests, rejections, tokens"
    read_only = True
    arguments = (
        Arg("--since", help="from this date or time (UTC; 2026-12-06, 2026-12-06T13:00) "
                            "or this long ago (24h, 7d); default: everything kept"),
        Arg("--until", help="up to (not including) this date or time; default: now"),
        Arg("--by", default="tenant",
            help="group by tenant, model, hour or day; several with commas (tenant,model)"),
        Arg("--csv", action="store_true", help="print CSV (a header, then one row per group)"),
        # also accepted after the command (the global --json works too)
        Arg("--json", action="store_true", default=argparse.SUPPRESS,
            help="print the result as JSON"),
    )

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        by = [b.strip() for b in str(self.arg("by") or "tenant").split(",") if b.strip()]
        bad = [b for b in by if b not in DIMENSIONS]
        if bad or not by or len(set(by)) != len(by):
            raise CommandError(f"--by: {','.join(bad) or self.arg('by')!r} is not a "
                               f"grouping (use {', '.join(DIMENSIONS)}, once each)")
        now = time.time()
        since = parse_when("--since", self.arg("since", None), now)
        until = parse_when("--until", self.arg("until", None), now)
        if since is not None and until is not None and until <= since:
            raise CommandError("--until must be after --since")
        obs = ctx.observe
        if obs is None or obs.usage.error:
            raise CommandError(obs.usage.error if obs else "usage is not recorded here", 1)
        rows = obs.usage.query(since, until, by)
        for r in rows:
            for dim in ("hour", "day"):
                if dim in r:
                    r[dim] = iso_hour(int(r[dim]), day=dim == "day")
        total = {c: sum(r[c] for r in rows) for c in COUNTS}
        return {"by": by, "rows": rows, "total": total, "dropped": obs.usage.dropped,
                "since": None if since is None else _iso(since),
                "until": None if until is None else _iso(until),
                "format": "csv" if self.arg("csv", False) else "table"}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        by, rows = r["by"], r["rows"]
        if r.get("format") == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow([*by, *COUNTS])
            for row in rows:
                w.writerow([row[b] for b in by] + [row[c] for c in COUNTS])
            return buf.getvalue().rstrip("\n")
        span = f"since {r['since'] or 'the start'} until {r['until'] or 'now'}"
        if not rows:
            return f"no usage recorded ({span})"
        body = table([b.upper() for b in by] + [_HEADERS[c] for c in COUNTS],
                     [[row[b] for b in by] + [row[c] for c in COUNTS] for row in rows]
                     + [["TOTAL"] + [""] * (len(by) - 1) + [r["total"][c] for c in COUNTS]])
        lost = r.get("dropped") or 0
        note = (f"\n\nwarning: {lost} events were dropped since the scheduler started: the "
                "usage file could not be written (see the scheduler's log)") if lost else ""
        return f"usage {span} (hours in UTC)\n\n{body}{note}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
