"""The configuration file, ``infergrid.yaml`` (``version: 1``), decoded strictly.

An unknown key or a wrong type stops start-up with the key's path and the
reason (``ConfigError``), because a silently ignored key is a setting the
operator believes is active and is not (PEERS.md).  Every key is documented in
``man/infergrid.yaml.5.scd``; a test keeps the two in step.

The package: ``schema`` (the structs), ``sizes`` (memory sizes and fit),
``validate`` (cross-field checks), ``dirs`` (runtime and state directories).
Everything is re-exported here, so callers import ``infergridd.config``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..yamlstruct import loads_struct, read_text
from .dirs import Dirs, resolve_dirs
from .schema import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_RUNTIME_DIR,
    DEFAULT_STATE_DIR,
    Config,
    ConfigError,
    EngineAssistConfig,
    GpuConfig,
    GpuDeviceConfig,
    Limits,
    LoggingConfig,
    ModelConfig,
    ResidencyConfig,
    SchedulerConfig,
    TenantConfig,
    TokenBucketConfig,
)
from .sizes import check_fit, fmt_bytes, model_memory, model_sleep_memory, parse_size
from .validate import _validate, hash_key

__all__ = [
    "DEFAULT_CONFIG_PATH", "DEFAULT_RUNTIME_DIR", "DEFAULT_STATE_DIR", "Config", "ConfigError",
    "Dirs", "EngineAssistConfig", "GpuConfig", "GpuDeviceConfig", "Limits", "LoggingConfig", "ModelConfig",
    "ResidencyConfig", "SchedulerConfig", "TenantConfig", "TokenBucketConfig", "check_fit",
    "fmt_bytes", "hash_key", "load", "loads", "model_memory", "model_sleep_memory", "parse_size",
    "resolve_dirs",
]


def loads(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text; raises ``ConfigError`` naming ``source`` and the key."""
    return loads_struct(text, Config, source, ConfigError, _validate)


def load(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    return loads(read_text(p, ConfigError), str(p))
