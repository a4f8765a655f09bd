"""``Leases``: idle engine slots lent to front doors, so a quiet request skips a round trip.

Why: at one stream, a request's Submit → Dispatch round trip through the
scheduler (two ZeroMQ crossings, each waking an idle process) was about 1 ms of
the 1.7-2 ms the front door added to time-to-first-token (issue 17,
bench/results/frontdoor-hops.md) — spent asking a question whose answer, on an
engine with free slots and nobody waiting, is always "go".  So the scheduler
answers it ahead of time: it lends a front door that asks (``Hello.leases``) a
slot on a ready engine, and the front door sends its next eligible request
there at once, telling the scheduler with a ``Submit`` that names the lease.

The rules that keep fairness, quotas and "every dispatch ends in one Done":

* a lease is granted only while nothing is queued for its model (and has not
  been for ``QUIET_S``), on an engine in ``EngineTable.ready`` whose window
  has strict room and where the headroom rules would let even a *heavy*
  tenant dispatch (reserve, prefill guard, prefill window): any tenant could
  have been dispatched there at once by the normal path;
* at most a quarter of an engine's window (one at least) is leased at a time, and
  a leased slot counts as taken (``Books.engine_occupied``) from the grant
  until the lease is used, given back or dropped, so nobody overfills the engine;
* it is revoked as soon as something queues for its model or its engine leaves
  ``ready`` (not READY, suspected after ``Done.engine_failed``, drained for
  sleep or unload); a revoked lease still holds its slot until the front door
  gives it back (``Leases.revoke`` the other way) or a ``Submit`` uses it — a
  lease used in a race with its revocation is an ordinary request then;
* a lease names the tenants heavy (over their share, headroom.py) when it was
  granted; the front door does not use it for them, and sends the others' requests
  at a tier a light request can preempt (``LeaseInfo.tier``: not light, since a
  flooder's first requests may come on leases, one per front door, before anyone
  knows it floods; a scheduler dispatch racing them from another front door does
  not know of them either);
* the ``Submit`` that uses a lease goes through the same admission, VTC and
  quota charge as any request (``SchedulerCore.submit``), and is then started on
  the lease's engine without a ``Dispatch``; the front door uses leases only for
  tenants without rpm/tpm quotas, but a quota that appeared meanwhile is still
  charged (into debt, like a prompt the estimate undercounted);
* a front door relaying several streams wants none (``Leases.wants``: 0, and it
  gives back those it holds, so no slot is kept for a request that will not use
  it), and asks again once it is quiet;
* leases die with either process: ids carry the scheduler instance (the front
  door drops its leases on every Hello and on a new scheduler instance), and the
  core drops a front door's leases at its Hello and when it goes silent.

Pure like the rest of the core: the clock comes in as ``now``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import protocol as p
from .books import Books
from .dispatch import assisted_engine
from .engine_table import Engine, EngineTable
from .headroom import Headroom
from .send import Send

#: the most leases per model a front door may hold
MAX_PER_MODEL = 2
#: a model grants leases only after nothing was queued for it this long
QUIET_S = 0.25
#: leases on one engine, at most: this share of its window (and at least one)
ENGINE_SHARE = 4
#: a revocation not answered in this long is sent again (a message may be dropped)
RESEND_S = 1.0


@dataclass(eq=False)
class Lease:
    lease_id: str
    peer: str
    model: str
    engine_id: str
    revoked_at: float | None = None  # when revoked; the slot is held until it comes back


class Leases:
    """Grants, revocations and the slots leases hold; see the module docstring."""

    def __init__(self, books: Books, engines: EngineTable, headroom: Headroom,
                 weight: Callable[[str], float]) -> None:
        self.books = books
        self.engines = engines
        self.headroom = headroom
        self.weight = weight
        #: the scheduler instance, in every lease id (the daemon sets it)
        self.prefix = ""
        self._leases: dict[str, Lease] = {}
        self._wants: dict[str, int] = {}  # front door -> leases per model
        self._last_queued: dict[str, float] = {}  # model -> last seen with a queue
        self._seq = 0

    # ------------------------------------------------------------------ peers
    def hello(self, peer: str, wants: int) -> None:
        """A front door's Hello: its old leases are gone (it dropped them), ``wants`` new."""
        self.drop_peer(peer)
        self.want(peer, wants)

    def want(self, peer: str, wants: int) -> None:
        """A front door's new wish: none while it is busy (it gave back what it held, and
        a lease it cannot use would only keep a slot from the scheduler's own dispatches),
        some again once it is quiet.  Its leases already granted stay as they are."""
        if wants > 0:
            self._wants[peer] = min(wants, MAX_PER_MODEL)
        else:
            self._wants.pop(peer, None)

    def drop_peer(self, peer: str) -> None:
        """A front door went silent or said Hello: every lease it held frees its slot."""
        self._wants.pop(peer, None)
        for lease in [x for x in self._leases.values() if x.peer == peer]:
            self._free(lease)

    # ------------------------------------------------------------------ the front door's answers
    def consume(self, lease_id: str, peer: str) -> Lease | None:
        """A Submit used ``lease_id``: its slot becomes the request's (the caller starts
        it).  None when the lease is unknown here (dropped already)."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.peer != peer:
            return None
        self._free(lease)
        return lease

    def give_back(self, peer: str, lease_ids: list[str]) -> None:
        """Leases the front door returns unused."""
        for lid in lease_ids:
            lease = self._leases.get(lid)
            if lease is not None and lease.peer == peer:
                self._free(lease)

    def summary(self) -> dict[str, object]:
        """For ``infergridctl status``: slots held by leases, and who wants how many now
        (a busy front door wants none)."""
        return {"held": len(self._leases), "granted": self._seq, "wants": dict(self._wants)}

    def held(self, engine_id: str) -> int:
        """Leases (revoked or not) holding a slot on ``engine_id`` (tests)."""
        return sum(1 for x in self._leases.values() if x.engine_id == engine_id)

    def _free(self, lease: Lease) -> None:
        del self._leases[lease.lease_id]
        self.books.reserve(lease.engine_id, -1)

    # ------------------------------------------------------------------ after every event
    def update(self, now: float) -> list[Send]:
        """Revoke what may no longer be used, resend old revocations, grant what fits."""
        if not self._leases and not self._wants:
            return []
        revoke: dict[str, list[str]] = {}
        live: dict[tuple[str, str], int] = {}
        ready: dict[str, list[Engine]] = {}
        for lease in self._leases.values():
            if lease.revoked_at is not None:
                if now - lease.revoked_at >= RESEND_S:
                    lease.revoked_at = now
                    revoke.setdefault(lease.peer, []).append(lease.lease_id)
                continue
            engines = ready.get(lease.model)
            if engines is None:
                engines = ready[lease.model] = self.engines.ready(lease.model)
            if self.books.model_queued(lease.model) or \
                    all(e.status.engine_id != lease.engine_id for e in engines):
                lease.revoked_at = now
                revoke.setdefault(lease.peer, []).append(lease.lease_id)
            else:
                key = (lease.peer, lease.model)
                live[key] = live.get(key, 0) + 1
        grant: dict[str, list[p.LeaseInfo]] = {}
        for model in self.engines.models():
            if self.books.model_queued(model):
                self._last_queued[model] = now
                continue
            if now - self._last_queued.get(model, -QUIET_S) < QUIET_S:
                continue
            for peer, wants in self._wants.items():
                for _ in range(wants - live.get((peer, model), 0)):
                    info = self._grant(peer, model, now)
                    if info is None:
                        break
                    grant.setdefault(peer, []).append(info)
        return [Send(peer, p.Leases(instance=self.prefix, grant=grant.get(peer, []),
                                    revoke=revoke.get(peer, [])))
                for peer in {**revoke, **grant}]

    def _grant(self, peer: str, model: str, now: float) -> p.LeaseInfo | None:
        """A lease on the least occupied engine where any tenant could go now; None if none."""
        best, best_key = None, None
        for e in self.engines.ready(model):
            eid = e.status.engine_id
            n = self.books.engine_occupied(eid)
            if self.books.engine_reserved(eid) >= max(1, e.window.cap // ENGINE_SHARE):
                continue  # several front doors: leases keep most of an engine unheld
            if not e.window.has_room(n) or not self.headroom.allows(
                    eid, "", n, e.window.cap, True, now, assisted=assisted_engine(e)):
                continue
            key = (n / e.window.cap, n, eid)
            if best_key is None or key < best_key:
                best, best_key = e, key
        if best is None:
            return None
        st = best.status
        total_cap = sum(e.window.cap for e in self.engines.ready(model))
        heavy = self.headroom.standing(model, total_cap, self.books.queued_n, self.weight,
                                       now).heavy_tenants()
        self._seq += 1
        lease = Lease(f"{self.prefix}-{self._seq}", peer, model, st.engine_id)
        self._leases[lease.lease_id] = lease
        self.books.reserve(st.engine_id, 1)
        return p.LeaseInfo(lease_id=lease.lease_id, model=model, engine_id=st.engine_id,
                           endpoint=st.endpoint, api_key=st.api_key,
                           priority_sign=st.priority_sign if st.supports_priority else 0,
                           heavy=heavy, tier=_preemptible_tier(st))


def _preemptible_tier(st: p.EngineStatus) -> int:
    """The lowest-ranked tier a leased request can go at and still give its seat to a
    light request (see the module docstring): InferGrid's vLLM step policy preempts
    any tier but light (assist/policy.py), so neutral (1); SGLang's scheduler (the one
    whose higher priorities run first: ``priority_sign`` -1, SGLang or the simulated
    engine's SGLang personality) preempts only for a priority better by *more than*
    its threshold, which InferGrid sets to 1 (engines/sglang.py), so there only heavy
    (2) can be taken — and SGLang runs no step policy of ours that would slow a heavy
    sequence's prefill.  Engines that preempt for no one: neutral."""
    return 2 if st.priority_sign < 0 else 1
