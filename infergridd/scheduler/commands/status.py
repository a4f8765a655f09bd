"""``infergridctl status``: the appliance at a glance — peers, engines, tenants."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from ._render import table
from .base import Command, CommandContext


class Status(Command):
    name = "status"
    help = "show the scheduler, its peers, engines and per-tenant queues"
    read_only = True

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        return {
            "scheduler": {
                "instance": ctx.instance,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - ctx.started_at, 1),
                "policy": ctx.cfg.scheduler.policy,
                # where this instance lives: `infergridctl doctor` checks these without --config
                "config": ctx.config_path,
                "runtime_dir": str(ctx.dirs.runtime) if ctx.dirs else "",
                "state_dir": str(ctx.dirs.state) if ctx.dirs else "",
            },
            "peers": [{"name": p.name, "role": p.role, "pid": p.pid} for p in ctx.peers.all()],
            "engines": [_engine(e) for e in ctx.core.engine_statuses()],
            "tenants": [msgspec.structs.asdict(t) for t in ctx.core.tenant_stats()],
            # the fast path's slot leases (frontdoor.fast_path, core/leases.py)
            "leases": ctx.core.leases.summary(),
        }

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        s = r["scheduler"]
        roles = [p["role"] for p in r["peers"]]
        out = [
            f"scheduler  pid {s['pid']}  up {s['uptime_s']:.0f}s  policy {s['policy']}  "
            f"front doors {roles.count('frontdoor')}  supervisors {roles.count('supervisor')}",
            *([f"config {s['config']}  runtime {s.get('runtime_dir', '')}  state "
               f"{s.get('state_dir', '')}"] if s.get("config") else []),
            # each front-door process is its own peer (frontdoor.processes, issue 17)
            *(["front doors: " + ", ".join(f"{p['name']} (pid {p['pid']})" for p in r["peers"]
                                           if p["role"] == "frontdoor")]
              if roles.count("frontdoor") > 1 else []),
            "",
            table(["ENGINE", "MODEL", "STATE", "GPUS", "PID", "RUNNING", "WAITING", "KV%",
                   "RESTARTS", "ASSIST"],
                  [[e["engine_id"], e["model"], e.get("state", "-"),
                    ",".join(map(str, e.get("devices", []))) or "-", e.get("pid", 0),
                    e.get("num_running", 0), e.get("num_waiting", 0),
                    round(100 * e.get("kv_usage", 0.0), 1), e.get("restarts", 0),
                    e.get("assist") or "-"]
                   for e in r["engines"]]) if r["engines"] else "no engines reported",
            *_assist_lines(r["engines"]),
            *_lease_line(r.get("leases") or {}),
            "",
            table(["TENANT", "WEIGHT", "QUEUED", "INFLIGHT", "COUNTER", "TOKENS_IN", "TOKENS_OUT",
                   "REJECTED"],
                  [[t["name"], t.get("weight", 1.0), t.get("queued", 0), t.get("inflight", 0),
                    round(t.get("counter", 0.0), 1), t.get("tokens_in", 0),
                    t.get("tokens_out", 0), sum(t.get("rejected", {}).values())]
                   for t in r["tenants"]]),
        ]
        return "\n".join(out)


def _lease_line(leases: dict[str, Any]) -> list[str]:
    """The fast path's leases, where a front door asks for them (frontdoor.fast_path)."""
    if not leases.get("wants") and not leases.get("held"):
        return []
    wants = ", ".join(f"{k} {v}" for k, v in sorted(leases["wants"].items())) or "none"
    return [f"slot leases: {leases['held']} held, {leases.get('granted', 0)} granted "
            f"since start; wanted per model by {wants}"]


def _assist_lines(engines: list[dict[str, Any]]) -> list[str]:
    """Why each engine's step policy is on or off, and what it did: a stock scheduler
    must never run unnoticed (DESIGN §5)."""
    out = []
    for e in engines:
        if not e.get("assist"):
            continue
        c = e.get("assist_counters") or {}
        did = (f"; light-first steps {c.get('light_first_steps', 0)}, preemptions "
               f"{c.get('preemptions', 0)}, held prefill chunks "
               f"{c.get('held_prefill_chunks', 0)}, capped steps {c.get('capped_steps', 0)}"
               if c else "")
        out.append(f"  assist {e['engine_id']}: {e['assist']} ({e.get('assist_reason', '')}){did}")
    return ["", *out] if out else []


def _engine(e: Any) -> dict[str, Any]:
    """An engine's status without its API key: infergridctl output is shown and pasted."""
    out = msgspec.structs.asdict(e)
    out.pop("api_key", None)
    return out
