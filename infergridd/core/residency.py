"""Model residency: which models hold GPU memory, decided from demand (DESIGN §6).

Pure and synchronous like the rest of ``scheduling/``: the core hands it a
view of every model (its engines as the supervisor last reported them, how
many of their requests are queued and in flight, how long the oldest has
waited) and gets back ``EngineCommand``s for the supervisor.  Nothing here
sends, sleeps or reads a clock; ``now`` comes in with every call.

The ladder an engine goes down and up::

    stopped → starting → ready → draining → sleeping(1|2) → stopped
                           ↑__________ wake (+ warm-up) ______|

*Draining* is ours, not the engine's: the core stops dispatching to a model
chosen for eviction and the sleep or stop is sent only once its in-flight
count is 0, so a swap never kills a request.  The supervisor's ledger is the
last word on memory (it refuses a start or wake that does not fit); this
planner keeps its own conservative view so that it rarely asks for one:
memory counts as held from the moment a start or wake is sent until the
supervisor reports the engine asleep or stopped.

Why each rule:

* **Lazy loads.** A request for a model that is not up stays in the fair
  queue (its tenant keeps its place) while the model is started or woken;
  other models keep serving.  A request that waited ``load_deadline_s``
  gets 503 with ``Retry-After`` and the reason it is still waiting.
* **Victims** are ranked by ``(priority, busy, heat, cannot-sleep, last
  use)``: lower configured priority first, then idle before busy, then the
  coldest (``heat`` is a request count decaying with a half-life of
  ``swap_window_s``: frequency and recency in one number), then one that can
  sleep (cheap to bring back) before one that must be stopped.  Pinned
  models, the model being loaded and models still loading are never chosen.
* **Thrash limit.** Each eviction made for another model's demand is a
  *swap*.  At most ``max_swaps_per_window`` swaps happen per
  ``swap_window_s``, and a *busy* victim (with queued or running requests)
  must first have been resident for ``swap_window_s / max_swaps_per_window``
  and for ``SWAP_COST_FACTOR`` times what its last load cost, so at most
  about 1/(1+factor) of the GPU's time goes to swapping, however the
  traffic alternates.  A busy victim with a higher priority than the model
  asking is never evicted for it.
* **Idle ladder.** A model without requests for ``keep_alive_s`` is put to
  sleep (``sleep_level``), and stopped after ``stop_after_s`` asleep.  An
  engine that cannot sleep is stopped instead.
* **Failures.** A model whose engine failed while starting or waking has
  "failed to load": its queued requests and new ones get 503 with the
  engine's error until it is ready again (the supervisor keeps retrying with
  backoff) or it is stopped, after which the next request tries afresh.
  A crash of a model that was serving is a restart, not a load failure:
  its requests wait (DESIGN §3).  An engine whose sleep fails twice in a
  row is stopped instead (it is drained already, so that is as safe), so
  an engine that cannot really sleep does not hold an eviction up for ever.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .. import protocol as p
from ..config import Config, fmt_bytes, model_memory, model_sleep_memory, parse_size

S = p.EngineState

#: States in which an engine holds its full memory (or is about to).
HOLDING = (S.STARTING, S.READY, S.DRAINING, S.WAKING, S.UNHEALTHY, S.STOPPING)
#: States from which the model serves, or soon will without a command from us.
UP = (S.STARTING, S.READY, S.DRAINING, S.WAKING, S.UNHEALTHY)
ASLEEP = (S.SLEEPING1, S.SLEEPING2)
#: A busy victim must have been resident this many times its last load's cost.
SWAP_COST_FACTOR = 4.0
#: After the supervisor refuses a command, wait this long before asking again.
REFUSED_RETRY_S = 0.5
#: A sleep the engine refused this many times running: stop it instead (the engine
#: says it sleeps but cannot, e.g. vLLM started without sleep mode behind our back).
SLEEP_FAILURES_BEFORE_STOP = 2
#: Retry-After for a model that failed to load (the supervisor retries with backoff).
FAILED_RETRY_AFTER_S = 10.0
UP_ACTIONS = ("start", "wake")
#: An answered command stays pending until the engine's reported state shows it (the
#: answer can overtake the next report), or this long after the answer at most.
ANSWERED_GRACE_S = 2.0
#: States in which the supervisor is carrying a transition out: no new command.
IN_TRANSITION = (S.DRAINING, S.WAKING, S.STOPPING)


@dataclass
class EngineView:
    """One engine as the core sees it: the supervisor's report and our in-flight count."""

    status: p.EngineStatus
    owner: str  # supervisor peer that reported it; "" while none is connected
    inflight: int = 0


@dataclass
class ModelView:
    """One model's engines and demand, handed to ``plan`` by the core."""

    name: str
    engines: list[EngineView]
    queued: int = 0
    inflight: int = 0
    oldest_enqueued: float | None = None  # core clock of its oldest queued request


@dataclass
class _Pending:
    command_id: str
    action: str
    level: int
    sent_at: float
    answered_at: float | None = None
    unload: bool = False


@dataclass
class _Model:
    """What residency remembers of one model between calls."""

    last_used: float
    heat: float = 0.0
    heat_at: float = 0.0
    resident_since: float | None = None  # when it last had a ready engine
    load_started: float | None = None
    last_load_s: float = 0.0  # what its last load or wake took, first request to ready
    evicting: str = ""  # "" | "sleep" | "stop": draining, then that
    evict_level: int = 1
    evict_for: str = ""  # the model it makes room for ("": idle or operator)
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


@dataclass
class Residency:
    """The residency planner; see the module docstring."""

    cfg: Config
    _models: dict[str, _Model] = field(default_factory=dict)
    _pending: dict[str, _Pending] = field(default_factory=dict)  # engine_id -> command
    _not_before: dict[str, float] = field(default_factory=dict)  # engine_id -> retry time
    _sleep_failures: dict[str, int] = field(default_factory=dict)  # engine_id -> in a row
    _swaps: deque[float] = field(default_factory=deque)
    _seq: int = 0
    swaps_total: int = 0
    gpu_total: int = 0  # from the supervisor's ledger; 0: the config's, else unlimited
    gpu_free: int = 0

    # ================================================================== bookkeeping
    def _model(self, name: str, now: float) -> _Model:
        m = self._models.get(name)
        if m is None:
            m = self._models[name] = _Model(last_used=now, heat_at=now)
        return m

    @property
    def _r(self):  # noqa: ANN202 - ResidencyConfig
        return self.cfg.scheduler.residency

    def total(self) -> int:
        """GPU bytes to plan with: the supervisor's figure (NVML), else the config's."""
        if self.gpu_total > 0:
            return self.gpu_total
        try:
            return parse_size(self.cfg.gpu.total_memory)
        except ValueError:
            return 0

    def cost(self, e: EngineView) -> int:
        """Bytes one engine holds awake: from the config; else what it reports."""
        mc = self.cfg.model(e.status.model)
        if mc is None:
            return e.status.memory_bytes
        try:
            return model_memory(mc, self.total())
        except ValueError:
            return 0

    def residual(self, e: EngineView) -> int:
        mc = self.cfg.model(e.status.model)
        if mc is None:
            return 0
        try:
            return model_sleep_memory(mc, self.total())
        except ValueError:
            return 0

    def held(self, e: EngineView) -> int:
        """Conservative: full cost while up or once an up-command is out, else as reported."""
        pend = self._pending.get(e.status.engine_id)
        if e.status.state in HOLDING or (pend is not None and pend.action in UP_ACTIONS):
            return max(e.status.memory_bytes, self.cost(e))
        return e.status.memory_bytes

    def freeable(self, e: EngineView, down_action: str) -> int:
        """Bytes evicting this engine frees: all it holds, less what it keeps asleep."""
        st = e.status.state
        if st == S.STOPPED or st in ASLEEP:
            return 0
        keep = self.residual(e) if down_action == "sleep" and st in (S.READY, S.UNHEALTHY) else 0
        return max(0, self.held(e) - keep)

    def note_request(self, model: str, now: float) -> None:
        """A request arrived: recency and frequency (heat decays, half-life = window)."""
        m = self._model(model, now)
        m.heat = m.heat * 0.5 ** ((now - m.heat_at) / self._r.swap_window_s) + 1.0
        m.heat_at = now
        m.last_used = now

    def note_activity(self, model: str, now: float) -> None:
        """A dispatch or a finished request: the model was used just now."""
        self._model(model, now).last_used = now

    def _heat(self, m: _Model, now: float) -> float:
        return m.heat * 0.5 ** ((now - m.heat_at) / self._r.swap_window_s)

    def observe(self, old: p.EngineStatus | None, new: p.EngineStatus, now: float) -> None:
        """A state the supervisor reported: load successes and failures, arrival at targets."""
        m = self._model(new.model, now)
        was = old.state if old is not None else None
        if old is None and new.unloaded and new.state == S.STOPPED and not m.want_up:
            # first sight of it (this scheduler just started): the supervisor remembers
            # an operator's unload, so the model stays down as the operator left it
            m.admin_down = True
            m.down_reason = "unloaded by the operator"
        if new.state == S.READY:
            if m.resident_since is None:
                m.resident_since = now
                if m.load_started is not None:
                    m.last_load_s = now - m.load_started
                    m.loads += 1
                m.load_started = None
            m.load_failed = ""
            m.down_reason = ""
            m.down_since = None
        elif new.state == S.FAILED and was is not None and was != S.FAILED \
                and was not in (S.READY, S.DRAINING, S.UNHEALTHY):
            # failed while starting or waking: a load failure, not a crash while serving
            # its first line only (the log lines after it are for the operator:
            # infergridctl status, the journal), without the dangling "; last log lines:"
            first = (new.last_error or "the engine failed").splitlines()[0]
            m.load_failed = first.removesuffix("; last log lines:").strip()
            m.load_started = None
        if new.state in ASLEEP:
            self._sleep_failures.pop(new.engine_id, None)
        pend = self._pending.get(new.engine_id)
        if pend is not None and _reached(pend.action, new.state) \
                and (not pend.unload or new.unloaded):
            del self._pending[new.engine_id]

    def command_result(self, r: p.EngineCommandResult, now: float, model: str) -> None:
        """The supervisor's answer: a refusal (memory, a bad state) is retried shortly."""
        pend = self._pending.get(r.engine_id)
        if pend is None or pend.command_id != r.command_id:
            return
        if r.ok:  # done at the supervisor; pending until a report shows the new state
            pend.answered_at = now
            return
        del self._pending[r.engine_id]
        self._not_before[r.engine_id] = now + REFUSED_RETRY_S
        m = self._model(model, now)
        m.wait_reason = f"{pend.action} refused: {r.error}"
        if pend.action == "sleep":  # drained already: a stop is as safe, if slower back
            self._sleep_failures[r.engine_id] = self._sleep_failures.get(r.engine_id, 0) + 1

    def forget_pending(self, engine_id: str) -> None:
        """Its supervisor changed: an answer to what we sent the old one will not come."""
        self._pending.pop(engine_id, None)

    # ================================================================== queries
    def dispatchable(self, model: str, engine_id: str) -> bool:
        """False while the model drains for eviction or a down-command for it is out."""
        m = self._models.get(model)
        if m is not None and m.evicting:
            return False
        pend = self._pending.get(engine_id)
        return pend is None or pend.action in UP_ACTIONS

    def draining(self, model: str) -> bool:
        """Chosen for a sleep or stop and not there yet: no new dispatches to it."""
        m = self._models.get(model)
        return m is not None and bool(m.evicting)

    def unloaded(self, model: str) -> bool:
        """Kept down by the operator's ``model unload`` (until ``model load``)."""
        m = self._models.get(model)
        return m is not None and m.admin_down

    def refusal(self, model: str, engines: list[EngineView]) -> tuple[str, float] | None:
        """(reason, retry-after) when requests for ``model`` must get 503 now, not wait."""
        m = self._models.get(model)
        if m is None:
            return None
        if m.admin_down:
            return (f"model {model!r} was unloaded by the operator "
                    f"(infergridctl model load {model})", 60.0)
        if m.load_failed and not any(e.status.state in UP for e in engines):
            return f"model {model!r} failed to load: {m.load_failed}", FAILED_RETRY_AFTER_S
        return None

    def reason(self, model: str) -> str:
        """Why a model is not ready, for ``ModelInfo.reason`` ("" when residency has none)."""
        m = self._models.get(model)
        if m is None:
            return ""
        if m.load_failed:
            return f"failed: {m.load_failed}"
        if m.admin_down:
            return "unloaded by the operator"
        if m.evicting:
            return f"draining: {m.evict_reason}"
        if m.load_started is not None:
            return m.wait_reason or "loading"
        return m.down_reason

    def wait_info(self, model: str, now: float) -> tuple[str, float]:
        """(why its queue still waits, a Retry-After) for a load-deadline 503."""
        m = self._models.get(model)
        if m is None:
            return "loading", 5.0
        why = m.wait_reason or ("loading" if m.load_started is not None else "not loaded")
        retry = m.retry_after_s or max(1.0, m.last_load_s) or 5.0
        return why, min(60.0, max(1.0, retry))

    def describe(self, now: float) -> dict[str, object]:
        """Counters and intentions for ``infergridctl model list``."""
        self._trim_swaps(now)
        return {
            "gpu_total_bytes": self.total(),
            "gpu_free_bytes": self.gpu_free,
            "swaps_in_window": len(self._swaps),
            "swaps_total": self.swaps_total,
            "max_swaps_per_window": self._r.max_swaps_per_window,
            "swap_window_s": self._r.swap_window_s,
            "models": {name: {
                "loads": m.loads, "evictions": m.evictions, "last_load_s": round(m.last_load_s, 3),
                "evicting": m.evicting, "admin_down": m.admin_down, "want_up": m.want_up,
                "heat": round(self._heat(m, now), 3), "idle_s": round(now - m.last_used, 1),
                "reason": self.reason(name),
            } for name, m in self._models.items()},
        }

    # ================================================================== operator
    def request_up(self, model: str, now: float) -> None:
        """``model load`` / ``model wake``: bring it up, evicting others if needed
        (drained first; pinned ones never), regardless of the swap budget."""
        m = self._model(model, now)
        m.admin_down = False
        m.want_up = True
        m.load_failed = ""
        m.last_used = now
        if m.evicting:
            m.evicting = ""

    def request_down(self, model: str, action: str, level: int, now: float) -> None:
        """``model unload`` (``stop``, stays down) or ``model sleep`` (``sleep``)."""
        m = self._model(model, now)
        m.want_up = False
        m.evicting, m.evict_level, m.evict_for = action, level, ""
        m.evict_reason = "unloaded by the operator" if action == "stop" \
            else "put to sleep by the operator"
        m.admin_down = action == "stop"

    def settled(self, model: str, engines: list[EngineView], target: str) -> bool:
        """Has an operator request arrived: ``up`` (all ready) or ``down`` (none holding)."""
        m = self._models.get(model)
        if target == "up":
            return bool(engines) and all(e.status.state == S.READY for e in engines)
        if m is not None and m.evicting:
            return False
        return all(e.status.state not in HOLDING and e.status.engine_id not in self._pending
                   for e in engines)

    # ================================================================== planning
    def plan(self, now: float, models: list[ModelView]) -> list[tuple[str, p.EngineCommand]]:
        """Every command to send now, as (supervisor peer, command)."""
        out: list[tuple[str, p.EngineCommand]] = []
        self._expire_pending(now)
        total = self.total()
        held = sum(self.held(e) for mv in models for e in mv.engines)
        free = total - held if total > 0 else 0
        by_name = {mv.name: mv for mv in models}
        for mv in models:
            self._model(mv.name, now)
        self._idle_ladder(now, models, out)
        self._cancel_stale_evictions(by_name)
        self._loads(now, models, by_name, total, free, out)
        for mv in models:
            self._drive_eviction(now, mv, out)
        return out

    def _expire_pending(self, now: float) -> None:
        limit = self._r.command_timeout_s
        for eid, pend in list(self._pending.items()):
            if now - pend.sent_at > limit or (
                    pend.answered_at is not None and now - pend.answered_at > ANSWERED_GRACE_S):
                del self._pending[eid]

    def _send(self, e: EngineView, action: str, now: float, out: list, level: int = 1,
              unload: bool = False) -> bool:
        eid = e.status.engine_id
        if eid in self._pending or not e.owner or self._not_before.get(eid, 0.0) > now:
            return False
        self._not_before.pop(eid, None)
        self._seq += 1
        cid = f"res-{self._seq}"
        self._pending[eid] = _Pending(cid, action, level, now, unload=unload)
        out.append((e.owner, p.EngineCommand(command_id=cid, engine_id=eid, action=action,
                                             level=level, unload=unload)))  # type: ignore[arg-type]
        return True

    def _idle_ladder(self, now: float, models: list[ModelView], out: list) -> None:
        level = self._r.sleep_level
        for mv in models:
            mc = self.cfg.model(mv.name)
            m = self._models[mv.name]
            if mc is None or mc.pinned or m.evicting or m.want_up or mv.queued or mv.inflight:
                continue
            if not mv.engines:
                continue
            idle = now - m.last_used
            if mc.keep_alive_s > 0 and idle >= mc.keep_alive_s \
                    and any(e.status.state == S.READY for e in mv.engines):
                m.evicting, m.evict_level, m.evict_for = self._down_action(mv), level, ""
                m.evict_reason = f"idle for {idle:.0f}s"
            elif self._r.stop_after_s > 0 and m.down_since is not None \
                    and now - m.down_since >= self._r.stop_after_s \
                    and any(e.status.state in ASLEEP for e in mv.engines):
                m.evicting, m.evict_for = "stop", ""
                m.evict_reason = f"asleep for {now - m.down_since:.0f}s"

    @staticmethod
    def _down_action(mv: ModelView) -> str:
        return "sleep" if all(e.status.supports_sleep for e in mv.engines) else "stop"

    def _cancel_stale_evictions(self, by_name: dict[str, ModelView]) -> None:
        """A demand eviction whose reason went away (its requests were cancelled) and whose
        down-command is not out yet is called off: the model serves again at once."""
        for name, m in self._models.items():
            if not m.evicting or not m.evict_for:
                continue
            want = by_name.get(m.evict_for)
            wanted = want is not None and (want.queued > 0 or self._models[m.evict_for].want_up)
            mv = by_name.get(name)
            sent = mv is not None and any(e.status.engine_id in self._pending for e in mv.engines)
            if not wanted and not sent:
                m.evicting, m.evict_for, m.evict_reason = "", "", ""

    def _loads(self, now: float, models: list[ModelView], by_name: dict[str, ModelView],
               total: int, free: int, out: list) -> None:
        candidates = []
        for mv in models:
            m = self._models[mv.name]
            if m.admin_down or m.evicting or not (mv.queued > 0 or m.want_up):
                continue
            if m.load_failed and not m.want_up:
                continue
            down = [e for e in mv.engines if e.status.state in (S.STOPPED, *ASLEEP)
                    and e.status.engine_id not in self._pending]
            if not down:
                if m.want_up and all(e.status.state == S.READY for e in mv.engines):
                    m.want_up = False
                continue
            urgency = (0 if m.want_up else 1,
                       mv.oldest_enqueued if mv.oldest_enqueued is not None else now, mv.name)
            candidates.append((urgency, mv, down))
        candidates.sort(key=lambda c: c[0])
        blocked = False
        for _urgency, mv, down in candidates:
            m = self._models[mv.name]
            # some replicas serve (the others failed, or were held back at boot): the rest
            # come up into free memory, but no other model is evicted for them
            serving = any(e.status.state == S.READY for e in mv.engines)
            need = sum(max(0, self.cost(e) - e.status.memory_bytes) for e in down)
            if total <= 0 or need <= free:
                for e in down:
                    action = "wake" if e.status.state in ASLEEP else "start"
                    if self._send(e, action, now, out):
                        free -= max(0, self.cost(e) - e.status.memory_bytes)
                        if serving:
                            continue
                        if m.load_started is None:
                            m.load_started = now
                        m.resident_since = None
                        m.wait_reason = "waking" if action == "wake" else "loading"
                        m.retry_after_s = 0.0
                continue
            if serving and not m.want_up:
                continue
            if blocked and not m.want_up:
                m.wait_reason = "waiting for GPU memory behind an earlier request"
                continue
            blocked = True
            self._make_room(now, mv, need - free, by_name, m)

    def _make_room(self, now: float, mv: ModelView, shortfall: int,
                   by_name: dict[str, ModelView], m: _Model) -> None:
        """Choose and start draining victims for ``mv``, or say why it must wait."""
        freeing = 0
        draining = []
        for name, other in self._models.items():
            if other.evicting and name in by_name:
                freeing += sum(self.freeable(e, other.evicting) for e in by_name[name].engines)
                draining.append(name)
        if freeing >= shortfall:
            m.wait_reason = "waiting for GPU memory: draining " + ", ".join(
                f"{n} ({by_name[n].inflight} in flight)" for n in draining)
            m.load_started = m.load_started if m.load_started is not None else now
            return
        shortfall -= freeing
        mc = self.cfg.model(mv.name)
        my_prio = mc.priority if mc is not None else 0
        operator = m.want_up
        window = self._r.swap_window_s
        spacing = window / self._r.max_swaps_per_window if self._r.max_swaps_per_window else 0.0
        ranked, blockers = [], []
        for other in by_name.values():
            om = self._models[other.name]
            oc = self.cfg.model(other.name)
            holds = sum(self.freeable(e, self._down_action(other)) for e in other.engines)
            if other.name == mv.name or om.evicting or holds <= 0:
                continue
            if oc is not None and oc.pinned:
                blockers.append(f"{other.name} is pinned")
                continue
            if any(e.status.state in (S.STARTING, S.WAKING) or (
                    e.status.engine_id in self._pending
                    and self._pending[e.status.engine_id].action in UP_ACTIONS)
                   for e in other.engines):
                blockers.append(f"{other.name} is loading")
                continue
            busy = other.queued > 0 or other.inflight > 0 or om.want_up
            prio = oc.priority if oc is not None else 0
            if busy and not operator:
                if prio > my_prio:
                    blockers.append(f"{other.name} is busy with a higher priority")
                    continue
                since = om.resident_since if om.resident_since is not None else now
                min_res = max(spacing, SWAP_COST_FACTOR * om.last_load_s)
                if now - since < min_res:
                    blockers.append(f"{other.name} is busy and resident only "
                                    f"{now - since:.1f}s of {min_res:.1f}s")
                    m.retry_after_s = min_res - (now - since)
                    continue
            cannot_sleep = 0 if self._down_action(other) == "sleep" else 1
            key = (prio, 1 if busy else 0, round(self._heat(om, now), 6), cannot_sleep,
                   om.last_used, other.name)
            ranked.append((key, other, holds))
        ranked.sort(key=lambda r: r[0])
        chosen, got = [], 0
        for _key, other, holds in ranked:
            if got >= shortfall:
                break
            chosen.append((other, holds))
            got += holds
        if got < shortfall:
            total = self.total()
            m.wait_reason = (f"waiting for GPU memory: needs {fmt_bytes(shortfall + freeing)} "
                             f"more of {fmt_bytes(total)}"
                             + (f"; {'; '.join(blockers)}" if blockers else ""))
            if m.load_started is None:
                m.load_started = now
            return
        for other, holds in list(reversed(chosen)):  # drop victims not needed after all
            if got - holds >= shortfall:
                chosen.remove((other, holds))
                got -= holds
        if not operator:
            self._trim_swaps(now)
            limit = self._r.max_swaps_per_window
            if len(self._swaps) + len(chosen) > limit:
                wait = (self._swaps[0] + window - now) if self._swaps else window
                m.wait_reason = (f"swap limit reached: {len(self._swaps)} swaps in the last "
                                 f"{window:g}s (scheduler.residency.max_swaps_per_window "
                                 f"{limit}); next in {max(0.0, wait):.1f}s")
                m.retry_after_s = max(1.0, wait)
                if m.load_started is None:
                    m.load_started = now
                return
        for other, _holds in chosen:
            om = self._models[other.name]
            om.evicting, om.evict_level = self._down_action(other), self._r.sleep_level
            om.evict_for, om.evict_reason = mv.name, f"making room for {mv.name}"
            om.evictions += 1
            self.swaps_total += 1
            self._swaps.append(now)
        if m.load_started is None:
            m.load_started = now
        m.wait_reason = "waiting for GPU memory: draining " + ", ".join(
            f"{o.name} ({o.inflight} in flight)" for o, _ in chosen)

    def _trim_swaps(self, now: float) -> None:
        while self._swaps and now - self._swaps[0] >= self._r.swap_window_s:
            self._swaps.popleft()

    def _drive_eviction(self, now: float, mv: ModelView, out: list) -> None:
        """Drained engines of an evicted model get their sleep or stop; done when all are."""
        m = self._models[mv.name]
        if not m.evicting:
            return
        done = True
        for e in mv.engines:
            st = e.status.state
            eid = e.status.engine_id
            want_stop = m.evicting == "stop" or not e.status.supports_sleep \
                or self._sleep_failures.get(eid, 0) >= SLEEP_FAILURES_BEFORE_STOP
            if st == S.STOPPED or (st in ASLEEP and not want_stop) \
                    or (st == S.FAILED and want_stop and eid not in self._pending
                        and e.status.memory_bytes == 0):
                if m.admin_down and not e.status.unloaded:
                    # already down: still tell the supervisor it is an unload, which it
                    # keeps, so a restarted scheduler does not load it on the next request
                    self._send(e, "stop", now, out, unload=True)
                continue
            done = False
            if eid in self._pending or e.inflight > 0 or st in IN_TRANSITION:
                continue  # draining: the sleep waits for the last request in flight
            if want_stop or st not in (S.READY, S.UNHEALTHY):
                if st not in (S.STOPPING,):
                    self._send(e, "stop", now, out, unload=m.admin_down)
            else:
                self._send(e, "sleep", now, out, level=m.evict_level)
        if done:
            m.down_reason = m.evict_reason
            m.down_since = now
            m.resident_since = None
            m.evicting, m.evict_for = "", ""
            if m.load_failed:  # stopped: the next request may try afresh
                m.load_failed = ""


def _reached(action: str, state: str) -> bool:
    """Has a reported state arrived where the command was going?"""
    if action in UP_ACTIONS:
        return state in UP or state == S.FAILED
    if action == "sleep":
        return state in ASLEEP
    if action == "stop":
        return state == S.STOPPED
    return False

