"""The per-engine dispatch window: keep each engine just saturated (DESIGN §5).

Fairness only exists where a queue is held.  If the scheduler forwarded every
request at once, the engine's own FIFO would decide the order; so it sends
only what the engine can start now and keeps the rest in its own queues.  An
engine has room when all three hold:

* our in-flight count on it is under ``cap``;
* its last report showed no waiting requests — unless that report was taken
  while we had more in flight than now (requests have finished since, so the
  waiting has likely drained: a stale "waiting" must not stall dispatch);
* its KV-cache use, in that report, was under ``kv_threshold`` (same
  staleness rule).

``cap`` starts at the engine's ``max_num_seqs`` and is learned from KV
pressure only: a report with KV use over the threshold at in-flight ``n``
means ``n`` is too many for this engine's memory, so ``cap`` drops to
``n - 1`` (or to what the engine managed to run, if less).  Repeated reports
at the same ``n`` carry no new information and do not shrink it further.
After ``grow_after`` consecutive reports of running full (``n >= cap``)
without pressure, ``cap`` grows by one, up to ``max_num_seqs``: shrink fast,
grow slowly, as congestion control does.

Waiting requests alone only pause dispatch; they never shrink ``cap``.  A
vLLM-style engine shows fresh arrivals as waiting until its next step admits
them, and with chunked prefill a burst of long prompts stays "waiting" for
several steps while the engine is far from full.  Treating that as overload
once collapsed the window to a quarter of ``max_num_seqs`` and halved
throughput (hero benchmark, 2026-11-24).

Pure: fed ``EngineStatus`` reports plus our in-flight count, asked ``has_room``.
"""

from __future__ import annotations

from ..protocol import EngineStatus


class DispatchWindow:
    """Learned concurrency cap of one engine; see the module docstring."""

    def __init__(self, max_seqs: int, kv_threshold: float, grow_after: int = 4) -> None:
        self.max_seqs = max(1, max_seqs)
        self.cap = self.max_seqs
        self.kv_threshold = kv_threshold
        self.grow_after = max(1, grow_after)
        self._blocked_at: int | None = None  # in-flight at the last pressured report
        self._kv_blocked_at: int | None = None  # the same, for KV pressure alone
        self._calm_full = 0  # consecutive reports running full without pressure
        self._generation: int | None = None

    def observe(self, status: EngineStatus, inflight: int, fallback_max_seqs: int) -> None:
        """Learn from one report; ``inflight`` is our count when it arrived."""
        self.max_seqs = max(1, status.max_num_seqs or fallback_max_seqs)
        if self._generation is None or status.generation != self._generation:
            self.cap = self.max_seqs  # first report, or a restarted engine: a new engine
            self._blocked_at = self._kv_blocked_at = None
            self._calm_full = 0
        self._generation = status.generation
        self.cap = min(self.cap, self.max_seqs)
        waiting = status.num_waiting > 0
        kv_high = status.kv_usage >= self.kv_threshold
        self._kv_blocked_at = inflight if kv_high else None
        if waiting or kv_high:
            self._blocked_at = inflight
            self._calm_full = 0
            if kv_high:
                limit = inflight - 1
                if status.num_running > 0:
                    limit = min(limit, status.num_running)
                self.cap = max(1, min(self.cap, limit))
            return
        self._blocked_at = None
        if inflight >= self.cap and self.cap < self.max_seqs:
            self._calm_full += 1
            if self._calm_full >= self.grow_after:
                self.cap += 1
                self._calm_full = 0

    def has_room(self, inflight: int, bypass_waiting: bool = False) -> bool:
        """Under ``cap`` and not paused; ``bypass_waiting``: ignore a pause that only
        engine-side waiting caused (KV pressure still pauses)."""
        if inflight >= self.cap:
            return False
        blocked = self._kv_blocked_at if bypass_waiting else self._blocked_at
        return blocked is None or inflight < blocked

    def room(self, inflight: int) -> int:
        """How many more may go now (0 when ``has_room`` is false)."""
        if not self.has_room(inflight):
            return 0
        n = self.cap - inflight
        if self._blocked_at is not None:
            n = min(n, self._blocked_at - inflight)
        return max(0, n)
