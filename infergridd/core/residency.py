"""Model residency: which models hold GPU memory, decided from demand (DESIGN §6).

Pure and synchronous like the rest of ``core/``: the core hands it a
view of every model (its engines as the supervisor last reported them, how
many of their requests are queued and in flight, how long the oldest has
waited) and gets back ``EngineCommand``s for the supervisor.  Nothing here
sends, sleeps or reads a clock; ``now`` comes in with every call.

``Residency`` (here) is the core's one entry point and keeps the books; each
concept has its own module:

* ``memory.py``: ``EngineView`` and what each engine holds, frees and costs;
* ``model_state.py``: what is remembered of one model, and the reasons told;
* ``engine_commands.py``: the commands out to supervisors and their answers;
* ``swap_budget.py``: the thrash limit's count of swaps per window;
* ``residency_plan.py``: ``ModelView`` and the ``Planner``'s decisions.

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

from .. import protocol as p
from ..config import Config
from .engine_commands import EngineCommands
from .memory import HOLDING, EngineView, GpuMemory
from .model_state import ModelState
from .residency_plan import ModelView, Planner
from .swap_budget import SwapBudget

S = p.EngineState


class Residency:
    """The residency planner's façade for the core; see the module docstring.

    It keeps the books (``ModelState`` per model, the ``EngineCommands`` out,
    ``GpuMemory``, the ``SwapBudget``), updates them from what the core reports,
    answers the core's questions from them, and leaves the decisions to its
    ``Planner`` (``residency_plan.py``).
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.models: dict[str, ModelState] = {}
        self.commands = EngineCommands()
        self.memory = GpuMemory(cfg)
        self.swaps = SwapBudget()
        self.planner = Planner(cfg, self.models, self.commands, self.memory, self.swaps)

    def _model(self, name: str, now: float) -> ModelState:
        return ModelState.get(self.models, name, now)

    @property
    def _window_s(self) -> float:
        return self.cfg.scheduler.residency.swap_window_s

    # ================================================================== memory
    @property
    def gpu_total(self) -> int:
        """GPU bytes per the supervisor's ledger (0: the config's figure, else unlimited)."""
        return self.memory.gpu_total

    @gpu_total.setter
    def gpu_total(self, value: int) -> None:
        self.memory.gpu_total = value

    @property
    def gpu_free(self) -> int:
        """Free GPU bytes per the supervisor's ledger (shown, not planned with)."""
        return self.memory.gpu_free

    @gpu_free.setter
    def gpu_free(self, value: int) -> None:
        self.memory.gpu_free = value

    @property
    def swaps_total(self) -> int:
        """Evictions made for another model's demand since start."""
        return self.swaps.total

    def total(self) -> int:
        """GPU bytes to plan with: the supervisor's figure (NVML), else the config's."""
        return self.memory.total()

    def cost(self, e: EngineView) -> int:
        """Bytes one engine holds awake: from the config; else what it reports."""
        return self.memory.cost(e)

    def residual(self, e: EngineView) -> int:
        """Bytes one engine keeps asleep."""
        return self.memory.residual(e)

    def held(self, e: EngineView) -> int:
        """Conservative: full cost while up or once an up-command is out, else as reported."""
        return self.planner.held(e)

    def freeable(self, e: EngineView, down_action: str) -> int:
        """Bytes evicting this engine frees: all it holds, less what it keeps asleep."""
        return self.planner.freeable(e, down_action)

    # ================================================================== reports
    def note_request(self, model: str, now: float) -> None:
        """A request arrived: recency and frequency (heat decays, half-life = window)."""
        self._model(model, now).note_request(now, self._window_s)

    def note_activity(self, model: str, now: float) -> None:
        """A dispatch or a finished request: the model was used just now."""
        self._model(model, now).last_used = now

    def observe(self, old: p.EngineStatus | None, new: p.EngineStatus, now: float) -> None:
        """A state the supervisor reported: load successes and failures, arrival at targets."""
        self._model(new.model, now).observe(old, new, now)
        self.commands.reported(new)

    def command_result(self, r: p.EngineCommandResult, now: float, model: str) -> None:
        """The supervisor's answer: a refusal (memory, a bad state) is retried shortly."""
        refused = self.commands.answered(r, now)
        if refused is not None:
            self._model(model, now).wait_reason = f"{refused.action} refused: {r.error}"

    def forget_pending(self, engine_id: str) -> None:
        """Its supervisor changed: an answer to what we sent the old one will not come."""
        self.commands.forget(engine_id)

    # ================================================================== queries
    def dispatchable(self, model: str, engine_id: str) -> bool:
        """False while the model drains for eviction or a down-command for it is out."""
        m = self.models.get(model)
        if m is not None and m.evicting and (not m.evict_engines
                                             or engine_id in m.evict_engines):
            return False
        return not self.commands.down_out(engine_id)

    def draining(self, model: str) -> bool:
        """Chosen for a sleep or stop and not there yet: no new dispatches to it (only
        some replicas chosen, those on the GPUs needed: the model still serves)."""
        m = self.models.get(model)
        return m is not None and bool(m.evicting) and not m.evict_engines

    def unloaded(self, model: str) -> bool:
        """Kept down by the operator's ``model unload`` (until ``model load``)."""
        m = self.models.get(model)
        return m is not None and m.admin_down

    def refusal(self, model: str, engines: list[EngineView]) -> tuple[str, float] | None:
        """(reason, retry-after) when requests for ``model`` must get 503 now, not wait."""
        m = self.models.get(model)
        return None if m is None else m.refusal(model, engines)

    def reason(self, model: str) -> str:
        """Why a model is not ready, for ``ModelInfo.reason`` ("" when residency has none)."""
        m = self.models.get(model)
        return "" if m is None else m.reason()

    def wait_info(self, model: str, now: float) -> tuple[str, float]:
        """(why its queue still waits, a Retry-After) for a load-deadline 503."""
        m = self.models.get(model)
        return ("loading", 5.0) if m is None else m.wait_info()

    def describe(self, now: float) -> dict[str, object]:
        """Counters and intentions for ``infergridctl model list``."""
        r = self.cfg.scheduler.residency
        self.swaps.trim(now, r.swap_window_s)
        return {
            "gpu_total_bytes": self.total(),
            "gpu_count": len(self.memory.devices()),  # infergridctl gpu list: each one
            "gpu_free_bytes": self.gpu_free,
            "swaps_in_window": self.swaps.in_window(),
            "swaps_total": self.swaps_total,
            "max_swaps_per_window": r.max_swaps_per_window,
            "swap_window_s": r.swap_window_s,
            "models": {name: m.describe(now, r.swap_window_s)
                       for name, m in self.models.items()},
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
            m.evict_engines = set()

    def request_down(self, model: str, action: str, level: int, now: float) -> None:
        """``model unload`` (``stop``, stays down) or ``model sleep`` (``sleep``)."""
        m = self._model(model, now)
        m.want_up = False
        m.evicting, m.evict_level, m.evict_for = action, level, ""
        m.evict_engines = set()
        m.evict_reason = "unloaded by the operator" if action == "stop" \
            else "put to sleep by the operator"
        m.admin_down = action == "stop"

    def settled(self, model: str, engines: list[EngineView], target: str) -> bool:
        """Has an operator request arrived: ``up`` (all ready) or ``down`` (none holding)."""
        m = self.models.get(model)
        if target == "up":
            return bool(engines) and all(e.status.state == S.READY for e in engines)
        if m is not None and m.evicting:
            return False
        return all(e.status.state not in HOLDING and not self.commands.out(e.status.engine_id)
                   for e in engines)

    # ================================================================== planning
    def plan(self, now: float, models: list[ModelView]) -> list[tuple[str, p.EngineCommand]]:
        """Every command to send now, as (supervisor peer, command)."""
        return self.planner.plan(now, models)


__all__ = ["EngineView", "ModelView", "Residency"]
