"""The real package under a real systemd, serving real traffic (DESIGN.md §3 restarts).

One namespace for the whole module: the .deb from packaging/build-deb.sh is installed,
/etc/infergrid/infergrid.yaml is set to the simulated engine at 20 tokens/s (60-token
streams last ~3 s) and `systemctl enable --now infergrid` starts it.  The load comes from
tests/systemd/stream_client.py run inside with the root file system's python3.  The tests
run in file order and each leaves the appliance running (the last one stops it).
"""

from __future__ import annotations

import json
import re
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nsboot import NsSystemd

pytestmark = pytest.mark.systemd

HERE = Path(__file__).resolve().parent
DAEMONS = ["scheduler", "supervisor", "frontdoor"]
UNITS = ["infergrid.service", "infergrid-frontdoor.socket",
         *(f"infergrid-{d}.service" for d in DAEMONS)]
CONFIG = """\
# written by tests/systemd/test_appliance_live.py
version: 1
listen: 127.0.0.1:8000
auth: keys
models:
  - name: demo
    engine: sim
    max_num_seqs: 32
    args: {profile: fast-test, step_s: 0.05}
tenants:
  - name: quiet
    keys: ["sk-quiet-demo"]
  - name: flooder
    keys: ["sk-flooder-demo"]
"""
STOP_BOUND_S = 15.0


def wait_for(pred: Callable[[], bool], timeout: float = 30, what: str = "") -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def show(box: NsSystemd, unit: str, prop: str) -> str:
    return box.run_in(["systemctl", "show", "-P", prop, unit], check=True).stdout.strip()


def active(box: NsSystemd, unit: str) -> str:
    return box.run_in(["systemctl", "is-active", unit]).stdout.strip()


def main_pids(box: NsSystemd) -> dict[str, int]:
    return {d: int(show(box, f"infergrid-{d}.service", "MainPID")) for d in DAEMONS}


def engine_pids(box: NsSystemd) -> set[int]:
    r = box.run_in("for f in /run/infergrid/supervisor/engines/*.json; do cat \"$f\"; echo; "
                   "done",
                   check=True)
    return {int(json.loads(line)["pid"]) for line in r.stdout.splitlines() if line.strip()}


def healthy(box: NsSystemd) -> bool:
    r = box.run_in(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                    "http://127.0.0.1:8000/health"], timeout=10)
    return r.stdout == "200"


def journal(box: NsSystemd, n: int = 80) -> str:
    return box.run_in(f"journalctl --no-pager -u 'infergrid*' | tail -{n}").stdout


def run_load(box: NsSystemd, action: Callable[[], Any] | None = None, streams: int = 20,
             trickle_s: float = 0.0, max_tokens: int = 60) -> tuple[list[dict[str, Any]], Any]:
    """Start ``streams`` streams (and new connections for ``trickle_s``); once every stream
    has its headers run ``action``; return every request's result and what action returned."""
    p = box.popen_in(["python3", "/tmp/stream_client.py", "--streams", str(streams),
                      "--max-tokens", str(max_tokens), "--trickle-s", str(trickle_s)])
    assert p.stderr is not None
    ready, _, _ = select.select([p.stderr], [], [], 30)
    line = p.stderr.readline() if ready else ""
    assert line.strip() == "started", f"client did not start: {line!r}"
    got = action() if action else None
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    results = json.loads(out)["results"]
    assert len(results) >= streams
    return results, got


def latencies(results: list[dict[str, Any]]) -> str:
    out = []
    for kind in ("stream", "new"):
        t = sorted(r["elapsed_s"] for r in results if r["kind"] == kind)
        if t:
            out.append(f"{kind} p50 {t[len(t) // 2]:.1f}s max {t[-1]:.1f}s")
    return ", ".join(out)


def failures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r["status"] != 200 or not r["done"] or r["error"]]


@pytest.fixture(scope="module")
def box(rootfs: Path, deb: Path) -> Iterator[NsSystemd]:
    b = NsSystemd(rootfs)
    try:
        b.wait_running()
        b.put(deb, "/tmp/infergrid.deb")
        b.put(HERE / "stream_client.py", "/tmp/stream_client.py", 0o755)
        t0 = time.monotonic()
        b.run_in(["dpkg", "-i", "/tmp/infergrid.deb"], check=True, timeout=180)
        print(f"\nsystemd tier: dpkg -i in {time.monotonic() - t0:.1f}s")
        b.path("/etc/infergrid/infergrid.yaml").write_text(CONFIG)
        b.run_in(["systemctl", "enable", "--now", "infergrid.service"], check=True, timeout=60)
        try:
            took = wait_for(lambda: healthy(b), 60, "/health 200")
        except AssertionError:
            raise AssertionError(f"appliance not healthy:\n{journal(b)}") from None
        print(f"systemd tier: /health 200 {took:.1f}s after enable --now")
        yield b
    finally:
        b.stop()


def test_installed_units_active_and_doctor_clean(box: NsSystemd) -> None:
    for unit in UNITS:
        assert active(box, unit) == "active", unit
    expected = {  # issue 14.4: one socket per role, each 0660 to that role's group only
        "/run/infergrid": "root:root:755",
        "/run/infergrid/scheduler": "infergrid-scheduler:infergrid:755",
        "/run/infergrid/scheduler/frontdoor.sock": "infergrid-scheduler:infergrid-frontdoor:660",
        "/run/infergrid/scheduler/supervisor.sock":
            "infergrid-scheduler:infergrid-supervisor:660",
        "/run/infergrid/scheduler/control.sock": "infergrid-scheduler:infergrid-admin:660",
        "/run/infergrid/scheduler/control-ro.sock": "infergrid-scheduler:infergrid:660",
        "/run/infergrid/supervisor": "infergrid-supervisor:infergrid-supervisor:711",
        "/run/infergrid/frontdoor": "infergrid-frontdoor:infergrid-frontdoor:700",
        "/var/lib/infergrid": "infergrid-scheduler:infergrid:700",
    }
    r = box.run_in(["stat", "-c", "%n %U:%G:%a", *expected], check=True)
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    print(f"systemd tier: runtime layout {got}")
    assert got == expected
    # a control write saves the state file at once: runtime tenants' key hashes, 0600
    box.run_in(["infergridctl", "tenant", "set-rate", "--unlimited", "quiet"], check=True)
    r = box.run_in(["stat", "-c", "%U %a", "/var/lib/infergrid/scheduler-state.json"], check=True)
    assert r.stdout.split() == ["infergrid-scheduler", "600"], r.stdout
    r = box.run_in(["infergridctl", "doctor"], timeout=120)
    print(f"systemd tier: infergridctl doctor (rc {r.returncode}):\n{r.stdout}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout
    for unit in UNITS:
        assert f"OK    {unit}: active" in r.stdout
    assert re.search(r"OK    port: 127.0.0.1:8000 is held by our front door", r.stdout)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_restart_under_load_fails_nothing(box: NsSystemd, daemon: str) -> None:
    unit = f"infergrid-{daemon}.service"
    wait_for(lambda: healthy(box), 30, "/health 200")
    before = main_pids(box)
    engines = engine_pids(box)

    def restart() -> float:
        t0 = time.monotonic()
        box.run_in(["systemctl", "restart", unit], check=True, timeout=90)
        return time.monotonic() - t0

    results, took = run_load(box, restart, streams=20, trickle_s=4.0)
    bad = failures(results)
    streams = [r for r in results if r["kind"] == "stream"]
    print(f"systemd tier: restart {daemon} under load took {took:.1f}s; {len(results)} "
          f"requests ({len(streams)} streams, {len(results) - len(streams)} new), "
          f"{len(bad)} failed; {latencies(results)}")
    assert not bad, (bad[:5], journal(box))
    after = main_pids(box)
    assert after[daemon] != before[daemon]
    assert {d: p for d, p in after.items() if d != daemon} == \
        {d: p for d, p in before.items() if d != daemon}
    assert engine_pids(box) == engines, "an engine was restarted"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_sigkill_restarts_only_that_daemon(box: NsSystemd, daemon: str) -> None:
    unit = f"infergrid-{daemon}.service"
    wait_for(lambda: healthy(box), 30, "/health 200")
    before = main_pids(box)
    engines = engine_pids(box)
    restarts = {d: int(show(box, f"infergrid-{d}.service", "NRestarts")) for d in DAEMONS}
    box.run_in(["kill", "-9", str(before[daemon])], check=True)
    took = wait_for(lambda: int(show(box, unit, "NRestarts")) == restarts[daemon] + 1
                    and active(box, unit) == "active", 30, f"{unit} back after SIGKILL")
    after = main_pids(box)
    assert after[daemon] not in (0, before[daemon])
    assert {d: p for d, p in after.items() if d != daemon} == \
        {d: p for d, p in before.items() if d != daemon}, "another daemon was restarted"
    assert engine_pids(box) == engines, "an engine was restarted"
    for other in DAEMONS:
        if other != daemon:
            assert int(show(box, f"infergrid-{other}.service", "NRestarts")) == restarts[other]
    recovered = wait_for(lambda: healthy(box), 30, "/health 200 after SIGKILL")
    results, _ = run_load(box, streams=8, max_tokens=20)
    print(f"systemd tier: SIGKILL {daemon}: active again in {took:.1f}s, healthy "
          f"{recovered:.1f}s later, {len(failures(results))}/{len(results)} failed after")
    assert not failures(results), failures(results)


def test_each_unit_runs_as_its_own_user(box: NsSystemd) -> None:
    users = {}
    for d, pid in main_pids(box).items():
        users[d] = box.run_in(["ps", "-o", "user=", "-p", str(pid)], check=True).stdout.strip()
    print(f"systemd tier: unit users {users}")
    assert users == {"scheduler": "infergrid-scheduler", "supervisor": "infergrid-supervisor",
                     "frontdoor": "infergrid-frontdoor"}


def test_the_front_door_unit_runs_one_process_per_core(box: NsSystemd) -> None:
    """The packaged config names no ``frontdoor.processes``: its default runs one front
    door per core (at most 4), all in the one unit's cgroup and as its user, each a peer
    of the scheduler (``infergridctl status``), the unit's main process among them."""
    py = "/opt/venvs/infergrid/bin/python"
    want = int(box.run_in([py, "-c", "from infergridd.frontdoor import workers; "
                           "print(workers.processes(0))"], check=True).stdout)

    def peers() -> list[int]:
        st = json.loads(box.run_in(["infergridctl", "--json", "status"], check=True).stdout)
        return sorted(p["pid"] for p in st["peers"] if p["role"] == "frontdoor")

    wait_for(lambda: len(peers()) == want, 30, f"{want} front doors in infergridctl status")
    pids = peers()
    print(f"systemd tier: front-door processes {pids} (one per core, at most 4)")
    assert int(show(box, "infergrid-frontdoor.service", "MainPID")) in pids
    for pid in pids:
        cg = box.run_in(["cat", f"/proc/{pid}/cgroup"], check=True).stdout
        assert "/infergrid-frontdoor.service" in cg, (pid, cg)
        who = box.run_in(["ps", "-o", "user=", "-p", str(pid)], check=True).stdout.strip()
        assert who == "infergrid-frontdoor", (pid, who)


CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    print("connected")
except PermissionError:
    print("denied")
"""
POSE = """
import zmq, infergridd.protocol as p
s = zmq.Context().socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.IDENTITY, b"fd-mallory")
s.connect("ipc:///run/infergrid/scheduler/frontdoor.sock")
s.send(p.encode(p.Hello(role="supervisor", instance="m", protocol_version=p.PROTOCOL_VERSION)))
w = p.decode(s.recv()) if s.poll(5000) else None
print("accepted" if w is not None and w.accepted else f"refused: {w.reason if w else 'no answer'}")
"""


def as_frontdoor(box: NsSystemd, argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` as the front door's user, with the groups its unit gives it."""
    r = box.run_in(["setpriv", "--reuid=infergrid-frontdoor", "--regid=infergrid-frontdoor",
                    "--groups=infergrid,infergrid-enginesock", *argv], timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_the_front_doors_user_cannot_control_or_pose(box: NsSystemd) -> None:
    """Issue 14.4: the internet-facing front door, if taken over, can neither add a tenant,
    nor reach the supervisor's or the admin's socket, nor pose as a supervisor."""
    rc, out = as_frontdoor(box, ["infergridctl", "tenant", "add", "mallory"])
    print(f"systemd tier: tenant add as infergrid-frontdoor: rc {rc}: {out.strip()}")
    assert rc == 1 and "permission denied" in out, out
    py = "/opt/venvs/infergrid/bin/python"
    for name, want in (("supervisor.sock", "denied"), ("control.sock", "denied"),
                       ("frontdoor.sock", "connected")):
        rc, out = as_frontdoor(box, [py, "-c", CONNECT, f"/run/infergrid/scheduler/{name}"])
        assert out.strip() == want, (name, out)
    rc, out = as_frontdoor(box, [py, "-c", POSE])
    print(f"systemd tier: a supervisor's Hello on frontdoor.sock: {out.strip()}")
    assert out.startswith("refused") and "for frontdoors" in out, out
    names = box.run_in(["infergridctl", "--json", "tenant", "list"], check=True).stdout
    assert "mallory" not in names
    # it reaches the engine's socket, but cannot plant one where an engine will listen
    rc, out = as_frontdoor(box, [py, "-c", CONNECT,
                                 "/run/infergrid/supervisor/engines/demo-0.d/demo-0.sock"])
    assert out.strip() == "connected", out
    rc, out = as_frontdoor(box, ["touch", "/run/infergrid/supervisor/engines/demo-0.d/x.sock"])
    assert rc != 0 and "Permission denied" in out, out


def proc_status(box: NsSystemd, pid: int) -> dict[str, list[str]]:
    text = box.run_in(["cat", f"/proc/{pid}/status"], check=True).stdout
    return {k: v.split() for k, v in (line.split(":", 1) for line in text.splitlines()
                                      if ":" in line)}


def gid(box: NsSystemd, group: str) -> str:
    return box.run_in(["getent", "group", group], check=True).stdout.split(":")[2]


def test_engines_run_as_their_own_user(box: NsSystemd) -> None:
    """Issue 14.3: the engine (model code on tenants' prompts) runs as infergrid-engine, with
    the sockets' group and its own only (no journal group, no daemon's group) and no
    capability, although the supervisor's unit grants CAP_SETUID/CAP_SETGID."""
    pids = engine_pids(box)
    assert pids
    journal_gid, enginesock, own = (gid(box, "systemd-journal"),
                                    gid(box, "infergrid-enginesock"),
                                    gid(box, "infergrid-engine"))
    for pid in pids:
        user = box.run_in(["ps", "-o", "user=", "-p", str(pid)], check=True).stdout.strip()
        st = proc_status(box, pid)
        print(f"systemd tier: engine pid {pid}: user {user}, gid {st['Gid'][0]}, groups "
              f"{st['Groups']}, CapPrm {st['CapPrm'][0]}, CapAmb {st['CapAmb'][0]}")
        assert user == "infergrid-engine"
        assert st["Gid"] == [enginesock] * 4 and st["Groups"] == [own]
        assert journal_gid not in st["Groups"]
        assert int(st["CapPrm"][0], 16) == int(st["CapEff"][0], 16) == 0
        assert int(st["CapAmb"][0], 16) == 0
    sup = main_pids(box)["supervisor"]
    caps = proc_status(box, sup)
    # the supervisor holds them, but not as ambient ones that an exec would pass on
    assert int(caps["CapEff"][0], 16) == (1 << 6) | (1 << 7) and int(caps["CapAmb"][0], 16) == 0
    # the engine's socket: its user's, the socket group's, 0770 (the front door reaches it)
    r = box.run_in("stat -c '%U:%G:%a' /run/infergrid/supervisor/engines/*.d/*.sock",
                   check=True)
    assert r.stdout.split() == ["infergrid-engine:infergrid-enginesock:770"], r.stdout
    # its caches: a directory of its own group, since it cannot write the supervisor's $HOME
    r = box.run_in(["stat", "-c", "%U:%G:%a", "/var/cache/infergrid/engines"], check=True)
    assert r.stdout.strip() == "infergrid-supervisor:infergrid-engine:770", r.stdout
    env = box.run_in(["cat", f"/proc/{min(pids)}/environ"], check=True).stdout.split("\0")
    assert "HOME=/var/cache/infergrid/engines" in env, env
    # and the supervisor's loopback-only network (IPAddressAllow=localhost) is in force
    assert show(box, "infergrid-supervisor.service", "IPAddressDeny") != ""


def as_engine_user(box: NsSystemd, argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` as an engine runs: user infergrid-engine, gid infergrid-enginesock, its
    own group (supervisor/runas.py)."""
    r = box.run_in(["setpriv", "--reuid=infergrid-engine", "--regid=infergrid-enginesock",
                    "--groups=infergrid-engine", *argv], timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_an_engine_cannot_reach_the_schedulers_sockets(box: NsSystemd) -> None:
    """Before, engines ran as the supervisor's user and could connect to supervisor.sock and
    pose as the supervisor.  As infergrid-engine none of the scheduler's sockets admit it,
    nor may it tell the appliance anything through infergridctl."""
    py = "/opt/venvs/infergrid/bin/python"
    got = {}
    for name in ("supervisor.sock", "frontdoor.sock", "control.sock", "control-ro.sock"):
        rc, out = as_engine_user(box, [py, "-c", CONNECT, f"/run/infergrid/scheduler/{name}"])
        got[name] = out.strip()
    print(f"systemd tier: as infergrid-engine: {got}")
    assert set(got.values()) == {"denied"}, got
    rc, out = as_engine_user(box, ["infergridctl", "tenant", "add", "mallory"])
    assert rc != 0 and "mallory" not in box.run_in(
        ["infergridctl", "--json", "tenant", "list"], check=True).stdout, out
    # nor may it list the engines' directory, read a record (with its key) or plant a file
    rc, out = as_engine_user(box, ["ls", "/run/infergrid/supervisor/engines"])
    assert rc != 0 and "Permission denied" in out, out
    rc, out = as_engine_user(box, ["cat", "/run/infergrid/supervisor/engines/demo-0.json"])
    assert rc != 0 and "Permission denied" in out, out
    rc, out = as_engine_user(box, ["touch", "/run/infergrid/supervisor/engines/x"])
    assert rc != 0 and "Permission denied" in out, out


def test_control_socket_writes_need_the_admin_group(box: NsSystemd) -> None:
    box.run_in("adduser --quiet --disabled-password --gecos '' alice && "
               "adduser --quiet alice infergrid && "
               "adduser --quiet --disabled-password --gecos '' bob && "
               "adduser --quiet bob infergrid-admin", check=True)
    # infergrid: reads (control-ro.sock), no writes
    r = box.run_in(["runuser", "-u", "alice", "--", "infergridctl", "--json", "tenant", "show",
                    "quiet"], check=True)
    assert '"quiet"' in r.stdout, r.stdout
    r = box.run_in(["runuser", "-u", "alice", "--", "infergridctl", "tenant", "set-rate",
                    "--rpm", "6000", "quiet"])
    assert r.returncode == 1 and "infergrid-admin" in r.stderr, r.stderr
    # infergrid-admin: writes (control.sock)
    r = box.run_in(["runuser", "-u", "bob", "--", "infergridctl", "tenant", "set-rate",
                    "--rpm", "6000", "quiet"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = box.run_in(["runuser", "-u", "alice", "--", "infergridctl", "--json", "tenant", "show",
                    "quiet"], check=True)
    assert "6000" in r.stdout, r.stdout
    for user in ("nobody", "daemon"):
        r = box.run_in(["runuser", "-u", user, "--", "infergridctl", "tenant", "set-rate",
                        "--rpm", "1", "quiet"])
        print(f"systemd tier: infergridctl as {user}: rc {r.returncode}: {r.stderr.strip()}")
        assert r.returncode == 1
        assert "permission denied" in r.stderr and "infergrid-admin" in r.stderr, r.stderr
    box.run_in(["runuser", "-u", "bob", "--", "infergridctl", "tenant", "set-rate",
                "--unlimited", "quiet"], check=True)


def test_journal_has_request_fields(box: NsSystemd) -> None:
    results, _ = run_load(box, streams=3, max_tokens=5)
    assert not failures(results)

    def entries() -> list[dict[str, Any]]:
        r = box.run_in(["journalctl", "--no-pager", "-u", "infergrid-frontdoor", "TENANT=quiet",
                        "-o", "json"], check=True)
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    wait_for(lambda: any("OUTCOME" in e for e in entries()), 10, "request lines in the journal")
    done = [e for e in entries() if "OUTCOME" in e]
    e = done[-1]
    assert {"REQUEST_ID", "MODEL", "OUTCOME", "TENANT"} <= set(e), sorted(e)
    assert e["MODEL"] == "demo" and e["TENANT"] == "quiet"
    assert e["SYSLOG_IDENTIFIER"].startswith("infergrid")
    print(f"systemd tier: journal: {len(done)} finished requests of tenant quiet; fields "
          f"{sorted(k for k in e if not k.startswith('_'))}")
    # the engine's own output is in the journal under its own identifier
    r = box.run_in(["journalctl", "--no-pager", "-o", "cat", "-t", "infergrid-engine-demo-0"],
                   check=True)
    assert "listening on" in r.stdout or "engine ready" in r.stdout, r.stdout[-2000:]


def test_stop_stops_everything_within_bound(box: NsSystemd) -> None:
    engines = engine_pids(box)
    assert engines
    t0 = time.monotonic()
    box.run_in(["systemctl", "stop", "infergrid.service"], check=True, timeout=180)
    took = time.monotonic() - t0
    print(f"systemd tier: systemctl stop infergrid took {took:.1f}s")
    for unit in UNITS:
        assert active(box, unit) in ("inactive", "failed"), unit
        assert active(box, unit) == "inactive", (unit, journal(box))
    for pid in engines:
        assert box.run_in(["kill", "-0", str(pid)]).returncode != 0, f"engine {pid} left"
    assert box.run_in(["pgrep", "-f", "infergridd"]).returncode == 1
    assert took < STOP_BOUND_S
