"""The simulated engine's data: one sequence, one step's plan and result, the counters.

Shared by the step models (``model.py``: vLLM v1's; ``sglang_batch.py``: SGLang's),
which only differ in how they choose what a step computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WAITING = "waiting"
RUNNING = "running"
PREEMPTED = "preempted"  # waiting again, to be recomputed
FINISHED = "finished"
ABORTED = "aborted"

#: The sim's vocabulary: short words, so a stream looks like text and costs little.
VOCAB: tuple[str, ...] = tuple(f" tok{i}" for i in range(100))


@dataclass(eq=False, slots=True)
class SimRequest:
    """One sequence inside the engine.  ``sink`` is the server's, opaque here."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    priority: int = 0
    ignore_eos: bool = False
    arrival: float = 0.0
    sink: Any = None
    # engine state
    status: str = WAITING
    num_output: int = 0
    num_computed: int = 0
    blocks: int = 0
    seq: int = 0  # arrival order, the FCFS tie-break (SGLang: entry into the queue)
    finish_reason: str | None = None
    first_scheduled_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    num_preemptions: int = 0

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what a recompute must prefill again."""
        return self.prompt_tokens + self.num_output


@dataclass(slots=True)
class StepPlan:
    """What one step runs and how long it takes (seconds, unscaled)."""

    scheduled: list[tuple[SimRequest, int]]  # (request, tokens computed this step)
    prefill_tokens: int
    decode_seqs: int
    kv_tokens: int
    duration_s: float
    preempted: list[SimRequest] = field(default_factory=list)


@dataclass(slots=True)
class StepResult:
    """What a committed step produced, for the server to stream and count."""

    tokens: list[tuple[SimRequest, str]]  # one new token per request; finish_reason set on the last
    first_tokens: list[SimRequest]
    finished: list[SimRequest]
    now: float


@dataclass(slots=True)
class Counters:
    """Monotonic totals, exported as Prometheus counters."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    success: dict[str, int] = field(default_factory=dict)  # finish_reason -> count
    aborted: int = 0
