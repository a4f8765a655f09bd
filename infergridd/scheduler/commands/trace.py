"""``infergridctl trace [REQUEST_ID] [--last N]``: where one request's time went, and why
it waited — or, without an id, the newest requests the scheduler remembers.

The request id is the ``X-Request-Id`` header of the answer (and the ``request_id``
field of the front door's log line).  The scheduler keeps the newest requests'
traces in memory (``scheduler/traces.py``); a restart forgets them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ._render import table
from .base import Arg, Command, CommandContext, CommandError

#: the phases, in order: (trace field, label)
PHASES = (("received", "received"), ("admitted", "admitted"), ("queued", "queued"),
          ("dispatched", "dispatched"), ("first_token", "engine first token"),
          ("last_token", "last token"), ("done", "done"), ("rejected", "rejected"),
          ("cancelled", "cancelled"))


class Trace(Command):
    name = "trace"
    help = "show a request's phases (received … done) and why it waited; no id: the newest"
    read_only = True
    arguments = (
        Arg("request_id", nargs="?", default="", metavar="REQUEST_ID",
            help="the answer's X-Request-Id"),
        Arg("--last", type=int, default=20, help="without REQUEST_ID: how many to list"),
    )

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        if ctx.observe is None:
            raise CommandError("request traces are not kept here", 1)
        ring = ctx.observe.traces
        rid = str(self.arg("request_id") or "").strip()
        if not rid:
            n = int(self.arg("last", 20) or 20)
            if n < 1:
                raise CommandError("--last must be at least 1")
            return {"recent": [t.to_dict() for t in ring.recent(n)], "kept": len(ring)}
        t = ring.get(rid)
        if t is None:
            raise CommandError(f"no trace of {rid!r}: the scheduler keeps the newest "
                               f"{ring.keep} requests since it started ({len(ring)} now)")
        return {"trace": t.to_dict()}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        if "recent" in r:
            rows = [[t["request_id"], t["tenant"], t["model"], _end(t),
                     _ms(t.get("queue_wait_s")), _ms(t.get("ttft_s")), t.get("engine_id") or "-"]
                    for t in r["recent"]]
            if not rows:
                return "no requests traced yet"
            return table(["REQUEST", "TENANT", "MODEL", "END", "QUEUED_MS", "TTFT_MS", "ENGINE"],
                         rows)
        t = r["trace"]
        t0 = t["received"]
        rows = []
        for key, label in PHASES:
            at = t.get(key)
            if at is None:
                continue
            rows.append([label, _clock(at), f"{(at - t0) * 1000:+.1f}", _detail(key, t)])
        head = (f"request {t['request_id']}  tenant {t['tenant']}  model {t['model']}  "
                f"front door {t['frontdoor'] or '-'}  prompt ~{t['prompt_estimate']} tokens  "
                f"max_tokens {t['max_tokens']}")
        out = [head, "", table(["PHASE", "AT (UTC)", "+MS", "DETAIL"], rows)]
        if t.get("waited_because"):
            out += ["", f"why it waited: {t['waited_because']}"]
        elif t.get("dispatched") is not None:
            out += ["", "did not wait: dispatched as soon as it was admitted"]
        out += [f"note: {n}" for n in t.get("notes") or []]
        if t.get("done") is None and t.get("rejected") is None and t.get("cancelled") is None:
            out += ["", "not finished yet"]
        return "\n".join(out)


def _detail(key: str, t: dict[str, Any]) -> str:
    if key == "dispatched":
        prio = t.get("engine_priority")
        return (f"engine {t['engine_id']}, queued {_ms(t.get('queue_wait_s'))} ms"
                + (f", engine priority {prio}" if prio is not None else "")
                + (f" ({t['standing']})" if t.get("standing") else ""))
    if key == "last_token":
        return (f"{t['completion_so_far']} tokens (progress is reported every 100 ms; the "
                "tail's with the Done)")
    if key == "done":
        ttft = f", TTFT {_ms(t['ttft_s'])} ms at the client" if t.get("ttft_s") is not None else ""
        err = f": {t['error']}" if t.get("error") else ""
        return (f"{t['outcome']}{err}, {t['prompt_tokens']} prompt + "
                f"{t['completion_tokens']} completion tokens{ttft}")
    if key == "rejected":
        return f"{t['reject_code']}: {t['reject_reason']}"
    if key == "received":
        return "arrived at the front door" + (" (held across a scheduler restart)"
                                              if t.get("via") == "hello" else "")
    return ""


def _end(t: dict[str, Any]) -> str:
    if t.get("done") is not None:
        return t["outcome"]
    if t.get("rejected") is not None:
        return f"rejected {t['reject_code']}"
    if t.get("cancelled") is not None:
        return "cancelled"
    return "in flight" if t.get("dispatched") is not None else "queued"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.1f}"


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S.%f")[:-3]
