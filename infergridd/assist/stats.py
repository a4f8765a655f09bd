"""How an assisted engine tells InferGrid what it is doing: one small JSON file.

The step policy runs inside the engine's own process (vLLM's engine core is a
child of its API server), where InferGrid has no socket.  So the engine writes
its counters to the file named by ``INFERGRID_ASSIST_STATS`` (atomically, at
most twice a second) and the supervisor reads it when it polls the engine.
The file is written *by the engine*, so it is also the proof that the plugin
was really loaded: the supervisor checks the ``pid`` in it belongs to the
engine it launched.  Settings travel the other way in ``INFERGRID_ASSIST``
(JSON), never on the command line.

Only the standard library here: this module is imported inside the vLLM venv.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .policy import AssistSettings, StepDecision

SETTINGS_ENV = "INFERGRID_ASSIST"
STATS_ENV = "INFERGRID_ASSIST_STATS"
#: seconds between two writes of the stats file
WRITE_EVERY_S = 0.5


def settings_from_env(env: Mapping[str, str] | None = None) -> AssistSettings:
    """``INFERGRID_ASSIST`` as settings; absent means the defaults.  Unknown keys or
    wrong types raise ``ValueError`` naming the key: a typo must not pass silently."""
    raw = (os.environ if env is None else env).get(SETTINGS_ENV, "")
    if not raw:
        return AssistSettings()
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{SETTINGS_ENV}: expected a JSON object")
    known = {f.name: f for f in fields(AssistSettings)}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"{SETTINGS_ENV}: unknown key {key!r}")
        want = bool if known[key].type in ("bool", bool) else int
        if type(value) is not want:
            raise ValueError(f"{SETTINGS_ENV}: {key} must be {want.__name__}")
    return AssistSettings(**data)


def settings_to_env(s: AssistSettings) -> str:
    return json.dumps(asdict(s), sort_keys=True)


@dataclass
class AssistCounters:
    """What the step policy did, monotonic since the engine started."""

    steps: int = 0
    light_first_steps: int = 0  # steps the policy changed for light work
    preemptions: int = 0  # heavy sequences preempted for a light request's seat
    held_prefill_chunks: int = 0  # heavy prefill chunks held back a step
    capped_steps: int = 0  # steps whose token budget was cut (heavy work, light around)
    exclusive_steps: int = 0

    def count(self, d: StepDecision, held_prefills: int, exclusive: bool) -> None:
        self.steps += 1
        if not d.acts:
            return
        if d.urgent:
            self.light_first_steps += 1
        self.preemptions += len(d.preempt)
        self.held_prefill_chunks += held_prefills
        self.capped_steps += d.step_budget is not None
        self.exclusive_steps += exclusive and d.urgent and bool(d.hold)


@dataclass
class StatsWriter:
    """Writes the stats file; a no-op without a path."""

    path: str
    engine: str  # "vllm" | "sim"
    cls: str
    engine_version: str
    settings: AssistSettings
    token_budget: int = 0  # the engine's max_num_batched_tokens, for the scheduler's window
    max_num_seqs: int = 0
    counters: AssistCounters = field(default_factory=AssistCounters)
    _last: float = 0.0

    @classmethod
    def from_env(cls, engine: str, cls_name: str, engine_version: str,
                 settings: AssistSettings, token_budget: int = 0,
                 max_num_seqs: int = 0) -> StatsWriter:
        return cls(os.environ.get(STATS_ENV, ""), engine, cls_name, engine_version, settings,
                   token_budget, max_num_seqs)

    def maybe_write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.path or (not force and now - self._last < WRITE_EVERY_S):
            return
        self._last = now
        doc = {"loaded": True, "engine": self.engine, "class": self.cls,
               "engine_version": self.engine_version, "pid": os.getpid(),
               "token_budget": self.token_budget, "max_num_seqs": self.max_num_seqs,
               "settings": asdict(self.settings), "counters": asdict(self.counters)}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a full or read-only disk must never stop the engine's step loop


def read_stats(path: str) -> dict[str, Any] | None:
    """The stats file as written, or None when absent or unreadable (not loaded yet)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
