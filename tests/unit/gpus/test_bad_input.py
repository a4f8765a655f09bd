"""Bad GPU input, through the real commands: ``infergridd check-config`` refuses what the
config's own GPUs rule out, and the supervisor (which alone knows how many GPUs the
machine has without ``gpu.devices``) refuses to start, each naming the model and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def _run(tmp: Path, role: str, cfg: dict) -> subprocess.CompletedProcess[str]:
    path = tmp / "infergrid.yaml"
    path.write_text(yaml.safe_dump({"version": 1, **cfg}))
    hide = tmp / "no-nvml"  # NVML absent whatever this machine has: the test needs no GPU
    hide.mkdir(exist_ok=True)
    (hide / "pynvml.py").write_text("raise ImportError('NVML hidden by the test')\n")
    return subprocess.run(
        [sys.executable, "-m", "infergridd.cli.infergridd", role, "--config", str(path),
         "--runtime-dir", str(tmp / "run"), "--state-dir", str(tmp / "state")],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin",
             "PYTHONPATH": f"{hide}:{Path(__file__).parents[3]}"})


TWO = {"devices": [{"index": 0, "total_memory": "24GiB"}, {"index": 1, "total_memory": "24GiB"}]}


@pytest.mark.parametrize(("models", "words"), [
    ([{"name": "big", "gpus": 4}], "model 'big' needs 4 GPUs per engine, more than the 2"),
    ([{"name": "pin", "devices": [3]}], "model 'pin' is pinned to GPU 3, which this machine"),
    ([{"name": "a", "devices": [0], "memory": "16GiB"},
      {"name": "b", "devices": [0], "memory": "16GiB"}],
     "the preloaded models cannot all fit on GPU 0: a 16.0 GiB + b 16.0 GiB"),
])
def test_check_config_names_the_model_and_why(tmp_path: Path, models: list, words: str) -> None:
    r = _run(tmp_path, "check-config", {"gpu": TWO, "models": models})
    assert r.returncode != 0 and words in r.stderr + r.stdout, (r.stdout, r.stderr)


def test_supervisor_refuses_a_tp_model_the_machine_cannot_hold(tmp_path: Path) -> None:
    # no gpu.devices and no NVML here: one GPU (the shorthand), found only at start
    cfg = {"models": [{"name": "tp", "engine": "sim", "gpus": 2}]}
    assert _run(tmp_path, "check-config", cfg).returncode == 0  # count unknown at load
    r = _run(tmp_path, "supervisor", cfg)
    assert r.returncode == 78, (r.stdout, r.stderr)
    assert "model 'tp' needs 2 GPUs per engine, more than the 1 this machine has" in \
        r.stdout + r.stderr
