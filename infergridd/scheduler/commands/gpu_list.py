"""``infergridctl gpu list``: each GPU's memory ledger — resident, sleeping, free."""

from __future__ import annotations

from typing import Any

from ...config import fmt_bytes
from ...core.gpu_view import gpu_ledgers
from ._render import table
from .base import Command, CommandContext


class GpuList(Command):
    name = "gpu.list"
    aliases = ("gpus",)
    help = "list the GPUs: each one's memory ledger (resident, sleeping, free) and engines"
    read_only = True

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        return {"gpus": gpu_ledgers(ctx.core.residency.memory, ctx.core.engine_statuses())}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        def engines(rows: list[dict[str, Any]]) -> str:
            return ", ".join(f"{e['engine_id']} {fmt_bytes(e['bytes'])}"
                             + (f" (TP {','.join(map(str, e['devices']))})"
                                if len(e.get("devices", [])) > 1 else "")
                             for e in rows) or "-"

        rows = [[g["index"], g.get("name") or "-",
                 fmt_bytes(g["total_bytes"]) if g["total_bytes"] else "unlimited",
                 fmt_bytes(g["resident_bytes"]), fmt_bytes(g["sleeping_bytes"]),
                 fmt_bytes(g["free_bytes"]) if g["total_bytes"] else "-",
                 engines(g["resident"]), engines(g["sleeping"])]
                for g in r.get("gpus", [])]
        return table(["GPU", "NAME", "TOTAL", "RESIDENT", "SLEEPING", "FREE", "RESIDENT ENGINES",
                      "SLEEPING ENGINES"], rows)
