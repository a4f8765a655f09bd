"""SGLang's batching for the simulated engine: prefill first, chunked, priority preemption.

A batching mode of ``EngineModel`` (``batching="sglang"``: the ``--personality
sglang`` engine), pure and deterministic like the rest.  It only chooses what a
step computes; the queue, the KV blocks and ``commit`` are the model's.  After
SGLang's ``managers/scheduler.py`` (``get_next_batch_to_run``,
``get_new_batch_prefill``, ``update_running_batch``), ``managers/schedule_policy.py``
(``SchedulePolicy.calc_priority``, ``PrefillAdder``) and ``managers/schedule_batch.py``
(``retract_decode``):

* **prefill first**: a step is a *prefill batch* whenever something can be
  admitted (or a chunked prompt goes on), and the running decodes do not advance
  in it; otherwise it is a *decode batch* of every running request (SGLang
  without ``--enable-mixed-chunk``);
* **queue order**: with ``--enable-priority-scheduling``, by priority (higher
  value first; lower with ``--schedule-low-priority-values-first``), then by
  time of entry into the queue; without it, entry order.  The sim has no prefix
  cache, and without one SGLang runs its cache-aware policies (``lpm``,
  ``dfs-weight``) as ``fcfs``; ``lof`` and ``random`` are accepted and run as
  ``fcfs`` here too;
* **a prefill batch** first continues the prompt being chunked, then admits
  waiting requests in queue order while a seat is left (running plus admitted
  under ``--max-running-requests``), the request's remaining prompt plus its max
  new tokens (clipped at 4096) fits under the free KV less what running requests
  reserve (their remaining max new tokens x ``new_token_ratio``; else the pass
  ends), its prompt fits what is left of ``--max-prefill-tokens`` (unless it is
  the first), and ``--chunked-prefill-size`` is not spent: a prompt longer than
  what is left is cut there and goes on first next step (one at a time);
* **priority preemption** (``PrefillAdder.preempt_to_schedule``; with priority
  scheduling, unless disabled): when no seat is left, a waiting request preempts
  running ones, least important and newest first, each only if its priority
  beats theirs by *more than* ``--priority-scheduling-preemption-threshold``
  (default 10), as many as its prompt and max new tokens need in KV; if the
  first candidate is not preemptible, or not enough are, none is preempted and
  admission stops.  Only a lack of seats tries it: a lack of KV ends the pass
  (SGLang's NO_TOKEN).  Preempted requests re-enter the queue at its back, to be
  recomputed;
* **retraction**, when a decode batch lacks KV: the requests with the fewest
  output tokens (then the longest prompt) go back to the queue until the rest
  have room for 20 more steps; ``new_token_ratio`` then restarts at 0.7, and
  otherwise decays each decode batch to 0.098 over 600 batches.

Not modelled: the radix prefix cache, mixed chunked prefill, overlap scheduling,
page size (KV is counted in the profile's blocks); vLLM's long-prefill threshold
does not apply.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infergridd.sim.engine_state import PREEMPTED, RUNNING, WAITING, SimRequest, StepPlan

if TYPE_CHECKING:
    from infergridd.sim.model import EngineModel

#: SGLang's own defaults (schedule_policy.py, server_args.py, global config)
CLIP_MAX_NEW_TOKENS = 4096
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = INIT_NEW_TOKEN_RATIO * 0.14
NEW_TOKEN_RATIO_DECAY = (INIT_NEW_TOKEN_RATIO - MIN_NEW_TOKEN_RATIO) / 600
RETRACT_DECODE_STEPS = 20
DEFAULT_PREEMPTION_THRESHOLD = 10
DEFAULT_MAX_PREFILL_TOKENS = 16384
#: ``--schedule-policy`` values accepted; all run as ``fcfs`` in the sim (no prefix cache)
SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight", "lof", "random")


@dataclass(frozen=True, slots=True)
class SglangSettings:
    """SGLang's scheduling flags as the simulated engine reads them."""

    #: ``--chunked-prefill-size``; None: the profile's ``max_num_batched_tokens``
    #: (SGLang's default depends on the GPU); 0 or less: no chunking (SGLang's -1)
    chunked_prefill_size: int | None = None
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS  # ``--max-prefill-tokens``
    #: ``--priority-scheduling-preemption-threshold``; None: no priority preemption
    preemption_threshold: int | None = DEFAULT_PREEMPTION_THRESHOLD
    schedule_policy: str = "fcfs"


class SglangBatcher:
    """Chooses each step of an ``EngineModel`` the way SGLang's scheduler does.

    ``priority``: ``--enable-priority-scheduling``; the model's ``priority_sign``
    is SGLang's (+1: lower values first, -1: higher values first, its default).
    """

    def __init__(self, model: EngineModel, settings: SglangSettings, priority: bool) -> None:
        if settings.schedule_policy not in SCHEDULE_POLICIES:
            raise ValueError(f"unknown schedule policy {settings.schedule_policy!r}")
        if settings.max_prefill_tokens <= 0:
            raise ValueError("max_prefill_tokens must be positive")
        self.m = model
        self.s = settings
        self.priority = priority
        size = settings.chunked_prefill_size
        if size is None:
            size = model.profile.max_num_batched_tokens
        self.chunk_size: int | None = size if size > 0 else None
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        # what it did, for tests and curious readers
        self.prefill_batches = 0
        self.decode_batches = 0
        self.priority_preemptions = 0
        self.retractions = 0

    def schedule(self) -> StepPlan:
        preempted: list[SimRequest] = []
        plan = self._prefill_batch(preempted)
        return plan if plan is not None else self._decode_batch(preempted)

    # ------------------------------------------------------------------ bookkeeping
    def _max_new(self, req: SimRequest) -> int:
        return min(max(req.max_tokens - req.num_output, 0), CLIP_MAX_NEW_TOKENS)

    def _reserved(self, req: SimRequest) -> float:
        """What a running request is expected to still need in KV (PrefillAdder's offset)."""
        return self._max_new(req) * self.new_token_ratio

    def _free_tokens(self) -> int:
        return self.m.free_blocks * self.m.block_size

    def _fit(self, req: SimRequest, n: int) -> int:
        """At most ``n`` more tokens of ``req`` that the free blocks can hold."""
        m = self.m
        return max(0, min(n, (req.blocks + m.free_blocks) * m.block_size - req.num_computed))

    def _alloc(self, req: SimRequest, n: int) -> bool:
        m = self.m
        need = m.blocks_for(req.num_computed + n) - req.blocks
        if need > m.free_blocks:
            return False
        m.free_blocks -= need
        req.blocks += need
        return True

    def _queue(self) -> list[SimRequest]:
        """The waiting queue in SGLang's order (``calc_priority``); the model's FIFO holds
        entry order, as only appends reach it in this mode."""
        m = self.m
        live = [r for r in m._fifo if r.status in (WAITING, PREEMPTED)]
        m._fifo = deque(live)
        if self.priority:
            sign = m.priority_sign
            live.sort(key=lambda r: (sign * r.priority, r.seq))
        return live

    def _requeue(self, req: SimRequest, out: list[SimRequest]) -> None:
        self.m.running.remove(req)
        self.m._preempt(req, front=False)  # a new entry at the queue's back, recomputed
        out.append(req)

    # ------------------------------------------------------------------ prefill
    def _prefill_batch(self, preempted: list[SimRequest]) -> StepPlan | None:
        m = self.m
        running = m.running
        chunked = next((r for r in running if r.num_tokens - r.num_computed > 1), None)
        queue = self._queue()
        if chunked is None and not queue:
            return None
        batch: list[tuple[SimRequest, int]] = []
        chunk_left = self.chunk_size
        input_left = self.s.max_prefill_tokens
        offset = sum(self._reserved(r) for r in running if r is not chunked)
        if chunked is not None:  # the chunked prompt goes on first
            n = chunked.num_tokens - chunked.num_computed
            n = self._fit(chunked, n if chunk_left is None else min(n, chunk_left))
            if n > 0 and self._alloc(chunked, n):
                batch.append((chunked, n))
                if chunked.num_computed + n >= chunked.num_tokens:
                    offset += self._max_new(chunked)  # its last chunk: it will decode
                input_left -= n
                if chunk_left is not None:
                    chunk_left -= n
        in_batch = {id(chunked)} if chunked is not None else set()
        full = False
        for req in queue:
            if len(running) >= m.max_num_seqs:
                full = True  # stays so for this pass, as SGLang's batch_is_full
            if full:
                victims = self._preempt_for(req, offset, in_batch, preempted)
                if not victims:
                    break
                offset -= sum(self._reserved(v) for v in victims)
            extend = req.num_tokens - req.num_computed
            max_new = self._max_new(req)
            if extend + max_new >= self._free_tokens() - offset:
                break  # no room in KV: the pass ends (NO_TOKEN)
            if extend > input_left and batch:
                break
            if chunk_left is None or extend <= chunk_left:
                n, reserve = extend, max_new
            else:
                n, reserve = chunk_left, 0  # cut: the rest goes on first next step
            if n <= 0 or not self._alloc(req, n):
                break
            m.num_waiting -= 1
            m._unwait(req)
            req.status = RUNNING
            if req.first_scheduled_at is None:
                req.first_scheduled_at = m.clock()
            running.append(req)
            batch.append((req, n))
            in_batch.add(id(req))
            offset += reserve
            input_left -= n
            if chunk_left is not None:
                chunk_left -= n
            if (self._free_tokens() - offset <= 0 or input_left <= 0
                    or (chunk_left is not None and chunk_left <= 0)):
                break
        if not batch:
            return None
        self.prefill_batches += 1
        return m.plan(batch, preempted)

    def _preempt_for(self, req: SimRequest, offset: float, in_batch: set[int],
                     preempted: list[SimRequest]) -> list[SimRequest]:
        """``PrefillAdder.preempt_to_schedule``: free a seat (and KV) for ``req`` from running
        requests of lower priority; all it needs or none."""
        threshold = self.s.preemption_threshold
        if not self.priority or threshold is None:
            return []
        m = self.m
        sign = m.priority_sign
        candidates = sorted((r for r in m.running if id(r) not in in_batch),
                            key=lambda r: (-sign * r.priority, -r.seq))  # least, newest first
        short = (req.num_tokens - req.num_computed + self._max_new(req)
                 - (self._free_tokens() - offset))
        victims: list[SimRequest] = []
        for r in candidates:
            if (req.priority - r.priority) * -sign <= threshold:
                break
            victims.append(r)
            short -= self._reserved(r)
            if short <= 0:
                break
        if not victims or short > 0:
            return []
        for r in victims:
            self._requeue(r, preempted)
        self.priority_preemptions += len(victims)
        return victims

    # ------------------------------------------------------------------ decode
    def _decode_batch(self, preempted: list[SimRequest]) -> StepPlan:
        m = self.m
        decoding = [r for r in m.running if r.num_tokens - r.num_computed == 1]
        need = sum(m.blocks_for(r.num_tokens) - r.blocks for r in decoding)
        if decoding and need > m.free_blocks:  # retract_decode
            order = sorted(decoding, key=lambda r: (r.num_output, -r.prompt_tokens),
                           reverse=True)
            while len(order) > 1:
                self._requeue(order.pop(), preempted)  # fewest outputs, longest prompt
                self.retractions += 1
                if self._free_tokens() >= len(order) * RETRACT_DECODE_STEPS:
                    break
            kept = {id(r) for r in order}
            decoding = [r for r in decoding if id(r) in kept]
            self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        else:
            self.new_token_ratio = max(self.new_token_ratio - NEW_TOKEN_RATIO_DECAY,
                                       MIN_NEW_TOKEN_RATIO)
        batch = [(r, 1) for r in decoding if self._alloc(r, 1)]
        if batch:
            self.decode_batches += 1
        return m.plan(batch, preempted)
