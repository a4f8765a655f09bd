"""The chaos run's invariants, checked at every step (about once a second) and at the end.

At every step, from the scheduler's ``status`` (the control socket ``infergridctl``
uses) and ``/proc``:

* fairness counters never go down, across every restart (a state-dir fault excuses
  only what was charged while the disk could not be written); runtime tenant
  settings (weight, rpm) stay what the operator set.  Within one scheduler process a
  counter may dip by a correction (at most ``CORRECTION_MAX``): a ``Done`` settles the
  prompt estimate to the engine's count and refunds a request that never reached an
  engine (``core/charging.py``).  Charges coming in mask it, except when every engine
  dies at once (the systemd run's SIGKILL of the supervisor's unit: −2.7%).  Clearing
  a tenant's debt is a far larger drop, and across a restart no dip is allowed;
* never two engine processes for one model for more than ``DUP_GRACE_S`` (an engine
  started twice on one device), never an engine the supervisor does not report for
  more than ``ORPHAN_GRACE_S`` while it reports;
* RSS and open fds of every process of the run are sampled for the drift check.

At the end (``settle``): queued and in-flight back to zero in the scheduler, the front
door and the engines' running counts; after the appliance stops, no process of it
left; and no traceback in any log.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .chaos_app import ChaosAppliance, fd_count, rss_kib
from .chaos_faults import Fault

DUP_GRACE_S = 5.0
ORPHAN_GRACE_S = 20.0
PERSIST_WINDOW_S = 3.0  # snapshot_interval_s (1 s), with slack for a loaded machine
RSS_DRIFT_MAX_KIB = 40 * 1024
FD_DRIFT_MAX = 16
EXEMPT_TENANTS = frozenset({"temp"})
#: the largest dip, as a fraction of the counter, one scheduler process may show
#: (settling estimates and refunding requests no engine ran; module docstring)
CORRECTION_MAX = 0.10


@dataclass
class Sample:
    t: float
    tenants: dict[str, dict[str, Any]]
    engines: list[dict[str, Any]]
    pid: int = 0  # the scheduler's


@dataclass
class Watch:
    app: ChaosAppliance
    faults: list[Fault]
    t_base: float
    step_s: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    #: (role, pid, start ticks) -> [(t, rss KiB, fds)]
    usage: dict[tuple[str, int, int], list[tuple[float, int, int]]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    _dup_since: dict[str, float] = field(default_factory=dict)
    _unknown_since: dict[int, float] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)

    def now(self) -> float:
        return time.monotonic() - self.t_base

    def violate(self, key: str, text: str) -> None:
        """Record a violation once per ``key`` (a step check repeats every second)."""
        if key not in self._reported:
            self._reported.add(key)
            self.violations.append(f"[{self.now():7.1f}s] {text}")
            print(f"INVARIANT VIOLATED: {text}", flush=True)

    def check_recovered(self) -> None:
        """Every fault that was applied healed (the runner's recovery wait succeeded)."""
        for f in self.faults:
            if f.applied and not f.recovered:
                self.violate(f"recover-{f.kind}-{f.at}", f"{f.kind} {f.target}: {f.note}")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.step)
            try:
                await asyncio.wait_for(stop.wait(), self.step_s)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        t = self.now()
        procs = self.app.processes()
        for pr in procs:
            self.usage.setdefault((pr.role, pr.pid, pr.start), []).append(
                (t, rss_kib(pr.pid), fd_count(pr.pid)))
        try:
            st = self.app.control("status", timeout_s=2.0)
        except Exception:  # noqa: BLE001 - the scheduler is down or stopped: a gap
            st = None
        if st is not None:
            s = Sample(t, {x["name"]: x for x in st["tenants"]}, st["engines"],
                       int(st["scheduler"].get("pid", 0)))
            self.samples.append(s)
            self._check_counters(s)
            self._check_settings(s)
        self._check_engines(procs, st, t)

    def _unsaved(self, t: float) -> bool:
        """Whether a counter seen at ``t`` may never have reached the state file: the
        state dir was read-only or full then (give or take a persist window)."""
        for f in self.faults:
            if f.kind.startswith("state_") and f.t0 >= 0:
                end = (f.t1 if f.t1 >= 0 else self.now()) + PERSIST_WINDOW_S
                if f.t0 - PERSIST_WINDOW_S <= t <= end:
                    return True
        return False

    def _baseline(self, old: Sample, s: Sample) -> bool:
        """Whether ``s`` must show at least ``old``'s counters.  Within one scheduler
        process always; across a restart, unless ``old`` may not have been saved: the
        state dir could not be written then, or the scheduler was SIGKILLed less than a
        persist window after it (it saves every ``snapshot_interval_s``; a SIGTERM
        saves on the way out)."""
        if old.pid == s.pid:
            return True
        if self._unsaved(old.t):
            return False
        return not any(f.kind == "kill9_scheduler" and f.t0 >= 0
                       and self._ran_until(f.t0) - PERSIST_WINDOW_S < old.t <= f.t0 <= s.t
                       for f in self.faults)

    def _ran_until(self, kill_t: float) -> float:
        """When a scheduler SIGKILLed at ``kill_t`` last ran: the start of a SIGSTOP it
        was in (a stopped process saves nothing), else ``kill_t``."""
        for f in self.faults:
            if f.kind == "stop_scheduler" and 0 <= f.t0 <= kill_t <= f.t0 + f.duration_s:
                return f.t0
        return kill_t

    def _check_counters(self, s: Sample) -> None:
        for name, ten in s.tenants.items():
            if name in EXEMPT_TENANTS:
                continue
            now_c = float(ten.get("counter", 0.0))
            for old in self.samples:
                if old.t >= s.t:
                    break
                prev = old.tenants.get(name)
                if prev is None or not self._baseline(old, s):
                    continue
                before = float(prev.get("counter", 0.0))
                slack = CORRECTION_MAX * before if old.pid == s.pid else 0.0
                if now_c + 1e-6 * max(1.0, before) + slack < before:
                    self.violate(f"counter-{name}-{len(self.samples)}",
                                 f"tenant {name}: fairness counter went down from {before:.1f}"
                                 f" (t={old.t:.1f}s) to {now_c:.1f} (t={s.t:.1f}s)")
                    break
        for name in {n for o in self.samples[:-1] for n in o.tenants} - set(s.tenants):
            if name not in EXEMPT_TENANTS:
                self.violate(f"tenant-gone-{name}", f"tenant {name} disappeared")

    def _check_settings(self, s: Sample) -> None:
        for f in self.faults:
            if f.kind != "tenant_change" or not f.applied or not f.extra:
                continue
            ten = s.tenants.get(f.extra["tenant"])
            if ten is None or s.t < f.t1:
                continue
            for key in ("weight", "rpm"):
                if abs(float(ten.get(key, 0.0)) - f.extra[key]) > 1e-6:
                    self.violate(f"setting-{key}-{f.extra['tenant']}",
                                 f"tenant {f.extra['tenant']}: {key} is {ten.get(key)} after "
                                 f"the operator set {f.extra[key]}")

    def _check_engines(self, procs: list[Any], st: dict[str, Any] | None, t: float) -> None:
        per_model: dict[str, list[int]] = {}
        for pr in procs:
            if pr.role == "engine":
                per_model.setdefault(pr.model, []).append(pr.pid)
        for model, pids in per_model.items():
            if len(pids) > 1:
                since = self._dup_since.setdefault(model, t)
                if t - since > DUP_GRACE_S:
                    self.violate(f"dup-{model}-{sorted(pids)}",
                                 f"model {model}: {len(pids)} engine processes {sorted(pids)} "
                                 f"for {t - since:.0f}s (an engine started twice)")
            else:
                self._dup_since.pop(model, None)
        if st is None or not any(p["role"] == "supervisor" for p in st.get("peers", [])):
            self._unknown_since.clear()  # the supervisor is away: nothing to compare with
            return
        known = {int(e.get("pid", 0)) for e in st["engines"]}
        live = {pid for pids in per_model.values() for pid in pids}
        for pid in live - known:
            since = self._unknown_since.setdefault(pid, t)
            if t - since > ORPHAN_GRACE_S:
                self.violate(f"orphan-{pid}", f"engine process {pid} runs but the supervisor "
                             f"has not reported it for {t - since:.0f}s (orphan)")
        for pid in (set(self._unknown_since) - live) | (set(self._unknown_since) & known):
            self._unknown_since.pop(pid, None)

    # ------------------------------------------------------------------ the end
    def settle(self, timeout_s: float = 45.0) -> dict[str, Any]:
        """After the load: wait for every count to come back to zero; what is left leaked."""
        deadline = time.monotonic() + timeout_s
        left: dict[str, Any] = {}
        while time.monotonic() < deadline:
            left = self._leftovers()
            if not left:
                return {}
            time.sleep(0.5)
        for what, n in left.items():
            self.violate(f"leak-{what}", f"after the load: {what} = {n}, not 0 "
                         f"(leaked slot or lost Done)")
        return left

    def traced_without_done(self) -> int:
        """Every request the current scheduler traced as dispatched has its Done (its
        ``trace`` ring; a restart forgets the earlier ones).  Returns how many it checked."""
        try:
            recent = self.app.control("trace", {"last": 100_000}, timeout_s=10.0)["recent"]
        except Exception as exc:  # noqa: BLE001
            self.violate("trace", f"no request traces from the scheduler: {exc}")
            return 0
        for t in recent:
            if t.get("dispatched") is not None and t.get("done") is None:
                self.violate(f"nodone-{t['request_id']}", f"request {t['request_id']} "
                             f"({t['tenant']}/{t['model']}) was dispatched to "
                             f"{t.get('engine_id')} and has no Done")
        return len(recent)

    def _leftovers(self) -> dict[str, Any]:
        left: dict[str, Any] = {}
        try:
            st = self.app.control("status", timeout_s=3.0)
        except Exception as exc:  # noqa: BLE001
            return {"scheduler unreachable": str(exc)}
        for ten in st["tenants"]:
            for key in ("queued", "inflight"):
                if ten.get(key, 0):
                    left[f"scheduler {key} of {ten['name']}"] = ten[key]
        for e in st["engines"]:
            for key in ("num_running", "num_waiting"):
                if e.get(key, 0):
                    left[f"engine {e['engine_id']} {key}"] = e[key]
        fd = self.app.frontdoor_inflight()
        if fd is None:
            left["front door /metrics"] = "no answer"
        elif fd:
            left["front door infergrid_inflight"] = fd
        return left

    def after_stop(self) -> None:
        """The appliance was stopped: nothing of it may be left running."""
        left = self.app.processes()
        if left:
            self.violate("left-after-stop", "processes left after the appliance stopped: "
                         + ", ".join(f"{p.role} {p.model} {p.pid}".replace("  ", " ")
                                     for p in left))

    def drift(self) -> dict[str, dict[str, Any]]:
        """Per role, the longest-lived process: RSS and fd drift after its warm-up."""
        out: dict[str, dict[str, Any]] = {}
        by_role: dict[str, list[list[tuple[float, int, int]]]] = {}
        for (role, _pid, _st), series in self.usage.items():
            by_role.setdefault(role, []).append(series)
        for role, all_series in sorted(by_role.items()):
            series = max(all_series, key=len)
            n = len(series)
            if n < 8:
                out[role] = {"processes": len(all_series), "samples": n}
                continue
            q = max(2, n // 4)
            head, tail = series[n // 10: n // 10 + q], series[-q:]
            rss0, rss1 = statistics.median(x[1] for x in head), statistics.median(
                x[1] for x in tail)
            fd0, fd1 = statistics.median(x[2] for x in head), statistics.median(
                x[2] for x in tail)
            d = {"processes": len(all_series), "samples": n,
                 "lived_s": round(series[-1][0] - series[0][0], 1),
                 "rss_kib": [int(rss0), int(rss1)], "rss_drift_kib": int(rss1 - rss0),
                 "fds": [int(fd0), int(fd1)], "fd_drift": int(fd1 - fd0)}
            out[role] = d
            if d["rss_drift_kib"] > max(RSS_DRIFT_MAX_KIB, rss0 * 0.3):
                self.violate(f"rss-{role}", f"{role}: RSS grew {d['rss_drift_kib']} KiB over "
                             f"{d['lived_s']}s")
            if d["fd_drift"] > FD_DRIFT_MAX:
                self.violate(f"fd-{role}", f"{role}: open fds grew {d['fds'][0]} -> "
                             f"{d['fds'][1]} over {d['lived_s']}s")
        return out


TRACEBACK = re.compile(r"^Traceback \(most recent call last\):", re.MULTILINE)


def tracebacks(text: str) -> list[str]:
    """Each traceback in a log, as its last line (the exception) plus the line before it."""
    out = []
    for m in TRACEBACK.finditer(text):
        rest = text[m.end():].splitlines()[1:]
        last = ""
        for line in rest:
            if line.startswith((" ", "\t")) or not line.strip():
                continue
            last = line.strip()
            if not last.startswith(("During handling", "The above exception")):
                break
        out.append(last[:300])
    return out
