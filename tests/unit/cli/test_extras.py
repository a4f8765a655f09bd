"""A command that needs an optional extra says which one and exits 2 — no traceback.

Each check runs the real console entry in a fresh interpreter where the extra's
modules are made unimportable (``sys.modules[name] = None``, which is what a
missing package looks like to ``import``), so it does not matter what this test
run's own virtualenv has installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infergridd.cli import extras
from infergridd.config import loads

RUN = """
import sys
for name in sys.argv[2].split(","):
    if name:
        sys.modules[name] = None
from infergridd.cli.infergrid import main
sys.exit(main(sys.argv[3:]))
"""


def infergrid(block: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN, "-", block, *argv], capture_output=True,
                          text=True, timeout=60)


def test_bench_help_without_the_bench_extra() -> None:
    r = infergrid("numpy,matplotlib", "bench", "--help")
    assert r.returncode == 2, r.stderr
    assert "pip install 'infergridd[bench]'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bench_help_with_it() -> None:
    if extras.missing("bench"):  # this run's own venv lacks it: the line above is the check
        return
    r = infergrid("", "bench", "--help")
    assert r.returncode == 0 and "--workload" in r.stdout


def test_serve_a_vllm_model_without_vllm(tmp_path: Path) -> None:
    cfg = tmp_path / "vllm.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "models": [
        {"name": "m", "engine": "vllm", "args": {"model": "/models/m"}}]}))
    r = infergrid("vllm", "serve", "--config", str(cfg), "--runtime-dir", str(tmp_path / "run"),
                  "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 2, r.stderr
    assert "pip install 'infergridd[vllm]'" in r.stderr and "models[0].python" in r.stderr
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_a_separate_engine_python_needs_no_extra() -> None:
    cfg = loads("version: 1\nmodels: [{name: m, engine: sglang, python: /opt/sg/bin/python}]")
    extras.require_engines(cfg, "test")  # no SystemExit: that interpreter has SGLang


def test_nvml_note_only_for_gpu_engines() -> None:
    assert extras.nvml_note(loads("version: 1\nmodels: [{name: m}]")) == ""
    note = extras.nvml_note(loads("version: 1\nmodels: [{name: m, engine: vllm}]"))
    assert note == "" if not extras.missing("nvml") else "infergridd[nvml]" in note


def test_every_extra_is_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    root = Path(__file__).resolve().parents[3]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(extras.EXTRAS) <= set(declared)
