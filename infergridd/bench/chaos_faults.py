"""The chaos run's fault schedule: drawn from a seed, printed before the run, applied
while the load runs, each fault logged with when it started and when the appliance
was whole again.

Every fault is something an operator's machine really does: a daemon SIGKILLed or
SIGTERMed (``infergrid serve`` restarts it, as systemd would), an engine killed (its
supervisor restarts it) — sometimes while its supervisor is down —, ``infergridctl``
model and tenant changes mid-load, the scheduler stopped (SIGSTOP) for a while, the
state directory remounted read-only or filled up, engines hung (SIGSTOP) or slowed
(stopped part of every 100 ms), and the wall clock jumped (the ``chaos_hooks`` clock
offset: the real clock is the machine's, not ours to change).

``may_fail`` says whether DESIGN §3 lets a fault of that kind fail a request in
flight: killing a client's front door or its engine may; restarting the scheduler or
the supervisor, operator commands, a read-only disk and clock jumps may not.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from .chaos_app import ROLES, ChaosAppliance

#: how long an operator command is retried while the scheduler does not answer (the
#: longest SIGSTOP of a schedule is 30 s)
CTL_RETRY_S = 45.0


def _applied_before(args: tuple[str, ...], err: str) -> bool:
    """A retried ``tenant add`` / ``tenant remove`` whose first try the scheduler did
    carry out, only too late to answer it."""
    return (args[:2] == ("tenant", "add") and "already exists" in err) or (
        args[:2] == ("tenant", "remove") and "unknown tenant" in err)

#: fault kind -> may a request in flight fail because of it (DESIGN §3)
MAY_FAIL = {
    "kill9_frontdoor": True, "term_frontdoor": True,
    "kill9_scheduler": False, "term_scheduler": False,
    "kill9_supervisor": False, "term_supervisor": False,
    "kill9_engine": True, "term_engine": True, "kill9_supervisor_then_engine": True,
    "engine_hang": True, "engine_slow": False,
    "model_unload_load": True, "model_sleep_wake": True,
    "tenant_change": False, "tenant_add_remove": False,
    "stop_scheduler": True, "state_readonly": False, "state_full": False,
    "clock_jump": False,
}


@dataclass
class Fault:
    at: float  # seconds after the load starts
    kind: str
    target: str = ""  # a role or a model
    duration_s: float = 0.0
    # filled in when applied
    t0: float = -1.0
    t1: float = -1.0  # when the appliance was whole again (or the fault was lifted)
    note: str = ""
    applied: bool = False
    recovered: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        dur = f" for {self.duration_s:g}s" if self.duration_s else ""
        return f"t={self.at:7.1f}s  {self.kind:<28} {self.target}{dur}"


def schedule(seed: int, load_s: float, models: list[str], stop_s: float, hang_s: float,
             rounds: int = 1, only: str = "") -> list[Fault]:
    """Every fault kind ``rounds`` times, in a seeded order, spread over the load (from
    8 % — at least 10 s, for counters to be charged and saved — to 85 % of it, so the
    end of the run shows the appliance settling).  ``only``: a comma-separated subset
    of kinds (the deliberate-bug tests use one)."""
    rng = random.Random(seed * 7919 + 17)
    kinds: list[Fault] = []
    for _ in range(rounds):
        for role in ROLES:
            kinds += [Fault(0, "kill9_" + role, role), Fault(0, "term_" + role, role)]
        kinds += [
            Fault(0, "kill9_engine", rng.choice(models)),
            Fault(0, "term_engine", rng.choice(models)),
            Fault(0, "kill9_supervisor_then_engine", rng.choice(models)),
            Fault(0, "engine_hang", rng.choice(models), hang_s),
            Fault(0, "engine_slow", rng.choice(models), 2 * hang_s),
            Fault(0, "model_unload_load", "code", hang_s),
            Fault(0, "model_sleep_wake", "slow", hang_s),
            Fault(0, "tenant_change", rng.choice(["acme", "beta", "gamma"])),
            Fault(0, "tenant_add_remove", "temp", hang_s),
            Fault(0, "stop_scheduler", "scheduler", stop_s),
            Fault(0, "state_readonly", "state", hang_s),
            Fault(0, "state_full", "state", hang_s),
            Fault(0, "clock_jump", "+3600s then back", hang_s),
        ]
    rng.shuffle(kinds)
    if only:
        kinds = [f for f in kinds if f.kind in only.split(",")]
    lo, hi = max(0.08 * load_s, min(10.0, 0.3 * load_s)), 0.85 * load_s
    step = (hi - lo) / max(1, len(kinds))
    for i, f in enumerate(kinds):
        f.at = round(lo + i * step + rng.uniform(0, step * 0.5), 1)
    return kinds


class NotRecovered(RuntimeError):
    """The fault was applied but the appliance was not whole again in time."""


class FaultRunner:
    """Applies a schedule to one appliance; ``faults`` keeps what happened."""

    def __init__(self, app: ChaosAppliance, faults: list[Fault], t_base: float,
                 recover_timeout_s: float = 60.0) -> None:
        self.app = app
        self.faults = faults
        self.t_base = t_base
        self.recover_timeout_s = recover_timeout_s
        self.lines: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def now(self) -> float:
        return time.monotonic() - self.t_base

    def say(self, text: str) -> None:
        line = f"[{self.now():7.1f}s] {text}"
        self.lines.append(line)
        print(line, flush=True)

    async def run(self) -> None:
        for f in self.faults:
            delay = f.at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            self._tasks.append(asyncio.create_task(self._apply(f)))
        await asyncio.gather(*self._tasks)

    async def _apply(self, f: Fault) -> None:
        f.t0 = self.now()
        try:
            await getattr(self, "_" + f.kind.split("_", 1)[0] + "_any")(f)
            f.applied = True
        except NotRecovered as exc:  # applied, but the appliance did not heal: a violation
            f.applied, f.recovered = True, False
            f.note = str(exc)
        except Exception as exc:  # noqa: BLE001 - a fault that could not be applied is reported
            f.note = f"not applied: {type(exc).__name__}: {exc}"
        f.t1 = self.now()
        self.say(f"{f.kind} {f.target}: {f.note or 'done'} ({f.t1 - f.t0:.1f}s)")

    # ------------------------------------------------------------------ helpers
    async def _wait(self, pred: Any, what: str) -> None:
        deadline = time.monotonic() + self.recover_timeout_s
        while time.monotonic() < deadline:
            if await asyncio.to_thread(pred):
                return
            await asyncio.sleep(0.2)
        raise NotRecovered(f"{what} not back within {self.recover_timeout_s:g}s")

    def _scheduler_answers(self) -> bool:
        try:
            self.app.control("status", timeout_s=2.0)
            return True
        except Exception:  # noqa: BLE001
            return False

    async def _daemon_back(self, role: str, old_pid: int) -> None:
        def back() -> bool:
            pr = self.app.daemon(role)
            return pr is not None and pr.pid != old_pid
        await self._wait(back, f"{role} process")
        if role == "frontdoor":
            await self._wait(self.app.answers, "front door /health")
        elif role == "scheduler":
            await self._wait(self._scheduler_answers, "scheduler control socket")
        else:  # the supervisor has re-adopted and reported: every engine ready again
            await self._wait(self._engines_ready, "engines ready")

    def _engines_ready(self) -> bool:
        try:
            engines = self.app.control("status", timeout_s=2.0)["engines"]
        except Exception:  # noqa: BLE001
            return False
        asleep = {"sleeping", "stopped", "asleep", "unloaded"}
        return all(e.get("state") == "ready" or e.get("state") in asleep for e in engines)

    async def _signal_daemon(self, role: str, sig: int) -> int:
        pr = await asyncio.to_thread(self.app.daemon, role)
        if pr is None or not self.app.signal(pr, sig):
            raise RuntimeError(f"no single {role} process to signal")
        return pr.pid

    async def _signal_engine(self, model: str, sig: int) -> int:
        pr = await asyncio.to_thread(self.app.engine, model)
        if pr is None or not self.app.signal(pr, sig):
            raise RuntimeError(f"no engine process for {model}")
        return pr.pid

    async def _ctl(self, *args: str) -> str:
        """``infergridctl ARGS``, retried as an operator would while the scheduler does not
        answer (another fault of the schedule may have it SIGSTOPped for up to 30 s); a
        retry that finds its earlier try applied after all (``already exists``, ``unknown
        tenant`` for add / remove) counts as done."""
        deadline = time.monotonic() + CTL_RETRY_S
        retried = False
        while True:
            r = await asyncio.to_thread(self.app.ctl, *args, timeout_s=90.0)
            err = r.stderr.strip()
            if r.returncode == 0 or (retried and _applied_before(args, err)):
                return r.stdout
            if "no answer from the scheduler" not in err or time.monotonic() > deadline:
                raise RuntimeError(f"infergridctl {' '.join(args)}: {r.returncode} {err}")
            retried = True
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ faults
    async def _kill9_any(self, f: Fault) -> None:
        if f.kind == "kill9_supervisor_then_engine":
            pid = await self._signal_daemon("supervisor", signal.SIGKILL)
            await asyncio.sleep(0.3)
            epid = await self._signal_engine(f.target, signal.SIGKILL)
            f.note = f"supervisor {pid} then engine {epid} killed"
            await self._daemon_back("supervisor", pid)
            return
        await self._kill(f, signal.SIGKILL)

    async def _term_any(self, f: Fault) -> None:
        await self._kill(f, signal.SIGTERM)

    async def _kill(self, f: Fault, sig: int) -> None:
        if f.kind.endswith("_engine"):
            pid = await self._signal_engine(f.target, sig)
            await self._wait(lambda: (lambda e: e is not None and e.pid != pid)(
                self.app.engine(f.target)), f"engine {f.target}")
            await self._wait(self._engines_ready, "engines ready")
        else:
            pid = await self._signal_daemon(f.target, sig)
            await self._daemon_back(f.target, pid)
        f.note = f"pid {pid} back as a new process"

    async def _engine_any(self, f: Fault) -> None:
        pr = await asyncio.to_thread(self.app.engine, f.target)
        if pr is None:
            raise RuntimeError(f"no engine process for {f.target}")
        end = time.monotonic() + f.duration_s
        if f.kind == "engine_hang":
            self.app.signal(pr, signal.SIGSTOP)
            await asyncio.sleep(f.duration_s)
            self.app.signal(pr, signal.SIGCONT)
            f.note = f"engine {pr.pid} stopped {f.duration_s:g}s"
        else:  # slow: stopped 60 ms of every 100 ms (2.5x slower steps, health slower too)
            while time.monotonic() < end:
                if not self.app.signal(pr, signal.SIGSTOP):
                    break
                await asyncio.sleep(0.06)
                self.app.signal(pr, signal.SIGCONT)
                await asyncio.sleep(0.04)
            self.app.signal(pr, signal.SIGCONT)
            f.note = f"engine {pr.pid} slowed for {f.duration_s:g}s"

    async def _model_any(self, f: Fault) -> None:
        down, up = ("unload", "load") if f.kind == "model_unload_load" else ("sleep", "wake")
        # mid-load a slept model is woken by its next request, so "down" may never be
        # seen: the command starts the change and returns (--wait 0); "up" is awaited
        await self._ctl("model", down, f.target, "--wait", "0")
        await asyncio.sleep(f.duration_s)
        for attempt in range(3):  # as an operator would: the scheduler may be restarting
            try:
                await self._ctl("model", up, f.target, "--wait", "30")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                f.extra["retries"] = attempt + 1
        f.note = f"model {down} then {up} {f.target}"

    async def _tenant_any(self, f: Fault) -> None:
        if f.kind == "tenant_change":
            await self._ctl("tenant", "set-weight", f.target, "3")
            await self._ctl("tenant", "set-rate", f.target, "--rpm", "900")
            f.note = f"{f.target}: weight 3, rpm 900"
            f.extra = {"tenant": f.target, "weight": 3.0, "rpm": 900.0}
        else:
            await self._ctl("tenant", "add", "temp")
            await asyncio.sleep(f.duration_s)
            await self._ctl("tenant", "remove", "temp")
            f.note = "tenant temp added then removed"

    async def _stop_any(self, f: Fault) -> None:
        pr = await asyncio.to_thread(self.app.daemon, "scheduler")
        if pr is None or not self.app.signal(pr, signal.SIGSTOP):
            raise RuntimeError("no scheduler to stop")
        try:
            await asyncio.sleep(f.duration_s)
        finally:
            self.app.signal(pr, signal.SIGCONT)
        await self._wait(self._scheduler_answers, "scheduler after SIGCONT")
        f.note = f"scheduler {pr.pid} stopped {f.duration_s:g}s"

    async def _state_any(self, f: Fault) -> None:
        if not self.app.tmpfs:
            raise RuntimeError("state dir is not a tmpfs we mounted (no mount permission): "
                               "root ignores chmod, so read-only/full is not simulated")
        target = str(self.app.state)
        if f.kind == "state_readonly":
            # a read-only bind mount over it (a plain remount,ro is refused while a
            # daemon holds a file open for writing); unmounting it restores the disk
            _run(["mount", "--bind", target, target])
            try:
                _run(["mount", "-o", "remount,bind,ro", target])
                await asyncio.sleep(f.duration_s)
            finally:
                _run(["umount", target])
            f.note = "state dir read-only (ro bind mount), then writable again"
        else:
            filler = self.app.state / ".chaos-filler"
            _run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], check=False)  # to ENOSPC
            try:
                await asyncio.sleep(f.duration_s)
            finally:
                filler.unlink(missing_ok=True)
            f.note = "state dir filled to ENOSPC (its tmpfs), then freed"

    async def _clock_any(self, f: Fault) -> None:
        self.app.set_clock_offset(3600.0)
        await asyncio.sleep(f.duration_s / 2)
        self.app.set_clock_offset(-1800.0)
        await asyncio.sleep(f.duration_s / 2)
        self.app.set_clock_offset(0.0)
        f.note = "wall clock +1 h, then -30 min, then back"


def _run(argv: list[str], check: bool = True) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
