"""``infergridctl doctor``: check what breaks installations in practice, locally.

It does not go through the scheduler's control socket (the point is to work
when the appliance does not), so it reads the configuration, the file system,
``/proc`` and, where present, NVML and systemd itself.  Each check gives one
line::

    OK|WARN|FAIL  check: detail — what to do

and the exit status is 0 when no check FAILed, 1 otherwise.  Every check is a
function of explicit paths and injectable probes, so each is tested on its own
with temporary directories (tests/unit/test_doctor.py).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    Dirs,
    fmt_bytes,
    load,
    model_memory,
    parse_size,
    resolve_dirs,
)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
DAEMON_USER = "infergrid"  # the packaged units' User= and Group=
UNITS = ("infergrid.service", "infergrid-frontdoor.socket", "infergrid-scheduler.service",
         "infergrid-supervisor.service", "infergrid-frontdoor.service")
GPU_ENGINES = ("vllm", "sglang")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass
class Check:
    status: str  # OK | WARN | FAIL
    check: str  # short name: config, runtime-dir, control.sock, engine demo, ...
    detail: str
    fix: str = ""  # what to do (empty for OK)

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text} — {self.fix}" if self.fix else text


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def daemon_group() -> str | None:
    """``infergrid`` when the package's group exists (installed), else None (pip install)."""
    try:
        grp.getgrnam(DAEMON_USER)
    except KeyError:
        return None
    return DAEMON_USER


# --------------------------------------------------------------------------- config
def check_config(path: str) -> tuple[Check, Config | None]:
    p = Path(path)
    try:
        present = p.exists()
    except PermissionError:
        return Check(FAIL, "config", f"cannot look into {p.parent}",
                     "run as root or as a member of the infergrid group"), None
    if not present:
        return Check(FAIL, "config", f"{p} does not exist",
                     "install the package's default or pass --config FILE"), None
    if not os.access(p, os.R_OK):
        st = p.stat()
        return Check(FAIL, "config", f"cannot read {p} (mode {_mode(st)}, "
                     f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)})",
                     "run as root or as a member of its group"), None
    try:
        cfg = load(p)
    except ConfigError as exc:
        return Check(FAIL, "config", str(exc),
                     "fix that key (man 5 infergrid.yaml; `infergridd check-config --config "
                     f"{p}` re-checks)"), None
    return Check(OK, "config", f"{p}: {len(cfg.models)} models, {len(cfg.tenants)} tenants"), cfg


# --------------------------------------------------------------------------- sockets
def check_runtime_dir(dirs: Dirs, group: str | None) -> list[Check]:
    """The runtime dir (0750) and the scheduler's sockets (0660, the daemons' group)."""
    d = dirs.runtime
    try:
        st = d.stat()
    except FileNotFoundError:
        return [Check(WARN, "runtime-dir", f"{d} does not exist: the appliance is not running",
                      "start it: systemctl enable --now infergrid (or infergrid serve)")]
    except PermissionError:
        return [Check(WARN, "runtime-dir", f"cannot look into {d.parent}",
                      "run as root or a member of the infergrid group")]
    out: list[Check] = []
    owner = f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)}"
    if group is not None and _group_name(st.st_gid) != group:
        out.append(Check(FAIL, "runtime-dir", f"{d} is {owner}, mode {_mode(st)}: group "
                         f"should be {group}", f"chgrp {group} {d} (or restart the units: "
                         "systemd's RuntimeDirectory= sets it)"))
    elif stat.S_IMODE(st.st_mode) & 0o007:
        out.append(Check(WARN, "runtime-dir", f"{d} is mode {_mode(st)}: other users can "
                         "list it", f"chmod 0750 {d}"))
    else:
        out.append(Check(OK, "runtime-dir", f"{d} {owner} {_mode(st)}"))
    if not os.access(d, os.X_OK):
        out.append(Check(WARN, "sockets", f"cannot look into {d} ({owner}, mode {_mode(st)})",
                         f"run as root or a member of group {_group_name(st.st_gid)}"))
        return out
    for sock, users in ((dirs.control_sock, "infergridctl"),
                        (dirs.scheduler_sock, "the front door and the supervisor")):
        name = sock.name
        try:
            sst = sock.stat()
        except FileNotFoundError:
            out.append(Check(FAIL, name, f"{sock} missing: {users} cannot reach the scheduler",
                             "check the scheduler: systemctl status infergrid-scheduler "
                             "(journalctl -u infergrid-scheduler)"))
            continue
        if not stat.S_ISSOCK(sst.st_mode):
            out.append(Check(FAIL, name, f"{sock} is not a socket",
                             "remove it and restart the scheduler"))
            continue
        mode = stat.S_IMODE(sst.st_mode)
        sowner = f"{_user_name(sst.st_uid)}:{_group_name(sst.st_gid)}"
        want_group = group or _group_name(st.st_gid)
        if mode & 0o007:
            out.append(Check(FAIL, name, f"{sock} is mode {_mode(sst)}: any local user can "
                             "connect", f"chmod 0660 {sock}; the scheduler binds it 0660 — "
                             "check its UMask="))
        elif mode & 0o060 != 0o060:
            out.append(Check(FAIL, name, f"{sock} is mode {_mode(sst)}: members of "
                             f"{want_group} cannot use it", f"chmod 0660 {sock}"))
        elif _group_name(sst.st_gid) != want_group:
            out.append(Check(FAIL, name, f"{sock} is {sowner}: group should be {want_group}",
                             f"chgrp {want_group} {sock}; check the scheduler's Group="))
        elif name == "control.sock" and not os.access(sock, os.R_OK | os.W_OK):
            out.append(Check(WARN, name, f"{sock} {sowner} {_mode(sst)}: you may not use it",
                             f"run as root, or add yourself: adduser $USER {want_group}"))
        else:
            out.append(Check(OK, name, f"{sock} {sowner} {_mode(sst)}"))
    return out


# --------------------------------------------------------------------------- state
def check_state_dir(state: Path, user: str | None) -> Check:
    """The state dir exists and the daemons' user (``user``, else the caller) may write it."""
    try:
        st = state.stat()
    except FileNotFoundError:
        parent = next((p for p in state.parents if p.is_dir()), Path("/"))
        if os.access(parent, os.W_OK):
            return Check(WARN, "state-dir", f"{state} does not exist yet",
                         "it is made at first start (systemd: StateDirectory=)")
        return Check(FAIL, "state-dir", f"{state} does not exist and {parent} is not "
                     "writable", f"mkdir -p {state} and give it to the daemons' user")
    except PermissionError:
        return Check(WARN, "state-dir", f"cannot look at {state}",
                     "run as root or a member of the infergrid group")
    if not stat.S_ISDIR(st.st_mode):
        return Check(FAIL, "state-dir", f"{state} is not a directory", f"remove {state}")
    owner = f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)}"
    if user is not None and os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            return Check(FAIL, "state-dir", f"user {user} does not exist",
                         "reinstall the package (its postinst makes the user)")
        mode = stat.S_IMODE(st.st_mode)
        writable = ((st.st_uid == pw.pw_uid and mode & 0o200)
                    or (st.st_gid == pw.pw_gid and mode & 0o020) or mode & 0o002)
        if not writable:
            return Check(FAIL, "state-dir", f"{state} is {owner} {_mode(st)}: {user} cannot "
                         "write it (runtime tenant settings would be lost)",
                         f"chown -R {user}:{user} {state}")
        return Check(OK, "state-dir", f"{state} {owner} {_mode(st)}, writable by {user}")
    if not os.access(state, os.W_OK | os.X_OK):
        return Check(FAIL, "state-dir", f"{state} is {owner} {_mode(st)}: not writable",
                     f"chown {_user_name(os.geteuid())} {state}, or point state_dir elsewhere")
    return Check(OK, "state-dir", f"{state} {owner} {_mode(st)}, writable")


# --------------------------------------------------------------------------- engines
def _split_launcher(argv: Sequence[str]) -> list[str]:
    """Drop a ``taskset -c LIST`` prefix (cpu_affinity): the engine command follows it."""
    if argv and Path(argv[0]).name == "taskset" and len(argv) > 3 and argv[1] == "-c":
        return list(argv[3:])
    return list(argv)


def _probe_as(user: str | None) -> dict[str, Any]:
    """Run probes as the daemons' user when root (a root-only venv would fool us)."""
    if user is None or os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return {}
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": pw.pw_dir}}


def check_engines(cfg: Config, user: str | None = None, run: Runner = subprocess.run,
                  timeout_s: float = 120.0) -> list[Check]:
    """Each managed engine's command exists, and its Python can import the engine module."""
    from ..engines import AdapterConfigError, adapter_for

    out: list[Check] = []
    probed: dict[tuple[str, str], Check] = {}
    for m in cfg.models:
        name = f"engine {m.name}"
        try:
            adapter = adapter_for(m)
            if not adapter.managed:
                out.append(Check(OK, name, f"{m.engine} endpoint {m.url}: not launched here"))
                continue
            full = adapter.launch_spec(0, "doctor").argv
        except (AdapterConfigError, KeyError, ValueError) as exc:
            out.append(Check(FAIL, name, f"cannot build the {m.engine} command: {exc}",
                             "fix the model's args in the config"))
            continue
        if full and Path(full[0]).name == "taskset" and shutil.which(full[0]) is None:
            out.append(Check(FAIL, name, "taskset not found (cpu_affinity is set)",
                             "apt-get install util-linux"))
            continue
        argv = _split_launcher(full)
        exe = shutil.which(argv[0]) if argv else None
        if exe is None:
            out.append(Check(FAIL, name, f"{argv[0] if argv else '(empty)'}: not found",
                             "install the engine, or set models[].python to its interpreter"))
            continue
        module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
        if not module:
            out.append(Check(OK, name, f"{exe} exists"))
            continue
        key = (exe, module)
        if key not in probed:
            probed[key] = _probe_module(exe, module, user, run, timeout_s)
        c = probed[key]
        out.append(Check(c.status, name, c.detail, c.fix))
    return out


_PROBE = ("import importlib.util, sys\n"
          "m = sys.argv[1]\n"
          "try:\n"
          "    ok = importlib.util.find_spec(m) is not None\n"
          "except Exception as e:\n"
          "    print(f'{type(e).__name__}: {e}'); sys.exit(4)\n"
          "sys.exit(0 if ok else 3)\n")


def _probe_module(exe: str, module: str, user: str | None, run: Runner,
                  timeout_s: float) -> Check:
    """``find_spec`` of the engine's module imports its parent packages (vllm, torch...)."""
    extra = _probe_as(user)
    who = f" as {user}" if extra else ""
    try:
        r = run([exe, "-c", _PROBE, module], capture_output=True, text=True,
                timeout=timeout_s, **extra)
    except subprocess.TimeoutExpired:
        return Check(WARN, "engine", f"{exe} took over {timeout_s:g}s to import {module}",
                     "check the engine's installation by hand")
    except OSError as exc:
        return Check(FAIL, "engine", f"cannot run {exe}{who}: {exc.strerror}",
                     "check models[].python and its permissions")
    if r.returncode == 0:
        return Check(OK, "engine", f"{exe} imports {module}{who}")
    why = (r.stdout + r.stderr).strip().splitlines()
    reason = why[-1] if why else f"exit {r.returncode}"
    if r.returncode == 3:
        reason = f"no module {module}"
    return Check(FAIL, "engine", f"{exe}{who} cannot import {module}: {reason}",
                 "install the engine into that Python, or set models[].python")


# --------------------------------------------------------------------------- GPU
GpuProbe = Callable[[int], tuple[str, int, int]]  # device index -> (name, total, free)


def nvml_probe(index: int) -> tuple[str, int, int]:
    """(name, total bytes, free bytes) of GPU ``index`` via pynvml (nvidia-ml-py)."""
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        return (name.decode() if isinstance(name, bytes) else str(name)), int(mem.total), \
            int(mem.free)
    finally:
        pynvml.nvmlShutdown()


def check_gpu(cfg: Config, probe: GpuProbe | None = nvml_probe,
              engines_running: bool = False) -> Check:
    """GPU visible through NVML, and its free memory against the preloaded models' needs."""
    wants_gpu = any(m.engine in GPU_ENGINES for m in cfg.models)
    configured = parse_size(cfg.gpu.total_memory)
    idx = cfg.gpu.device_index
    try:
        if probe is None:
            raise ImportError("no probe")
        name, total, free = probe(idx)
    except ImportError:
        status = WARN if wants_gpu else OK
        return Check(status, "gpu", "NVML not available (pynvml not installed): GPU not checked",
                     "pip install nvidia-ml-py into InferGrid's Python" if wants_gpu else "")
    except Exception as exc:  # noqa: BLE001 - NVMLError and friends: report, never crash
        status = WARN if wants_gpu else OK
        return Check(status, "gpu", f"no GPU {idx} through NVML: {exc}",
                     "check the NVIDIA driver (nvidia-smi) and gpu.device_index"
                     if wants_gpu else "")
    basis = configured or total
    need = sum(model_memory(m, basis) * m.replicas for m in cfg.models if m.preload or m.pinned)
    where = f"GPU {idx} {name}: {fmt_bytes(free)} free of {fmt_bytes(total)}"
    if configured > total:
        return Check(FAIL, "gpu", f"{where}; gpu.total_memory is {fmt_bytes(configured)}",
                     "lower gpu.total_memory to the GPU's size (or 0: from NVML)")
    if need > free and not engines_running:
        return Check(FAIL, "gpu", f"{where}; the preloaded models need {fmt_bytes(need)}",
                     "free the GPU (nvidia-smi shows who holds it) or preload fewer models")
    if need > free:
        return Check(OK, "gpu", f"{where}; the preloaded models ({fmt_bytes(need)}) are "
                     "running")
    return Check(OK, "gpu", f"{where}; preloaded models need {fmt_bytes(need)}")


# --------------------------------------------------------------------------- port
def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[int]:
    """Socket inodes listening on TCP ``port`` (any address), from /proc/net/tcp{,6}."""
    found: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(f[9]))
    return found


def socket_holders(inodes: set[int], proc: Path = Path("/proc")) -> dict[int, str]:
    """pid → command line of the processes holding one of ``inodes`` (those we may see)."""
    want = {f"socket:[{i}]" for i in inodes}
    out: dict[int, str] = {}
    for pdir in proc.iterdir():
        if not pdir.name.isdigit():
            continue
        try:
            for fd in (pdir / "fd").iterdir():
                if os.readlink(fd) in want:
                    raw = (pdir / "cmdline").read_bytes()
                    out[int(pdir.name)] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
                    break
        except OSError:
            continue
    return out


def _ours(cmdline: str) -> bool:
    words = cmdline.split()
    return ("frontdoor" in words and any("infergridd" in w for w in words)) or (
        "serve" in words and any(Path(w).name == "infergrid" for w in words))


def check_port(cfg: Config, proc: Path = Path("/proc")) -> Check:
    """The listen port is free, or held by our front door (or systemd's socket for it)."""
    host, _, port_s = cfg.listen.rpartition(":")
    port = int(port_s)
    inodes = listening_inodes(port, proc)
    if not inodes:
        return Check(OK, "port", f"{cfg.listen} is free")
    holders = socket_holders(inodes, proc)
    if not holders:
        return Check(WARN, "port", f"{cfg.listen} is in use by a process this user cannot see",
                     f"run as root to see who (ss -ltnp 'sport = :{port}')")
    ours = {pid: c for pid, c in holders.items() if _ours(c)}
    systemd = {pid: c for pid, c in holders.items() if Path(c.split()[0] if c else "").name
               in ("systemd", "init")}
    others = {pid: c for pid, c in holders.items() if pid not in ours and pid not in systemd}
    if others:
        who = ", ".join(f"pid {pid} ({c[:60]})" for pid, c in sorted(others.items()))
        return Check(FAIL, "port", f"{cfg.listen} is held by {who}",
                     "stop that process, or change listen: (and the .socket unit's "
                     "ListenStream=)")
    if ours:
        who = ", ".join(f"pid {pid}" for pid in sorted(ours))
        extra = " via systemd's socket" if systemd else ""
        return Check(OK, "port", f"{cfg.listen} is held by our front door ({who}){extra}")
    return Check(OK, "port", f"{cfg.listen} is held by systemd (infergrid-frontdoor.socket); "
                 "the front door starts on the first connection")


# --------------------------------------------------------------------------- units
def under_systemd(booted: Path = Path("/run/systemd/system")) -> bool:
    return shutil.which("systemctl") is not None and booted.is_dir()


def check_units(run: Runner = subprocess.run) -> list[Check]:
    """``systemctl is-active`` of the appliance's units (call only under systemd)."""
    try:
        r = run(["systemctl", "is-active", *UNITS], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check(WARN, "units", f"systemctl failed: {exc}", "systemctl status infergrid")]
    states = r.stdout.split()
    if len(states) != len(UNITS):
        return [Check(WARN, "units", f"systemctl is-active said {r.stdout.strip()!r} "
                      f"{r.stderr.strip()!r}", "systemctl status 'infergrid*'")]
    by_unit = dict(zip(UNITS, states, strict=True))
    if all(s == "inactive" for s in states):
        return [Check(WARN, "units", "the appliance is not running",
                      "systemctl enable --now infergrid")]
    out: list[Check] = []
    umbrella_up = by_unit["infergrid.service"] == "active"
    for unit, state in by_unit.items():
        if state == "active":
            out.append(Check(OK, unit, state))
        elif state == "failed":
            out.append(Check(FAIL, unit, state,
                             f"journalctl -u {unit} -n 50; then systemctl restart {unit}"))
        elif umbrella_up and state in ("inactive", "deactivating"):
            out.append(Check(FAIL, unit, f"{state} while infergrid.service is active",
                             f"systemctl start {unit}; journalctl -u {unit}"))
        else:
            out.append(Check(WARN, unit, state, f"systemctl status {unit}"))
    return out


# --------------------------------------------------------------------------- driver
def engines_running(dirs: Dirs) -> bool:
    """Any engine this appliance recorded still runs (its GPU memory is then ours)."""
    from ..engines.base import is_alive
    from ..supervisor import statefile

    try:
        return any(is_alive(r.pid, r.start_time) for r in statefile.load_all(dirs.engines_dir))
    except OSError:
        return False


def doctor_dirs(cfg: Config, runtime_dir: str | None) -> Dirs:
    """The packaged dirs, or those of a running ``infergrid serve`` of this user."""
    if runtime_dir or cfg.runtime_dir or os.environ.get("RUNTIME_DIRECTORY"):
        return resolve_dirs(cfg, runtime_dir)
    from .common import candidate_runtime_dirs, user_runtime_dir, user_state_dir

    for d in candidate_runtime_dirs():
        if d.exists():
            if d == user_runtime_dir() and not cfg.state_dir:
                return Dirs(runtime=d, state=user_state_dir())
            return resolve_dirs(cfg, str(d))
    return resolve_dirs(cfg)


def run_checks(config_path: str | None = None, runtime_dir: str | None = None,
               gpu_probe: GpuProbe | None = nvml_probe) -> list[Check]:
    path = config_path or DEFAULT_CONFIG_PATH
    checks: list[Check] = []
    c, cfg = check_config(path)
    checks.append(c)
    group = daemon_group()
    if cfg is not None:
        dirs = doctor_dirs(cfg, runtime_dir)
        checks += check_runtime_dir(dirs, group)
        checks.append(check_state_dir(dirs.state, group))
        checks += check_engines(cfg, user=group)
        checks.append(check_gpu(cfg, gpu_probe, engines_running(dirs)))
        checks.append(check_port(cfg))
    if under_systemd():
        checks += check_units()
    return checks


def render(checks: list[Check]) -> str:
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines = [c.line() for c in checks]
    lines.append(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return "\n".join(lines)


def to_json(checks: list[Check]) -> str:
    return json.dumps({"ok": not any(c.status == FAIL for c in checks),
                       "checks": [asdict(c) for c in checks]}, indent=2)


def main(config_path: str | None, runtime_dir: str | None, as_json: bool) -> int:
    checks = run_checks(config_path, runtime_dir)
    print(to_json(checks) if as_json else render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0

