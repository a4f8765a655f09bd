"""What residency remembers of one model between calls, and what it says about it.

Loads (when one started, what the last took), heat (a request count decaying
with a half-life of ``swap_window_s``: frequency and recency in one number),
an eviction under way and why, the operator's intent (``model load`` /
``unload``) and a load failure.  The planner (``residency_plan.py``) changes
these; ``reason``, ``wait_info`` and ``refusal`` turn them into what a client
or operator is told.  Pure: ``now`` comes in with every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import protocol as p
from .memory import UP, EngineView

S = p.EngineState

#: Retry-After for a model that failed to load (the supervisor retries with backoff).
FAILED_RETRY_AFTER_S = 10.0


@dataclass
class ModelState:
    """One model's residency state."""

    last_used: float
    heat: float = 0.0
    heat_at: float = 0.0
    resident_since: float | None = None  # when it last had a ready engine
    load_started: float | None = None
    last_load_s: float = 0.0  # what its last load or wake took, first request to ready
    evicting: str = ""  # "" | "sleep" | "stop": draining, then that
    evict_level: int = 1
    evict_for: str = ""  # the model it makes room for ("": idle or operator)
    #: the engines the eviction takes down (those on the GPUs needed); empty: every one
    evict_engines: set[str] = field(default_factory=set)
    evict_reason: str = ""
    down_reason: str = ""  # why it is asleep or stopped, once it is
    down_since: float | None = None
    admin_down: bool = False  # unloaded by the operator: stays stopped until loaded
    want_up: bool = False  # the operator asked to load or wake it
    load_failed: str = ""  # the error, while its last load failed
    wait_reason: str = ""  # why its queue waits
    retry_after_s: float = 0.0
    loads: int = 0
    evictions: int = 0

    @classmethod
    def get(cls, models: dict[str, ModelState], name: str, now: float) -> ModelState:
        """The state of ``name`` in ``models``, made on first mention (last used now)."""
        m = models.get(name)
        if m is None:
            m = models[name] = cls(last_used=now, heat_at=now)
        return m

    # ------------------------------------------------------------------ demand
    def note_request(self, now: float, window_s: float) -> None:
        """A request arrived: recency and frequency (heat decays, half-life = window)."""
        self.heat = self.heat * 0.5 ** ((now - self.heat_at) / window_s) + 1.0
        self.heat_at = now
        self.last_used = now

    def heat_now(self, now: float, window_s: float) -> float:
        """Its heat decayed to ``now``."""
        return self.heat * 0.5 ** ((now - self.heat_at) / window_s)

    # ------------------------------------------------------------------ reports
    def observe(self, old: p.EngineStatus | None, new: p.EngineStatus, now: float) -> None:
        """One engine's reported state: load successes and failures, an operator's unload."""
        was = old.state if old is not None else None
        if old is None and new.unloaded and new.state == S.STOPPED and not self.want_up:
            # first sight of it (this scheduler just started): the supervisor remembers
            # an operator's unload, so the model stays down as the operator left it
            self.admin_down = True
            self.down_reason = "unloaded by the operator"
        if new.state == S.READY:
            if self.resident_since is None:
                self.resident_since = now
                if self.load_started is not None:
                    self.last_load_s = now - self.load_started
                    self.loads += 1
                self.load_started = None
            self.load_failed = ""
            self.down_reason = ""
            self.down_since = None
        elif new.state == S.FAILED and was is not None and was != S.FAILED \
                and was not in (S.READY, S.DRAINING, S.UNHEALTHY):
            # failed while starting or waking: a load failure, not a crash while serving
            # its first line only (the log lines after it are for the operator:
            # infergridctl status, the journal), without the dangling "; last log lines:"
            first = (new.last_error or "the engine failed").splitlines()[0]
            self.load_failed = first.removesuffix("; last log lines:").strip()
            self.load_started = None

    def evicted(self, now: float, partial: bool = False) -> None:
        """Every engine its eviction wanted down is asleep or stopped (``partial``: only
        some of its replicas, those on the GPUs needed; the others serve on)."""
        if not partial:
            self.down_reason = self.evict_reason
            self.down_since = now
            self.resident_since = None
        self.evicting, self.evict_for = "", ""
        self.evict_engines = set()
        if self.load_failed:  # stopped: the next request may try afresh
            self.load_failed = ""

    # ------------------------------------------------------------------ what it says
    def refusal(self, model: str, engines: list[EngineView]) -> tuple[str, float] | None:
        """(reason, retry-after) when requests for it must get 503 now, not wait."""
        if self.admin_down:
            return (f"model {model!r} was unloaded by the operator "
                    f"(infergridctl model load {model})", 60.0)
        if self.load_failed and not any(e.status.state in UP for e in engines):
            return f"model {model!r} failed to load: {self.load_failed}", FAILED_RETRY_AFTER_S
        return None

    def reason(self) -> str:
        """Why it is not ready, for ``ModelInfo.reason`` ("" when residency has none)."""
        if self.load_failed:
            return f"failed: {self.load_failed}"
        if self.admin_down:
            return "unloaded by the operator"
        if self.evicting:
            return f"draining: {self.evict_reason}"
        if self.load_started is not None:
            return self.wait_reason or "loading"
        return self.down_reason

    def wait_info(self) -> tuple[str, float]:
        """(why its queue still waits, a Retry-After) for a load-deadline 503."""
        why = self.wait_reason or ("loading" if self.load_started is not None else "not loaded")
        retry = self.retry_after_s or max(1.0, self.last_load_s) or 5.0
        return why, min(60.0, max(1.0, retry))

    def describe(self, now: float, window_s: float) -> dict[str, object]:
        """Its counters and intentions for ``infergridctl model list``."""
        return {
            "loads": self.loads, "evictions": self.evictions,
            "last_load_s": round(self.last_load_s, 3),
            "evicting": self.evicting, "admin_down": self.admin_down, "want_up": self.want_up,
            "heat": round(self.heat_now(now, window_s), 3),
            "idle_s": round(now - self.last_used, 1), "reason": self.reason(),
        }

