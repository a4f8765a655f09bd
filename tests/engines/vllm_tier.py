"""Helpers for the real-engine tier (``pytest -m vllm tests/engines``).

A plain module rather than conftest content: inside ``tests/engines`` the name
``conftest`` resolves to this directory's conftest, so test modules import
shared helpers from here, and the top-level ``Appliance`` is loaded by path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ENV_SCRIPT = REPO / ".ci" / "vllm-env.sh"
#: The engine's core (DESIGN §9): a saturated vLLM-CPU starves everything that shares it.
ENGINE_CPU = 0

TENANTS = [
    {"name": "alpha", "keys": ["sk-alpha-vllm"]},
    {"name": "beta", "keys": ["sk-beta-vllm"]},
]
KEY = "sk-alpha-vllm"
MODEL = "tiny"


def root_conftest() -> ModuleType:
    """``tests/conftest.py`` (Appliance, short_tmpdir) under a name of its own."""
    name = "infergrid_tests_root_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "conftest.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def vllm_model(python: Path, model_dir: Path, name: str = MODEL, max_num_seqs: int = 4,
               **args: Any) -> dict[str, Any]:
    """A config ``models:`` entry for the tiny model on real vLLM-CPU, pinned to core 0.

    ``enforce_eager`` skips graph capture (nothing to capture on CPU and it costs
    start-up time); float32 because vLLM-CPU's bf16 path needs AVX512-BF16;
    ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB) keeps the KV cache from taking the machine.
    """
    return {
        "name": name, "engine": "vllm", "python": str(python), "max_num_seqs": max_num_seqs,
        "args": {"model": str(model_dir), "max_model_len": 2048, "dtype": "float32",
                 "enforce_eager": True, **args},
        "env": {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
        "cpu_affinity": [ENGINE_CPU],
        "startup_timeout_s": 300,
    }


def ensure_vllm_python(timeout_s: float = 1800.0) -> Path:
    """Run ``.ci/vllm-env.sh`` (a stamp check when the venv is complete) → its python.

    Raises ``RuntimeError`` with the script's output: the tier must fail, not skip,
    when its engine cannot be built, or CI would go green having tested nothing.
    """
    try:
        r = subprocess.run(["bash", str(ENV_SCRIPT)], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{ENV_SCRIPT} took over {timeout_s:.0f}s") from exc
    if r.returncode != 0:
        raise RuntimeError(f"{ENV_SCRIPT} exited {r.returncode}:\n{(r.stdout + r.stderr)[-4000:]}")
    python = Path(r.stdout.strip().splitlines()[-1])
    if not os.access(python, os.X_OK):
        raise RuntimeError(f"{ENV_SCRIPT} printed {python}, which is not an executable")
    return python


def sleep_mode_support(python: Path) -> tuple[bool, str]:
    """Ask vLLM itself, in its venv, whether this platform has sleep mode.

    ``Platform.is_sleep_mode_available()`` is the very check vLLM's ``ModelConfig``
    makes for ``--enable-sleep-mode`` (it refuses start-up with "Sleep mode is not
    supported on current platform." when it is False).
    """
    code = ("from vllm.platforms import current_platform as p; import vllm; "
            "print(p.is_sleep_mode_available(), type(p).__name__, vllm.__version__)")
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        raise RuntimeError(f"cannot ask vLLM about sleep mode:\n{r.stderr[-3000:]}")
    available, platform, version = r.stdout.split()[-3:]
    return available == "True", f"vLLM {version} on {platform}"


def engine(app: Any, model: str = MODEL) -> dict[str, Any]:
    """The engine's entry in ``infergridctl --json status``."""
    for e in app.status()["engines"]:
        if e["model"] == model:
            return e
    raise AssertionError(f"no engine for {model} in status")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def engine_metrics(endpoint: str) -> dict[str, float]:
    """The engine's own ``/metrics`` (vLLM serves it without the API key, on its Unix
    socket under InferGrid), summed by name."""
    root_conftest()  # loads tests/conftest.py, which imports ``appliance`` (tests/ on the path)
    from appliance import engine_get

    text = engine_get(endpoint, "/metrics").decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last failure
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def kill_engine_groups(app: Any) -> None:
    """Belt and braces after a test: no vLLM process may outlive the appliance."""
    for pidfile in (app.runtime / "supervisor" / "engines").glob("*.json"):
        try:
            pid = json.loads(pidfile.read_text()).get("pid", 0)
            if pid:
                os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
