"""The configuration file, ``infergrid.yaml`` (``version: 1``), decoded strictly.

An unknown key or a wrong type stops start-up with the key's path and the
reason (``ConfigError``), because a silently ignored key is a setting the
operator believes is active and is not (PEERS.md).  Every key is documented in
``man/infergrid.yaml.5.scd``; a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal, overload

import msgspec

from .assist.policy import AssistSettings
from .yamlstruct import loads_struct, read_text

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
    max_queued_per_tenant: int = 10_000
    queue_deadline_s: float = 0.0  # 0: none
    max_tenants: int = 1_000  # bounds tenants, and so metric label values
    snapshot_interval_s: float = 1.0
    token_bucket: TokenBucketConfig = msgspec.field(default_factory=TokenBucketConfig)
    residency: ResidencyConfig = msgspec.field(default_factory=ResidencyConfig)


class GpuConfig(_Strict):
    #: bytes or "80GiB": NVML's total where present (this may only lower it), else
    #: this; 0 without NVML: unlimited (supervisor/ledger.py ``gpu_total``)
    total_memory: str | int = 0
    device_index: int = 0


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


class Config(_Strict):
    version: Literal[1]
    listen: str = "127.0.0.1:8000"
    runtime_dir: str = ""
    state_dir: str = ""
    auth: Literal["keys", "none"] = "keys"
    limits: Limits = msgspec.field(default_factory=Limits)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    gpu: GpuConfig = msgspec.field(default_factory=GpuConfig)
    models: list[ModelConfig] = []
    tenants: list[TenantConfig] = []
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)

    # ------------------------------------------------------------------ helpers
    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_size(value: str | int | float, total: int = 0) -> int:
    """Bytes from ``123``, ``"16GiB"``, ``"500MB"``, or a fraction of ``total`` (0 < x <= 1)."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and 0 < value <= 1:
            if total <= 0:
                raise ValueError("a fraction needs the GPU's total memory (gpu.total_memory)")
            return int(value * total)
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (use bytes, or e.g. 16GiB, 500MB)")
    unit = (m.group(2) or "").upper().rstrip("B")
    return int(float(m.group(1)) * _UNITS[unit])


def model_memory(m: ModelConfig, total: int) -> int:
    """GPU bytes one replica of ``m`` holds when awake (0: not accounted)."""
    return parse_size(m.memory, total)


def model_sleep_memory(m: ModelConfig, total: int) -> int:
    """GPU bytes one replica keeps while asleep, never more than it holds awake."""
    return min(parse_size(m.sleep_memory, total), model_memory(m, total))


def fmt_bytes(n: int) -> str:
    """``51539607552`` → ``"48.0 GiB"``: every memory figure shown to an operator."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def check_fit(cfg: Config, total: int) -> None:
    """Refuse a model set that can never run on a GPU of ``total`` bytes (0: unlimited).

    Called at config load with ``gpu.total_memory`` and again by the supervisor
    once NVML has said how big the GPU really is.  Pinned models are never
    evicted, so they must fit together; the preloaded ones must fit together
    (else ``/health`` could never answer 200); and every model must fit alone.
    """
    if total <= 0:
        return

    def cost(m: ModelConfig) -> int:
        return model_memory(m, total) * m.replicas

    for i, m in enumerate(cfg.models):
        if cost(m) > total:
            raise ConfigError(
                f"$.models[{i}].memory: model {m.name!r} needs {fmt_bytes(cost(m))}"
                f"{f' ({m.replicas} replicas)' if m.replicas > 1 else ''}, more than the "
                f"GPU's {fmt_bytes(total)}")
    for what, models in (("pinned", [m for m in cfg.models if m.pinned]),
                         ("preloaded", [m for m in cfg.models if m.preload or m.pinned])):
        need = sum(cost(m) for m in models)
        if need > total:
            parts = " + ".join(f"{m.name} {fmt_bytes(cost(m))}" for m in models)
            raise ConfigError(
                f"$.models: the {what} models cannot all fit on the GPU: {parts} = "
                f"{fmt_bytes(need)} > {fmt_bytes(total)} of GPU memory")


def hash_key(key: str) -> str:
    """The at-rest form of an API key; ``sha256:<hex>`` keys are already hashed."""
    if key.startswith("sha256:"):
        return key[len("sha256:"):].lower()
    return hashlib.sha256(key.encode()).hexdigest()


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check_name(name: str, path: str, what: str, seen: set[str]) -> None:
    """A model's or tenant's name: one word of safe characters, unique (``seen`` keeps them)."""
    if not _NAME.match(name):
        raise ConfigError(f"{path}.name: invalid {what} name {name!r}")
    if name in seen:
        raise ConfigError(f"{path}.name: duplicate {what} name {name!r}")
    seen.add(name)


def _validate(cfg: Config) -> None:
    """Checks a type system cannot express; each error names its key."""

    def bad(path: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: {why}")

    host, _, port = cfg.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise bad("$.listen", f"expected HOST:PORT, got {cfg.listen!r}")
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        p = f"$.models[{i}]"
        _check_name(m.name, p, "model", seen)
        if m.replicas < 1:
            raise bad(f"{p}.replicas", "must be at least 1")
        if m.max_num_seqs < 1:
            raise bad(f"{p}.max_num_seqs", "must be at least 1")
        if m.max_model_len < -1:
            raise bad(f"{p}.max_model_len", "must be -1 (unchecked), 0 (the engine's) or more")
        if m.engine == "openai" and not m.url:
            raise bad(f"{p}.url", "required for engine: openai")
        for key in ("memory", "sleep_memory"):
            try:
                parse_size(getattr(m, key), parse_size(cfg.gpu.total_memory) or 1)
            except ValueError as exc:
                raise bad(f"{p}.{key}", str(exc)) from None
        if m.keep_alive_s < 0:
            raise bad(f"{p}.keep_alive_s", "cannot be negative")
        if m.assist().heavy_chunk_tokens < 0:
            raise bad(f"{p}.engine_assist.heavy_chunk_tokens", "cannot be negative")
    try:
        total = parse_size(cfg.gpu.total_memory)
    except ValueError as exc:
        raise bad("$.gpu.total_memory", str(exc)) from None
    check_fit(cfg, total)
    seen = set()
    keys: dict[str, str] = {}
    for i, t in enumerate(cfg.tenants):
        p = f"$.tenants[{i}]"
        _check_name(t.name, p, "tenant", seen)
        if not t.weight > 0:
            raise bad(f"{p}.weight", "must be greater than 0")
        for field in ("rpm", "tpm", "burst", "queue_deadline_s"):
            if getattr(t, field) < 0:
                raise bad(f"{p}.{field}", "cannot be negative")
        if t.max_queued < 0:
            raise bad(f"{p}.max_queued", "cannot be negative")
        for j, k in enumerate(t.keys):
            h = hash_key(k)
            if k.startswith("sha256:") and not re.fullmatch(r"[0-9a-f]{64}", h):
                raise bad(f"{p}.keys[{j}]", "sha256: must be followed by 64 hex digits")
            if h in keys:
                raise bad(f"{p}.keys[{j}]", f"key already belongs to tenant {keys[h]!r}")
            keys[h] = t.name
    if len(cfg.tenants) > cfg.scheduler.max_tenants:
        raise bad("$.tenants", f"more than scheduler.max_tenants ({cfg.scheduler.max_tenants})")
    s = cfg.scheduler
    if not 0 < s.kv_threshold <= 1:
        raise bad("$.scheduler.kv_threshold", "must be in (0, 1]")
    if s.light_reserve < 0:
        raise bad("$.scheduler.light_reserve", "must be >= 0")
    if s.prefill_window_tokens < 0:
        raise bad("$.scheduler.prefill_window_tokens", "must be >= 0")
    if s.input_weight < 0 or s.output_weight < 0:
        raise bad("$.scheduler", "input_weight and output_weight cannot be negative")
    r = s.residency
    if r.sleep_level not in (1, 2):
        raise bad("$.scheduler.residency.sleep_level", "must be 1 or 2")
    if r.max_swaps_per_window < 0:
        raise bad("$.scheduler.residency.max_swaps_per_window", "cannot be negative")
    for key in ("swap_window_s", "load_deadline_s", "command_timeout_s"):
        if not getattr(r, key) > 0:
            raise bad(f"$.scheduler.residency.{key}", "must be greater than 0")
    if r.stop_after_s < 0:
        raise bad("$.scheduler.residency.stop_after_s", "cannot be negative")


def loads(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text; raises ``ConfigError`` naming ``source`` and the key."""
    return loads_struct(text, Config, source, ConfigError, _validate)


def load(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    return loads(read_text(p, ConfigError), str(p))


class _InRuntime:
    """A read-only attribute of ``Dirs``: one well-known name under the runtime dir."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, dirs: None, owner: type) -> _InRuntime: ...
    @overload
    def __get__(self, dirs: Dirs, owner: type | None = None) -> Path: ...

    def __get__(self, dirs: Dirs | None, owner: type | None = None) -> Path | _InRuntime:
        return self if dirs is None else dirs.runtime / self.name


class Dirs(msgspec.Struct, frozen=True):
    """Where a daemon keeps its sockets and its state; command line > config > default."""

    runtime: Path
    state: Path

    scheduler_sock = _InRuntime("scheduler.sock")
    control_sock = _InRuntime("control.sock")
    scheduler_lock = _InRuntime("scheduler.lock")
    supervisor_lock = _InRuntime("supervisor.lock")  # held while adopting or running engines
    serve_lock = _InRuntime("serve.lock")  # held by `infergrid serve` (infergridd/runlock.py)
    #: per-engine state files the supervisor re-adopts from after a restart
    engines_dir = _InRuntime("engines")

    @staticmethod
    def ipc(path: Path) -> str:
        s = f"ipc://{path}"
        if len(str(path).encode()) > 107:
            raise ConfigError(f"socket path too long for ZeroMQ IPC (max 107 bytes): {path}")
        return s


def resolve_dirs(cfg: Config, runtime_dir: str | None = None, state_dir: str | None = None) -> Dirs:
    runtime = runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] \
        or cfg.runtime_dir or DEFAULT_RUNTIME_DIR
    state = state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0] \
        or cfg.state_dir or DEFAULT_STATE_DIR
    return Dirs(runtime=Path(runtime), state=Path(state))
