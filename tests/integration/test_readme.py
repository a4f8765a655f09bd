"""The README's examples work as written against the quickstart configuration."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from appliance import Appliance, short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def quickstart():
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart_fairness.yaml").read_text())
    cfg.pop("listen")
    a = Appliance(cfg, short_tmpdir())
    a.start()
    yield a
    a.stop()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_first_screen_has_the_two_commands() -> None:
    first = README[:3000]
    assert "infergrid serve --config configs/quickstart_fairness.yaml" in first
    assert "INFERGRID_CI_TIERS=default bash .ci/run" in first
    # ... and that command installs (fresh venv, system packages) and runs the default tier
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m venv .venv" in ci and "pip install -q -e '.[test,bench]'" in ci
    assert re.search(r"default\)\n.*\n\s*run_pytest", ci)


def test_curl_example(quickstart) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to check the README's curl example")
    block = next(b for b in _blocks("sh") if b.lstrip().startswith("curl"))
    cmd = block.replace("127.0.0.1:8000", f"127.0.0.1:{quickstart.port}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    events = [e for e in r.stdout.split("\n\n") if e.strip()]
    assert events[-1].strip() == "data: [DONE]"
    assert len(events) >= 17  # role chunk + 16 tokens + [DONE]


def test_openai_sdk_example(quickstart) -> None:
    code = _blocks("python")[0].replace("127.0.0.1:8000", f"127.0.0.1:{quickstart.port}")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 16, r.stdout  # 16 streamed tokens printed
