"""``SchedulerCore``: every scheduling decision, pure and synchronous — the façade.

The scheduler daemon is a thin ZeroMQ shell: it decodes a message, calls one
method here and sends the ``Send`` actions it gets back.  Nothing in the core
does I/O, awaits, reads the wall clock or draws a random number, so the whole
scheduler can be driven by a script in a test and gives the same decisions
for the same script (dicts keep insertion order; no set is ever iterated).

This class only wires the pieces together and keeps the one public API the
daemon, ``bench/floor.py`` and the tests use; each piece is one concept:

* ``books.py`` — every request (``record.py``: one ``Record`` shared with the
  policies) and its state transitions, with the counts that follow them;
* ``admission.py`` — admission checks, queue deadlines, tenant removals, rejects;
* ``dispatch.py`` — the window and headroom rules, engine choice and priority;
* ``charging.py`` — streaming charges and the settling of every ``Done``;
* ``engine_table.py`` — engines as the supervisors report them;
* ``reconcile.py`` — a front door's full-state ``Hello``;
* ``demand.py`` — what residency plans with, and the 503s it implies;
* ``snapshot.py`` / ``persistence.py`` — read-only views; state across restarts;
* ``tenants.py``, ``quotas.py``, the policy (``policy.py``), ``headroom.py`` and
  ``residency.py`` — the rules they apply.

Every method that can add work or free capacity ends by dispatching whatever
fits, so the shell never has to ask.  ``request_id`` is the idempotency key:
a repeated ``Submit`` or ``Done`` changes nothing.

Restarts: a peer's ``Hello`` carries its full state and replaces what the core
held for it (``peer_hello``); counters, quota levels and runtime tenant
settings travel through ``export_state``/``import_state`` (the daemon writes
them to the state dir), so a tenant cannot clear its debt by a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import protocol as p
from ..config import Config
from . import persistence, snapshot
from .admission import Admission
from .books import Books
from .charging import Charging
from .demand import Demand
from .dispatch import Dispatcher
from .engine_table import EngineTable
from .headroom import Headroom
from .leases import Leases
from .policy import make_policy
from .quotas import Quotas
from .reconcile import Reconciler
from .record import Record, RecordState
from .residency import Residency
from .send import Send
from .tenants import DEFAULT_TENANT, TenantRegistry

__all__ = ["SchedulerCore", "Send"]


class SchedulerCore:
    """See the module docstring and docs/internals.md, "Scheduling core"."""

    def __init__(self, cfg: Config, clock: Callable[[], float],
                 new_key: Callable[[], str] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.tenants = TenantRegistry(cfg, new_key)
        self.policy = make_policy(cfg, self.tenants)
        self.quotas = Quotas()
        self.residency = Residency(cfg)
        self.headroom = Headroom(cfg.scheduler.light_reserve, cfg.scheduler.prefill_guard,
                                 cfg.scheduler.prefill_window_tokens)
        self.policy.inflight_of = self.headroom.inflight
        self.books = Books(cfg, self.tenants, self.policy, self.headroom, self.quotas)
        self.engine_table = EngineTable(cfg, self.residency, self.books)
        self.admission = Admission(cfg, self.tenants, self.policy, self.quotas, self.headroom,
                                   self.residency, self.books, self.engine_table)
        self.dispatcher = Dispatcher(self.tenants, self.policy, self.headroom, self.residency,
                                     self.books, self.engine_table)
        self.charging = Charging(self.tenants, self.policy, self.quotas, self.headroom,
                                 self.residency, self.books)
        self.demand = Demand(cfg, self.residency, self.books, self.engine_table, self.admission)
        self.reconciler = Reconciler(self.books, self.charging, self.admission)
        self.leases = Leases(self.books, self.engine_table, self.headroom, self.tenants.weight)

    def _settle(self, now: float) -> list[Send]:
        """After any change: residency's commands, dispatch whatever fits, then the slot
        leases that follow (revoked once anything queues, granted while nothing does)."""
        out = self.demand.residency_commands(now) + self.dispatcher.dispatch_all(now)
        return out + self.leases.update(now)

    # ================================================================== request path
    def submit(self, peer: str, s: p.Submit) -> list[Send]:
        """Admit and queue a request, or reject it at once for the tenant's own reasons."""
        if self.books.known(s.request_id):
            return []
        now = self.clock()
        if s.lease_id:
            return self._submit_leased(peer, s, now)
        rejected = self.admission.admit(peer, s, now)
        if rejected:
            return rejected
        self.residency.note_request(s.model, now)
        self.headroom.note_submit(s.model, s.tenant or DEFAULT_TENANT, now)
        return self._settle(now)

    def _submit_leased(self, peer: str, s: p.Submit, now: float) -> list[Send]:
        """A request the front door already sent to ``s.engine_id`` on a lease (leases.py):
        admitted and charged as a request dispatched at once would be, whatever the
        queue or quota says now (it runs), and started there without a Dispatch.  A
        lease revoked in the meantime changes nothing: the request is in flight."""
        lease = self.leases.consume(s.lease_id, peer)
        engine_id = lease.engine_id if lease is not None else s.engine_id
        rec = self.admission.admit_running(peer, s, now)
        if rec is not None:  # None: its tenant was removed meanwhile; nothing to charge
            self.residency.note_request(s.model, now)
            self.headroom.note_submit(s.model, rec.tenant, now)
            self.dispatcher.start_leased(rec, engine_id, now)
        return self._settle(now)

    def lease_return(self, peer: str, lease_ids: list[str], wants: int = -1) -> list[Send]:
        """A front door gives back leases it did not use (their slots are free) and may say
        how many it wants from now on (none while it is busy: leases.py)."""
        self.leases.give_back(peer, lease_ids)
        if wants >= 0:
            self.leases.want(peer, wants)
        return self._settle(self.clock())

    def cancel(self, peer: str, request_id: str) -> list[Send]:
        """The client left while queued: forget the request; an in-flight one ends by Done."""
        rec = self.books.get(request_id)
        if rec is None or rec.peer != peer or rec.state is not RecordState.QUEUED:
            return []
        self.books.drop_queued(rec, self.clock())
        self.books.remember_finished(request_id, None)
        return []

    def progress(self, request_id: str, completion_tokens: int) -> None:
        """Completion tokens so far (cumulative): charge the new ones as they stream."""
        self.charging.progress(request_id, completion_tokens)

    def after_progress(self) -> list[Send]:
        """After a Progress message: a first token may have ended a prefill guard, which
        held back the slot leases (leases.py); grant them now, not at the next event."""
        return self.leases.update(self.clock())

    def done(self, peer: str, d: p.Done) -> list[Send]:
        """A dispatched request ended: free its slot, charge its real usage. Idempotent."""
        now = self.clock()
        if d.engine_failed and d.engine_id:
            self.engine_table.suspect(d.engine_id, now)  # before the retry's Submit is placed
        if d.lease_id and not self.books.known(d.request_id):
            # it ran on a lease and its Submit never arrived: the lease's slot is free,
            # and the prompt nobody charged is charged now
            self.leases.consume(d.lease_id, peer)
            self.charging.finish(d, now, prompt_charged=False)
            return self._settle(now)
        if not self.charging.finish(d, now):
            # nothing freed; a suspected engine still loses its leases
            return self.leases.update(now) if d.engine_failed else []
        return self._settle(now)

    def tick(self) -> list[Send]:
        """Tenant removals, queue deadlines, then dispatch as much as fits."""
        now = self.clock()
        out = self.admission.apply_tenant_changes(now)
        out += self.admission.expire(now)
        out += self.demand.residency_commands(now)
        out += self.demand.reject_unservable(now)
        out += self.dispatcher.dispatch_all(now)
        return out + self.leases.update(now)

    # ================================================================== peers
    def engines_update(self, peer: str, engines: list[p.EngineStatus], gpu_total_bytes: int = 0,
                       gpu_free_bytes: int = 0,
                       gpus: list[p.GpuDevice] | None = None) -> list[Send]:
        """A supervisor's full list of engines (the ones it no longer lists are gone) and
        its ledgers' GPU figures (0 / None: unchanged), one per GPU."""
        now = self.clock()
        if gpu_total_bytes:
            self.residency.gpu_total = gpu_total_bytes
            self.residency.gpu_free = gpu_free_bytes
        if gpus:
            self.residency.memory.gpus = list(gpus)
        self.engine_table.update(peer, engines, now)
        return self._settle(now)

    def command_result(self, peer: str, r: p.EngineCommandResult) -> list[Send]:
        """A supervisor answered an EngineCommand; a refusal is retried by residency."""
        now = self.clock()
        self.residency.command_result(r, now, self.engine_table.model_of(r.engine_id))
        return self._settle(now)

    def peer_hello(self, peer: str, hello: p.Hello) -> list[Send]:
        """Replace what the core held for ``peer`` with the state it reports.

        Supervisor: its engines, as ``engines_update``.  Front door: see
        ``reconcile.py`` — its queued and in-flight requests replace what the core
        held for it, its undelivered Dones are applied, and requests it held while
        the scheduler was away go through admission (quotas included).
        """
        if hello.role == "supervisor":
            return self.engines_update(peer, hello.engines)
        now = self.clock()
        self.leases.hello(peer, hello.leases)  # its old leases died with its old view
        return self.reconciler.frontdoor_hello(peer, hello, now) + self._settle(now)

    def peer_gone(self, peer: str) -> list[Send]:
        """A peer stopped answering.  Front door: its queue is dropped, its in-flight
        requests end as ``lost`` (slot freed, usage so far stays charged).
        Supervisor: its engines stay dispatchable as last reported (DESIGN §3)."""
        now = self.clock()
        self.books.drop_peer(peer, now)
        self.leases.drop_peer(peer)
        self.engine_table.orphan(peer)
        return self.dispatcher.dispatch_all(now) + self.leases.update(now)

    # ================================================================== views
    def tenant_stats(self) -> list[p.TenantStats]:
        return snapshot.tenant_stats(self.tenants, self.policy, self.books)

    def model_infos(self) -> list[p.ModelInfo]:
        """Each model's state, engines and demand (``snapshot.model_infos``)."""
        return snapshot.model_infos(self.cfg, self.engine_table, self.residency, self.books)

    def engine_statuses(self) -> list[p.EngineStatus]:
        return self.engine_table.statuses()

    def engine_window(self, engine_id: str) -> tuple[int, int] | None:
        """(learned cap, our in-flight) of one engine, for status displays and tests."""
        return self.engine_table.window(engine_id)

    def auth_table(self) -> tuple[int, list[p.AuthEntry]]:
        return self.tenants.auth_table()

    def may_dispatch(self, model: str, engine_id: str, tenant: str) -> bool:
        """Whether the window and the headroom rules would let ``tenant`` start a request
        for ``model`` on ``engine_id`` now (tests check work conservation with it)."""
        return self.dispatcher.may_dispatch(model, engine_id, tenant, self.clock)

    # ================================================================== persistence
    def export_state(self) -> dict[str, Any]:
        """Counters, quota levels and runtime tenant settings, JSON-able (``persistence.py``)."""
        return persistence.export_state(self.tenants, self.policy, self.quotas, self.clock())

    def import_state(self, state: dict[str, Any]) -> None:
        """Restore ``export_state``'s output; ``ValueError`` if the tenant part is malformed."""
        persistence.import_state(state, self.tenants, self.policy, self.quotas, self.admission,
                                 self.clock)

    # ================================================================== models
    def model_up(self, model: str) -> list[Send]:
        """Operator ``model load``/``wake``: bring it up (evicting others if needed)."""
        now = self.clock()
        self.residency.request_up(model, now)
        return self._settle(now)

    def model_down(self, model: str, action: str, level: int = 1) -> list[Send]:
        """Operator ``model unload`` (``stop``) or ``model sleep``: drain, then that.
        An unloaded model's queued requests get 503 at once (it stays down)."""
        now = self.clock()
        self.residency.request_down(model, action, level, now)
        return self.demand.residency_commands(now) + self.demand.reject_unservable(now) \
            + self.leases.update(now)

    def model_settled(self, model: str, target: str) -> bool:
        return self.residency.settled(model, self.engine_table.views(model), target)

    def model_inflight(self, model: str) -> int:
        return self.books.model_inflight(model)

    # ================================================================== for tests
    @property
    def _records(self) -> dict[str, Record]:
        """Every queued or in-flight record (tests check work conservation with it)."""
        return self.books.records

    def _queued_n(self, tenant: str) -> int:
        return self.books.queued_n(tenant)
