"""The thrash limit's budget: evictions made for another model's demand, per window.

Each such eviction is a *swap*; at most ``max_swaps_per_window`` happen per
``swap_window_s`` (``scheduler.residency``) on each GPU: the limit bounds the
share of a GPU's time spent swapping, so two models trading places on GPU 1
never use up the budget of GPU 0.  The count over all GPUs is kept too, for
``infergridctl model list``.  The window and limit are read
from the configuration at each call by the planner and passed in, so this
only keeps the times.  Pure: ``now`` comes in with every call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SwapBudget:
    """When the swaps of the current window happened, and how many there were in all."""

    times: deque[float] = field(default_factory=deque)  # every GPU's
    per_gpu: dict[int, deque[float]] = field(default_factory=dict)
    total: int = 0

    def trim(self, now: float, window_s: float) -> None:
        """Forget swaps older than the window."""
        for q in (self.times, *self.per_gpu.values()):
            while q and now - q[0] >= window_s:
                q.popleft()

    def _q(self, gpu: int | None) -> deque[float]:
        return self.times if gpu is None else self.per_gpu.get(gpu, deque())

    def in_window(self, gpu: int | None = None) -> int:
        """Swaps in the window on ``gpu`` (None: on all of them), after ``trim``."""
        return len(self._q(gpu))

    def next_in(self, now: float, window_s: float, gpu: int | None = None) -> float:
        """Seconds until the oldest swap on ``gpu`` leaves the window (the whole window
        if none)."""
        q = self._q(gpu)
        return (q[0] + window_s - now) if q else window_s

    def record(self, now: float, gpus: set[int] | frozenset[int] = frozenset()) -> None:
        """One more swap, now, making room on ``gpus``."""
        self.total += 1
        self.times.append(now)
        for g in gpus:
            self.per_gpu.setdefault(g, deque()).append(now)
