"""``infergridctl doctor``: each check against temporary directories and fake probes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infergridd.cli import doctor as d
from infergridd.cli.infergridctl import main as ctl_main
from infergridd.config import Dirs, loads

ROOT = os.geteuid() == 0
SIM = """\
version: 1
listen: 127.0.0.1:8000
models:
  - name: demo
    engine: sim
    args: {profile: fast-test}
"""
VLLM = """\
version: 1
listen: 127.0.0.1:8000
gpu: {total_memory: 80GiB}
models:
  - name: big
    engine: vllm
    memory: 40GiB
    args: {model: /models/big}
"""


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer."""
    p = Path(tempfile.mkdtemp(prefix="igdoc-", dir="/tmp"))
    yield p
    shutil.rmtree(p, ignore_errors=True)


def statuses(checks: list[d.Check]) -> dict[str, str]:
    return {c.check: c.status for c in checks}


# --------------------------------------------------------------------------- config
def test_config_ok_missing_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(SIM)
    c, cfg = d.check_config(str(good))
    assert c.status == d.OK and cfg is not None and "1 models" in c.detail
    c, cfg = d.check_config(str(tmp_path / "nope.yaml"))
    assert (c.status, cfg) == (d.FAIL, None) and "does not exist" in c.detail
    bad = tmp_path / "bad.yaml"
    bad.write_text(SIM + "tenants:\n  - name: a\n    wieght: 2\n")
    c, cfg = d.check_config(str(bad))
    assert c.status == d.FAIL and cfg is None
    assert "wieght" in c.detail and "tenants[0]" in c.detail and "check-config" in c.fix


def test_config_unreadable(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.mkdir()  # unreadable as a file even for root (mode 0 would not stop root)
    c, _ = d.check_config(str(p))
    assert c.status == d.FAIL and "cannot read" in c.detail


def test_line_format() -> None:
    assert d.Check(d.FAIL, "port", "busy", "stop it").line() == "FAIL  port: busy — stop it"
    assert d.Check(d.OK, "config", "fine").line() == "OK    config: fine"


# --------------------------------------------------------------------------- sockets
def _bind(path: Path, mode: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    path.chmod(mode)
    return s


def test_runtime_dir_missing(short_tmp: Path) -> None:
    dirs = Dirs(runtime=short_tmp / "run", state=short_tmp / "state")
    [c] = d.check_runtime_dir(dirs, None)
    assert c.status == d.WARN and "not running" in c.detail


SOCKS = ("control.sock", "control-ro.sock", "frontdoor.sock", "supervisor.sock")


def _bind_all(dirs: Dirs, mode: int = 0o600, **modes: int) -> list[socket.socket]:
    """Every scheduler socket, ``mode`` unless ``modes`` names it (``control_ro=0o666``)."""
    dirs.scheduler_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    return [_bind(dirs.scheduler_dir / n, modes.get(n[:-5].replace("-", "_"), mode))
            for n in SOCKS]


def test_runtime_dir_and_sockets_ok(short_tmp: Path) -> None:
    run = short_tmp / "run"
    run.mkdir(mode=0o700)
    dirs = Dirs(runtime=run, state=short_tmp / "state")
    socks = _bind_all(dirs)
    try:
        checks = d.check_runtime_dir(dirs, None)  # one user runs everything: 0600 each
        assert statuses(checks) == {"runtime-dir": "OK", **{n: "OK" for n in SOCKS}}, \
            [c.line() for c in checks]
        assert "0600" in checks[1].detail
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize(("mode", "status", "why"), [
    (0o666, d.FAIL, "any local user"), (0o660, d.WARN, "may use it")])
def test_socket_modes_without_role_groups(short_tmp: Path, mode: int, status: str,
                                          why: str) -> None:
    run = short_tmp / "run"
    run.mkdir(mode=0o750)
    dirs = Dirs(runtime=run, state=short_tmp / "state")
    socks = _bind_all(dirs, control=mode)
    try:
        checks = d.check_runtime_dir(dirs, None)
        ctl = next(c for c in checks if c.check == "control.sock")
        assert ctl.status == status and why in ctl.detail and "chmod 0600" in ctl.fix
        assert statuses(checks)["frontdoor.sock"] == d.OK
    finally:
        for s in socks:
            s.close()


def test_packaged_sockets_need_their_role_group(short_tmp: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With the package's groups present, each socket must be 0660 to its role's group: a
    socket left to another group is a FAIL (its members could pose as that role)."""
    run = short_tmp / "run"
    run.mkdir(mode=0o755)
    dirs = Dirs(runtime=run, state=short_tmp / "state")
    socks = _bind_all(dirs, 0o660)
    monkeypatch.setattr(d.dirs, "_group_exists", lambda name: True)  # as after the .deb
    try:
        checks = {c.check: c for c in d.check_runtime_dir(dirs, "infergrid")}
        for name, role in d.dirs.SOCKETS:
            want = d.dirs.ROLE_GROUPS[role]
            assert checks[name].status == d.FAIL and f"group should be {want}" in \
                checks[name].detail and f"SupplementaryGroups={want}" in checks[name].fix
    finally:
        for s in socks:
            s.close()


def test_socket_missing(short_tmp: Path) -> None:
    run = short_tmp / "run"
    run.mkdir(mode=0o750)
    dirs = Dirs(runtime=run, state=short_tmp / "state")
    dirs.scheduler_dir.mkdir()
    s = _bind(dirs.control_sock, 0o600)
    try:
        by = {c.check: c for c in d.check_runtime_dir(dirs, None)}
        assert by["control.sock"].status == d.OK
        assert by["frontdoor.sock"].status == d.FAIL and "missing" in by["frontdoor.sock"].detail
    finally:
        s.close()
    dirs.control_sock.unlink()
    dirs.scheduler_dir.rmdir()
    by = {c.check: c for c in d.check_runtime_dir(dirs, None)}
    assert by["sockets"].status == d.FAIL and "missing" in by["sockets"].detail


def test_world_writable_runtime_dir_fails(short_tmp: Path) -> None:
    run = short_tmp / "run"
    run.mkdir()
    run.chmod(0o777)
    checks = d.check_runtime_dir(Dirs(runtime=run, state=short_tmp), None)
    assert checks[0].status == d.FAIL and "chmod go-w" in checks[0].fix


# --------------------------------------------------------------------------- state
def test_state_dir(tmp_path: Path) -> None:
    c = d.check_state_dir(tmp_path / "state", None)
    assert c.status == d.WARN and "first start" in c.fix
    (tmp_path / "file").write_text("")
    assert d.check_state_dir(tmp_path / "file", None).status == d.FAIL
    (tmp_path / "state").mkdir()
    assert d.check_state_dir(tmp_path / "state", None).status == d.OK


@pytest.mark.skipif(not ROOT, reason="checks the daemons' user: needs root")
def test_state_dir_not_writable_by_daemon_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    tmp_path.chmod(0o755)
    c = d.check_state_dir(state, "nobody")
    assert c.status == d.FAIL and "nobody cannot write" in c.detail and "chown" in c.fix
    os.chown(state, __import__("pwd").getpwnam("nobody").pw_uid, -1)
    assert d.check_state_dir(state, "nobody").status == d.OK
    assert d.check_state_dir(state, "no-such-user-xyz").status == d.FAIL


# --------------------------------------------------------------------------- engines
def test_engine_sim_imports_for_real() -> None:
    [c] = d.check_engines(loads(SIM))
    assert c.status == d.OK and "imports infergridd.sim" in c.detail, c.line()


def test_engine_python_missing() -> None:
    cfg = loads(SIM.replace("engine: sim", "engine: sim\n    python: /nonexistent/python3"))
    [c] = d.check_engines(cfg)
    assert c.status == d.FAIL and "/nonexistent/python3: not found" in c.detail


def test_engine_module_missing_is_probed_once() -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 3, "", "")

    text = VLLM.replace("memory: 40GiB", "memory: 20GiB") + \
        "  - name: big2\n    engine: vllm\n    memory: 20GiB\n    args: {model: /m}\n"
    checks = d.check_engines(loads(text), run=fake_run)
    assert [c.status for c in checks] == [d.FAIL, d.FAIL]
    assert "no module vllm.entrypoints.openai.api_server" in checks[0].detail
    assert len(calls) == 1 and calls[0][0] == sys.executable


def test_engine_taskset_prefix_and_import_error() -> None:
    cfg = loads(SIM.replace("engine: sim", "engine: sim\n    cpu_affinity: [0]"))

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert argv[0] == sys.executable  # not taskset
        return subprocess.CompletedProcess(argv, 4, "ImportError: libcuda.so.1", "")

    [c] = d.check_engines(cfg, run=fake_run)
    if shutil.which("taskset"):
        assert c.status == d.FAIL and "libcuda" in c.detail
    else:
        assert c.status == d.FAIL and "taskset" in c.detail


def test_engine_external_is_not_launched() -> None:
    cfg = loads("version: 1\nmodels:\n  - name: ext\n    engine: openai\n"
                "    url: http://10.0.0.1:8000\n")
    [c] = d.check_engines(cfg)
    assert c.status == d.OK and "not launched" in c.detail


# --------------------------------------------------------------------------- GPU
def test_gpu_absent() -> None:
    def no_nvml(index: int) -> tuple[str, int, int]:
        raise ImportError("No module named 'pynvml'")

    assert d.check_gpu(loads(SIM), no_nvml).status == d.OK  # the sim engine needs none
    c = d.check_gpu(loads(VLLM), no_nvml)
    assert c.status == d.WARN and "nvidia-ml-py" in c.fix

    def broken(index: int) -> tuple[str, int, int]:
        raise RuntimeError("NVML Shared Library Not Found")

    c = d.check_gpu(loads(VLLM), broken)
    assert c.status == d.WARN and "Not Found" in c.detail


def test_gpu_free_memory_vs_models() -> None:
    gib = 1024**3
    cfg = loads(VLLM)
    c = d.check_gpu(cfg, lambda i: ("H100", 80 * gib, 70 * gib))
    assert c.status == d.OK and "70.0 GiB free" in c.detail
    c = d.check_gpu(cfg, lambda i: ("H100", 80 * gib, 10 * gib))
    assert c.status == d.FAIL and "need 40.0 GiB" in c.detail
    c = d.check_gpu(cfg, lambda i: ("H100", 80 * gib, 10 * gib), engines_running=True)
    assert c.status == d.OK
    c = d.check_gpu(cfg, lambda i: ("L4", 24 * gib, 24 * gib))
    assert c.status == d.FAIL and "gpu.total_memory" in c.fix


# --------------------------------------------------------------------------- port
def _fake_proc(root: Path, port: int, holders: dict[int, str], inode: int = 4711) -> Path:
    (root / "net").mkdir(parents=True)
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid" \
           "  timeout inode\n"
    row = (f"   0: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 "
           f"00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n")
    (root / "net" / "tcp").write_text(head + (row if holders is not None else ""))
    (root / "net" / "tcp6").write_text(head)
    for pid, cmd in holders.items():
        (root / str(pid) / "fd").mkdir(parents=True)
        (root / str(pid) / "fd" / "3").symlink_to(f"socket:[{inode}]")
        (root / str(pid) / "cmdline").write_bytes(cmd.replace(" ", "\0").encode() + b"\0")
    return root


def test_port_free(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text("header\n")
    assert d.check_port(loads(SIM), proc).status == d.OK


@pytest.mark.parametrize(("holders", "status", "words"), [
    ({77: "/opt/venvs/infergrid/bin/python3 /usr/bin/infergridd frontdoor --config x"},
     "OK", "our front door (pid 77)"),
    ({1: "/lib/systemd/systemd --system"}, "OK", "held by systemd"),
    ({1: "/lib/systemd/systemd --system", 77: "infergridd frontdoor --config x"},
     "OK", "via systemd's socket"),
    ({88: "/usr/sbin/nginx -g daemon off;"}, "FAIL", "pid 88 (/usr/sbin/nginx"),
    ({}, "WARN", "cannot see"),
])
def test_port_holders(tmp_path: Path, holders: dict[int, str], status: str, words: str) -> None:
    c = d.check_port(loads(SIM), _fake_proc(tmp_path / "proc", 8000, holders))
    assert c.status == status and words in c.detail, c.line()


def test_port_held_for_real_by_this_process() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        cfg = loads(SIM.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
        c = d.check_port(cfg)
        assert c.status == d.FAIL and f"pid {os.getpid()}" in c.detail, c.line()
    finally:
        s.close()


# --------------------------------------------------------------------------- units
def _systemctl(out: str, rc: int = 0) -> Any:
    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert argv[:2] == ["systemctl", "is-active"] and tuple(argv[2:]) == d.UNITS
        return subprocess.CompletedProcess(argv, rc, out, "")
    return run


def test_units_states() -> None:
    checks = d.check_units(_systemctl("active\n" * 5))
    assert [c.status for c in checks] == ["OK"] * 5
    [c] = d.check_units(_systemctl("inactive\n" * 5, 3))
    assert c.status == d.WARN and "enable --now infergrid" in c.fix
    checks = d.check_units(_systemctl("active\nactive\nfailed\nactive\ninactive\n", 3))
    by = {c.check: c for c in checks}
    assert by["infergrid-scheduler.service"].status == d.FAIL
    assert "journalctl -u infergrid-scheduler.service" in by["infergrid-scheduler.service"].fix
    assert by["infergrid-frontdoor.service"].status == d.FAIL
    assert by["infergrid-supervisor.service"].status == d.OK
    [c] = d.check_units(_systemctl("", 1))
    assert c.status == d.WARN


# --------------------------------------------------------------------------- CLI
def test_cli_json_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    assert ctl_main(["doctor", "--json", "--config", str(bad)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["checks"][0]["check"] == "config"
    good = tmp_path / "good.yaml"
    good.write_text(SIM.replace("8000", "1") + f"runtime_dir: {tmp_path}/run\n"
                    f"state_dir: {tmp_path}/state\n")
    rc = ctl_main(["--config", str(good), "doctor"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert text.splitlines()[0].startswith("OK    config: ")
    assert "WARN  runtime-dir:" in text and "WARN  state-dir:" in text
    assert "checks: 0 failed" in text.splitlines()[-1]


def test_ctl_says_permission_denied_not_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A user outside the infergrid group cannot stat /run/infergrid/control.sock."""
    def denied(self: Path, *a: Any, **kw: Any) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    assert ctl_main(["--runtime-dir", "/run/infergrid", "status"]) == 1
    err = capsys.readouterr().err
    assert "permission denied on /run/infergrid" in err and "infergrid group" in err
    assert ctl_main(["status"]) == 1
    assert "permission denied" in capsys.readouterr().err
