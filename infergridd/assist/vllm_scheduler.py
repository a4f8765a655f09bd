"""InferGrid's step policy inside vLLM v1: the class named by ``--scheduler-cls``.

Loaded by vLLM itself, in the engine-core process, by qualified name
(``--scheduler-cls infergridd.assist.vllm_scheduler.InferGridScheduler``); the
vLLM venv does not have InferGrid installed, so the launcher puts the directory
holding the ``infergridd`` package on ``PYTHONPATH``, and this module needs only
vLLM, the standard library, :mod:`infergridd.assist.policy` and
:mod:`infergridd.assist.stats` (both standard library only).

``schedule()`` applies :func:`~infergridd.assist.policy.decide` around vLLM's own
``Scheduler.schedule()``, with vLLM's machinery only:

* **preempt**: the chosen heavy running requests are taken out of ``running`` and
  preempted with vLLM's ``_preempt_request`` (recompute: blocks freed, back to the
  waiting queue, id reported in the step's ``preempted_req_ids`` so the model
  runner drops its state), exactly as ``reset_prefix_cache`` does between steps;
* **hold**: the held running requests are hidden from ``running`` for the call and
  put back in their places afterwards.  They get no tokens, like requests a spent
  token budget skips; the running cap is lowered by as many for the call so vLLM
  cannot fill their seats;
* **no heavy admission**: heavy requests are taken out of the waiting queue for the
  call and put back afterwards (FCFS order restored, or re-pushed on the heap);
* **step budget** (short steps while heavy work runs): the scheduler's per-step
  token budget (``max_num_scheduled_tokens``) is lowered for the call.

vLLM picks ``AsyncScheduler`` when async scheduling is on (the default on GPUs;
the CPU platform turns it off); ``InferGridScheduler`` follows: constructed with
async scheduling on, it builds an :class:`InferGridAsyncScheduler`.

Settings: ``INFERGRID_ASSIST`` (JSON of :class:`AssistSettings` fields; absent =
defaults).  Counters: the file named by ``INFERGRID_ASSIST_STATS``, in
``assist/stats.py``'s format (what the supervisor reads as the proof the class was
loaded: ``loaded``, ``pid`` of the engine core, ``class``, ``engine_version``,
``token_budget``, ``counters``) plus ``vllm_version``, ``base`` and ``policy``;
rewritten atomically at most every 0.5 s while the counters change, and at shutdown.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from infergridd.assist.policy import (
    HEAVY,
    LIGHT,
    AssistSettings,
    SeqInfo,
    decide,
    is_prefilling,
    tier_of,
)
from infergridd.assist.stats import (
    STATS_ENV,
    WRITE_EVERY_S,
    AssistCounters,
    settings_from_env,
)

#: Under vLLM's logger name, so its handler and format apply (other names are not shown).
logger = init_logger("vllm.infergrid_assist")

_ADMISSIBLE = (RequestStatus.WAITING, RequestStatus.PREEMPTED)


def _vllm_version() -> str:
    try:
        from vllm.version import __version__
        return str(__version__)
    except Exception:  # noqa: BLE001 - a version is only reported
        return "unknown"


def _settings() -> tuple[AssistSettings, str]:
    """``INFERGRID_ASSIST`` (the launcher writes it); when malformed, the defaults and
    the error, logged and written to the stats file rather than failing the engine."""
    try:
        return settings_from_env(), ""
    except ValueError as exc:  # json.JSONDecodeError is one
        logger.error("InferGrid assist: %s; using the default settings", exc)
        return AssistSettings(), str(exc)


@dataclass
class VllmCounters(AssistCounters):
    """The shared counters (``assist/stats.py``, as the simulated engine counts them)
    and what only the vLLM plugin sees."""

    held_seqs: int = 0  # running sequences given no tokens for a step (any tier)
    heavy_admissions_blocked_steps: int = 0  # steps that kept waiting heavy requests out
    stall_guard_steps: int = 0  # steps run stock after an assisted step scheduled nothing
    scheduled_tokens: int = 0  # tokens of every step (recompute after preemption included)


class _StatsFile:
    """The stats file (``assist/stats.py``'s format, plus vLLM details), rewritten by a
    thread at most every ``WRITE_EVERY_S`` while the counters change, so it is also
    current when the engine goes idle; and at start and shutdown."""

    def __init__(self, path: str, doc: dict[str, Any], counters: VllmCounters) -> None:
        self.path = path
        self.doc = doc
        self.counters = counters
        self.dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if path:
            self.write()
            self._thread = threading.Thread(target=self._run, name="infergrid-assist-stats",
                                            daemon=True)
            self._thread.start()

    def write(self) -> None:
        if not self.path:
            return
        with self._lock:
            doc = {**self.doc, "counters": asdict(self.counters), "updated": time.time()}
            tmp = f"{self.path}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w") as f:
                    json.dump(doc, f)
                os.replace(tmp, self.path)
            except OSError as exc:  # a full disk must never stop the engine's steps
                logger.warning("InferGrid assist: cannot write %s: %s", self.path, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.dirty.wait()
            if self._stop.is_set():
                break
            self.dirty.clear()
            self.write()
            self._stop.wait(WRITE_EVERY_S)

    def close(self) -> None:
        self._stop.set()
        self.dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.doc["stopped"] = True
        self.write()


class InferGridScheduler(Scheduler):
    """vLLM v1's ``Scheduler`` with InferGrid's step policy applied around ``schedule()``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> InferGridScheduler:
        if cls is InferGridScheduler:
            config = kwargs.get("vllm_config", args[0] if args else None)
            sched = getattr(config, "scheduler_config", None)
            if getattr(sched, "async_scheduling", False):
                cls = InferGridAsyncScheduler
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.assist, settings_error = _settings()
        self._stall_guard = False
        self.assist_counters = VllmCounters()
        version = _vllm_version()
        base = next(b.__name__ for b in type(self).__mro__ if b.__module__.startswith("vllm."))
        doc: dict[str, Any] = {
            "loaded": True, "engine": "vllm", "class": type(self).__name__, "base": base,
            "engine_version": version, "vllm_version": version, "pid": os.getpid(),
            "token_budget": self.max_num_scheduled_tokens,
            "max_num_seqs": self.max_num_running_reqs, "policy": self.policy.value,
            "settings": asdict(self.assist),
        }
        if settings_error:
            doc["settings_error"] = settings_error
        self.assist_stats = _StatsFile(os.environ.get(STATS_ENV, ""), doc, self.assist_counters)
        logger.info("InferGrid assist scheduler loaded: %s (base %s, vLLM %s, policy %s), "
                    "settings %s", doc["class"], base, version, doc["policy"], doc["settings"])
        if self.policy.value != "priority":
            logger.warning("InferGrid assist: scheduling policy %r; light requests are still "
                           "told apart by their priority", self.policy.value)

    # -- the step ---------------------------------------------------------------

    def _waiting_tiers(self) -> tuple[int, list[Request]]:
        """(light requests that can be admitted, heavy requests) in ``self.waiting``."""
        queue = getattr(self.waiting, "_heap", self.waiting)  # no heap-sorted copy per step
        light, heavy = 0, []
        for r in queue:
            tier = tier_of(r.priority)
            if tier == LIGHT:
                light += r.status in _ADMISSIBLE
            elif tier == HEAVY:
                heavy.append(r)
        return light, heavy

    def schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        out = self._schedule(*args, **kwargs)
        self.assist_counters.scheduled_tokens += out.total_num_scheduled_tokens
        self.assist_stats.dirty.set()
        return out

    def _schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        c = self.assist_counters
        if not self.assist.enabled:
            c.steps += 1
            return super().schedule(*args, **kwargs)
        light_waiting, heavy_waiting = self._waiting_tiers()
        running = list(self.running)  # the decision's indexes refer to this snapshot
        infos = [SeqInfo(tier=tier_of(r.priority), order=r.arrival_time,
                         prefilling=is_prefilling(r.num_computed_tokens, r.num_tokens),
                         computed=r.num_computed_tokens)
                 for r in running]
        seats = self.max_num_active_reqs - self.num_waiting_for_streaming_input
        budget = self.max_num_scheduled_tokens
        d = decide(infos, light_waiting, len(heavy_waiting), seats, budget, self.assist)
        if d.admit_heavy or not (heavy_waiting or d.preempt):
            heavy_waiting = []  # nothing to keep out of this step's admissions
        if self._stall_guard and (d.preempt or d.hold or heavy_waiting):
            # the previous assisted step scheduled nothing (the light request could
            # not be admitted): this one runs as stock, so holds cannot stall the engine
            self._stall_guard = False
            c.steps += 1
            c.stall_guard_steps += 1
            return super().schedule(*args, **kwargs)
        held_prefills = sum(1 for i in d.hold if infos[i].prefilling)
        c.count(d, held_prefills, self.assist.exclusive_prefill)
        if not (d.preempt or d.hold or heavy_waiting or d.step_budget is not None):
            self._stall_guard = False  # nothing to change against the stock step
            return super().schedule(*args, **kwargs)

        # 1. preempt the chosen ones (recompute), newest first, as vLLM does between steps
        victims = sorted((running[i] for i in d.preempt), key=lambda r: r.arrival_time,
                         reverse=True)
        if victims:
            now = time.monotonic()
            for r in victims:
                self.running.remove(r)
                self._preempt_request(r, now, drop_stale_output=self.requires_kv_delivery)
            heavy_waiting.extend(victims)

        # 2. hide the held requests and the heavy waiting ones from vLLM's own step;
        #    lower the seat caps by the held ones and the token budget to the cap
        held = [running[i] for i in d.hold]
        held_set = set(held)
        before = list(self.running)
        hide_waiting = heavy_waiting  # with the requests just preempted
        waiting_before = list(self.waiting) if hide_waiting and self._fcfs() else None
        if hide_waiting:
            self.waiting.remove_requests(set(hide_waiting))
        if held:
            self.running = [r for r in self.running if r not in held_set]
        caps = (self.max_num_active_reqs, self.max_num_running_reqs,
                self.max_num_scheduled_tokens)
        self.max_num_active_reqs -= len(held)
        self.max_num_running_reqs -= len(held)
        if d.step_budget is not None:
            self.max_num_scheduled_tokens = max(1, min(budget, d.step_budget))
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            (self.max_num_active_reqs, self.max_num_running_reqs,
             self.max_num_scheduled_tokens) = caps
            if held:
                self._restore_running(before, held_set)
            if hide_waiting:
                self._restore_waiting(hide_waiting, waiting_before)

        c.held_seqs += len(held)
        c.heavy_admissions_blocked_steps += bool(hide_waiting)
        self._stall_guard = bool(held or hide_waiting) and out.total_num_scheduled_tokens == 0
        return out

    def _fcfs(self) -> bool:
        return not hasattr(self.waiting, "_heap")

    def _restore_running(self, before: list[Request], held: set[Request]) -> None:
        """Held requests back in their places; survivors in their order, then admissions."""
        now = self.running
        now_set = set(now)
        before_set = set(before)
        self.running = ([r for r in before if r in held or r in now_set]
                        + [r for r in now if r not in before_set])

    def _restore_waiting(self, hidden: list[Request], order: list[Request] | None) -> None:
        hidden = [r for r in hidden if not r.is_finished()]
        if order is None:  # a heap: order is the requests' own (priority, arrival)
            for r in hidden:
                self.waiting.add_request(r)
            return
        # FCFS deque: what vLLM prepended during the call (preempted for KV) first,
        # then the earlier queue in its order with the hidden requests back in place
        now = list(self.waiting)
        now_set, was = set(now), set(order)
        keep = set(hidden) | now_set
        rebuilt = [r for r in now if r not in was] + [r for r in order if r in keep]
        self.waiting.clear()  # type: ignore[attr-defined]
        self.waiting.extend(rebuilt)  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        try:
            self.assist_stats.close()
        finally:
            super().shutdown()


class InferGridAsyncScheduler(InferGridScheduler, AsyncScheduler):
    """The same policy over vLLM's ``AsyncScheduler`` (async scheduling on)."""
