"""The chaos harness against an appliance it did not start: the .deb installed under a
real systemd (the systemd tier, ``tests/systemd/test_chaos_live.py``), its faults
delivered the way an operator's machine delivers them — ``systemctl restart``,
``systemctl kill -s SIGKILL`` and a memory limit that OOM-kills an engine.

The parts are the serve harness's own: the load (``chaos_load``: open loop, seeded,
mixed), the per-request judge (``chaos_verdict``), the step and end checks
(``chaos_watch``: counters, duplicate/orphan engines, RSS/fd drift, counts back to
zero, every Done in the traces, no traceback in the journal) and the report
(``chaos_run.render``).  What changes is the adapter (``BootedAppliance``: where the
processes, the control socket, ``/metrics`` and the logs are) and the fault runner.

The appliance lives in other namespaces (tests/systemd/nsboot.py): its network is not
the host's, so the client fleet runs in a child process that joined only its network
namespace (``nsenter --net``; ``python -m infergridd.bench.chaos_booted fleet ...``),
on the same monotonic clock as the faults.  Its processes are seen from the host's
``/proc`` (host pids, for signals, RSS and fds); the supervisor reports its engines'
pids as its namespace sees them, translated here through ``NSpid``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .chaos_app import _DAEMON, ROLES, FindsProcesses, Proc, _read, _state, rss_kib, start_ticks
from .chaos_faults import Fault, FaultRunner
from .chaos_load import Fleet, Result, Spec, plan

RunIn = Callable[..., subprocess.CompletedProcess[str]]

#: fault kind -> may a request in flight fail because of it (DESIGN §3)
SYSTEMD_MAY_FAIL = {
    # systemctl restart: SIGTERM, the unit's stop, a new start
    "restart_frontdoor": True, "restart_scheduler": False, "restart_supervisor": False,
    # systemctl kill -s SIGKILL --kill-whom=main: the daemon alone
    "kill9_frontdoor": True, "kill9_scheduler": False, "kill9_supervisor": False,
    # systemctl kill -s SIGKILL: every process of the supervisor's cgroup, engines too
    "kill9_supervisor_unit": True,
    "kill9_engine": True,  # one engine SIGKILLed (an engine is no unit of its own)
    "memory_limit": True,  # a memory limit low enough that the kernel OOM-kills an engine
}
SYSTEMD_CRASH_KINDS = frozenset({"restart_frontdoor", "kill9_frontdoor",
                                 "kill9_supervisor_unit", "kill9_engine", "memory_limit"})


def systemd_schedule(seed: int, load_s: float, models: list[str],
                     hold_s: float = 8.0) -> list[Fault]:
    """Every systemd fault once, in a seeded order, from 10 s to 85 % of the load."""
    import random

    rng = random.Random(seed * 7919 + 29)
    kinds = [Fault(0, f"{k}_{role}", role) for role in ROLES for k in ("restart", "kill9")]
    kinds += [Fault(0, "kill9_supervisor_unit", "all"),
              Fault(0, "kill9_engine", rng.choice(models)),
              Fault(0, "memory_limit", rng.choice(models), hold_s)]
    rng.shuffle(kinds)
    lo, hi = min(10.0, 0.3 * load_s), 0.85 * load_s
    step = (hi - lo) / len(kinds)
    for i, f in enumerate(kinds):
        f.at = round(lo + i * step + rng.uniform(0, step * 0.3), 1)
    return kinds


def _nspid(pid: int) -> int:
    """``pid``'s number in its own (innermost) PID namespace."""
    for line in _read(f"/proc/{pid}/status").decode(errors="replace").splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return 0


class BootedAppliance(FindsProcesses):
    """The installed appliance of a booted namespace, as ``Watch`` and the faults see it
    (the same methods as ``ChaosAppliance``)."""

    tmpfs = False

    def __init__(self, ns_pid: int, run_in: RunIn, config: dict[str, Any],
                 port: int = 8000) -> None:
        self.ns_pid = ns_pid  # the namespace's PID 1 (systemd), as the host numbers it
        self.run_in = run_in  # nsboot.NsSystemd.run_in: a command inside
        self.config = config
        self.url = f"http://127.0.0.1:{port}"  # in the namespace's network
        self.root = Path(f"/proc/{ns_pid}/root")
        self.control_sock = self.root / "run/infergrid/scheduler/control.sock"
        self._pidns = os.readlink(f"/proc/{ns_pid}/ns/pid")

    def processes(self) -> list[Proc]:
        """Every daemon and engine of the namespace (host pids), from the host's /proc."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{d}/ns/pid") != self._pidns:
                    continue
            except OSError:
                continue
            argv = [a.decode(errors="replace") for a in _read(f"/proc/{d}/cmdline").split(b"\0")]
            full = " ".join(argv)
            pid = int(d)
            daemon = _DAEMON.search(full)
            if daemon:
                out.append(Proc(pid, daemon.group(1), start=start_ticks(pid)))
            elif "infergridd.sim" in full and "--model" in argv:
                out.append(Proc(pid, "engine", argv[argv.index("--model") + 1],
                                start_ticks(pid)))
        return [p for p in out if _state(p.pid) != "Z"]

    def control(self, command: str, args: dict[str, Any] | None = None,
                timeout_s: float = 5.0) -> Any:
        """One control-socket command, through the namespace's root as the host sees it;
        the engines' pids in ``status`` translated to host pids."""
        from ..cli.infergridctl import call

        reply = call(self.control_sock, command, args or {}, timeout_s)
        if not reply.ok:
            raise RuntimeError(f"{command}: {reply.error}")
        result = reply.result
        if command == "status":
            host = {_nspid(p.pid): p.pid for p in self.processes() if p.role == "engine"}
            for e in result.get("engines", []):
                e["pid"] = host.get(int(e.get("pid") or 0), -int(e.get("pid") or 0))
        return result

    def ctl(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        return self.run_in(["infergridctl", *args], timeout=timeout_s)

    def _curl(self, path: str) -> tuple[str, str]:
        r = self.run_in(["curl", "-s", "--max-time", "3", "-w", "\n%{http_code}",
                         self.url + path], timeout=15)
        body, _, code = r.stdout.rpartition("\n")
        return code.strip(), body

    def answers(self) -> bool:
        return self._curl("/health")[0] == "200"

    healthy = answers

    def frontdoor_inflight(self) -> float | None:
        code, text = self._curl("/metrics")
        if code != "200":
            return None
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(("infergrid_inflight{", "infergrid_inflight ")))

    def unit(self, verb: str, *args: str, timeout_s: float = 90.0) -> str:
        """``systemctl VERB ARGS`` inside; raises when it fails."""
        r = self.run_in(["systemctl", verb, *args], timeout=timeout_s)
        if r.returncode != 0:
            raise RuntimeError(f"systemctl {verb} {' '.join(args)}: {r.returncode} "
                               f"{r.stderr.strip()}")
        return r.stdout.strip()

    def stop(self) -> int:
        return self.run_in(["systemctl", "stop", "infergrid.service"], timeout=180).returncode

    def logs(self) -> str:
        """The whole journal of the namespace (daemons and engines), messages only."""
        return self.run_in(["journalctl", "--no-pager", "-o", "cat"], timeout=120).stdout

    def engine_logs(self) -> dict[str, str]:
        return {}  # the engines' output is in the journal (logs())


class SystemdFaultRunner(FaultRunner):
    """Faults through systemd: ``systemctl restart``, ``systemctl kill -s SIGKILL`` (the
    daemon alone, or the supervisor's whole cgroup), an engine SIGKILLed, and a memory
    limit that OOM-kills an engine, then lifted."""

    app: BootedAppliance  # type: ignore[assignment]

    async def _restart_any(self, f: Fault) -> None:
        pr = await asyncio.to_thread(self.app.daemon, f.target)
        if pr is None:
            raise RuntimeError(f"no single {f.target} process")
        await asyncio.to_thread(self.app.unit, "restart", f"infergrid-{f.target}.service")
        await self._daemon_back(f.target, pr.pid)
        f.note = f"systemctl restart: pid {pr.pid} back as a new process"

    async def _kill9_any(self, f: Fault) -> None:
        if f.kind == "kill9_engine":
            await self._kill(f, 9)
            f.note = "SIGKILL (" + f.note + ")"
            return
        role = "supervisor" if f.target == "all" else f.target
        pr = await asyncio.to_thread(self.app.daemon, role)
        engines = {p.pid for p in await asyncio.to_thread(self.app.processes)
                   if p.role == "engine"}
        if pr is None:
            raise RuntimeError(f"no single {role} process")
        whom = "all" if f.target == "all" else "main"
        await asyncio.to_thread(self.app.unit, "kill", "-s", "SIGKILL", f"--kill-whom={whom}",
                                f"infergrid-{role}.service")
        await self._daemon_back(role, pr.pid)
        if f.target == "all":
            await self._wait(lambda: not engines & {p.pid for p in self.app.processes()
                                                    if p.role == "engine"}, "new engines")
            await self._wait(self._engines_ready, "engines ready")
        f.note = (f"systemctl kill -s SIGKILL --kill-whom={whom}: pid {pr.pid}"
                  + (f" and engines {sorted(engines)}" if whom == "all" else "")
                  + " back as new processes")

    async def _memory_any(self, f: Fault) -> None:
        pr = await asyncio.to_thread(self.app.engine, f.target)
        if pr is None:
            raise RuntimeError(f"no engine process for {f.target}")
        lift = await asyncio.to_thread(self._limit, pr)
        deadline = time.monotonic() + f.duration_s  # the longest the limit is held
        killed = False
        while not killed and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            killed = start_ticks(pr.pid) != pr.start or _state(pr.pid) in ("Z", "?")
        how = await asyncio.to_thread(lift)
        if not killed:
            raise RuntimeError(f"{how}: engine {pr.pid} was not killed")
        await self._wait(lambda: (lambda e: e is not None and e.pid != pr.pid)(
            self.app.engine(f.target)), f"engine {f.target}")
        await self._wait(self._engines_ready, "engines ready")
        f.note = f"{how}: engine {pr.pid} OOM-killed, limit lifted, engine back"

    def _limit(self, pr: Proc) -> Callable[[], str]:
        """Put a memory limit on the engine; returns how to lift it (which says how).

        The systemd way, where the namespace's cgroup2 has the memory controller:
        ``MemoryMax`` on the supervisor's unit (engines run in its cgroup) below what
        it uses, so the kernel OOM-kills the largest process.  Where the host keeps
        ``memory`` on cgroup v1 (no memory controller for the namespace's systemd:
        ``MemoryMax`` would be accepted and do nothing), the same kernel limit through
        v1: a child memory cgroup of the engine's, 64 KiB, the engine moved into it (what
        it allocates from then on is charged there)."""
        controllers = (self.app.root / "sys/fs/cgroup/cgroup.controllers").read_text().split()
        if "memory" in controllers:
            unit = "infergrid-supervisor.service"
            cur = int(self.app.unit("show", "-P", "MemoryCurrent", unit))
            limit = max(cur - rss_kib(pr.pid) * 1024 // 2, 8 << 20)
            self.app.unit("set-property", "--runtime", unit, f"MemoryMax={limit}")

            def lift_v2() -> str:
                self.app.unit("set-property", "--runtime", unit, "MemoryMax=infinity")
                return f"systemctl set-property --runtime {unit} MemoryMax={limit}"
            return lift_v2
        v1 = Path("/sys/fs/cgroup/memory")
        if not v1.is_dir():
            raise RuntimeError("no memory controller (cgroup v2 or v1) to limit an engine")
        rel = next(line.split(":", 2)[2] for line in
                   _read(f"/proc/{pr.pid}/cgroup").decode().splitlines()
                   if line.split(":")[1] == "memory")
        parent = v1 / rel.lstrip("/")
        cg = parent / f"infergrid-chaos-oom-{pr.pid}"
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(64 << 10))  # it charged ~540K/15s
        (cg / "cgroup.procs").write_text(str(pr.pid))

        def lift_v1() -> str:
            charged = _read(str(cg / "memory.max_usage_in_bytes")).decode().strip()
            for pid in (cg / "cgroup.procs").read_text().split():
                (parent / "cgroup.procs").write_text(pid)  # not killed: back where it was
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
            return ("no memory controller in the namespace's cgroup2 (the host keeps it on "
                    "v1): memory.limit_in_bytes=64K on a v1 cgroup of the engine (charged to "
                    f"it at most: {charged or '?'} bytes)")
        return lift_v1


async def run_fleet_in(netns_pid: int, specs: list[Spec], seed: int, t_base: float,
                       timeout_s: float, url: str) -> list[Result]:
    """Run the load from a child process inside ``netns_pid``'s network namespace."""
    plan_file = Path(f"/tmp/chaos-fleet-{os.getpid()}.json")
    plan_file.write_text(json.dumps({"specs": [asdict(s) for s in specs], "seed": seed,
                                     "t_base": t_base, "timeout_s": timeout_s, "url": url}))
    try:
        p = await asyncio.create_subprocess_exec(
            "nsenter", "-t", str(netns_pid), "--net", "--", sys.executable, "-m",
            "infergridd.bench.chaos_booted", "fleet", str(plan_file),
            stdout=asyncio.subprocess.PIPE)
        out, _ = await p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"the client fleet exited {p.returncode}")
        return [Result(**r) for r in json.loads(out)["results"]]
    finally:
        plan_file.unlink(missing_ok=True)


def _fleet_main(plan_path: str) -> int:
    """The child: the plan's requests open-loop, every result as JSON on stdout."""
    d = json.loads(Path(plan_path).read_text())
    fleet = Fleet(d["url"], [Spec(**s) for s in d["specs"]], d["seed"], d["timeout_s"])
    asyncio.run(fleet.run(d["t_base"]))
    json.dump({"started": fleet.started, "results": [asdict(r) for r in fleet.results]},
              sys.stdout)
    return 0


def booted_plan(seed: int, load_s: float, rate: float, config: dict[str, Any]) -> list[Spec]:
    """The load of the serve harness, for the booted appliance's models and tenants."""
    return plan(seed, load_s, rate, [m["name"] for m in config["models"]],
                {t["name"]: t["keys"][0] for t in config["tenants"]})


async def run_booted(app: BootedAppliance, seed: int = 1, load_s: float = 120.0,
                     rate: float = 4.0, hold_s: float = 15.0,
                     client_timeout_s: float = 120.0) -> dict[str, Any]:
    """One chaos run against the booted appliance; stops it at the end (``systemctl stop
    infergrid``).  The report has the keys of ``chaos_run``'s, ``violations`` empty when
    every invariant held."""
    from .chaos_run import _fault_row, render
    from .chaos_verdict import judge
    from .chaos_watch import Watch, tracebacks

    models = [m["name"] for m in app.config["models"]]
    faults = systemd_schedule(seed, load_s, models, hold_s)
    specs = booted_plan(seed, load_s, rate, app.config)
    print(f"systemd chaos run: seed {seed}, {len(specs)} requests over {load_s:g}s, "
          f"{len(faults)} faults", flush=True)
    print("fault schedule:\n" + "\n".join("  " + f.line() for f in faults), flush=True)
    t_base = time.monotonic() + 3.0  # the fleet's child starts meanwhile
    watch = Watch(app, faults, t_base)  # type: ignore[arg-type]
    runner = SystemdFaultRunner(app, faults, t_base)  # type: ignore[arg-type]
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch.run(stop_watch))
    results, _ = await asyncio.gather(
        run_fleet_in(app.ns_pid, specs, seed, t_base, client_timeout_s, app.url), runner.run())
    load_end = time.monotonic() - t_base
    leftovers = await asyncio.to_thread(watch.settle)
    watch.check_recovered()
    traced = await asyncio.to_thread(watch.traced_without_done)
    probe = [Spec(rid=-1 - i, at=0.0, tenant="probe", key=app.config["tenants"][1]["keys"][0],
                  model=m, chat=True, stream=False, prompt_words=5, max_tokens=4)
             for i, m in enumerate(models)]
    for r in await run_fleet_in(app.ns_pid, probe, 0, time.monotonic(), 60.0, app.url):
        if r.cause != "completed":
            watch.violate(f"probe-{r.model}", f"after the run, model {r.model} does not "
                          f"serve: {r.cause} {r.detail}")
    stop_watch.set()
    await watcher
    await asyncio.to_thread(watch.step)
    drift = watch.drift()
    restarts = {role: await asyncio.to_thread(app.unit, "show", "-P", "NRestarts",
                                              f"infergrid-{role}.service") for role in ROLES}
    rc = await asyncio.to_thread(app.stop)
    await asyncio.sleep(1.0)
    watch.after_stop()
    if rc != 0:
        watch.violate("stop-exit", f"systemctl stop infergrid exited {rc}")
    tbs = tracebacks(await asyncio.to_thread(app.logs))
    for tb in tbs:
        watch.violate(f"tb-journal-{tb}", f"traceback in the journal: {tb}")
    verdict = judge(results, faults, SYSTEMD_MAY_FAIL, SYSTEMD_CRASH_KINDS)
    report = {
        "settings": {"seed": seed, "load_s": load_s, "rate": rate, "hold_s": hold_s},
        "state_dir": "/var/lib/infergrid (no state-dir faults under systemd)",
        "load_s": round(load_end, 1), "sent": len(specs),
        **{k: v for k, v in verdict.items() if k != "violations"},
        "leftovers": leftovers, "traces_checked": traced,
        "leaked_slots": sum(v for v in leftovers.values() if isinstance(v, (int, float))),
        "drift": drift, "n_restarts": restarts,
        "processes_seen": {role: sum(1 for (r, _p, _s) in watch.usage if r == role)
                           for role in ("scheduler", "supervisor", "frontdoor", "engine")},
        "faults": [_fault_row(f) for f in faults],
        "tracebacks": tbs,
        "failures": [f"{r.rid} {r.tenant}/{r.model} stream={r.stream} {r.cause} {r.detail} "
                     f"[{r.t0:.1f}s-{r.t1:.1f}s]" for r in sorted(results, key=lambda r: r.rid)
                     if r.cause not in ("completed", "client_disconnect", "bad_rejected")],
        "violations": verdict["violations"] + watch.violations,
    }
    print(render(report) + f"\nsystemd NRestarts (automatic restarts): {restarts}", flush=True)
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["fleet"])
    ap.add_argument("plan")
    a = ap.parse_args()
    sys.exit(_fleet_main(a.plan))
