"""One chaos run: start the appliance, print the fault schedule, run the load, the
faults and the step checks together, let it settle, check the end, stop it, report.

``bench/chaos.py`` is the command; ``tests/integration/test_chaos.py`` runs the
CI-sized version and the deliberate-bug versions through ``run_chaos``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .chaos_app import ChaosAppliance
from .chaos_faults import Fault, FaultRunner, schedule
from .chaos_load import Fleet, Spec, plan, run_one
from .chaos_verdict import ARRIVAL_GRACE_S, judge
from .chaos_watch import Watch, tracebacks

MODELS = ["chat", "code", "slow"]


@dataclass
class ChaosSettings:
    seed: int = 1
    load_s: float = 150.0
    rate: float = 4.0  # requests per second, open loop
    stop_s: float = 10.0  # scheduler SIGSTOP (the 30 s in the long run)
    hang_s: float = 6.0  # engine hang, state-dir and clock faults; slow engines twice this
    rounds: int = 1  # each fault kind this many times
    faults: bool = True
    only: str = ""  # only these fault kinds (comma-separated); "": all of them
    bug: str = ""  # chaos_hooks' INFERGRID_CHAOS_BUG: a deliberate bug to catch
    step_s: float = 0.02  # the simulated engines' step time
    client_timeout_s: float = 120.0
    out: str = ""  # write the report (JSON) here
    logs: str = ""  # copy the appliance's logs (serve, engines) into this directory
    fast_path: bool = True  # frontdoor.fast_path (core/leases.py), the product's default


def hour_settings(seed: int = 1) -> ChaosSettings:
    """The hour-long soak: every fault kind 12 times, the scheduler stopped 30 s."""
    return ChaosSettings(seed=seed, load_s=3600.0, rate=4.0, stop_s=30.0, hang_s=20.0,
                         rounds=12)


def run_chaos(s: ChaosSettings) -> dict[str, Any]:
    """Run once; the report's ``violations`` is empty when every invariant held."""
    app = ChaosAppliance(step_s=s.step_s, bug=s.bug, fast_path=s.fast_path)
    try:
        return asyncio.run(_run(app, s))
    finally:
        app.stop()
        app.cleanup(s.logs)


async def _run(app: ChaosAppliance, s: ChaosSettings) -> dict[str, Any]:
    faults = schedule(s.seed, s.load_s, MODELS, s.stop_s, s.hang_s, s.rounds, s.only) if s.faults \
        else []
    specs = plan(s.seed, s.load_s, s.rate, MODELS,
                 {t["name"]: t["keys"][0] for t in app.config["tenants"]})
    print(f"chaos run: seed {s.seed}, {len(specs)} requests over {s.load_s:g}s, "
          f"{len(faults)} faults{', bug ' + s.bug if s.bug else ''}"
          f"{'' if s.fast_path else ', frontdoor.fast_path off'}; state dir "
          f"{'tmpfs (16m)' if app.tmpfs else 'a plain directory (no tmpfs: state faults skipped)'}",
          flush=True)
    print("fault schedule:\n" + "\n".join("  " + f.line() for f in faults), flush=True)
    await asyncio.to_thread(app.start)
    t_base = time.monotonic()
    watch = Watch(app, faults, t_base)
    fleet = Fleet(app.url, specs, s.seed, s.client_timeout_s)
    runner = FaultRunner(app, faults, t_base)
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch.run(stop_watch))
    await asyncio.gather(fleet.run(t_base), runner.run())
    load_end = time.monotonic() - t_base
    leftovers = await asyncio.to_thread(watch.settle)
    watch.check_recovered()
    traced = await asyncio.to_thread(watch.traced_without_done)
    await _probe(app, watch)
    stop_watch.set()
    await watcher
    await asyncio.to_thread(watch.step)  # one last sample for the drift and the counters
    drift = watch.drift()
    rc = await asyncio.to_thread(app.stop)
    await asyncio.sleep(1.0)
    watch.after_stop()
    if rc != 0:
        watch.violate("serve-exit", f"infergrid serve exited {rc} on SIGTERM")
    logs = {"serve.log": app.logs(), **app.engine_logs()}
    tbs = {name: tracebacks(text) for name, text in logs.items()}
    for name, found in tbs.items():
        for tb in found:
            watch.violate(f"tb-{name}-{tb}", f"traceback in {name}: {tb}")
    verdict = judge(fleet.results, faults)
    report = {
        "settings": asdict(s),
        "state_dir": "tmpfs 16m" if app.tmpfs else "plain directory",
        "load_s": round(load_end, 1),
        "sent": fleet.started,
        **{k: v for k, v in verdict.items() if k != "violations"},
        "leftovers": leftovers,
        "traces_checked": traced,
        "leaked_slots": sum(v for v in leftovers.values() if isinstance(v, (int, float))),
        "drift": drift,
        "processes_seen": {role: sum(1 for (r, _p, _s) in watch.usage if r == role)
                           for role in ("scheduler", "supervisor", "frontdoor", "engine")},
        "faults": [_fault_row(f) for f in faults],
        "tracebacks": {k: v for k, v in tbs.items() if v},
        "failures": [f"{r.rid} {r.tenant}/{r.model} stream={r.stream} {r.cause} {r.detail} "
                     f"[{r.t0:.1f}s-{r.t1:.1f}s]" for r in sorted(fleet.results, key=lambda r: r.rid)
                     if r.cause not in ("completed", "client_disconnect", "bad_rejected")],
        "violations": verdict["violations"] + watch.violations,
    }
    if s.out:
        Path(s.out).write_text(json.dumps(report, indent=1))
    print(render(report), flush=True)
    return report


async def _probe(app: ChaosAppliance, watch: Watch) -> None:
    """After the run every model serves again: one small request each must complete
    (a model left unloaded or wedged after its faults is a violation)."""
    key = app.config["tenants"][1]["keys"][0]
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as session:
        for i, model in enumerate(MODELS):
            spec = Spec(rid=-1 - i, at=0, tenant="probe", key=key, model=model, chat=True,
                        stream=False, prompt_words=5, max_tokens=4)
            r = await run_one(session, app.url, spec, time.monotonic(), 60.0, 0)
            if r.cause != "completed":
                watch.violate(f"probe-{model}", f"after the run, model {model} does not "
                              f"serve: {r.cause} {r.detail}")


def _fault_row(f: Fault) -> dict[str, Any]:
    return {"at": f.at, "kind": f.kind, "target": f.target, "duration_s": f.duration_s,
            "applied": f.applied, "recovered": f.recovered, "t0": round(f.t0, 1), "recovered_s": round(f.t1 - f.t0, 1),
            "note": f.note}


def render(r: dict[str, Any]) -> str:
    """The report as the note quotes it."""
    lines = [
        f"== chaos report (seed {r['settings']['seed']}, load {r['load_s']}s, state dir "
        f"{r['state_dir']})",
        f"requests sent {r['sent']}, ended {r['requests']}: " + ", ".join(
            f"{k} {v}" for k, v in r["by_cause"].items()),
        f"failed {r['failed']}, by the fault that explains them: {r['failed_by_fault'] or '-'}"
        f" (of which arrived after the crash, within {ARRIVAL_GRACE_S:g} s: "
        f"{r['failed_arriving_after_crash'] or '-'})",
        f"leaked slots {r['leaked_slots']} {r['leftovers'] or ''}; dispatches checked for "
        f"their Done in the last scheduler's traces: {r['traces_checked']}",
        "processes seen (1 + restarts; engines: 3 models): " + ", ".join(
            f"{k} {v}" for k, v in r["processes_seen"].items()),
        "drift (longest-lived process of each role; RSS KiB, fds: after warm-up -> end):",
        *[f"  {role:<10} {d.get('lived_s', '-')}s  RSS {d.get('rss_kib')} "
          f"({d.get('rss_drift_kib', '-'):+} KiB)  fds {d.get('fds')} ({d.get('fd_drift', '-'):+})"
          if "rss_kib" in d else f"  {role:<10} too few samples ({d['samples']})"
          for role, d in r["drift"].items()],
        "faults applied:",
        *[f"  t={f['t0']:7.1f}s {f['kind']:<28} {f['target']:<10} "
          f"{'ok' if f['applied'] else 'NOT APPLIED'} in {f['recovered_s']}s  {f['note']}"
          for f in r["faults"]],
        f"invariant violations: {len(r['violations'])}",
        *["  " + v for v in r["violations"][:40]],
    ]
    return "\n".join(lines)
