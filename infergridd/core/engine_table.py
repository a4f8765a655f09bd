"""``EngineTable``: the engines as the supervisors last reported them.

Each engine carries the supervisor peer that reported it (its commands go
there) and a learned dispatch window (``capacity.py``).  A supervisor's report
is its full list, never a diff: what it no longer lists is gone.  When a
supervisor goes silent its engines stay, dispatchable as last reported
(DESIGN §3), with no owner until one reports them again.

Kept apart from the request books because engines change on a different
clock (status polls) and by a different peer than requests do.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import protocol as p
from ..config import Config
from .books import Books
from .capacity import DispatchWindow
from .residency import EngineView, Residency

#: max_num_seqs for an engine that reports none and whose model is not configured
DEFAULT_MAX_SEQS = 8
#: a front door found an engine dead (``Done.engine_failed``): it gets nothing more
#: until its supervisor reports it changed (a new process, another state) or has gone
#: on calling it ready this long (the failure was the connection's, not the engine's)
SUSPECT_HOLD_S = 1.0


@dataclass(eq=False)
class Engine:
    """One reported engine."""

    status: p.EngineStatus
    owner: str  # the supervisor peer that reported it last; "" once that peer is gone
    window: DispatchWindow


class EngineTable:
    """Reported engines by id and by model, with their windows."""

    def __init__(self, cfg: Config, residency: Residency, books: Books) -> None:
        self.cfg = cfg
        self.residency = residency
        self.books = books
        self._engines: dict[str, Engine] = {}
        self._by_model: dict[str, list[Engine]] = {}
        #: engine id -> (when a front door found it dead, its status then)
        self._suspects: dict[str, tuple[float, p.EngineStatus]] = {}

    # ================================================================== reports
    def update(self, peer: str, engines: list[p.EngineStatus], now: float) -> None:
        """A supervisor's full list: replace what it reported before, learn the windows."""
        listed = {e.engine_id for e in engines}
        for eid, e in list(self._engines.items()):
            if eid not in listed and e.owner in (peer, ""):
                del self._engines[eid]
                self._suspects.pop(eid, None)
        for st in engines:
            e = self._engines.get(st.engine_id)
            fallback = self._fallback_max_seqs(st.model)
            old = e.status if e is not None else None
            if e is None:
                e = self._engines[st.engine_id] = Engine(
                    status=st, owner=peer,
                    window=DispatchWindow(st.max_num_seqs or fallback,
                                          self.cfg.scheduler.kv_threshold))
            elif e.owner != peer:  # another supervisor: answers to the old one's commands are lost
                self.residency.forget_pending(st.engine_id)
            self.residency.observe(old, st, now)
            self._clear_suspicion(st, now)
            e.status, e.owner = st, peer
            if st.state == p.EngineState.READY:
                e.window.observe(st, self.books.engine_inflight(st.engine_id), fallback)
        self._by_model = {}
        for e in self._engines.values():
            self._by_model.setdefault(e.status.model, []).append(e)

    def suspect(self, engine_id: str, now: float) -> None:
        """A front door could not reach ``engine_id`` (or lost it before any answer).

        Until its supervisor says otherwise the engine is not ``ready``: a supervisor
        that is itself down (SIGKILLed, restarting) keeps reporting nothing, and every
        request sent there meanwhile — the failed one's retry first — would fail too.
        """
        e = self._engines.get(engine_id)
        if e is not None:
            self._suspects[engine_id] = (now, e.status)

    def _clear_suspicion(self, st: p.EngineStatus, now: float) -> None:
        held = self._suspects.get(st.engine_id)
        if held is None:
            return
        since, then = held
        if (st.pid, st.generation, st.state) != (then.pid, then.generation, then.state) \
                or now - since >= SUSPECT_HOLD_S:
            del self._suspects[st.engine_id]

    def orphan(self, peer: str) -> None:
        """A supervisor went silent: its engines stay, owned by nobody."""
        for e in self._engines.values():
            if e.owner == peer:
                e.owner = ""

    def _fallback_max_seqs(self, model: str) -> int:
        mc = self.cfg.model(model)
        return mc.max_num_seqs if mc is not None else DEFAULT_MAX_SEQS

    # ================================================================== lookups
    def get(self, engine_id: str) -> Engine | None:
        return self._engines.get(engine_id)

    def model_of(self, engine_id: str) -> str:
        """The model an engine serves; "" for an engine not reported."""
        e = self._engines.get(engine_id)
        return e.status.model if e else ""

    def models(self) -> list[str]:
        """Models some engine serves, in the order the engines were first reported."""
        return list(self._by_model)

    def serves(self, model: str) -> bool:
        return model in self._by_model

    def of_model(self, model: str) -> list[Engine]:
        return list(self._by_model.get(model, ()))

    def ready(self, model: str) -> list[Engine]:
        """Engines of ``model`` a request may be sent to now (ready, not being drained,
        not found dead by a front door since its supervisor last vouched for it)."""
        return [e for e in self._by_model.get(model, ())
                if e.status.state == p.EngineState.READY
                and e.status.engine_id not in self._suspects
                and self.residency.dispatchable(model, e.status.engine_id)]

    def views(self, model: str) -> list[EngineView]:
        """``model``'s engines as residency sees them (status, owner, our in-flight)."""
        return [EngineView(e.status, e.owner, self.books.engine_occupied(e.status.engine_id))
                for e in self._by_model.get(model, ())]

    def statuses(self) -> list[p.EngineStatus]:
        """Every engine's last status, by engine id."""
        return [self._engines[k].status for k in sorted(self._engines)]

    def window(self, engine_id: str) -> tuple[int, int] | None:
        """(learned cap, our in-flight) of one engine, for status displays and tests."""
        e = self._engines.get(engine_id)
        if e is None:
            return None
        return e.window.cap, self.books.engine_inflight(engine_id)
