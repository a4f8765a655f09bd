"""Issue 14, items 3 and 5, in the supervisor: a pid read from a record is signalled only
when it is provably our engine; records are never read through a symlink; engines run as
their own user exactly when the supervisor can switch completely."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infergridd.assist.launch import SHIM_DIRNAME
from infergridd.config import Dirs, ModelConfig
from infergridd.engines import adapter_for
from infergridd.engines.base import proc_start_time
from infergridd.runlock import RunLock
from infergridd.supervisor import identity, procs, runas, statefile
from infergridd.supervisor.engine import EngineRunner
from infergridd.supervisor.statefile import EngineRecord

VICTIM = "import time; time.sleep(60)"


@pytest.fixture
def victim() -> subprocess.Popen[bytes]:
    """Someone's process that a planted record names (here ours, run as something else)."""
    proc = subprocess.Popen([sys.executable, "-c", VICTIM], start_new_session=True)
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


def _planted(proc: subprocess.Popen[bytes], kind: str = "vllm") -> EngineRecord:
    """What a local user who could write the runtime dir would plant: the victim's real pid
    and start time (both readable in /proc), an engine's command line."""
    return EngineRecord(engine_id="m-0", model="m", kind=kind, pid=proc.pid,
                        start_time=proc_start_time(proc.pid) or 0, port=1, api_key="k",
                        generation=1, argv=[sys.executable, "-m", "infergridd.sim", "--uds",
                                            "/x.sock", "--model", "m"])


def _dirs(tmp_path: Path) -> Dirs:
    dirs = Dirs(runtime=tmp_path, state=tmp_path)
    dirs.engines_dir.mkdir(parents=True, exist_ok=True)
    return dirs


def test_stop_all_never_signals_a_process_a_record_merely_names(
        tmp_path: Path, victim: subprocess.Popen[bytes]) -> None:
    dirs = _dirs(tmp_path)
    statefile.save(dirs.engines_dir, _planted(victim))
    assert procs.stop_all_engines(dirs, 1.0) == 0
    assert victim.poll() is None  # alive: the old code SIGTERMed its group
    assert statefile.load(dirs.engines_dir, "m-0") is None  # the claim is dropped


async def test_adopt_never_signals_a_process_a_record_merely_names(
        tmp_path: Path, victim: subprocess.Popen[bytes]) -> None:
    """A record of another kind makes ``adopt`` replace the engine: before, it stopped the
    named pid's whole group (pid and start time matched: they were read from /proc)."""
    dirs = _dirs(tmp_path)
    model = ModelConfig(name="m")
    r = EngineRunner("m-0", model, adapter_for(model), dirs, None, 0, 0)  # type: ignore[arg-type]
    statefile.save(dirs.engines_dir, _planted(victim, kind="vllm"))
    with RunLock(dirs.supervisor_lock, "supervisor"):
        await r.adopt()
    time.sleep(0.2)
    assert victim.poll() is None
    assert r.rec is None and statefile.load(dirs.engines_dir, "m-0") is None


def test_our_engine_is_recognised_taskset_and_all(tmp_path: Path) -> None:
    argv = ["taskset", "-c", "0", sys.executable, "-c", VICTIM]
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        time.sleep(0.3)
        rec = EngineRecord(engine_id="m-0", model="m", kind="sim", pid=proc.pid,
                           start_time=proc_start_time(proc.pid) or 0, port=1, api_key="k",
                           generation=1, argv=argv)
        assert identity.why_not_ours(rec) == ""  # taskset exec'd its command
        assert "not the engine's command line" in identity.why_not_ours(
            EngineRecord(**{**_fields(rec), "argv": [*argv, "--extra"]}))
        assert "no command line" in identity.why_not_ours(
            EngineRecord(**{**_fields(rec), "argv": []}))
        assert "not running" in identity.why_not_ours(
            EngineRecord(**{**_fields(rec), "start_time": rec.start_time + 1}))
    finally:
        proc.kill()
        proc.wait()


def _fields(rec: EngineRecord) -> dict:
    return {f: getattr(rec, f) for f in rec.__struct_fields__}


def test_a_process_of_another_user_is_never_ours(victim: subprocess.Popen[bytes],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _planted(victim)
    rec.argv = [sys.executable, "-c", VICTIM]
    assert identity.why_not_ours(rec) == ""
    monkeypatch.setattr(identity, "allowed_uids", lambda: {os.geteuid() + 4242})
    assert "neither us nor the engine user" in identity.why_not_ours(rec)
    # nor is a process group with a member that is not ours killed when its leader died
    assert not identity.group_is_ours(victim.pid)
    monkeypatch.undo()
    assert identity.group_is_ours(victim.pid)


def test_a_record_is_never_read_through_a_symlink(tmp_path: Path,
                                                  victim: subprocess.Popen[bytes]) -> None:
    dirs = _dirs(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    statefile.save(elsewhere, _planted(victim))
    statefile.record_path(dirs.engines_dir, "m-0").symlink_to(
        statefile.record_path(elsewhere, "m-0"))
    assert statefile.load(dirs.engines_dir, "m-0") is None
    (dirs.engines_dir / "m-1.stopped").symlink_to(tmp_path / "whatever")
    assert statefile.stopped_intent(dirs.engines_dir, "m-1") == statefile.EVICTED


# --------------------------------------------------------------------------- run as

ALL = sum(1 << b for b in runas.NEEDED_CAPS.values())
ENGINE = runas.RunAs("infergrid-engine", 998, 990, 997)


@pytest.mark.parametrize("euid,caps,name,user,sock,in_groups,who,why", [
    (0, ALL, "infergrid-engine", (998, 997), 990, True, ENGINE,
     "engines run as user 'infergrid-engine' (uid 998)"),
    (0, ALL, "infergrid-engine", None, 990, True, None, "no user 'infergrid-engine'"),
    (0, ALL, "", (998, 997), 990, True, None, "INFERGRID_ENGINE_USER is empty"),
    (998, ALL, "infergrid-engine", (998, 997), 990, True, None, "already runs as"),
    (999, 0, "infergrid-engine", (998, 997), 990, True, None, "lacks CAP_SETUID, CAP_SETGID:"),
    (999, ALL & ~(1 << runas.CAP_SETGID), "infergrid-engine", (998, 997), 990, True, None,
     "lacks CAP_SETGID:"),
    # CAP_SETUID and CAP_SETGID are enough: no CAP_CHOWN, CAP_DAC_OVERRIDE or CAP_KILL
    (999, ALL, "infergrid-engine", (998, 997), 990, True, ENGINE,
     "groups 'infergrid-enginesock' and 'infergrid-engine' only"),
    (999, ALL, "infergrid-engine", (998, 997), None, True, None,
     "no group 'infergrid-enginesock'"),
    (999, ALL, "infergrid-engine", (998, 997), 990, False, None,
     "not in groups 'infergrid-enginesock' and 'infergrid-engine'"),
    (0, ALL, "infergrid-engine", (998, 997), 990, True, None,
     "cannot pass through the runtime dir"),
])
def test_run_as_decision(euid: int, caps: int, name: str, user: tuple[int, int] | None,
                         sock: int | None, in_groups: bool, who: runas.RunAs | None,
                         why: str) -> None:
    got, reason = runas.decide(euid, caps, name, user, sock, in_groups,
                               reachable="cannot pass" not in why)
    assert got == who and why in reason, reason


def test_this_process_caps_are_read() -> None:
    """Root holds CAP_SETUID; an ordinary test user does not."""
    has = bool(runas.effective_caps() & (1 << runas.CAP_SETUID))
    assert has == (os.geteuid() == 0)


def test_engines_dir_admits_the_socket_group_only(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The front door (its own user) and the engines pass the engines dir through its
    group, never list it; the first group of ``SOCKET_GROUPS`` we are in is the one."""
    monkeypatch.setattr(runas, "SOCKET_GROUPS", ("no-such-group-ig", "root"))
    assert runas.socket_group([0, 5]) == 0
    assert runas.socket_group([5]) is None  # not ours to give: keep our own
    d = tmp_path / "supervisor" / "engines"
    runas.prepare_engines_dir(d)
    st = d.stat()
    assert st.st_mode & 0o7777 == 0o2710
    assert st.st_gid == (0 if 0 in os.getgroups() else os.getegid())
    assert (d / SHIM_DIRNAME).stat().st_mode & 0o777 == 0o755  # engines import from it


#: the packaged supervisor's situation, reproduced: a user of its own (here ``daemon``)
#: holding CAP_SETUID/CAP_SETGID as *ambient* capabilities (AmbientCapabilities=), groups
#: for the engines' socket (here ``users``) and the engine user's own (``nogroup``), and a
#: /proc that hides other users' processes (ProtectProc=invisible)
AS_SUPERVISOR = r"""
import json, os, sys, time
from pathlib import Path
from infergridd.supervisor import identity, procs, runas
from infergridd.engines.base import LaunchSpec, proc_start_time, stop_process_group
from infergridd.supervisor.statefile import EngineRecord

runas.SOCK_GROUP = "users"
runas.SOCKET_GROUPS = ("users",)
eng = Path(sys.argv[1]) / "engines"
runas.prepare_engines_dir(eng)
out = {"caps": runas.effective_caps(), "ambient": runas.ambient_caps()}
who = runas.run_as(eng)
out["who"] = [who.uid, who.gid, who.own_gid] if who else None

def status(pid):
    raw = runas.as_engine(lambda: identity._read(Path(f"/proc/{pid}/status")))
    d = dict(l.split(":", 1) for l in raw.decode().splitlines() if ":" in l)
    return {k: d[k].split() for k in ("Uid", "Gid", "Groups", "CapPrm", "CapEff", "CapAmb")}

def start(name):
    sock = eng / f"{name}.d" / f"{name}.sock"
    procs.prepare_listen(sock, who)
    argv = ["/usr/bin/python3", "-c", "import socket, sys, time; s = socket.socket(socket.AF_UNIX);"
            " s.bind(sys.argv[1]); s.listen(); time.sleep(60)", str(sock)]
    p = procs.launch(LaunchSpec(argv, files={str(eng / f"{name}.key"): b"k"}),
                     eng / f"{name}.log", who)
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    return p, argv, sock

p1, _, _ = start("before")  # the ambient set as the unit gives it: the engine inherits it
out["before"] = status(p1.pid)
runas.drop_ambient()
out["ambient_after_drop"] = runas.ambient_caps()
out["caps_after_drop"] = runas.effective_caps()
p2, argv, sock = start("m-0")
out["after"] = status(p2.pid)
try:
    open(f"/proc/{p2.pid}/stat").close()
    out["hidden"] = False
except OSError:
    out["hidden"] = True
st = proc_start_time(p2.pid)
rec = EngineRecord(engine_id="m-0", model="m", kind="sim", pid=p2.pid, start_time=st or 0,
                   port=1, api_key="k", generation=1, argv=argv)
out["why_not_ours"] = identity.why_not_ours(rec)
out["group_is_ours"] = identity.group_is_ours(p2.pid)
s = sock.stat()
d = sock.parent.stat()
out["sock"] = [s.st_uid, s.st_gid, oct(s.st_mode & 0o777)]
out["dir"] = [d.st_uid, d.st_gid, oct(d.st_mode & 0o7777)]
k = (eng / "m-0.key").stat()
out["key"] = [k.st_uid, k.st_gid, oct(k.st_mode & 0o777)]
try:
    os.kill(p2.pid, 0)
    out["plain_kill"] = "allowed"
except PermissionError:
    out["plain_kill"] = "EPERM"
out["stopped"] = stop_process_group(p2.pid, st or 0, 5.0)
stop_process_group(p1.pid, proc_start_time(p1.pid) or 0, 5.0)
print(json.dumps(out))
"""


def _caps(words: list[str]) -> int:
    return int(words[0], 16)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv")
                    or not shutil.which("unshare") or not os.path.exists("/usr/bin/python3"),
                    reason="making another user with ambient capabilities needs root, "
                           "/usr/bin/python3 (the engine), "
                           "setpriv and unshare")
def test_engine_runs_as_its_user_with_the_units_capabilities_only() -> None:
    """Issue 14.3 as the packaged unit runs it: only CAP_SETUID/CAP_SETGID (no CAP_CHOWN,
    CAP_DAC_OVERRIDE, CAP_KILL), /proc hiding other users.  The engine runs as its own
    user with gid = the socket group and its own group only, inherits no capability
    (the unit's are ambient: an engine started before ``drop_ambient`` has them, which
    is what the fix prevents), makes its socket of the socket group in a directory of
    ours that the socket group cannot write; the supervisor still sees it through a
    hiding /proc, proves it its engine and stops it, all without CAP_KILL."""
    import grp
    import pwd

    users, nogroup = grp.getgrnam("users").gr_gid, grp.getgrnam("nogroup").gr_gid
    daemon, nobody = pwd.getpwnam("daemon").pw_uid, pwd.getpwnam("nobody").pw_uid
    assert pwd.getpwnam("nobody").pw_gid == nogroup
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="igsup", dir="/tmp"))
    try:
        os.chown(top, daemon, -1)
        os.chmod(top, 0o711)
        repo = Path(__file__).resolve().parents[3]
        cmd = (f"mount -t proc -o hidepid=invisible proc /proc && exec setpriv "
               f"--reuid={daemon} --regid={daemon} --groups={users},{nogroup} "
               f"--inh-caps=-all,+setuid,+setgid --ambient-caps=-all,+setuid,+setgid "
               f"--bounding-set=-all,+setuid,+setgid "
               f"{sys.executable} -c \"$0\" {top}")
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", cmd,
                            AS_SUPERVISOR], capture_output=True, text=True, timeout=60,
                           cwd=repo, env={**os.environ, "INFERGRID_ENGINE_USER": "nobody",
                                          "PYTHONPATH": str(repo)})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(top, ignore_errors=True)
    setuid_setgid = (1 << runas.CAP_SETUID) | (1 << runas.CAP_SETGID)
    assert out["caps"] == out["ambient"] == setuid_setgid  # what the unit gives
    assert out["who"] == [nobody, users, nogroup]
    # the hazard: an engine exec'd with the ambient set keeps CAP_SETUID (could become anyone)
    assert _caps(out["before"]["CapPrm"]) == setuid_setgid
    assert out["ambient_after_drop"] == 0 and out["caps_after_drop"] == setuid_setgid
    after = out["after"]
    assert after["Uid"] == [str(nobody)] * 4 and after["Gid"] == [str(users)] * 4
    assert after["Groups"] == [str(nogroup)]  # not daemon's, not the journal's
    assert (_caps(after["CapPrm"]), _caps(after["CapEff"]), _caps(after["CapAmb"])) == (0, 0, 0)
    assert out["hidden"], "ProtectProc-like /proc did not hide the engine: test is void"
    assert out["why_not_ours"] == "" and out["group_is_ours"]
    assert out["sock"] == [nobody, users, "0o770"]  # the socket group may connect
    assert out["dir"] == [daemon, nogroup, "0o771"]  # only the engine (and we) may write
    assert out["key"] == [daemon, nogroup, "0o640"]
    assert out["plain_kill"] == "EPERM"  # no CAP_KILL: a signal as ourselves is refused
    assert out["stopped"]  # ... and with the engine's uid on one thread it is not


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another group needs root")
def test_root_gives_the_engines_dir_to_the_engines_gid(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sudo infergrid serve`` with the package's users: root is in none of their groups,
    so the engines dir keeps root's group; the engines (gid: the socket group) must still
    pass it, or none could reach its socket."""
    import grp
    import pwd

    users = grp.getgrnam("users").gr_gid
    monkeypatch.setenv(runas.ENV_USER, "nobody")
    monkeypatch.setattr(runas, "SOCK_GROUP", "users")
    monkeypatch.setattr(runas, "SOCKET_GROUPS", ("no-such-group-ig",))
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="igroot", dir="/tmp"))  # pytest's tmp_path is 0700
    try:
        os.chmod(top, 0o711)
        eng = top / "engines"
        runas.prepare_engines_dir(eng)
        assert eng.stat().st_gid == os.getegid()  # none of SOCKET_GROUPS is root's
        assert not runas.can_reach(eng, pwd.getpwnam("nobody").pw_uid, {users})
        who = runas.run_as(eng)
        assert who == runas.RunAs("nobody", pwd.getpwnam("nobody").pw_uid, users,
                                  pwd.getpwnam("nobody").pw_gid)
        assert eng.stat().st_gid == users and runas.can_reach(eng, who.uid, {who.gid})
    finally:
        shutil.rmtree(top, ignore_errors=True)
