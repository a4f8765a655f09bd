"""Each GPU's ledger as operators see it (``infergridctl gpu list``, ``/metrics``).

Read-only and pure: built from the GPUs the supervisor reported (``GpuMemory``)
and the engines' statuses, whose ``memory_bytes`` is what the supervisor's
ledger counts each engine holding on each of its GPUs right now.
"""

from __future__ import annotations

from typing import Any

from .. import protocol as p
from .memory import ASLEEP, EngineView, GpuMemory


def gpu_ledgers(memory: GpuMemory, engines: list[p.EngineStatus]) -> list[dict[str, Any]]:
    """Per GPU: index, name, UUID, total, free, and the engines resident (awake or
    coming up) and sleeping on it with what each holds."""
    reported = {g.index: g for g in memory.gpus}
    out = []
    for d in memory.devices():
        resident, sleeping = [], []
        for st in engines:
            if d.index not in memory.on(EngineView(st, "")) or st.memory_bytes <= 0:
                continue
            row = {"engine_id": st.engine_id, "model": st.model, "state": st.state,
                   "bytes": st.memory_bytes, "devices": list(st.devices)}
            (sleeping if st.state in ASLEEP else resident).append(row)
        held = sum(r["bytes"] for r in resident + sleeping)
        g = reported.get(d.index)
        free = g.free_bytes if g is not None else (max(0, d.total - held) if d.total else 0)
        out.append({"index": d.index, "name": d.name, "uuid": d.uuid, "source": d.source,
                    "total_bytes": d.total, "free_bytes": free,
                    "resident_bytes": sum(r["bytes"] for r in resident),
                    "sleeping_bytes": sum(r["bytes"] for r in sleeping),
                    "resident": resident, "sleeping": sleeping})
    return out
