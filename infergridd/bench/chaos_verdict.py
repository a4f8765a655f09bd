"""Judging what each client saw against the faults that overlapped its request.

Pure: results and faults in, counts and violations out (unit-tested without daemons).

A request that failed is *explained* when a fault that DESIGN §3 lets fail a request
(``chaos_faults.MAY_FAIL``) was active while it ran: its front door or an engine
killed, an engine hung, a model unloaded or put to sleep, the scheduler stopped.  A
failure explained only by a scheduler or supervisor restart, an operator command, a
full disk or a clock jump is a violation: those must fail nothing.  So is any ending
that is not clear: a hung request (no end within the client's timeout), a non-JSON
error, a 200 for a bad request, a stream ended twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from .chaos_faults import MAY_FAIL, Fault
from .chaos_load import Result

GRACE_S = 3.0  # a fault's effects may outlast the moment it was lifted by this much
FINE = frozenset({"completed", "client_disconnect", "bad_rejected"})
FAILED = frozenset({"error_retryable", "error_final", "stream_error_retryable",
                    "stream_error_final", "conn_refused", "conn_lost"})
NEVER = frozenset({"timeout", "unclear", ""})
#: answers that are the tenant's own doing, not a failure: its quota, its queue bound
OWN = ("429",)


def _overlaps(r: Result, f: Fault) -> bool:
    if f.t0 < 0:
        return False
    end = max(f.t1, f.t0 + f.duration_s) + GRACE_S
    return f.t0 - 0.5 <= r.t1 and end >= r.t0


#: a crashed engine may fail the requests in flight on it, and those dispatched to it
#: before anyone could know it was dead (its supervisor notices within a second or
#: two; longer when the supervisor is down too): not requests that arrive later
CRASH_KINDS = frozenset({"kill9_engine", "term_engine", "kill9_supervisor_then_engine",
                         "kill9_frontdoor", "term_frontdoor"})
ARRIVAL_GRACE_S = 3.0


def _reaches(f: Fault, r: Result, crash_kinds: frozenset[str] = CRASH_KINDS) -> bool:
    """Whether ``f`` may fail ``r``: a front door or the scheduler stopped reach every
    request; an engine or model fault only the requests for that model (``all``: every
    engine at once, as ``systemctl kill`` of the supervisor's unit does); a crash only
    the requests that arrived before it was known."""
    if f.kind in crash_kinds and r.t0 > f.t0 + ARRIVAL_GRACE_S:
        return False
    return f.target in ("frontdoor", "scheduler", "all") or f.target == r.model


def judge(results: list[Result], faults: list[Fault], may_fail: Mapping[str, bool] = MAY_FAIL,
          crash_kinds: frozenset[str] = CRASH_KINDS) -> dict[str, Any]:
    """Counts by cause, failures by the fault that explains them, and violations.

    ``may_fail`` / ``crash_kinds``: the fault kinds of the run (the systemd variant,
    ``chaos_booted``, delivers its own kinds through ``systemctl``)."""
    causes = Counter(r.cause or "none" for r in results)
    explained: Counter[str] = Counter()
    late: Counter[str] = Counter()  # failed by a crash that happened before they arrived
    violations: list[str] = []
    for r in sorted(results, key=lambda r: r.rid):
        if r.ends != 1 and r.cause != "timeout":
            violations.append(f"request {r.rid}: ended {r.ends} times ({r.cause} {r.detail})")
        if r.cause in NEVER:
            violations.append(f"request {r.rid} ({r.tenant}/{r.model}, stream={r.stream}): "
                              f"{r.cause or 'no ending'} {r.detail} [{r.t0:.1f}s-{r.t1:.1f}s]")
            continue
        if r.cause in FINE or (r.cause == "error_retryable" and r.detail.startswith(OWN)):
            continue
        if r.cause == "error_final" and r.bad is None and r.status in (400, 404, 413, 422):
            violations.append(f"request {r.rid}: a good request refused: {r.detail}")
            continue
        over = [f for f in faults if _overlaps(r, f)]
        allowed = [f for f in over if may_fail.get(f.kind, False)
                   and _reaches(f, r, crash_kinds)]
        if allowed:  # the most recent one explains it
            f = max(allowed, key=lambda f: f.t0)
            explained[f.kind] += 1
            if f.kind in crash_kinds and r.t0 > f.t0:
                late[f.kind] += 1
            continue
        why = ", ".join(sorted({f.kind for f in over})) or "no fault at all"
        violations.append(f"request {r.rid} ({r.tenant}/{r.model}, stream={r.stream}) "
                          f"failed: {r.cause} {r.detail} [{r.t0:.1f}s-{r.t1:.1f}s] during {why}")
    return {
        "requests": len(results),
        "by_cause": dict(sorted(causes.items())),
        "failed": sum(n for c, n in causes.items() if c in FAILED),
        "failed_by_fault": dict(sorted(explained.items())),
        "failed_arriving_after_crash": dict(sorted(late.items())),
        "violations": violations,
    }
