"""``infergrid serve`` as a subprocess, configured for one scheduled arm.

Real processes (front door, scheduler, supervisor and the engine they launch),
not an in-process stand-in: the benchmark must include the hops and the
control-plane messages a deployment pays for.  The runtime directory lives
directly under /tmp because ZeroMQ IPC paths must stay under 107 bytes.

The generated config has no quotas, a per-tenant queue bound far above what a
run can fill (a full queue would answer 429 and the hero claim is "zero 429s
with no quota configured"), and per-request log lines off (on 2 cores, a
journal line per request is CPU the engine and the load generator need).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .engines import stop_process, wait_http_ok


def tenant_key(tenant: str) -> str:
    return f"sk-bench-{tenant}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(policy: str, model: dict[str, Any], tenants: list[tuple[str, float]],
                port: int, token_bucket: dict[str, float] | None = None) -> dict[str, Any]:
    sched: dict[str, Any] = {"policy": policy, "max_queued_per_tenant": 10_000_000}
    if token_bucket:
        sched["token_bucket"] = dict(token_bucket)
    return {
        "version": 1,
        "listen": f"127.0.0.1:{port}",
        "scheduler": sched,
        # an open-loop flooder's queue is part of what a benchmark measures: not bounded
        # by the front door's waiting room (frontdoor/room.py) either, nor by its
        # connection cap (each waiting request holds a connection)
        "limits": {"max_queued_requests": 10_000_000, "max_queued_bytes": "8GiB",
                   "max_queued_bytes_per_tenant": "8GiB", "max_connections": 16_384},
        "models": [model],
        "tenants": [{"name": n, "keys": [tenant_key(n)], "weight": w} for n, w in tenants],
        "logging": {"level": "warning", "requests": False},
    }


class Serve:
    """One ``infergrid serve`` for one arm: ``start()`` waits for /health 200."""

    def __init__(self, config: dict[str, Any], logdir: Path) -> None:
        self.config = config
        self.logdir = logdir
        self.root = Path(tempfile.mkdtemp(dir="/tmp", prefix="igb"))  # short: IPC < 107 bytes
        self.config_path = logdir / "infergrid.yaml"
        self.log = logdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = "http://" + config["listen"]

    @property
    def runtime(self) -> Path:
        return self.root / "run"

    def start(self, timeout_s: float = 120.0) -> str:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infergridd.cli.infergrid", "serve",
                 "--config", str(self.config_path), "--runtime-dir", str(self.runtime),
                 "--state-dir", str(self.root / "state")],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        try:
            wait_http_ok(self.url + "/health", timeout_s, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self.url

    def engine_records(self) -> list[dict[str, Any]]:
        """The supervisor's records of the engines it launched (port, pid, API key).

        Read from ``<runtime>/engines/*.json`` (mode 0600, our own user): what lets
        the overhead benchmark call *the same* engine directly, next to the front door.
        """
        out = []
        for f in sorted((self.runtime / "engines").glob("*.json")):
            try:
                rec = json.loads(f.read_text())
                int(rec["port"])
                out.append(rec)
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return out

    def engine_metrics_urls(self) -> dict[str, str]:
        """The managed engines' own /metrics (from the supervisor's state files)."""
        return {f"engine-{rec.get('engine_id', '?')}": f"http://127.0.0.1:{int(rec['port'])}/metrics"
                for rec in self.engine_records()}

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (the appliance drains and stops its engines), then clean up."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout_s)
        # an engine must not outlive its arm: if serve did not stop cleanly, its engine
        # may still run (its state file names it; a clean stop removes the files)
        clean = proc is not None and proc.returncode == 0
        for f in [] if clean else (self.runtime / "engines").glob("*.json"):
            try:
                pid = int(json.loads(f.read_text()).get("pid", 0))
                if pid:
                    os.killpg(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        return proc.returncode if proc is not None else None
