"""Engine assist as the supervisor sees it: asked for at launch, proven by the engine.

The adapter decides at launch whether the engine runs InferGrid's step policy
(``LaunchSpec.assist``: the config, and for vLLM the version range it was
tested with).  Asking is not proof: the policy runs inside the engine's own
process, so the supervisor only reports ``on`` once the engine has written its
stats file (``assist/stats.py``) from a process of the engine's group (vLLM's
engine core is a child of its API server, which leads the group we started).
Until then it says ``starting``; ``infergridctl status`` shows either, with why.
An engine whose assist is its own command-line flags (SGLang: ``LaunchSpec.assist``
``"flags"``) writes no stats file: the flags are the proof, so it is ``on`` at launch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .. import protocol as p
from ..assist.stats import STATS_ENV, read_stats
from ..engines.base import LaunchSpec


def stats_path(engines_dir: Path, engine_id: str) -> Path:
    return engines_dir / f"{engine_id}.assist.json"


def prepare_launch(spec: LaunchSpec, st: p.EngineStatus, path: Path) -> None:
    """Point the engine at a fresh stats file and say what was asked for."""
    with contextlib.suppress(OSError):
        path.unlink()  # a stale file from the last process must not count as proof
    st.assist_counters = {}
    if spec.assist == "flags":  # final: nothing more will come from the engine
        st.assist, st.assist_reason = "on", f"flags: {spec.assist_reason}"
    elif spec.assist == "on":
        spec.env[STATS_ENV] = str(path)
        st.assist, st.assist_reason = "starting", f"asked for ({spec.assist_reason})"
    else:
        st.assist, st.assist_reason = spec.assist, spec.assist_reason


def _ours(pid: object, engine_pid: int) -> bool:
    """Whether ``pid`` is the engine or one of its group (never trust a pid in a file)."""
    if not isinstance(pid, int) or pid <= 0 or engine_pid <= 0:
        return False
    if pid == engine_pid:
        return True
    try:
        return os.getpgid(pid) == engine_pid
    except OSError:
        return False


def refresh(st: p.EngineStatus, path: Path) -> None:
    """Read the engine's stats into its status (also after a supervisor restart, when
    nothing was asked for in this process: the file is the proof either way)."""
    if st.assist == "off":
        return
    doc = read_stats(str(path))
    if doc is None or not doc.get("loaded") or not _ours(doc.get("pid"), st.pid):
        return
    st.assist = "on"
    st.assist_reason = (f"{doc.get('class', '?')} loaded in {doc.get('engine', '?')} "
                        f"{doc.get('engine_version', '')}").strip()
    counters = doc.get("counters")
    if isinstance(counters, dict):
        st.assist_counters = {k: v for k, v in counters.items()
                              if isinstance(k, str) and isinstance(v, int)}
    budget = doc.get("token_budget")
    if isinstance(budget, int) and budget > 0:
        st.max_num_batched_tokens = budget
