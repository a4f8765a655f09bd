"""The thrash limit's budget: evictions made for another model's demand, per window.

Each such eviction is a *swap*; at most ``max_swaps_per_window`` happen per
``swap_window_s`` (``scheduler.residency``).  The window and limit are read
from the configuration at each call by the planner and passed in, so this
only keeps the times.  Pure: ``now`` comes in with every call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SwapBudget:
    """When the swaps of the current window happened, and how many there were in all."""

    times: deque[float] = field(default_factory=deque)
    total: int = 0

    def trim(self, now: float, window_s: float) -> None:
        """Forget swaps older than the window."""
        while self.times and now - self.times[0] >= window_s:
            self.times.popleft()

    def in_window(self) -> int:
        """Swaps in the window (after ``trim``)."""
        return len(self.times)

    def next_in(self, now: float, window_s: float) -> float:
        """Seconds until the oldest swap leaves the window (the whole window if none)."""
        return (self.times[0] + window_s - now) if self.times else window_s

    def record(self, now: float) -> None:
        """One more swap, now."""
        self.total += 1
        self.times.append(now)
