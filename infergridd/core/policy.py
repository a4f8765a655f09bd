"""The interface every ordering policy implements, and the pieces they share.

A policy decides *which* queued request goes next for a model; the core
decides *whether* anything may go (an engine with room, ``capacity.py``) and
*where*.  Keeping the two apart lets the benchmark swap ``vtc`` for ``fifo`` or
``token_bucket`` without touching dispatch, and lets each be tested alone.

Contract (the core relies on every point):

* ``enqueue(req)`` puts a request in line; ``remove(request_id)`` takes it out
  unserved (cancel, queue deadline, peer gone) and charges nothing.
* ``pick(model)`` **peeks**: it returns the request that should go next for
  that model without removing it, so the core can look before it commits.
  ``on_dispatch(req)`` commits: it removes the request from the queue and
  charges the estimate of its prompt.
* ``on_progress(tenant, delta)`` charges output tokens as they stream;
  ``on_done(req, prompt, completion)`` corrects what was charged for ``req``
  (``req.charged_prompt``/``req.charged_completion``, which the core keeps) to
  the engine's real usage — the difference may be negative (a refund).
* ``admit(req, now)`` may refuse a request on the policy's own grounds
  (``token_bucket``); ``None`` means admitted, and the policy has taken its
  share (a token) already.
* Bands: a lower band is always served first; within a band, the policy's order.
* Deterministic: nothing depends on set or hash order, nothing is random.

Requests are ``record.Record`` objects, the same ones the core's books hold:
the policy reads their header and ``seq``/``band``, and ``on_done`` reads the
``charged_*`` fields the books keep.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..protocol import Reject
from .record import Record


class TenantView(ABC):
    """What a policy may ask about tenants (the registry implements it)."""

    @abstractmethod
    def weight(self, name: str) -> float: ...

    @abstractmethod
    def band(self, name: str) -> int: ...


class OrderedQueue:
    """Requests kept in key order: O(log n) push, O(1) removal by id (lazy), peek.

    Removal marks the entry dead instead of searching the heap; dead entries
    are skipped at the top and the heap is rebuilt when they outnumber the
    live ones, so memory stays proportional to what is queued.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[Any, ...], int, Record]] = []
        self._live: dict[str, Record] = {}

    def push(self, key: tuple[Any, ...], req: Record) -> None:
        self._live[req.request_id] = req
        heapq.heappush(self._heap, (key, req.seq, req))

    def discard(self, request_id: str) -> Record | None:
        req = self._live.pop(request_id, None)
        if req is not None and len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [e for e in self._heap if self._live.get(e[2].request_id) is e[2]]
            heapq.heapify(self._heap)
        return req

    def peek(self) -> Record | None:
        heap = self._heap
        while heap:
            req = heap[0][2]
            if self._live.get(req.request_id) is req:
                return req
            heapq.heappop(heap)
        return None

    def head_key(self) -> tuple[tuple[Any, ...], int] | None:
        """Sort key of the head, for deterministic tie-breaks between queues."""
        if self.peek() is None:
            return None
        return (self._heap[0][0], self._heap[0][1])

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._live


class Policy(ABC):
    """Base of ``fifo``, ``vtc`` and ``token_bucket``; see the module docstring."""

    name: str = ""

    def __init__(self, cfg: Config, tenants: TenantView) -> None:
        self.cfg = cfg
        self.tenants = tenants
        #: (model, tenant) -> requests in flight; the core plugs in its own count
        self.inflight_of: Callable[[str, str], int] = lambda model, tenant: 0

    @abstractmethod
    def enqueue(self, req: Record) -> None: ...

    @abstractmethod
    def remove(self, request_id: str) -> Record | None:
        """Take a queued request out unserved; ``None`` when it is not queued."""

    @abstractmethod
    def pick(self, model: str,
             allow: Callable[[str], bool] | None = None) -> Record | None:
        """The request that should run next for ``model`` (peek, not pop).

        ``allow(tenant)``: whether that tenant may dispatch at all right now (the
        core's headroom rules); a policy picks only among allowed tenants' requests.
        """

    @abstractmethod
    def on_dispatch(self, req: Record) -> None:
        """``req`` was dispatched: remove it from the queue and charge its prompt estimate."""

    def on_progress(self, tenant: str, delta_out_tokens: int) -> None:
        """Output tokens streamed for ``tenant`` since the last report."""
        return None  # policies that keep no counters ignore it

    def on_done(self, req: Record, prompt_tokens: int, completion_tokens: int) -> None:
        """Correct what was charged for ``req`` to the engine's real usage."""
        return None  # policies that keep no counters ignore it

    def admit(self, req: Record, now: float) -> Reject | None:
        """The policy's own admission test; ``None``: admitted."""
        return None

    def counter(self, tenant: str) -> float:
        """Service received, in the policy's unit (VTC: weighted tokens); 0 if it keeps none."""
        return 0.0

    def forget(self, tenant: str) -> None:
        """The tenant was removed; drop what is kept for it."""
        return None  # policies that keep no counters ignore it

    def export(self, now: float) -> dict[str, Any]:
        return {}

    def import_(self, data: dict[str, Any], now: float) -> None:
        """Restore ``export``'s output; unknown or malformed parts are ignored."""
        return None  # policies that keep no counters ignore it

    @abstractmethod
    def queued(self, model: str) -> int:
        """How many requests wait for ``model``."""


class FifoBase(Policy):
    """Shared by ``fifo`` and ``token_bucket``: one queue per model in (band, submit order)."""

    def __init__(self, cfg: Config, tenants: TenantView) -> None:
        super().__init__(cfg, tenants)
        self._queues: dict[str, OrderedQueue] = {}
        self._where: dict[str, str] = {}  # request_id -> model

    def enqueue(self, req: Record) -> None:
        q = self._queues.setdefault(req.model, OrderedQueue())
        q.push((req.band, *req.order_key()), req)
        self._where[req.request_id] = req.model

    def remove(self, request_id: str) -> Record | None:
        model = self._where.pop(request_id, None)
        if model is None:
            return None
        return self._queues[model].discard(request_id)

    def pick(self, model: str,
             allow: Callable[[str], bool] | None = None) -> Record | None:
        q = self._queues.get(model)
        head = q.peek() if q is not None else None
        if head is not None and allow is not None and not allow(head.tenant):
            return None  # first come, first served: nobody overtakes a held head
        return head

    def on_dispatch(self, req: Record) -> None:
        self.remove(req.request_id)

    def queued(self, model: str) -> int:
        q = self._queues.get(model)
        return len(q) if q is not None else 0


def make_policy(cfg: Config, tenants: TenantView) -> Policy:
    """The policy named by ``cfg.scheduler.policy``."""
    name = cfg.scheduler.policy
    if name == "fifo":
        from .fifo import FifoPolicy

        return FifoPolicy(cfg, tenants)
    if name == "token_bucket":
        from .token_bucket import TokenBucketPolicy

        return TokenBucketPolicy(cfg, tenants)
    if name == "vtc":
        from .vtc import VtcPolicy

        return VtcPolicy(cfg, tenants)
    raise ValueError(f"unknown scheduling policy {name!r}")
