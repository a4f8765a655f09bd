"""The assisted step policy: what a light request may take from heavy ones, per step.

Pure and tiny on purpose: no engine types, no I/O, no clock.  An engine (the
vLLM plugin, the simulated engine) describes its running sequences as
``SeqInfo`` and applies the ``StepDecision`` with its own machinery.

The tiers come from the engine priority InferGrid already sends with every
dispatch (``band * 1000 + tier``, DESIGN §5): tier 0 is a *light* tenant
(under its share, intermittent), 2 a *heavy* one (over its share while a light
one is around), 1 neither.  Priorities not sent by InferGrid (0) read as light,
which makes the policy a no-op for an engine used without us: nothing is heavy.

The rules, each one a reason a quiet tenant waited on stock vLLM:

* **seats**: a light request waiting while every seat (``max_num_seqs``) is
  taken preempts a heavy sequence, the one with the fewest tokens computed (the
  least work lost: vLLM recomputes it later), or failing one, a neutral one: a
  priority is fixed when a request is sent, and a flooder's requests sent while
  no light tenant was around are neutral.  Stock vLLM never preempts for priority while KV blocks remain
  (vllm-project/vllm#40004), so the light request waited for a flooder's
  sequence to finish;
* **prefill first**: while light work waits or is still prefilling, the other
  sequences that are still prefilling get no tokens this step, and no heavy
  request is admitted from the queue, so the light prompt runs in the next
  step with only the running decodes beside it;
* **short steps**: while heavy sequences exist (InferGrid marks a tenant heavy
  only while a light one is around), a step carries at most
  ``heavy_chunk_tokens`` prefill tokens beside its decodes, so the step a light
  arrival lands in is short too: a 2048-token chunk is a step of ~150 ms on an
  8B model, a decode step ~20 ms.  The default (512) keeps the flooder's
  throughput within 5% on every benchmark workload; 256 is faster for light
  tenants but costs a prefill-heavy flooder up to a fifth (bench/floor.py, the
  closing note of issue 13 has the Pareto).  Applied as the step's token budget (running
  decodes + the cap), which both engines have;
* **exclusive** (off by default): the light prefill runs in a step of its own,
  every other running sequence held for that step; it costs the flooder one
  decode step per light prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

LIGHT, NEUTRAL, HEAVY = 0, 1, 2
#: InferGrid's engine priority is ``band * 1000 + tier`` (core/dispatch.py)
BAND_STRIDE = 1000


def tier_of(priority: int, sign: int = 1) -> int:
    """The tier in an engine priority; ``sign`` is -1 for engines where higher runs first
    (SGLang), as InferGrid multiplies its priority by the engine's sign."""
    v = priority * sign
    return v % BAND_STRIDE if v >= 0 else LIGHT


@dataclass(frozen=True, slots=True)
class AssistSettings:
    """``models[].engine_assist`` as the engine sees it."""

    enabled: bool = True
    preempt: bool = True  # free a seat for a light request by preempting a heavy one
    hold_heavy_prefill: bool = True  # heavy prefill chunks wait while light work is urgent
    exclusive_prefill: bool = False  # a light prefill's step carries nothing else
    heavy_chunk_tokens: int = 512  # prefill tokens per step while heavy work runs; 0: no cap


@dataclass(frozen=True, slots=True)
class SeqInfo:
    """One running sequence, as the policy needs to see it."""

    tier: int
    order: float  # admission order: larger is newer
    prefilling: bool  # more than the last sampled token to compute (``is_prefilling``)
    computed: int = 0  # tokens computed so far: what a preemption throws away


@dataclass(slots=True)
class StepDecision:
    """What the engine applies to its next step (indexes into the ``running`` given)."""

    preempt: list[int] = field(default_factory=list)  # in index order
    hold: list[int] = field(default_factory=list)  # get no tokens this step
    admit_heavy: bool = True  # may heavy requests be admitted from the queue this step
    urgent: bool = False  # light work is waiting or prefilling
    step_budget: int | None = None  # the step's token budget, when lower than the engine's

    @property
    def acts(self) -> bool:
        """Whether it changes anything against the stock step."""
        return bool(self.preempt or self.hold or not self.admit_heavy
                    or self.step_budget is not None)


NOOP = StepDecision()


def is_prefilling(num_computed: int, num_tokens: int) -> bool:
    """Whether a sequence still has prompt (or recompute) tokens to run.

    ``num_tokens`` counts the prompt and every sampled token; a decoding sequence
    always has exactly one token not computed yet (the one sampled last step),
    so more than one is a prefill."""
    return num_tokens - num_computed > 1


def decide(running: Sequence[SeqInfo], light_waiting: int, heavy_waiting: int, max_seqs: int,
           budget: int, s: AssistSettings) -> StepDecision:
    """The decision for the next step.

    ``light_waiting``/``heavy_waiting``: light and heavy requests in the engine's
    queue (not yet running); ``budget``: the engine's token budget per step.
    """
    if not s.enabled:
        return NOOP
    light_prefilling = [i for i, r in enumerate(running) if r.tier == LIGHT and r.prefilling]
    heavy = [i for i, r in enumerate(running) if r.tier == HEAVY]
    others = [i for i, r in enumerate(running) if r.tier != LIGHT]
    if not light_waiting and not light_prefilling:
        if s.heavy_chunk_tokens <= 0 or not (heavy or heavy_waiting):
            return NOOP
        decodes = sum(1 for r in running if not r.prefilling)
        cap = decodes + s.heavy_chunk_tokens
        return StepDecision(step_budget=cap) if cap < budget else NOOP
    d = StepDecision(urgent=True, admit_heavy=False)
    if s.preempt and light_waiting:
        short = light_waiting - max(0, max_seqs - len(running))
        if short > 0:  # heavy before neutral, then the least work thrown away, newest
            victims = sorted(others, key=lambda i: (-running[i].tier, running[i].computed,
                                                    -running[i].order))
            d.preempt = sorted(victims[:short])
    gone = set(d.preempt)
    if not others:
        return d  # nothing to hold: light work shares steps as on stock vLLM
    if s.exclusive_prefill:
        keep = set(light_prefilling)
        d.hold = [i for i in range(len(running)) if i not in keep and i not in gone]
    elif s.hold_heavy_prefill:
        d.hold = [i for i in others if running[i].prefilling and i not in gone]
    return d
