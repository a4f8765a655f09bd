"""The ``EngineCommand``s residency has sent and not yet seen carried out.

One command per engine at a time: a command is *out* from the moment it is
sent until the engine's reported state shows it (the supervisor's answer can
overtake the next report), so the planner never sends a second one on top of
it nor counts the memory twice.  A refusal (no room, a bad state) is retried
after ``REFUSED_RETRY_S``; a command never answered is dropped after the
configured ``command_timeout_s`` and may be sent again.  Pure: ``now`` comes
in with every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import protocol as p
from .memory import ASLEEP, UP, EngineView

S = p.EngineState

UP_ACTIONS = ("start", "wake")
#: After the supervisor refuses a command, wait this long before asking again.
REFUSED_RETRY_S = 0.5
#: A sleep the engine refused this many times running: stop it instead (the engine
#: says it sleeps but cannot, e.g. vLLM started without sleep mode behind our back).
SLEEP_FAILURES_BEFORE_STOP = 2
#: An answered command stays pending until the engine's reported state shows it (the
#: answer can overtake the next report), or this long after the answer at most.
ANSWERED_GRACE_S = 2.0


@dataclass
class PendingCommand:
    """One command out to a supervisor."""

    command_id: str
    action: str
    level: int
    sent_at: float
    answered_at: float | None = None
    unload: bool = False


@dataclass
class EngineCommands:
    """Commands out per engine, refusal back-off, and sleeps that keep failing."""

    pending: dict[str, PendingCommand] = field(default_factory=dict)  # engine_id -> command
    not_before: dict[str, float] = field(default_factory=dict)  # engine_id -> retry time
    sleep_failures: dict[str, int] = field(default_factory=dict)  # engine_id -> in a row
    seq: int = 0

    def out(self, engine_id: str) -> bool:
        """A command for this engine is out."""
        return engine_id in self.pending

    def up_out(self, engine_id: str) -> bool:
        """A start or wake for this engine is out (its memory counts as held)."""
        pend = self.pending.get(engine_id)
        return pend is not None and pend.action in UP_ACTIONS

    def down_out(self, engine_id: str) -> bool:
        """A sleep or stop for this engine is out (no new dispatches to it)."""
        pend = self.pending.get(engine_id)
        return pend is not None and pend.action not in UP_ACTIONS

    def sleep_keeps_failing(self, engine_id: str) -> bool:
        """Its sleep was refused too often running: stop it instead (it is drained already)."""
        return self.sleep_failures.get(engine_id, 0) >= SLEEP_FAILURES_BEFORE_STOP

    def send(self, e: EngineView, action: str, now: float,
             out: list[tuple[str, p.EngineCommand]], level: int = 1,
             unload: bool = False) -> bool:
        """Append the command to ``out`` unless one is out, no supervisor owns the engine
        or a refusal's back-off runs; True when sent."""
        eid = e.status.engine_id
        if eid in self.pending or not e.owner or self.not_before.get(eid, 0.0) > now:
            return False
        self.not_before.pop(eid, None)
        self.seq += 1
        cid = f"res-{self.seq}"
        self.pending[eid] = PendingCommand(cid, action, level, now, unload=unload)
        out.append((e.owner, p.EngineCommand(command_id=cid, engine_id=eid, action=action,
                                             level=level, unload=unload)))  # type: ignore[arg-type]
        return True

    def expire(self, now: float, timeout_s: float) -> None:
        """Drop commands unanswered for ``timeout_s``, or answered and never reported."""
        for eid, pend in list(self.pending.items()):
            if now - pend.sent_at > timeout_s or (
                    pend.answered_at is not None and now - pend.answered_at > ANSWERED_GRACE_S):
                del self.pending[eid]

    def reported(self, st: p.EngineStatus) -> None:
        """A state the supervisor reported: a command whose target it shows is done."""
        if st.state in ASLEEP:
            self.sleep_failures.pop(st.engine_id, None)
        pend = self.pending.get(st.engine_id)
        if pend is not None and _reached(pend.action, st.state) \
                and (not pend.unload or st.unloaded):
            del self.pending[st.engine_id]

    def answered(self, r: p.EngineCommandResult, now: float) -> PendingCommand | None:
        """The supervisor's answer; returns the command when it was refused (it may be
        sent again after ``REFUSED_RETRY_S``), else None."""
        pend = self.pending.get(r.engine_id)
        if pend is None or pend.command_id != r.command_id:
            return None
        if r.ok:  # done at the supervisor; pending until a report shows the new state
            pend.answered_at = now
            return None
        del self.pending[r.engine_id]
        self.not_before[r.engine_id] = now + REFUSED_RETRY_S
        if pend.action == "sleep":  # drained already: a stop is as safe, if slower back
            self.sleep_failures[r.engine_id] = self.sleep_failures.get(r.engine_id, 0) + 1
        return pend

    def forget(self, engine_id: str) -> None:
        """Its supervisor changed: an answer to what we sent the old one will not come."""
        self.pending.pop(engine_id, None)


def _reached(action: str, state: str) -> bool:
    """Has a reported state arrived where the command was going?"""
    if action in UP_ACTIONS:
        return state in UP or state == S.FAILED
    if action == "sleep":
        return state in ASLEEP
    if action == "stop":
        return state == S.STOPPED
    return False
