"""A real appliance (``infergrid serve``: three daemons + engines) for tests.

IPC socket paths must stay under 107 bytes, so every appliance lives in a
short directory under /tmp rather than pytest's long tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

DEMO_TENANTS = [
    {"name": "quiet", "keys": ["sk-quiet-demo"]},
    {"name": "flooder", "keys": ["sk-flooder-demo"]},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tmpdir(prefix: str = "ig") -> Path:
    return Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))


def engine_get(endpoint: str, path: str, api_key: str = "", timeout: float = 5.0) -> bytes:
    """GET ``path`` from an engine itself (``http://`` or a ``unix:`` socket endpoint,
    ``engines/unixhttp.py``), bypassing InferGrid; AssertionError unless 2xx."""
    import http.client
    from urllib.parse import urlsplit

    from infergridd.engines.unixhttp import is_unix, split_unix

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if is_unix(endpoint):
        sock_path, target = split_unix(endpoint + path)

        class UnixConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(sock_path)
                self.sock = sock

        conn: http.client.HTTPConnection = UnixConnection("localhost", timeout=timeout)
    else:
        u = urlsplit(endpoint + path)
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
        target = u.path + (f"?{u.query}" if u.query else "")
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status >= 300:
        raise AssertionError(f"GET {endpoint}{path}: HTTP {resp.status} {body[:200]!r}")
    return body


class Appliance:
    """``infergrid serve`` in a subprocess, with helpers to find and signal its daemons."""

    def __init__(self, config: dict[str, Any], root: Path) -> None:
        self.root = root
        self.port = free_port()
        config = {"version": 1, "listen": f"127.0.0.1:{self.port}", **config}
        self.config = config
        self.config_path = root / "infergrid.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.runtime = root / "run"
        self.state = root / "state"
        self.log_path = root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_healthy: bool = True, timeout: float = 60.0) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infergridd.cli.infergrid", "serve",
             "--config", str(self.config_path), "--runtime-dir", str(self.runtime),
             "--state-dir", str(self.state)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        if wait_healthy:
            self.wait_healthy(timeout)
            # /health answers from whichever front door accepts: wait for all of them
            n = self.frontdoors
            self.wait_for(lambda: len(self.peer_pids("frontdoor")) == n, timeout,
                          what=f"{n} front door(s) among the scheduler's peers")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"infergrid serve exited {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = e.read().decode(errors="replace")
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise AssertionError(f"not healthy after {timeout}s ({last}):\n{self.logs()}")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "infergridd.cli.infergridctl", "--runtime-dir",
             str(self.runtime), *args],
            capture_output=True, text=True, timeout=30,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"infergridctl {' '.join(args)} → {r.returncode}: {r.stderr}")
        return r

    def status(self) -> dict[str, Any]:
        return json.loads(self.ctl("--json", "status").stdout)

    @property
    def frontdoors(self) -> int:
        """How many front-door processes this config runs (``frontdoor.processes``; its
        default 0 is the cores, capped: 2 on a 2-core machine)."""
        from infergridd.frontdoor import workers

        return workers.processes(int((self.config.get("frontdoor") or {}).get("processes", 0)))

    def daemon_pids(self, role: str) -> list[int]:
        """PIDs of a daemon's processes by their title (``infergridd ROLE --config FILE``),
        sorted: the front door runs as ``frontdoors`` processes."""
        out = subprocess.run(["pgrep", "-f", f"infergridd {role} --config {self.config_path}"],
                             capture_output=True, text=True).stdout.split()
        return sorted(int(x) for x in out if int(x) != os.getpid())

    def daemon_pid(self, role: str) -> int:
        """PID of a daemon that runs as one process (scheduler, supervisor, or a front
        door pinned to ``frontdoor.processes: 1``)."""
        pids = self.daemon_pids(role)
        if len(pids) != 1:
            raise AssertionError(f"expected one {role} process, found {pids}")
        return pids[0]

    def peer_pids(self, role: str) -> list[int]:
        """PIDs of the scheduler's connected peers of ``role``, sorted (infergridctl status)."""
        return sorted(p["pid"] for p in self.status()["peers"] if p["role"] == role)

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                v = predicate()
            except Exception:  # noqa: BLE001
                v = None
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def engine_key(self, engine_id: str) -> str:
        """An engine's own key, from its record (0600, in the runtime dir): the status
        never shows it."""
        from infergridd.config import Dirs
        from infergridd.supervisor import statefile

        rec = statefile.load(Dirs(runtime=self.runtime, state=self.root).engines_dir, engine_id)
        assert rec is not None, f"no record of engine {engine_id}"
        return rec.api_key

    def engine_logs(self) -> str:
        from infergridd.config import Dirs

        out = []
        for f in sorted(Dirs(runtime=self.runtime, state=self.root).engines_dir.glob("*.log")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def sim_model(name: str = "demo", max_num_seqs: int = 8, **args: Any) -> dict[str, Any]:
    return {"name": name, "engine": "sim", "max_num_seqs": max_num_seqs,
            "args": {"profile": "fast-test", **args}, "startup_timeout_s": 30}
