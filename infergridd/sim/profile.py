"""Timing and capacity profile of a simulated engine, loaded from YAML.

A profile is the whole difference between "a tiny model on vLLM-CPU" and
"Llama-3.1-8B on an A100": the step-time formula's coefficients, the batch
limits and the KV cache size.  Keeping them in data (``infergridd/profiles``)
lets ``bench/calibrate.py`` fit them to a real engine without touching code.

Unknown keys are an error that names the key, for the same reason the main
config is strict: a misspelt coefficient would otherwise silently keep its
default and make every benchmark quietly wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Profile:
    """Step-time coefficients and engine limits.

    One scheduler step lasts
    ``base_s + prefill_tokens * per_prefill_token_s + decode_seqs * per_decode_seq_s
    + kv_tokens * per_kv_token_s + new_seqs * per_new_seq_s`` seconds, where
    ``kv_tokens`` is the context length summed over every sequence in the step
    (the attention cost that grows with long contexts) and ``new_seqs`` counts
    requests scheduled for the first time (vLLM's API server admits each one on
    the engine's core: ~1 ms each on vLLM-CPU, the cost that makes TTFT grow with
    concurrency).
    """

    name: str = "custom"
    description: str = ""
    base_s: float = 0.002
    per_prefill_token_s: float = 0.0
    per_decode_seq_s: float = 0.0
    per_kv_token_s: float = 0.0
    per_new_seq_s: float = 0.0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    #: vLLM's --long-prefill-token-threshold: a prompt computes at most this many
    #: tokens per step (0: no limit), so one long prompt cannot take a whole step's
    #: budget and leave fresh requests waiting behind it
    long_prefill_token_threshold: int = 0
    kv_blocks: int = 4096
    block_size: int = 16
    max_model_len: int = 8192
    startup_s: float = 0.0
    sleep_l1_s: float = 0.0
    sleep_l2_s: float = 0.0
    wake_l1_s: float = 0.0
    wake_l2_s: float = 0.0
    eos_prob: float = 0.0  # per generated token, unless the request sets ignore_eos

    def step_s(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
               new_seqs: int = 0) -> float:
        return (self.base_s + prefill_tokens * self.per_prefill_token_s
                + decode_seqs * self.per_decode_seq_s + kv_tokens * self.per_kv_token_s
                + new_seqs * self.per_new_seq_s)

    def replace(self, **changes: Any) -> Profile:
        """A copy with ``changes`` applied, checked like a loaded file."""
        return from_mapping({**dataclasses.asdict(self), **changes}, f"profile {self.name}")


_FIELDS = {f.name: f for f in fields(Profile)}
_INT_KEYS = {"max_num_seqs", "max_num_batched_tokens", "kv_blocks", "block_size", "max_model_len",
             "long_prefill_token_threshold"}


def from_mapping(raw: dict[str, Any], source: str) -> Profile:
    """Validate a mapping into a ``Profile``; every error names ``source`` and the key."""
    if not isinstance(raw, dict):
        raise ProfileError(f"{source}: expected a mapping of profile keys")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise ProfileError(f"{source}: unknown profile key {key!r} (known: {known})")
        if key in ("name", "description"):
            values[key] = str(value)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProfileError(f"{source}: {key} must be a number, got {value!r}")
        if key in _INT_KEYS:
            lo = 0 if key == "long_prefill_token_threshold" else 1
            if int(value) != value or value < lo:
                what = "a positive integer" if lo else "an integer >= 0"
                raise ProfileError(f"{source}: {key} must be {what}, got {value!r}")
            value = int(value)
        elif value < 0:
            raise ProfileError(f"{source}: {key} cannot be negative, got {value!r}")
        values[key] = value
    if values.get("eos_prob", 0.0) > 1:
        raise ProfileError(f"{source}: eos_prob must be in [0, 1]")
    return Profile(**values)


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line (``--set base_s=0.01``) → (key, YAML-typed value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ProfileError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str, overrides: dict[str, Any] | None = None) -> Profile:
    """A packaged profile by name (``fast-test``) or a YAML file by path, plus overrides."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or "/" in name_or_path):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"unknown profile {name_or_path!r} (packaged: {', '.join(available())}; "
                "or give a path to a YAML file)")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    raw = dict(raw or {})
    raw.setdefault("name", path.stem)
    raw.update(overrides or {})
    return from_mapping(raw, str(path))
