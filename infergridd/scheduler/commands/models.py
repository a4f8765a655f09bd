"""``infergridctl models``: each configured model, its state and its engines."""

from __future__ import annotations

from typing import Any

import msgspec

from ...config import fmt_bytes
from ._render import table

NAME = "models"
HELP = "list the configured models and their state"


def add_arguments(parser: Any) -> None:
    pass


def to_args(ns: Any) -> dict[str, Any]:
    return {}


def execute(ctx: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [msgspec.structs.asdict(m) for m in ctx.core.model_infos()]


def render(r: list[dict[str, Any]]) -> str:
    return table(["MODEL", "STATE", "READY", "ENGINES", "MEMORY", "QUEUED", "INFLIGHT", "REASON"],
                 [[m["name"], m["state"], m.get("ready_engines", 0), ",".join(m.get("engines", [])),
                   fmt_bytes(m.get("memory_bytes", 0)), m.get("queued", 0), m.get("inflight", 0),
                   m.get("reason", "")] for m in r])
