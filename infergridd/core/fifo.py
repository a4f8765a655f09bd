"""``fifo``: one global line per model, in submit order — the baseline without fairness.

Order is (band, ``submitted_at``, arrival sequence): the front door's
timestamp keeps a request's place across a scheduler restart, the sequence
breaks ties deterministically.  It is what an engine would do on its own if
everything were forwarded at once, which is why the benchmark compares with it.
"""

from __future__ import annotations

from .policy import FifoBase


class FifoPolicy(FifoBase):
    name = "fifo"
