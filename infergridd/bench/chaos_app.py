"""The appliance a chaos run attacks: ``infergrid serve`` (it restarts whichever daemon
dies, as systemd would), several simulated models and tenants, its state directory on
a small tmpfs when we may mount one, and handles to every process it runs.

Processes are found through ``/proc``: daemons by their command line
(``infergridd ROLE --config OUR_FILE``), engines by an environment variable only this
run sets (``INFERGRID_CHAOS_RUN``), so a run never touches another helper's processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Dirs
from .appliance import free_port

ROLES = ("scheduler", "supervisor", "frontdoor")
HOOKS_DIR = Path(__file__).parent / "chaos_hooks"
_DAEMON = re.compile(r"infergridd(?:\.cli\.infergridd)? (scheduler|supervisor|frontdoor) --config")


def tenant_key(name: str) -> str:
    return f"sk-chaos-{name}"


def chaos_config(port: int, step_s: float, fast_path: bool = True) -> dict[str, Any]:
    """Three models (one slow), four tenants (one with a quota), short per-run timeouts."""

    def model(name: str, seqs: int, step: float, **extra: Any) -> dict[str, Any]:
        return {"name": name, "engine": "sim", "max_num_seqs": seqs, "startup_timeout_s": 30,
                "args": {"profile": "fast-test", "step_s": step}, **extra}

    return {
        "version": 1,
        "listen": f"127.0.0.1:{port}",
        "scheduler": {"policy": "vtc"},
        "models": [model("chat", 8, step_s), model("code", 4, step_s),
                   model("slow", 8, step_s * 2.5)],
        "tenants": [{"name": "flood", "keys": [tenant_key("flood")]},
                    {"name": "acme", "keys": [tenant_key("acme")], "weight": 2.0},
                    {"name": "beta", "keys": [tenant_key("beta")]},
                    {"name": "gamma", "keys": [tenant_key("gamma")], "rpm": 600}],
        "logging": {"level": "info", "requests": False},
        # one front-door process: the harness kills, restarts and reads "the" front door
        # (FindsProcesses.daemon); frontdoor.processes' default is one per core
        "frontdoor": {"fast_path": fast_path, "processes": 1},
    }


@dataclass
class Proc:
    pid: int
    role: str  # scheduler | supervisor | frontdoor | serve | engine
    model: str = ""
    start: int = 0  # /proc/PID/stat field 22: with pid, identifies the process


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def start_ticks(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return 0


def rss_kib(pid: int) -> int:
    for line in _read(f"/proc/{pid}/status").decode(errors="replace").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class FindsProcesses:
    """Lookups and signals over ``processes()``: one for the appliance the harness
    starts and for the one systemd runs (``chaos_booted.BootedAppliance``)."""

    def processes(self) -> list[Proc]:
        raise NotImplementedError

    def daemon(self, role: str) -> Proc | None:
        found = [p for p in self.processes() if p.role == role]
        return found[0] if len(found) == 1 else None

    def engine(self, model: str) -> Proc | None:
        found = [p for p in self.processes() if p.role == "engine" and p.model == model]
        return found[0] if len(found) == 1 else None

    def signal(self, pr: Proc, sig: int) -> bool:
        """Signal ``pr`` only if it is still the very process we found (pid reuse)."""
        if start_ticks(pr.pid) != pr.start:
            return False
        try:
            os.kill(pr.pid, sig)
            return True
        except OSError:
            return False


class ChaosAppliance(FindsProcesses):
    """One ``infergrid serve`` with chaos hooks in its environment."""

    def __init__(self, step_s: float = 0.02, bug: str = "", tmpfs: bool = True,
                 fast_path: bool = True) -> None:
        self.root = Path(tempfile.mkdtemp(dir="/tmp", prefix="igx"))  # IPC paths < 107 bytes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = chaos_config(self.port, step_s, fast_path)
        self.config_path = self.root / "infergrid.yaml"
        self.runtime = self.root / "run"
        self.state = self.root / "state"
        self.dirs = Dirs(runtime=self.runtime, state=self.state)
        self.log_path = self.root / "serve.log"
        self.clock_file = self.root / "clock_offset"
        self.token = f"chaos-{os.getpid()}-{self.port}"
        self.bug = bug
        self.tmpfs = False
        self.state.mkdir()
        if tmpfs:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "tmpfs",
                                str(self.state)], capture_output=True, text=True)
            self.tmpfs = r.returncode == 0
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ life
    def start(self, timeout_s: float = 90.0) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.clock_file.write_text("0")
        env = {**os.environ, "INFERGRID_CHAOS_RUN": self.token,
               "INFERGRID_CHAOS_CLOCK": str(self.clock_file),
               "PYTHONPATH": os.pathsep.join(
                   [str(HOOKS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])}
        if self.bug:
            env["INFERGRID_CHAOS_BUG"] = self.bug
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infergridd.cli.infergrid", "serve", "--config",
             str(self.config_path), "--runtime-dir", str(self.runtime), "--state-dir",
             str(self.state)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infergrid serve exited {self.proc.returncode}:\n"
                                   f"{self.logs()[-3000:]}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise RuntimeError(f"not healthy after {timeout_s:g}s:\n{self.logs()[-3000:]}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def answers(self) -> bool:
        """The front door answers HTTP (a 503 /health while a model is down counts)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM serve (it drains and stops the engines); SIGKILL what it left."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def cleanup(self, keep_logs: str = "") -> None:
        """Kill anything of ours still alive (after ``stop`` and the orphan check); copy
        the logs to ``keep_logs`` first when given."""
        if keep_logs:
            dest = Path(keep_logs)
            dest.mkdir(parents=True, exist_ok=True)
            for f in [self.log_path, *self.dirs.engines_dir.glob("*.log*")]:
                shutil.copy(f, dest / f.name)
        for pr in self.processes():
            try:
                os.kill(pr.pid, signal.SIGCONT)
                os.kill(pr.pid, signal.SIGKILL)
            except OSError:
                pass
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.state)], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ processes
    def processes(self) -> list[Proc]:
        """Every live process of this run (daemons, serve, engines), from /proc."""
        out = []
        needle = f"INFERGRID_CHAOS_RUN={self.token}".encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            argv = [a.decode(errors="replace") for a in _read(f"/proc/{d}/cmdline").split(b"\0")]
            full = " ".join(argv)
            if "infergrid" not in full:
                continue
            pid = int(d)
            # a daemon's title is "infergridd ROLE --config FILE" (setproctitle, which
            # also overwrites its environment): ours by the config file's path
            daemon = _DAEMON.search(full)
            if daemon and f"--config {self.config_path}" in full:
                out.append(Proc(pid, daemon.group(1), start=start_ticks(pid)))
            elif needle not in _read(f"/proc/{d}/environ"):
                continue
            elif "-m infergridd.sim" in full:
                model = argv[argv.index("--model") + 1] if "--model" in argv else "?"
                out.append(Proc(pid, "engine", model, start_ticks(pid)))
            elif "-m infergridd.cli.infergrid serve" in full:
                out.append(Proc(pid, "serve", start=start_ticks(pid)))
        return [p for p in out if _state(p.pid) != "Z"]

    # ------------------------------------------------------------------ control
    def control(self, command: str, args: dict[str, Any] | None = None,
                timeout_s: float = 5.0) -> Any:
        """One control-socket command, as infergridctl sends it; raises when unanswered."""
        from ..cli.infergridctl import call

        reply = call(self.dirs.control_sock, command, args or {}, timeout_s)
        if not reply.ok:
            raise RuntimeError(f"{command}: {reply.error}")
        return reply.result

    def ctl(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``infergridctl ARGS`` as an operator types it."""
        return subprocess.run([sys.executable, "-m", "infergridd.cli.infergridctl",
                               "--runtime-dir", str(self.runtime), *args],
                              capture_output=True, text=True, timeout=timeout_s)

    def frontdoor_inflight(self) -> float | None:
        """The front door's ``infergrid_inflight`` summed over its labels (None: no answer)."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=3) as r:
                text = r.read().decode()
        except OSError:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith("infergrid_inflight{") or line.startswith("infergrid_inflight "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def set_clock_offset(self, seconds: float) -> None:
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(seconds))
        tmp.replace(self.clock_file)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def engine_logs(self) -> dict[str, str]:
        out = {}
        for f in sorted(self.dirs.engines_dir.glob("*.log*")):
            out[f.name] = f.read_text(errors="replace")
        return out


def _state(pid: int) -> str:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    try:
        return stat.rsplit(")", 1)[1].split()[0]
    except IndexError:
        return "?"
