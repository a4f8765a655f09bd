"""``Demand``: between the request books and residency — per-model demand, and the 503s it implies.

Kept in its own file so that the books stay about requests and
``residency.py`` stays a planner that knows nothing of records: this is the
one place that turns queued requests into what residency plans with
(``ModelView``), and residency's verdicts back into rejects of queued
requests.
"""

from __future__ import annotations

from .. import protocol as p
from ..config import Config
from .admission import Admission
from .books import Books
from .engine_table import EngineTable
from .residency import ModelView, Residency
from .send import Send


class Demand:
    """Model views for residency, its commands as ``Send``s, and unservable requests."""

    def __init__(self, cfg: Config, residency: Residency, books: Books, engines: EngineTable,
                 admission: Admission) -> None:
        self.cfg = cfg
        self.residency = residency
        self.books = books
        self.engines = engines
        self.admission = admission

    def model_views(self) -> list[ModelView]:
        """Every model's engines and demand, configured ones first, for ``Residency.plan``."""
        names = [m.name for m in self.cfg.models]
        names += [m for m in self.engines.models() if m not in names]
        return [ModelView(name, self.engines.views(name), self.books.model_queued(name),
                          self.books.model_inflight(name), self.books.oldest_waiting(name))
                for name in names]

    def residency_commands(self, now: float) -> list[Send]:
        """Residency's commands, each to the supervisor that owns the engine."""
        return [Send(peer, cmd) for peer, cmd in self.residency.plan(now, self.model_views())]

    def reject_unservable(self, now: float) -> list[Send]:
        """503 for queued requests whose model failed to load or was unloaded (all of
        them), or that waited ``load_deadline_s`` for a model that is still not up."""
        out: list[Send] = []
        deadline = self.cfg.scheduler.residency.load_deadline_s
        for model, waiting in self.books.waiting_by_model():
            views = self.engines.views(model)
            if any(v.status.state == p.EngineState.READY
                   and self.residency.dispatchable(model, v.status.engine_id) for v in views):
                continue
            refused = self.residency.refusal(model, views)
            cutoff = now if refused is not None else now - deadline
            if next(iter(waiting.values())) > cutoff:
                continue
            if refused is None:
                why, retry = self.residency.wait_info(model, now)
                refused = (f"model {model!r} is not ready after {deadline:g}s: {why}", retry)
            for rid, at in list(waiting.items()):
                if at > cutoff:
                    break
                rec = self.books.records[rid]
                self.books.drop_queued(rec, now)
                out.append(self.admission.reject(rec.peer, rid, rec.tenant, 503,
                                                 "model_unavailable", *refused))
        return out
