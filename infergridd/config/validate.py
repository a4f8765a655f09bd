"""Checks of a decoded config that a type system cannot express; each error names its key."""

from __future__ import annotations

import hashlib
import re

from .placement import configured_devices
from .schema import Config, ConfigError
from .sizes import check_fit, parse_size


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


def _check_devices(cfg: Config) -> None:
    """``gpu.devices``: unique, non-negative indices and sizes that parse."""
    seen: set[int] = set()
    for j, d in enumerate(cfg.gpu.devices):
        p = f"$.gpu.devices[{j}]"
        if d.index < 0:
            raise ConfigError(f"{p}.index: cannot be negative")
        if d.index in seen:
            raise ConfigError(f"{p}.index: GPU {d.index} is listed twice")
        seen.add(d.index)
        try:
            parse_size(d.total_memory)
        except ValueError as exc:
            raise ConfigError(f"{p}.total_memory: {exc}") from None


def _validate(cfg: Config) -> None:
    """Checks a type system cannot express; each error names its key."""

    def bad(path: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: {why}")

    host, _, port = cfg.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise bad("$.listen", f"expected HOST:PORT, got {cfg.listen!r}")
    _check_edge(cfg)
    if not 0 <= cfg.frontdoor.processes <= 64:
        raise bad("$.frontdoor.processes", f"expected 0 (automatic) to 64, got "
                  f"{cfg.frontdoor.processes}")
    _check_devices(cfg)
    smallest = min((d.total for d in configured_devices(cfg) if d.total > 0), default=0)
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        p = f"$.models[{i}]"
        _check_name(m.name, p, "model", seen)
        if m.replicas < 1:
            raise bad(f"{p}.replicas", "must be at least 1")
        if m.gpus < 1:
            raise bad(f"{p}.gpus", f"model {m.name!r}: must be at least 1")
        if any(d < 0 for d in m.devices):
            raise bad(f"{p}.devices", f"model {m.name!r}: a GPU index cannot be negative")
        if m.max_num_seqs < 1:
            raise bad(f"{p}.max_num_seqs", "must be at least 1")
        if m.max_model_len < -1:
            raise bad(f"{p}.max_model_len", "must be -1 (unchecked), 0 (the engine's) or more")
        if m.engine == "openai" and not m.url:
            raise bad(f"{p}.url", "required for engine: openai")
        for key in ("memory", "sleep_memory"):
            try:
                parse_size(getattr(m, key), smallest or 1)
            except ValueError as exc:
                raise bad(f"{p}.{key}", str(exc)) from None
        if m.keep_alive_s < 0:
            raise bad(f"{p}.keep_alive_s", "cannot be negative")
        if m.assist().heavy_chunk_tokens < 0:
            raise bad(f"{p}.engine_assist.heavy_chunk_tokens", "cannot be negative")
    try:
        parse_size(cfg.gpu.total_memory)
    except ValueError as exc:
        raise bad("$.gpu.total_memory", str(exc)) from None
    if cfg.gpu.devices or not any(m.gpus > 1 or m.devices for m in cfg.models):
        check_fit(cfg)  # every GPU known: counts, pins and memory, per GPU
    # else: how many GPUs NVML finds is known only on the machine; the supervisor and
    # doctor check then (supervisor/devices.py)
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


def _check_edge(cfg: Config) -> None:
    """``admin_listen`` and the front door's bounds (``limits``: frontdoor/room.py, edge.py)."""
    if cfg.admin_listen:
        host, _, port = cfg.admin_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"$.admin_listen: expected HOST:PORT or \"\", "
                              f"got {cfg.admin_listen!r}")
        if cfg.admin_listen == cfg.listen:
            raise ConfigError("$.admin_listen: must differ from listen")
    lim = cfg.limits
    for key in ("max_queued_bytes", "max_queued_bytes_per_tenant"):
        try:
            if parse_size(getattr(lim, key)) < 1:
                raise ValueError("must be at least 1 byte")
        except ValueError as exc:
            raise ConfigError(f"$.limits.{key}: {exc}") from None
        if parse_size(getattr(lim, key)) < lim.max_body_bytes:
            raise ConfigError(f"$.limits.{key}: smaller than limits.max_body_bytes "
                              f"({lim.max_body_bytes}): no body of that size could wait")
    for key in ("max_body_bytes", "max_queued_requests", "max_requests_per_connection",
                "max_connections"):
        if getattr(lim, key) < 1:
            raise ConfigError(f"$.limits.{key}: must be at least 1")
    for key in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
        if not getattr(lim, key) > 0:
            raise ConfigError(f"$.limits.{key}: must be greater than 0")
