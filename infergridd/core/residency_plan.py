"""The residency planner's decisions: what to load, wake, put to sleep or stop now.

The rules and why each one holds are in ``residency.py``'s docstring; this is
their code.  ``Residency`` owns the books (per-model state, commands out,
memory, swap budget) and hands them to one ``Planner``, whose ``plan`` runs
the steps in order each tick: the idle ladder, calling off evictions whose
reason went away, loads (choosing victims when memory is short), then the
sleeps and stops of drained victims.  Pure: ``now`` comes in with every call.

Memory is counted per GPU (``GpuMemory``: each engine holds its cost on each
GPU it is placed on).  A load fits only if it fits on every GPU of its
engines; a shortfall is a per-GPU figure, and victims are only engines on
the GPUs that are short: making room on GPU 1 never evicts an engine that
holds nothing there (``evict_engines``: the engines of a model chosen, the
others keep serving).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import protocol as p
from ..config import Config, ResidencyConfig, fmt_bytes
from .engine_commands import EngineCommands
from .memory import ASLEEP, EngineView, GpuMemory
from .model_state import ModelState
from .swap_budget import SwapBudget

S = p.EngineState

#: A busy victim must have been resident this many times its last load's cost.
SWAP_COST_FACTOR = 4.0
#: States in which the supervisor is carrying a transition out: no new command.
IN_TRANSITION = (S.DRAINING, S.WAKING, S.STOPPING)

Out = list[tuple[str, p.EngineCommand]]
#: GPU index -> bytes
PerGpu = dict[int, int]
UNLIMITED = 1 << 62


@dataclass
class ModelView:
    """One model's engines and demand, handed to ``plan`` by the core."""

    name: str
    engines: list[EngineView]
    queued: int = 0
    inflight: int = 0
    oldest_enqueued: float | None = None  # core clock of its oldest queued request


@dataclass
class Planner:
    """Decides from the books ``Residency`` keeps; changes them as it decides."""

    cfg: Config
    models: dict[str, ModelState]
    commands: EngineCommands
    memory: GpuMemory
    swaps: SwapBudget

    @property
    def _r(self) -> ResidencyConfig:
        return self.cfg.scheduler.residency

    def need(self, engines: list[EngineView]) -> PerGpu:
        """Bytes bringing these engines up adds on each GPU."""
        out: PerGpu = {}
        for e in engines:
            add = max(0, self.memory.cost(e) - e.status.memory_bytes)
            for d in self.memory.on(e):
                out[d] = out.get(d, 0) + add
        return out

    @staticmethod
    def short(need: PerGpu, free: PerGpu) -> PerGpu:
        """What is missing on each GPU ({} when it all fits)."""
        return {d: n - free.get(d, UNLIMITED) for d, n in need.items()
                if n > free.get(d, UNLIMITED)}

    def held(self, e: EngineView) -> int:
        """What the engine holds, counting a start or wake already sent as done."""
        return self.memory.held(e, self.commands.up_out(e.status.engine_id))

    def freeable(self, e: EngineView, down_action: str) -> int:
        """What evicting the engine with ``down_action`` frees."""
        return self.memory.freeable(e, down_action, self.commands.up_out(e.status.engine_id))

    @staticmethod
    def down_action(mv: ModelView) -> str:
        """How a model is evicted: asleep if every engine of it can sleep, else stopped."""
        return "sleep" if all(e.status.supports_sleep for e in mv.engines) else "stop"

    # ================================================================== one tick
    def plan(self, now: float, models: list[ModelView]) -> Out:
        """Every command to send now, as (supervisor peer, command)."""
        out: Out = []
        self.commands.expire(now, self._r.command_timeout_s)
        free = {d: (t if t > 0 else UNLIMITED) for d, t in self.memory.totals().items()}
        for mv in models:
            for e in mv.engines:
                for d in self.memory.on(e):
                    if d in free and free[d] < UNLIMITED:
                        free[d] -= self.held(e)
        by_name = {mv.name: mv for mv in models}
        for mv in models:
            ModelState.get(self.models, mv.name, now)
        self._idle_ladder(now, models)
        self._cancel_stale_evictions(by_name)
        self._loads(now, models, by_name, free, out)
        for mv in models:
            self._drive_eviction(now, mv, out)
        return out

    def _idle_ladder(self, now: float, models: list[ModelView]) -> None:
        """Idle for ``keep_alive_s``: to sleep; asleep for ``stop_after_s``: stopped."""
        level = self._r.sleep_level
        for mv in models:
            mc = self.cfg.model(mv.name)
            m = self.models[mv.name]
            if mc is None or mc.pinned or m.evicting or m.want_up or mv.queued or mv.inflight:
                continue
            if not mv.engines:
                continue
            idle = now - m.last_used
            if mc.keep_alive_s > 0 and idle >= mc.keep_alive_s \
                    and any(e.status.state == S.READY for e in mv.engines):
                m.evicting, m.evict_level, m.evict_for = self.down_action(mv), level, ""
                m.evict_reason = f"idle for {idle:.0f}s"
                m.evict_engines = set()
            elif self._r.stop_after_s > 0 and m.down_since is not None \
                    and now - m.down_since >= self._r.stop_after_s \
                    and any(e.status.state in ASLEEP for e in mv.engines):
                m.evicting, m.evict_for = "stop", ""
                m.evict_reason = f"asleep for {now - m.down_since:.0f}s"
                m.evict_engines = set()

    def _cancel_stale_evictions(self, by_name: dict[str, ModelView]) -> None:
        """A demand eviction whose reason went away (its requests were cancelled) and whose
        down-command is not out yet is called off: the model serves again at once."""
        for name, m in self.models.items():
            if not m.evicting or not m.evict_for:
                continue
            want = by_name.get(m.evict_for)
            wanted = want is not None and (want.queued > 0 or self.models[m.evict_for].want_up)
            mv = by_name.get(name)
            sent = mv is not None and any(self.commands.out(e.status.engine_id)
                                          for e in mv.engines)
            if not wanted and not sent:
                m.evicting, m.evict_for, m.evict_reason = "", "", ""
                m.evict_engines = set()

    # ================================================================== loads
    def _loads(self, now: float, models: list[ModelView], by_name: dict[str, ModelView],
               free: PerGpu, out: Out) -> None:
        """Start or wake what is wanted, oldest demand first (the operator's before any),
        into free memory on its GPUs; else make room there for the first that does not
        fit (a later one waits behind it only where their GPUs overlap)."""
        candidates = []
        for mv in models:
            m = self.models[mv.name]
            if m.admin_down or m.evicting or not (mv.queued > 0 or m.want_up):
                continue
            if m.load_failed and not m.want_up:
                continue
            down = [e for e in mv.engines if e.status.state in (S.STOPPED, *ASLEEP)
                    and not self.commands.out(e.status.engine_id)]
            if not down:
                # no engine reported yet (a restarted scheduler, its supervisor not back):
                # the operator's load is not done, so keep wanting it (chaos finding)
                if m.want_up and mv.engines and all(e.status.state == S.READY
                                                    for e in mv.engines):
                    m.want_up = False
                continue
            urgency = (0 if m.want_up else 1,
                       mv.oldest_enqueued if mv.oldest_enqueued is not None else now, mv.name)
            candidates.append((urgency, mv, down))
        candidates.sort(key=lambda c: c[0])
        blocked: set[int] = set()  # GPUs an earlier model is making room on
        for _urgency, mv, down in candidates:
            m = self.models[mv.name]
            # some replicas serve (the others failed, or were held back at boot): the rest
            # come up into free memory, each where it fits, but nothing is evicted for them
            serving = any(e.status.state == S.READY for e in mv.engines)
            if serving:
                for e in down:
                    if not self.short(self.need([e]), free):
                        self._bring_up(e, now, out, free, m, serving)
                down = [e for e in down if not self.commands.out(e.status.engine_id)]
                if not m.want_up or not down:
                    continue
            need = self.need(down)
            short = self.short(need, free)
            if not short:
                for e in down:
                    self._bring_up(e, now, out, free, m, serving)
                continue
            if serving and not m.want_up:
                continue
            if blocked & short.keys() and not m.want_up:
                m.wait_reason = "waiting for GPU memory behind an earlier request"
                continue
            blocked |= short.keys()
            self._make_room(now, mv, short, by_name, m)

    def _bring_up(self, e: EngineView, now: float, out: Out, free: PerGpu, m: ModelState,
                  serving: bool) -> None:
        """Send one engine's start or wake; its memory counts as taken at once."""
        action = "wake" if e.status.state in ASLEEP else "start"
        if not self.commands.send(e, action, now, out):
            return
        for d, n in self.need([e]).items():
            if free.get(d, UNLIMITED) < UNLIMITED:
                free[d] -= n
        if serving:
            return
        if m.load_started is None:
            m.load_started = now
        m.resident_since = None
        m.wait_reason = "waking" if action == "wake" else "loading"
        m.retry_after_s = 0.0

    # ================================================================== victims
    def _victim_engines(self, mv: ModelView, gpus: set[int]) -> list[EngineView]:
        """The engines of a model that evicting it for ``gpus`` takes down: those on them."""
        return [e for e in mv.engines if gpus & set(self.memory.on(e))]

    def _frees(self, engines: list[EngineView], action: str) -> PerGpu:
        """Bytes evicting these engines frees on each GPU."""
        out: PerGpu = {}
        for e in engines:
            n = self.freeable(e, action)
            for d in self.memory.on(e):
                out[d] = out.get(d, 0) + n
        return out

    def _make_room(self, now: float, mv: ModelView, short: PerGpu,
                   by_name: dict[str, ModelView], m: ModelState) -> None:
        """Choose and start draining victims for ``mv`` on the GPUs that are ``short``,
        or say why it must wait."""
        freeing: PerGpu = {}
        draining = []
        for name, other in self.models.items():
            if other.evicting and name in by_name:
                engines = [e for e in by_name[name].engines
                           if not other.evict_engines or e.status.engine_id in other.evict_engines]
                for d, n in self._frees(engines, other.evicting).items():
                    freeing[d] = freeing.get(d, 0) + n
                if any(d in short for e in engines for d in self.memory.on(e)):
                    draining.append(name)
        left = {d: n - freeing.get(d, 0) for d, n in short.items() if n > freeing.get(d, 0)}
        if not left:
            m.wait_reason = "waiting for GPU memory: draining " + ", ".join(
                f"{n} ({by_name[n].inflight} in flight)" for n in draining)
            m.load_started = m.load_started if m.load_started is not None else now
            return
        operator = m.want_up
        ranked, blockers = self._rank_victims(now, mv, by_name, m, set(left))
        chosen: list[tuple[ModelView, list[EngineView], PerGpu]] = []
        got: PerGpu = {}

        def covered(g: PerGpu) -> bool:
            return all(g.get(d, 0) >= n for d, n in left.items())

        for _key, other, engines, frees in ranked:
            if covered(got):
                break
            if not any(frees.get(d, 0) > 0 and got.get(d, 0) < n for d, n in left.items()):
                continue  # frees nothing where it is still missing
            chosen.append((other, engines, frees))
            for d, n in frees.items():
                got[d] = got.get(d, 0) + n
        if not covered(got):
            totals = self.memory.totals()
            m.wait_reason = "waiting for GPU memory: needs " + ", ".join(
                f"{fmt_bytes(short[d])} more of {fmt_bytes(totals.get(d, 0))}"
                + (f" on GPU {d}" if len(totals) > 1 else "") for d in sorted(short)) \
                + (f"; {'; '.join(blockers)}" if blockers else "")
            if m.load_started is None:
                m.load_started = now
            return
        for victim in list(reversed(chosen)):  # drop victims not needed after all
            without = {d: n - victim[2].get(d, 0) for d, n in got.items()}
            if covered(without):
                chosen.remove(victim)
                got = without
        if not operator and not self._swap_allowed(now, len(chosen), m, set(left)):
            return
        for other, engines, _frees in chosen:
            om = self.models[other.name]
            om.evicting, om.evict_level = self.down_action(other), self._r.sleep_level
            om.evict_engines = set() if len(engines) == len(other.engines) \
                else {e.status.engine_id for e in engines}
            om.evict_for, om.evict_reason = mv.name, f"making room for {mv.name}"
            om.evictions += 1
            self.swaps.record(now, {d for e in engines for d in self.memory.on(e)} & set(left))
        if m.load_started is None:
            m.load_started = now
        m.wait_reason = "waiting for GPU memory: draining " + ", ".join(
            f"{o.name} ({o.inflight} in flight)" for o, _e, _f in chosen)

    def _rank_victims(self, now: float, mv: ModelView, by_name: dict[str, ModelView],
                      m: ModelState, gpus: set[int],
                      ) -> tuple[list[tuple[tuple, ModelView, list[EngineView], PerGpu]],
                                 list[str]]:
        """Models with engines on ``gpus`` that may be evicted for ``mv``, best victim
        first, with those engines and the bytes they free per GPU; and why each other
        one may not (for the wait reason)."""
        mc = self.cfg.model(mv.name)
        my_prio = mc.priority if mc is not None else 0
        operator = m.want_up
        window = self._r.swap_window_s
        spacing = window / self._r.max_swaps_per_window if self._r.max_swaps_per_window else 0.0
        ranked, blockers = [], []
        for other in by_name.values():
            om = self.models[other.name]
            oc = self.cfg.model(other.name)
            engines = self._victim_engines(other, gpus)
            frees = self._frees(engines, self.down_action(other))
            if other.name == mv.name or om.evicting or not any(frees.get(d, 0) for d in gpus):
                continue
            if oc is not None and oc.pinned:
                blockers.append(f"{other.name} is pinned")
                continue
            if any(e.status.state in (S.STARTING, S.WAKING)
                   or self.commands.up_out(e.status.engine_id) for e in engines):
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
            cannot_sleep = 0 if self.down_action(other) == "sleep" else 1
            key = (prio, 1 if busy else 0, round(om.heat_now(now, window), 6), cannot_sleep,
                   om.last_used, other.name)
            ranked.append((key, other, engines, frees))
        ranked.sort(key=lambda r: r[0])
        return ranked, blockers

    def _swap_allowed(self, now: float, n: int, m: ModelState, gpus: set[int]) -> bool:
        """Would ``n`` more swaps stay within the budget of each GPU of ``gpus``?  If
        not, say on which and when the next may."""
        window = self._r.swap_window_s
        self.swaps.trim(now, window)
        limit = self._r.max_swaps_per_window
        worst = max(sorted(gpus), key=self.swaps.in_window, default=None)
        if self.swaps.in_window(worst) + n <= limit:
            return True
        wait = self.swaps.next_in(now, window, worst)
        on = f" on GPU {worst}" if worst is not None and len(self.memory.totals()) > 1 else ""
        m.wait_reason = (f"swap limit reached: {self.swaps.in_window(worst)} swaps in the last "
                         f"{window:g}s{on} (scheduler.residency.max_swaps_per_window "
                         f"{limit}); next in {max(0.0, wait):.1f}s")
        m.retry_after_s = max(1.0, wait)
        if m.load_started is None:
            m.load_started = now
        return False

    # ================================================================== evictions
    def _drive_eviction(self, now: float, mv: ModelView, out: Out) -> None:
        """Drained engines of an evicted model get their sleep or stop; done when all are."""
        m = self.models[mv.name]
        if not m.evicting:
            return
        done = True
        for e in mv.engines:
            st = e.status.state
            eid = e.status.engine_id
            if m.evict_engines and eid not in m.evict_engines:
                continue  # another GPU's replica: not part of this eviction
            want_stop = m.evicting == "stop" or not e.status.supports_sleep \
                or self.commands.sleep_keeps_failing(eid)
            if st == S.STOPPED or (st in ASLEEP and not want_stop) \
                    or (st == S.FAILED and want_stop and not self.commands.out(eid)
                        and e.status.memory_bytes == 0):
                if m.admin_down and not e.status.unloaded:
                    # already down: still tell the supervisor it is an unload, which it
                    # keeps, so a restarted scheduler does not load it on the next request
                    self.commands.send(e, "stop", now, out, unload=True)
                continue
            done = False
            if self.commands.out(eid) or e.inflight > 0 or st in IN_TRANSITION:
                continue  # draining: the sleep waits for the last request in flight
            if want_stop or st not in (S.READY, S.UNHEALTHY):
                if st not in (S.STOPPING,):
                    self.commands.send(e, "stop", now, out, unload=m.admin_down)
            else:
                self.commands.send(e, "sleep", now, out, level=m.evict_level)
        if done:
            m.evicted(now, partial=bool(m.evict_engines))
