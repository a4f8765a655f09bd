"""Issue 16.3, the systemd variant: the chaos harness's load and invariants against the
.deb installed under a real systemd, faults delivered the way an operator's machine
delivers them (``infergridd/bench/chaos_booted.py``).

Seeded (printed) schedule over 120 s of open-loop mixed load at 4 req/s:
``systemctl restart`` and ``systemctl kill -s SIGKILL --kill-whom=main`` of each of the
three daemons' units, ``systemctl kill -s SIGKILL`` of the supervisor's whole unit (the
supervisor and every engine in its cgroup), one engine SIGKILLed, and a memory limit
that OOM-kills an engine, then lifted (where the kernel lets systemd enforce it: see
docs/chaos.md, "Under systemd", for a host that keeps memory on cgroup v1).  Judged as the serve harness judges: every
request ends exactly once and clearly, failures only where a fault may fail them,
counts back to zero everywhere, every traced dispatch has its Done, counters never go
down, no duplicate or orphan engine, flat RSS/fds, no traceback in the journal, nothing
left after ``systemctl stop infergrid``.

    pytest -m systemd tests/systemd -k chaos        (about 3 minutes, + the .deb build)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from nsboot import NsSystemd

from infergridd.bench.chaos_app import chaos_config
from infergridd.bench.chaos_booted import SYSTEMD_MAY_FAIL, BootedAppliance, run_booted

pytestmark = pytest.mark.systemd

SEED = int(os.environ.get("INFERGRID_CHAOS_SEED", "1"))
LOAD_S = float(os.environ.get("INFERGRID_CHAOS_LOAD_S", "120"))


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_chaos_under_systemd_keeps_every_invariant(rootfs: Path, deb: Path) -> None:
    box = NsSystemd(rootfs)
    try:
        box.wait_running()
        box.put(deb, "/tmp/infergrid.deb")
        box.run_in(["dpkg", "-i", "/tmp/infergrid.deb"], check=True, timeout=180)
        config = chaos_config(8000, 0.02)
        box.path("/etc/infergrid/infergrid.yaml").write_text(
            "# written by tests/systemd/test_chaos_live.py\n"
            + yaml.safe_dump(config, sort_keys=False))
        box.run_in(["systemctl", "enable", "--now", "infergrid.service"], check=True, timeout=60)
        app = BootedAppliance(box.pid, box.run_in, config)
        _wait(app.answers, 60, "/health 200")
        _wait(lambda: len([p for p in app.processes() if p.role == "engine"]) == 3, 60,
              "three engines")
        r = asyncio.run(run_booted(app, seed=SEED, load_s=LOAD_S))
    finally:
        box.stop()
    assert r["violations"] == [], "\n".join(r["violations"])
    assert r["requests"] == r["sent"] >= 3 * LOAD_S, (r["sent"], r["requests"])
    assert r["by_cause"].get("completed", 0) >= 0.6 * r["sent"], r["by_cause"]
    assert r["by_cause"].get("client_disconnect", 0) > 0 and r["by_cause"].get("bad_rejected")
    assert r["leaked_slots"] == 0 and r["traces_checked"] > 0
    not_applied = [f for f in r["faults"] if not f["applied"]]
    # the memory limit, the systemd way (MemoryMax), needs the memory controller in the
    # namespace's cgroup2; a host kernel that keeps it on cgroup v1 offers none (systemd
    # would accept MemoryMax and enforce nothing).  There the fault tries the same kernel
    # limit through v1 and, where that does not kill, says so: printed, not counted
    unenforced = [f for f in not_applied if f["kind"] == "memory_limit"
                  and ("no memory controller in the namespace's cgroup2" in f["note"]
                       or os.environ.get("INFERGRID_CHAOS_NO_MEMCG"))]
    if unenforced:
        print(f"systemd chaos: memory limit NOT exercised here: {unenforced[0]['note']}")
    not_applied = [f for f in not_applied if f not in unenforced]
    assert not not_applied, not_applied
    assert {f["kind"] for f in r["faults"]} == set(SYSTEMD_MAY_FAIL)
    # restarted by systemctl and killed: every daemon ran as 3 processes at least
    for role in ("scheduler", "supervisor", "frontdoor"):
        assert r["processes_seen"][role] >= 3, r["processes_seen"]
    # 3 at the start, 3 after the supervisor's unit was killed, 1 after the engine's
    # SIGKILL, 1 after the OOM kill where the memory limit was enforced
    assert r["processes_seen"]["engine"] >= 3 + 3 + 1 + (not unenforced), r["processes_seen"]
