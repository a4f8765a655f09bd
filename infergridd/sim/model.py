"""The simulated engine's scheduler: a pure, deterministic model of vLLM v1's step loop
(and, with ``batching="sglang"``, of SGLang's: ``sglang_batch.py``).

No asyncio, no sockets, no wall clock (``clock`` is injected): the server asks
for a step plan, waits the plan's duration, then commits it and gets the
tokens to stream.  Everything that makes an engine's latency what it is lives
here, so a unit test can drive thousands of steps in milliseconds.

What is modelled, following ``vllm/v1/core/sched/scheduler.py``:

* one ``running`` list (at most ``max_num_seqs``) and one waiting queue (FCFS,
  or a priority heap ordered by (priority, arrival));
* a per-step token budget (``max_num_batched_tokens``) spent first on running
  requests in order, then on waiting ones; a prompt longer than what is left
  is prefilled in chunks over several steps (chunked prefill);
* a paged KV cache of ``kv_blocks`` blocks of ``block_size`` tokens; when a
  running request cannot get the blocks it needs, the newest running request
  (FCFS) or the lowest-priority one (priority policy) is preempted: its blocks
  are freed, its computed tokens forgotten, and it goes back to the front of
  the queue to be recomputed (prompt and generated tokens);
* no new request is admitted in a step that preempted one (for KV blocks);
* optionally, InferGrid's assisted step policy (``infergridd/assist/policy.py``,
  the very code the vLLM plugin runs): a light request preempts the newest
  heavy one for a seat, and heavy prefill chunks wait while light work is urgent;
* a token is sampled at the end of a step in which a request's known tokens are
  all computed, so the first token arrives at the end of the step that
  finishes its prefill and each later step yields one token per sequence.

The queue, the KV blocks, admission bookkeeping and ``commit`` are shared with
SGLang's batching (``sglang_batch.py``), which only chooses differently what a
step computes; the request and step types are in ``engine_state.py``.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import Literal

from infergridd.assist.policy import (
    HEAVY,
    LIGHT,
    NOOP,
    AssistSettings,
    SeqInfo,
    StepDecision,
    decide,
    is_prefilling,
    tier_of,
)
from infergridd.assist.stats import AssistCounters
from infergridd.sim.engine_state import (
    ABORTED,
    FINISHED,
    PREEMPTED,
    RUNNING,
    VOCAB,
    WAITING,
    Counters,
    SimRequest,
    StepPlan,
    StepResult,
)
from infergridd.sim.profile import Profile
from infergridd.sim.sglang_batch import SglangBatcher, SglangSettings

__all__ = ["ABORTED", "FINISHED", "PREEMPTED", "RUNNING", "VOCAB", "WAITING", "Counters",
           "EngineModel", "SglangSettings", "SimRequest", "StepPlan", "StepResult"]


class EngineModel:
    """vLLM v1's scheduler (or SGLang's), reduced to counts of tokens and blocks.

    ``priority_sign`` is +1 when a lower ``priority`` value runs first (vLLM)
    and -1 when a higher one does (SGLang).  ``batching="sglang"`` runs SGLang's
    prefill-first batching with ``sglang``'s settings; ``policy="priority"`` is
    then SGLang's ``--enable-priority-scheduling``.  InferGrid's step policy
    (``assist``) is for vLLM batching only: on SGLang, SGLang's own flags do the work.
    """

    def __init__(self, profile: Profile, *, clock: Callable[[], float], seed: int = 0,
                 policy: str = "fcfs", priority_sign: int = 1,
                 assist: AssistSettings | None = None,
                 batching: Literal["vllm", "sglang"] = "vllm",
                 sglang: SglangSettings | None = None) -> None:
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"unknown scheduling policy {policy!r}")
        if batching not in ("vllm", "sglang"):
            raise ValueError(f"unknown batching {batching!r}")
        if batching == "sglang" and assist is not None and assist.enabled:
            raise ValueError("InferGrid's step policy (assist) runs in vLLM batching only; "
                             "SGLang batching takes SGLang's own flags")
        self.profile = profile
        self.clock = clock
        self.rng = random.Random(seed)
        self.policy = policy
        self.priority_sign = priority_sign
        self.max_num_seqs = profile.max_num_seqs
        self.token_budget = profile.max_num_batched_tokens
        self.block_size = profile.block_size
        self.total_blocks = profile.kv_blocks
        self.free_blocks = profile.kv_blocks
        self.running: list[SimRequest] = []
        self._fifo: deque[SimRequest] = deque()
        self._heap: list[tuple[int, int, SimRequest]] = []
        self.num_waiting = 0
        self.requests: dict[str, SimRequest] = {}
        self.counters = Counters()
        self._seq = 0
        self.assist = assist if assist is not None and assist.enabled else None
        self.assist_counters = AssistCounters()  # what the policy did (the vLLM plugin's names)
        self._light_waiting = 0  # light requests in the queue (the assist policy's input)
        self._heavy_waiting = 0
        self.sglang: SglangBatcher | None = None
        if batching == "sglang":  # SGLang sorts its own queue: a plain FIFO underneath
            self.sglang = SglangBatcher(self, sglang or SglangSettings(),
                                        priority=policy == "priority")
            self.policy = "fcfs"

    # ------------------------------------------------------------------ queries
    def has_work(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks held by sequences (vLLM's kv_cache_usage_perc, 0..1)."""
        return 1.0 - self.free_blocks / self.total_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def fits_ever(self, total_tokens: int) -> bool:
        """Whether a sequence of this length could ever hold its KV cache, alone."""
        return self.blocks_for(total_tokens) <= self.total_blocks

    # ------------------------------------------------------------------ requests
    def add(self, req: SimRequest) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"duplicate request id {req.request_id!r}")
        self._seq += 1
        req.seq = self._seq
        req.arrival = self.clock()
        req.status = WAITING
        self.requests[req.request_id] = req
        self._enqueue(req, front=False)

    def abort(self, request_id: str) -> SimRequest | None:
        """Drop a request wherever it is and free its blocks (client went away)."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        if req.status == RUNNING:
            self.running.remove(req)
            self._free(req)
        elif req.status in (WAITING, PREEMPTED):
            self.num_waiting -= 1  # left in the queue, skipped when reached
            self._unwait(req)
        if req.status not in (FINISHED, ABORTED):
            self.counters.aborted += 1
        req.status = ABORTED
        return req

    def abort_all(self) -> list[SimRequest]:
        """Drop everything (sleep discards the KV cache)."""
        reqs = list(self.requests.values())
        for r in reqs:
            self.abort(r.request_id)
        self._fifo.clear()
        self._heap.clear()
        self._light_waiting = self._heavy_waiting = 0
        return reqs

    # ------------------------------------------------------------------ queue
    def _key(self, req: SimRequest) -> int:
        return self.priority_sign * req.priority

    def _tier(self, req: SimRequest) -> int:
        return tier_of(req.priority, self.priority_sign)

    def _enqueue(self, req: SimRequest, front: bool) -> None:
        self.num_waiting += 1
        tier = self._tier(req)
        if tier == LIGHT:
            self._light_waiting += 1
        elif tier == HEAVY:
            self._heavy_waiting += 1
        if self.policy == "priority":
            heapq.heappush(self._heap, (self._key(req), req.seq, req))
        elif front:
            self._fifo.appendleft(req)
        else:
            self._fifo.append(req)

    def _peek(self) -> SimRequest | None:
        if self.policy == "priority":
            while self._heap and self._heap[0][2].status not in (WAITING, PREEMPTED):
                heapq.heappop(self._heap)
            return self._heap[0][2] if self._heap else None
        while self._fifo and self._fifo[0].status not in (WAITING, PREEMPTED):
            self._fifo.popleft()
        return self._fifo[0] if self._fifo else None

    def _unwait(self, req: SimRequest) -> None:
        tier = self._tier(req)
        if tier == LIGHT:
            self._light_waiting -= 1
        elif tier == HEAVY:
            self._heavy_waiting -= 1

    def _pop(self, req: SimRequest) -> None:
        if self.policy == "priority":
            heapq.heappop(self._heap)
        else:
            self._fifo.popleft()
        self.num_waiting -= 1
        self._unwait(req)

    def _free(self, req: SimRequest) -> None:
        self.free_blocks += req.blocks
        req.blocks = 0

    def _victim(self) -> SimRequest:
        if self.policy == "priority":
            return max(self.running, key=lambda r: (self._key(r), r.seq))
        return self.running[-1]

    # ------------------------------------------------------------------ the step
    def schedule(self) -> StepPlan:
        """Choose what the next step computes; allocates blocks, may preempt."""
        if self.sglang is not None:
            return self.sglang.schedule()
        scheduled: list[tuple[SimRequest, int]] = []
        preempted: list[SimRequest] = []
        running = self.running
        decision = self._assist_decision()
        budget = decision.step_budget or self.token_budget
        held = {id(running[k]) for k in decision.hold} if decision.hold else ()
        for idx in reversed(decision.preempt):  # for a seat: admission goes on this step
            victim = running.pop(idx)
            self._preempt(victim)
            preempted.append(victim)
        kv_preempted = False
        i = 0
        cut = self.profile.long_prefill_token_threshold
        while i < len(running) and budget > 0:
            req = running[i]
            if held and id(req) in held:
                i += 1  # the assist policy gives it no tokens this step
                continue
            n = min(req.num_tokens - req.num_computed, budget)
            if 0 < cut < n:
                n = cut
            ok = True
            while True:
                need = self.blocks_for(req.num_computed + n) - req.blocks
                if need <= self.free_blocks:
                    self.free_blocks -= need
                    req.blocks += need
                    break
                victim = self._victim()
                vi = running.index(victim)
                running.pop(vi)
                if vi < i:  # priority policy: it was already scheduled this step
                    for k, (r, m) in enumerate(scheduled):
                        if r is victim:
                            budget += m
                            del scheduled[k]
                            break
                    i -= 1
                self._preempt(victim)
                preempted.append(victim)
                kv_preempted = True
                if victim is req:
                    ok = False
                    break
            if not ok:
                continue  # req is gone from running; the next one now sits at index i
            scheduled.append((req, n))
            budget -= n
            i += 1

        if not kv_preempted:
            while budget > 0 and len(running) < self.max_num_seqs:
                req = self._peek()
                if req is None:
                    break
                if not decision.admit_heavy and self._tier(req) == HEAVY:
                    break  # light work is urgent: heavy requests wait in the queue
                n = min(req.num_tokens - req.num_computed, budget)
                if 0 < cut < n:
                    n = cut
                need = self.blocks_for(req.num_computed + n) - req.blocks
                if need > self.free_blocks:
                    break
                self._pop(req)
                self.free_blocks -= need
                req.blocks += need
                req.status = RUNNING
                if req.first_scheduled_at is None:
                    req.first_scheduled_at = self.clock()
                running.append(req)
                scheduled.append((req, n))
                budget -= n
        return self.plan(scheduled, preempted)

    def plan(self, scheduled: list[tuple[SimRequest, int]],
             preempted: list[SimRequest]) -> StepPlan:
        """The step that computes ``scheduled``, with its duration from the profile."""
        prefill = decode = kv = new = 0
        for req, n in scheduled:
            if n == 1 and req.num_computed >= req.prompt_tokens:
                decode += 1
            else:
                prefill += n
            if req.num_computed == 0 and req.num_preemptions == 0:
                new += 1
            kv += req.num_computed + n
        return StepPlan(scheduled, prefill, decode, kv,
                        self.profile.step_s(prefill, decode, kv, new), preempted)

    def _assist_decision(self) -> StepDecision:
        """The assisted step policy's decision for this step, counted."""
        if self.assist is None:
            return NOOP
        infos = [SeqInfo(self._tier(r), r.seq, is_prefilling(r.num_computed, r.num_tokens),
                         r.num_computed)
                 for r in self.running]
        d = decide(infos, self._light_waiting, self._heavy_waiting, self.max_num_seqs,
                   self.token_budget, self.assist)
        held_prefills = sum(1 for k in d.hold if infos[k].prefilling) if d.hold else 0
        self.assist_counters.count(d, held_prefills, self.assist.exclusive_prefill)
        return d

    def _preempt(self, req: SimRequest, front: bool = True) -> None:
        """Free its blocks and forget its computed tokens; back to the queue to be recomputed
        (vLLM: at its front; SGLang: at its back, as a new entry)."""
        self._free(req)
        req.num_computed = 0
        req.status = PREEMPTED
        req.num_preemptions += 1
        self.counters.preemptions += 1
        if not front:
            self._seq += 1
            req.seq = self._seq
        self._enqueue(req, front=front)

    def commit(self, plan: StepPlan) -> StepResult:
        """The step's compute is done: advance requests and sample tokens."""
        now = self.clock()
        tokens: list[tuple[SimRequest, str]] = []
        first: list[SimRequest] = []
        finished: list[SimRequest] = []
        rng = self.rng
        eos_prob = self.profile.eos_prob
        max_len = self.profile.max_model_len
        c = self.counters
        c.steps += 1
        for req, n in plan.scheduled:
            if req.status != RUNNING:
                continue  # aborted while the step ran
            req.num_computed += n
            if req.num_computed < req.num_tokens:
                continue  # a chunk of a longer prefill: no token yet
            req.num_output += 1
            c.generation_tokens += 1
            if req.first_token_at is None:
                req.first_token_at = now
                c.prompt_tokens += req.prompt_tokens
                first.append(req)
            if eos_prob and not req.ignore_eos and rng.random() < eos_prob:
                text = ""  # EOS: counted as a completion token, renders as nothing
                req.finish_reason = "stop"
            else:
                text = VOCAB[int(rng.random() * 100)]
                if req.num_output >= req.max_tokens or req.num_tokens >= max_len:
                    req.finish_reason = "length"
            tokens.append((req, text))
            if req.finish_reason is not None:
                req.status = FINISHED
                req.finished_at = now
                self._free(req)
                self.requests.pop(req.request_id, None)
                c.success[req.finish_reason] = c.success.get(req.finish_reason, 0) + 1
                finished.append(req)
        if finished:
            self.running = [r for r in self.running if r.status == RUNNING]
        return StepResult(tokens, first, finished, now)

    def step(self) -> tuple[StepPlan, StepResult]:
        """Schedule and commit at once (tests, with a clock they advance themselves)."""
        plan = self.schedule()
        return plan, self.commit(plan)
