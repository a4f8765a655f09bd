"""A bounded ring of recent request traces: what ``infergridctl trace REQUEST_ID`` shows.

Each trace is the phases of one request as the scheduler saw them, on the wall
clock: received (the front door's arrival time, carried in ``Submit``), admitted and
queued (the scheduler took it), dispatched (to which engine, with which engine
priority, after how long in the queue), engine first token and last token (from the
front door's ``Progress``: the first token is reported at once, later ones batched
every 100 ms; the last batch comes with the ``Done``, so "last token" is then the Done's
time, within a few milliseconds of it), and its end: ``Done`` (outcome,
the engine's token counts, the TTFT the client saw), a ``Reject`` or a cancel.  A
request that was not dispatched at once also keeps *why* it waited, as
``core.waitreason`` put it at that moment.

Bounded: the newest ``KEEP`` requests, finished or not; the oldest is forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

#: how many requests the ring remembers (about 1 KiB each)
KEEP = 10_000
#: engine priority tier (``band*1000 + tier``, core/dispatch.py) → the tenant's standing
TIERS = {0: "light", 1: "neither light nor heavy", 2: "heavy"}


@dataclass
class Trace:
    request_id: str
    tenant: str
    model: str
    frontdoor: str = ""
    prompt_estimate: int = 0
    max_tokens: int = 0
    priority: int = 0
    #: where the scheduler first heard of it: "submit", or "hello" (a front door held it
    #: across a scheduler restart)
    via: str = "submit"
    received: float = 0.0
    admitted: float | None = None
    queued: float | None = None
    dispatched: float | None = None
    engine_id: str = ""
    engine_priority: int | None = None
    standing: str = ""
    queue_wait_s: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    completion_so_far: int = 0
    done: float | None = None
    outcome: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    error: str = ""
    rejected: float | None = None
    reject_code: str = ""
    reject_reason: str = ""
    cancelled: float | None = None
    #: why it was queued rather than dispatched at once ("" when it was not)
    waited_because: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TraceRing:
    """The newest ``keep`` traces by request id."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._traces: OrderedDict[str, Trace] = OrderedDict()

    def __len__(self) -> int:
        return len(self._traces)

    def get(self, request_id: str) -> Trace | None:
        return self._traces.get(request_id)

    def add(self, t: Trace) -> Trace:
        """Remember ``t``; a request id seen before keeps its first trace (a re-sent
        Submit or a Hello after a restart repeats a request, it is not a new one)."""
        old = self._traces.get(t.request_id)
        if old is not None:
            return old
        self._traces[t.request_id] = t
        while len(self._traces) > self.keep:
            self._traces.popitem(last=False)
        return t

    def recent(self, n: int) -> list[Trace]:
        """The newest ``n``, newest first."""
        out = []
        for rid in reversed(self._traces):
            out.append(self._traces[rid])
            if len(out) >= n:
                break
        return out


def standing_of(engine_priority: int | None, priority_sign: int = 1) -> str:
    """The tenant's standing at dispatch, read back from the engine priority."""
    if engine_priority is None:
        return ""
    return TIERS.get(abs(engine_priority) % 1000, "")
