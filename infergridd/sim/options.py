"""Everything that configures one simulated engine process, CLI or in-process alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from infergridd.assist.policy import AssistSettings
from infergridd.sim.profile import Profile, ProfileError, load_profile
from infergridd.sim.sglang_batch import (
    DEFAULT_MAX_PREFILL_TOKENS,
    DEFAULT_PREEMPTION_THRESHOLD,
    SCHEDULE_POLICIES,
    SglangSettings,
)

#: SGLang's scheduling flags: ``--personality sglang`` only (``sglang_batch.py``)
SGLANG_ONLY = ("chunked_prefill_size", "max_prefill_tokens",
               "priority_scheduling_preemption_threshold", "schedule_policy",
               "enable_priority_scheduling", "schedule_low_priority_values_first",
               "disable_priority_preemption")


@dataclass
class SimOptions:
    """Options of ``python -m infergridd.sim``; ``None`` means "the profile's value".

    Fault timings given here (``crash_after_s``, ``hang_after_s``) are wall-clock
    seconds from start-up; every simulated duration (steps, start-up delay,
    sleep/wake latency, mid-stream stalls) is multiplied by ``time_scale``.

    ``personality="sglang"`` runs SGLang's batching (prefill first, priority
    preemption) with SGLang's scheduling flags below; ``scheduling_policy="priority"``
    then reads as ``enable_priority_scheduling``.
    """

    model: str = "sim"
    host: str = "127.0.0.1"
    port: int = 0
    port_file: str | None = None
    #: listen on this Unix socket instead of host:port (as vLLM's ``--uds``)
    uds: str | None = None
    api_key: str | None = None  # required on every route when set (``http_openai.auth``)
    profile: str = "fast-test"
    profile_overrides: dict[str, Any] = field(default_factory=dict)
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    long_prefill_token_threshold: int | None = None
    kv_blocks: int | None = None
    block_size: int | None = None
    max_model_len: int | None = None
    step_s: float | None = None  # fixed step duration: base_s = step_s, per-token terms 0
    eos_prob: float | None = None
    seed: int = 0
    personality: Literal["vllm", "sglang"] = "vllm"
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    startup_delay: float | None = None
    slow_start: bool = False  # do not even bind until the start-up delay has passed
    crash_after_requests: int = 0  # 0: never; else exit(1) when request N+1 arrives
    crash_on_prompt_tokens: int = 0  # 0: never; else exit(1) on a prompt this long (poison)
    crash_after_s: float = 0.0
    hang_after_s: float = 0.0
    error_rate: float = 0.0
    stall_mid_stream_s: float = 0.0
    stall_prob: float = 1.0  # fraction of streams that stall, when stall_mid_stream_s > 0
    time_scale: float = 1.0
    assist: AssistSettings | None = None  # InferGrid's step policy (--engine-assist; vLLM)
    # SGLang's scheduling flags (personality "sglang"); None: SGLang's default
    chunked_prefill_size: int | None = None  # None: the profile's max_num_batched_tokens
    max_prefill_tokens: int | None = None
    priority_scheduling_preemption_threshold: int | None = None
    schedule_policy: str | None = None  # every value runs as fcfs (no prefix cache)
    enable_priority_scheduling: bool = False
    schedule_low_priority_values_first: bool = False
    disable_priority_preemption: bool = False

    def __post_init__(self) -> None:
        # one switch for priority on SGLang: the HTTP side reads ``scheduling_policy``
        if self.personality == "sglang" and self.enable_priority_scheduling:
            self.scheduling_policy = "priority"

    @property
    def batching(self) -> Literal["vllm", "sglang"]:
        return "sglang" if self.personality == "sglang" else "vllm"

    @property
    def engine_policy(self) -> Literal["fcfs", "priority"]:
        """The queue's order: priority with vLLM's ``--scheduling-policy priority`` or
        SGLang's ``--enable-priority-scheduling``."""
        priority = self.scheduling_policy == "priority" or self.enable_priority_scheduling
        return "priority" if priority else "fcfs"

    @property
    def priority_sign(self) -> int:
        """+1 when lower priority values run first (vLLM), -1 when higher ones do (SGLang,
        unless ``--schedule-low-priority-values-first``)."""
        if self.personality != "sglang" or self.schedule_low_priority_values_first:
            return 1
        return -1

    def sglang_settings(self) -> SglangSettings:
        threshold = self.priority_scheduling_preemption_threshold
        return SglangSettings(
            chunked_prefill_size=self.chunked_prefill_size,
            max_prefill_tokens=self.max_prefill_tokens or DEFAULT_MAX_PREFILL_TOKENS,
            preemption_threshold=None if self.disable_priority_preemption else (
                DEFAULT_PREEMPTION_THRESHOLD if threshold is None else threshold),
            schedule_policy=self.schedule_policy or "fcfs")

    def resolve_profile(self) -> Profile:
        """The profile with every command-line override applied and checked."""
        overrides = dict(self.profile_overrides)
        for key in ("max_num_seqs", "max_num_batched_tokens", "kv_blocks", "block_size",
                    "max_model_len", "eos_prob", "long_prefill_token_threshold"):
            value = getattr(self, key)
            if value is not None:
                overrides[key] = value
        if self.startup_delay is not None:
            overrides["startup_s"] = self.startup_delay
        if self.step_s is not None:
            overrides.update(base_s=self.step_s, per_prefill_token_s=0.0,
                             per_decode_seq_s=0.0, per_kv_token_s=0.0)
        profile = load_profile(self.profile, overrides)
        self.validate()
        return profile

    def validate(self) -> None:
        if self.personality not in ("vllm", "sglang"):
            raise ProfileError(f"unknown personality {self.personality!r}")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ProfileError(f"unknown scheduling policy {self.scheduling_policy!r}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ProfileError("error_rate must be in [0, 1]")
        if not 0.0 <= self.stall_prob <= 1.0:
            raise ProfileError("stall_prob must be in [0, 1]")
        if not self.time_scale > 0:
            raise ProfileError("time_scale must be greater than 0")
        if self.personality == "sglang":
            if self.assist is not None and self.assist.enabled:
                raise ProfileError("--engine-assist is InferGrid's step policy for vLLM; the "
                                   "SGLang personality takes SGLang's own flags")
            if self.schedule_policy not in (None, *SCHEDULE_POLICIES):
                raise ProfileError(f"unknown schedule policy {self.schedule_policy!r}")
            if self.max_prefill_tokens is not None and self.max_prefill_tokens <= 0:
                raise ProfileError("max_prefill_tokens must be positive")
        else:
            given = [k for k in SGLANG_ONLY if getattr(self, k) is not None
                     and getattr(self, k) is not False]
            if given:
                raise ProfileError(f"{', '.join(given)}: SGLang's flags need personality sglang")
