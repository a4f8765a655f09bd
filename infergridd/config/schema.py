"""The configuration file's shape: one strict msgspec struct per section.

An unknown key or a wrong type stops start-up with the key's path and the
reason (``ConfigError``), because a silently ignored key is a setting the
operator believes is active and is not (PEERS.md).  Every key is documented in
``man/infergrid.yaml.5.scd``; a test keeps the two in step.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..assist.policy import AssistSettings

DEFAULT_CONFIG_PATH = "/etc/infergrid/infergrid.yaml"
DEFAULT_RUNTIME_DIR = "/run/infergrid"
DEFAULT_STATE_DIR = "/var/lib/infergrid"


class ConfigError(ValueError):
    """A configuration problem, with the key's path (``$.models[0].engine``) and why."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    pass


class Limits(_Strict):
    """Bounds on client input, enforced by the front door."""

    max_body_bytes: int = 1_048_576
    max_tokens_cap: int = 32_768  # a max_tokens above this is "absurd": 400
    default_max_tokens: int = 256
    request_timeout_s: float = 600.0  # whole-request bound at the engine
    drain_timeout_s: float = 30.0  # front door drain on SIGTERM
    # -- what may wait in the front door (frontdoor/room.py): bodies read or queued, not
    # yet dispatched.  A tenant over its own bound gets 429 tenant_queue_full; only the
    # whole front door being full gives 503 overloaded.
    max_queued_bytes: str | int = "256MiB"
    max_queued_bytes_per_tenant: str | int = "64MiB"
    max_queued_requests: int = 20_000
    # -- the HTTP edge under abuse (frontdoor/edge.py)
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this
    body_timeout_s: float = 30.0  # and its body within this, once the headers are in
    keepalive_timeout_s: float = 30.0  # an idle keep-alive connection is closed after this
    max_requests_per_connection: int = 1000  # then the answer closes the connection
    #: open client connections; when full, the oldest connection with no request in
    #: progress (slow headers first) makes room, so slow clients cannot lock others out
    max_connections: int = 4096


class TokenBucketConfig(_Strict):
    """Per-tenant request-count bucket of the ``token_bucket`` comparison policy."""

    rate_per_s: float = 10.0
    burst: float = 20.0


class ResidencyConfig(_Strict):
    """Which models hold GPU memory (DESIGN §6): lazy loads, eviction and its rate limit.

    A *swap* is one model put to sleep or stopped to make room for another.
    Each costs the evicted model a wake later, so two busy models that cannot
    both fit would otherwise trade places on every request; the budget below
    bounds that, and the requests of the model kept waiting stay queued (fair
    order kept) until the next swap is allowed or ``load_deadline_s`` passes.
    """

    max_swaps_per_window: int = 6  # 0: never evict for demand
    swap_window_s: float = 60.0
    load_deadline_s: float = 60.0  # a request waits this long for its model to load
    sleep_level: int = 1  # 1: weights to host RAM (fast wake); 2: weights dropped
    stop_after_s: float = 0.0  # asleep this long: stop the engine too (0: never)
    command_timeout_s: float = 180.0  # no answer to an engine command: send it again


class SchedulerConfig(_Strict):
    policy: Literal["vtc", "fifo", "token_bucket"] = "vtc"
    input_weight: float = 1.0
    output_weight: float = 2.0
    kv_threshold: float = 0.9  # dispatch only while the engine's KV use is under this
    #: engine slots a tenant at or over its fair share may not take (core/headroom.py)
    light_reserve: int = 6
    #: hold heavy tenants' dispatches while a light tenant's request awaits its first token
    prefill_guard: bool = True
    #: prompt tokens of requests not yet at their first token, per engine, beyond which
    #: only light tenants dispatch (core/headroom.py); 0: no bound
    prefill_window_tokens: int = 4096
    max_queued_per_tenant: int = 1_000
    queue_deadline_s: float = 0.0  # 0: none
    max_tenants: int = 1_000  # bounds tenants, and so metric label values
    snapshot_interval_s: float = 1.0
    token_bucket: TokenBucketConfig = msgspec.field(default_factory=TokenBucketConfig)
    residency: ResidencyConfig = msgspec.field(default_factory=ResidencyConfig)


class GpuDeviceConfig(_Strict):
    """``gpu.devices[]``: one GPU, for the simulated engine and machines without NVML
    (with NVML, its figures are checked against the card's: supervisor/devices.py)."""

    index: int
    total_memory: str | int = 0  # bytes or "24GiB"; 0: NVML's, else unlimited
    uuid: str = ""
    name: str = ""


class GpuConfig(_Strict):
    #: bytes or "80GiB": NVML's total where present (this may only lower it), else
    #: this; 0 without NVML: unlimited (supervisor/ledger.py ``gpu_total``).  Without
    #: ``devices``, the figure for each GPU (the one-device shorthand)
    total_memory: str | int = 0
    #: the one GPU when ``devices`` is empty and NVML is absent; with NVML, a non-zero
    #: index limits InferGrid to that GPU (0: every GPU NVML lists)
    device_index: int = 0
    #: every GPU InferGrid may use (config/placement.py); empty: NVML's, else the shorthand
    devices: list[GpuDeviceConfig] = []


class EngineAssistConfig(_Strict):
    """``models[].engine_assist``: InferGrid's step policy inside the engine (DESIGN §5,
    ``infergridd/assist/policy.py``); ``true``/``false`` is every default on or off."""

    enabled: bool = True
    preempt: bool = True  # a light request takes a seat from the newest heavy one
    hold_heavy_prefill: bool = True  # heavy prefill chunks wait while light work is urgent
    exclusive_prefill: bool = False  # a light prefill's step carries nothing else
    heavy_chunk_tokens: int = 512  # prefill tokens per step while heavy work runs; 0: no cap

    def settings(self) -> AssistSettings:
        return AssistSettings(enabled=self.enabled, preempt=self.preempt,
                              hold_heavy_prefill=self.hold_heavy_prefill,
                              exclusive_prefill=self.exclusive_prefill,
                              heavy_chunk_tokens=self.heavy_chunk_tokens)


class ModelConfig(_Strict):
    name: str
    engine: Literal["sim", "vllm", "sglang", "openai"] = "sim"
    #: engine-specific arguments (sim: profile/timing; vllm: model path, ...);
    #: validated by the engine adapter at start-up
    args: dict[str, object] = {}
    #: command to run the engine's Python (vllm, sglang); default: this interpreter
    python: str = ""
    extra_args: list[str] = []
    env: dict[str, str] = {}
    replicas: int = 1
    #: GPUs per engine (tensor parallelism: vLLM --tensor-parallel-size, SGLang --tp-size);
    #: ``memory`` is what each of them holds
    gpus: int = 1
    #: pin the engines to these GPU indices (replica r takes the r-th group of ``gpus``);
    #: empty: placed by fit (config/placement.py)
    devices: list[int] = []
    max_num_seqs: int = 8
    #: context length the front door checks prompt + max_tokens against before queueing;
    #: 0: the engine's (args.max_model_len, the sim's profile), -1: unchecked
    max_model_len: int = 0
    memory: str | int | float = 0  # bytes, "16GiB", or a fraction (0..1] of the GPU
    sleep_memory: str | int | float = 0  # what it keeps on the GPU asleep (CUDA context)
    preload: bool = True
    keep_alive_s: float = 0.0  # 0: never put to sleep for idleness
    pinned: bool = False
    priority: int = 0
    startup_timeout_s: float = 120.0
    url: str = ""  # engine: openai
    api_key: str = ""  # engine: openai
    cpu_affinity: list[int] = []  # pin the engine (DESIGN §9)
    #: InferGrid's step policy in the engine (vLLM: --scheduler-cls; SGLang: its flags)
    engine_assist: bool | EngineAssistConfig = True

    def assist(self) -> EngineAssistConfig:
        """``engine_assist`` with a bare ``true``/``false`` expanded."""
        a = self.engine_assist
        return a if isinstance(a, EngineAssistConfig) else EngineAssistConfig(enabled=a)


class TenantConfig(_Strict):
    name: str
    keys: list[str] = []  # plain text ("sk-...") or "sha256:<hex>"
    weight: float = 1.0
    band: int = 0  # lower band is served strictly first
    rpm: float = 0.0  # requests/min, 0 = unlimited
    tpm: float = 0.0  # tokens/min, 0 = unlimited
    burst: float = 0.0  # 0: one minute's worth
    max_queued: int = 0  # 0: scheduler.max_queued_per_tenant
    queue_deadline_s: float = 0.0  # 0: scheduler.queue_deadline_s


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    requests: bool = True  # one line per finished request from the front door


class FrontdoorConfig(_Strict):
    #: front-door processes sharing the one listening socket; 0 (the default): min(cores, 4)
    processes: int = 0
    #: quiet requests go to an idle engine slot leased ahead of time, skipping the
    #: scheduler round trip (core/leases.py); a busy front door holds and asks for none
    #: (bench/results/frontdoor-lease.md)
    fast_path: bool = True


class Config(_Strict):
    version: Literal[1]
    listen: str = "127.0.0.1:8000"
    #: /metrics, the detailed /health (engine log lines) and operator pages; "": none
    admin_listen: str = ""
    runtime_dir: str = ""
    state_dir: str = ""
    auth: Literal["keys", "none"] = "keys"
    limits: Limits = msgspec.field(default_factory=Limits)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    gpu: GpuConfig = msgspec.field(default_factory=GpuConfig)
    models: list[ModelConfig] = []
    tenants: list[TenantConfig] = []
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    frontdoor: FrontdoorConfig = msgspec.field(default_factory=FrontdoorConfig)

    # ------------------------------------------------------------------ helpers
    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None
