"""Issue 14, items 3 and 5, in the supervisor: a pid read from a record is signalled only
when it is provably our engine; records are never read through a symlink; engines run as
their own user exactly when the supervisor can switch completely."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infergridd.config import Dirs, ModelConfig
from infergridd.engines import adapter_for
from infergridd.engines.base import LaunchSpec, proc_start_time
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


@pytest.mark.parametrize("euid,caps,name,user,who,why", [
    (0, ALL, "infergrid-engine", (998, 997), runas.RunAs("infergrid-engine", 998, 997),
     "engines run as user 'infergrid-engine' (uid 998)"),
    (0, ALL, "infergrid-engine", None, None, "no user 'infergrid-engine'"),
    (0, ALL, "", (998, 997), None, "INFERGRID_ENGINE_USER is empty"),
    (998, ALL, "infergrid-engine", (998, 997), None, "already runs as"),
    (999, 0, "infergrid-engine", (998, 997), None,
     "lacks CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_DAC_OVERRIDE"),
    (999, ALL & ~(1 << runas.CAP_SETGID), "infergrid-engine", (998, 997), None,
     "lacks CAP_SETGID:"),
    (999, ALL, "infergrid-engine", (998, 997), runas.RunAs("infergrid-engine", 998, 997),
     "no extra groups"),
    (0, ALL, "infergrid-engine", (998, 997), None, "cannot pass through the runtime dir"),
])
def test_run_as_decision(euid: int, caps: int, name: str, user: tuple[int, int] | None,
                         who: runas.RunAs | None, why: str) -> None:
    got, reason = runas.decide(euid, caps, name, user, reachable="cannot pass" not in why)
    assert got == who and why in reason


def test_this_process_caps_are_read() -> None:
    """Root holds CAP_SETUID; an ordinary test user does not."""
    has = bool(runas.effective_caps() & (1 << runas.CAP_SETUID))
    assert has == (os.geteuid() == 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_launch_as_the_engine_user_drops_every_group(tmp_path: Path) -> None:
    """``procs.launch`` with a ``RunAs``: the engine's uid and primary gid, no supplementary
    groups (not the journal's, not ours), its socket dir its own; its key file its own."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    who = runas.RunAs("nobody", nobody.pw_uid, nobody.pw_gid)
    import tempfile

    eng = Path(tempfile.mkdtemp(prefix="igeng", dir="/tmp"))  # reachable by nobody: 0711
    os.chmod(eng, 0o711)
    assert runas.can_reach(eng, nobody.pw_uid, nobody.pw_gid)
    assert not runas.can_reach(tmp_path, nobody.pw_uid, nobody.pw_gid)  # pytest's is 0700
    sock = eng / "m-0.d" / "m-0.sock"
    procs.prepare_listen(sock, who)
    st = sock.parent.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (nobody.pw_uid, 0o2750)
    key = eng / "m-0.d" / "key.yaml"
    spec = LaunchSpec(["sh", "-c", "id -u; id -G; umask; cat " + str(key)],
                      files={str(key): b"secret\n"})
    proc = procs.launch(spec, eng / "m-0.log", who)
    assert proc.wait(5) == 0
    uid, groups, umask, secret = (eng / "m-0.log").read_text().split("\n")[:4]
    assert int(uid) == nobody.pw_uid and groups.split() == [str(nobody.pw_gid)]
    assert umask.strip() == "0007" and secret == "secret"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_uid == nobody.pw_uid
    shutil.rmtree(eng)


def test_engines_dir_admits_the_front_doors_group_only(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd the front door is its own user: it reaches the engines' sockets
    through the engines dir's group (setgid: the sockets get it too), never by listing."""
    monkeypatch.setattr(runas, "SOCKET_GROUPS", ("no-such-group-ig", "root"))
    assert runas.socket_group([0, 5]) == 0
    assert runas.socket_group([5]) is None  # not ours to give: keep our own
    d = tmp_path / "supervisor" / "engines"
    runas.prepare_engines_dir(d)
    st = d.stat()
    assert st.st_mode & 0o7777 == 0o2710
    assert st.st_gid == (0 if 0 in os.getgroups() else os.getegid())
