"""``Record``: the one in-core shape of a request, shared by the books and the policies.

The wire carries a request's header in ``protocol.Submit`` (new) and
``protocol.QueuedRecord`` (held by a front door across a scheduler restart),
both built on ``protocol.RequestHeader``.  Inside the core there is exactly one
type: the policies order and charge it, the books track where it is.  One
object per request, so the policy's queue and the core's books can never
disagree about a request's fields.

``state`` is a ``RecordState``, changed only by the books' transitions
(``books.py``): ``QUEUED`` (in the policy's queue), ``INFLIGHT`` (holds a slot on
``engine_id``), ``LOST`` (its front door went silent while it ran; remembered
so that a late ``Done`` still corrects the charges).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RecordState(str, Enum):
    """Where a request is.  A ``str`` enum: it equals its value (``"queued"``), as before."""

    QUEUED = "queued"
    INFLIGHT = "inflight"
    LOST = "lost"

    def __str__(self) -> str:
        return self.value


@dataclass(eq=False)
class Record:
    """One request as the scheduler sees it (identity, not value, equality).

    ``seq`` is unique per enqueue (a re-queued request gets a new one), so a
    stale heap entry can never be mistaken for the live one.
    """

    # the header, as the front door sent it (token counts clamped to >= 0)
    request_id: str
    tenant: str
    model: str
    prompt_tokens: int
    max_tokens: int
    priority: int = 0
    submitted_at: float = 0.0  # the front door's wall clock: its place in line
    band: int = 0  # the tenant's band when the request arrived
    peer: str = ""  # the front door that holds its client
    # ordering and state inside this core
    seq: int = 0  # arrival order inside this core, the tie-break after submitted_at
    state: RecordState = RecordState.QUEUED
    engine_id: str = ""
    enqueued_at: float = 0.0  # core clock
    dispatched_at: float = 0.0
    # charging: what the policy has been told so far, so ``on_done`` corrects it exactly
    completion_tokens: int = 0  # reported so far (Progress)
    charged_prompt: int = 0
    charged_completion: int = 0
    quota_tokens: int = 0  # charged to the tenant's tpm bucket at admission

    def order_key(self) -> tuple[float, int]:
        """Submit order: the front door's timestamp, then arrival inside this core."""
        return (self.submitted_at, self.seq)
