"""``infergridctl model list`` (also ``infergridctl models``): every model's state, GPU
memory, queue and residency counters."""

from __future__ import annotations

from typing import Any

import msgspec

from ...config import fmt_bytes
from ._render import table
from .base import Command, CommandContext


class ModelList(Command):
    name = "model.list"
    aliases = ("models",)
    help = "list the models: state, engines, GPU memory, queue, loads and evictions"
    read_only = True

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        res = ctx.core.residency.describe(ctx.core.clock())
        per_model = res.pop("models")
        placed = {e.engine_id: list(e.devices) for e in ctx.core.engine_statuses()}
        models = []
        for m in ctx.core.model_infos():
            mc = ctx.cfg.model(m.name)
            extra = per_model.get(m.name, {})
            models.append({**msgspec.structs.asdict(m),
                           "pinned": bool(mc and mc.pinned), "priority": mc.priority if mc else 0,
                           "loads": extra.get("loads", 0), "evictions": extra.get("evictions", 0),
                           "last_load_s": extra.get("last_load_s", 0.0),
                           # each engine's GPUs (CUDA_VISIBLE_DEVICES): a replica per GPU,
                           # or one tensor-parallel engine over several
                           "devices": {eid: placed.get(eid, []) for eid in m.engines}})
        return {**res, "models": models}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        total = r.get("gpu_total_bytes", 0)
        n = r.get("gpu_count", 1)
        head = (f"{f'{n} GPUs' if n > 1 else 'GPU'} {fmt_bytes(total)}, "
                f"{fmt_bytes(r.get('gpu_free_bytes', 0))} free" if total
                else "GPU memory not accounted (unlimited)")
        head += (f"; swaps {r.get('swaps_in_window', 0)}/{r.get('max_swaps_per_window', 0)} "
                 f"in the last {r.get('swap_window_s', 0):g}s, {r.get('swaps_total', 0)} in all")
        rows = [[m["name"], m["state"], m.get("ready_engines", 0),
                 fmt_bytes(m.get("memory_bytes", 0)), m.get("queued", 0), m.get("inflight", 0),
                 _gpus(m.get("devices", {})), m.get("loads", 0), m.get("evictions", 0),
                 ("pinned " if m.get("pinned") else "") + (m.get("reason") or "")]
                for m in r.get("models", [])]
        return head + "\n\n" + table(["MODEL", "STATE", "READY", "MEMORY", "QUEUED", "INFLIGHT",
                                      "GPUS", "LOADS", "EVICTIONS", "REASON"], rows)


def _gpus(devices: dict[str, list[int]]) -> str:
    """``0,1`` for one engine over two GPUs; ``0 1 2 3`` for four replicas, one each."""
    return " ".join(",".join(map(str, d)) for _e, d in sorted(devices.items()) if d) or "-"
