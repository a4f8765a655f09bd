"""What a new user meets in the first hour (issue 15), each on a real appliance.

A second instance on the same runtime dir never touches the first one's
engines; ``infergridctl`` says what to check when nothing runs and finds the
running instance's configuration for ``doctor``; every command prints a table;
responses carry the request's ``created``; a prompt too long for the model is
refused before it is queued, and an engine's own error reaches the client in
InferGrid's error shape.  ``test_readme.py`` runs the README itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from appliance import DEMO_TENANTS, Appliance, sim_model

from infergridd.cli.doctor import run_checks

pytestmark = pytest.mark.slow


def infergrid(a: Appliance, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A command against ``a``'s config and directories, in its own process group (a
    command that does not exit in time is killed with everything it started)."""
    proc = subprocess.Popen([sys.executable, "-m", *argv, "--config", str(a.config_path),
                             "--runtime-dir", str(a.runtime), "--state-dir", str(a.state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
        pytest.fail(f"`{' '.join(argv)}` did not exit within {timeout:g}s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def engine_pid(a: Appliance) -> int:
    return a.status()["engines"][0]["pid"]


def post(a: Appliance, body: dict[str, Any], key: str = "sk-quiet-demo") -> tuple[int, Any]:
    req = urllib.request.Request(a.url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Authorization": f"Bearer {key}",
                                  "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    if body.get("stream"):
        return status, [json.loads(line[6:]) for line in raw.splitlines()
                        if line.startswith("data: {")]
    return status, json.loads(raw)


def test_a_second_serve_refuses_at_once_and_touches_nothing(appliance) -> None:
    a = appliance
    engine = engine_pid(a)
    t0 = time.monotonic()
    r = infergrid(a, "infergridd.cli.infergrid", "serve")
    took = time.monotonic() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    serve_pid = a.proc.pid if a.proc else 0
    assert lines[0].startswith(f"InferGrid is already running (pid {serve_pid}, runtime dir "
                               f"{a.runtime})"), lines
    assert took < 5.0, took  # a second in practice; slack for a loaded machine
    time.sleep(1.0)
    assert engine_pid(a) == engine and "adopted engine" not in a.logs()
    assert a.wait_for(lambda: post(a, {"model": "demo", "max_tokens": 3,
                                       "messages": [{"role": "user", "content": "hi"}]})[0]
                      == 200, what="an answer")


def test_a_second_supervisor_adopts_nothing(appliance) -> None:
    """The supervisor lock is taken before anything is adopted: a second supervisor on
    the same runtime dir exits 75, and the first one's engine is never stopped."""
    a = appliance
    engine = engine_pid(a)
    r = infergrid(a, "infergridd.cli.infergridd", "supervisor")
    assert r.returncode == 75, r.stderr
    assert "another supervisor holds" in r.stderr and "adopted engine" not in r.stderr
    # ... and the unit's stop hook does not stop a live supervisor's engines either
    r = infergrid(a, "infergridd.cli.infergridd", "stop-engines")
    assert r.returncode == 75 and "another supervisor holds" in r.stderr
    assert engine_pid(a) == engine and a.status()["engines"][0]["state"] == "ready"


def _ctl(runtime: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infergridd.cli.infergridctl", "--runtime-dir",
                           str(runtime), *args], capture_output=True, text=True, timeout=30)


def test_status_when_nothing_runs_says_what_to_check(tmp_path: Path) -> None:
    """No socket, and a socket left by a scheduler that is gone (it waits ``--timeout``
    for one being restarted): both name the pip way and the packaged unit."""
    r = _ctl(tmp_path, "status")
    assert r.returncode == 1
    assert "is `infergrid serve` running?" in r.stderr and "infergrid-scheduler" in r.stderr
    stale = socket.socket(socket.AF_UNIX)
    (tmp_path / "scheduler").mkdir()
    stale.bind(str(tmp_path / "scheduler" / "control.sock"))
    stale.close()  # the file stays, nothing listens
    r = _ctl(tmp_path, "--timeout", "1", "status")
    assert r.returncode == 1
    assert "is `infergrid serve` running?" in r.stderr and "infergrid-scheduler" in r.stderr


def test_doctor_checks_the_running_instances_config(appliance, monkeypatch) -> None:
    """A pip install has no /etc/infergrid/infergrid.yaml: doctor asks the scheduler."""
    a = appliance
    monkeypatch.setattr("infergridd.cli.doctor.run.DEFAULT_CONFIG_PATH",
                        str(a.root / "no-such.yaml"))
    checks = run_checks(None, str(a.runtime), gpu_probe=None)
    by = {c.check: c for c in checks}
    assert by["instance"].status == "OK" and str(a.config_path) in by["instance"].detail
    assert by["config"].status == "OK" and str(a.config_path) in by["config"].detail
    assert a.status()["scheduler"]["config"] == str(a.config_path)
    none = run_checks(None, str(a.root / "elsewhere"), gpu_probe=None)
    assert none[0].status == "FAIL" and "--config" in none[0].fix


def test_tenant_show_is_a_table_and_models_is_model_list(appliance) -> None:
    a = appliance
    out = a.ctl("tenant", "show", "quiet").stdout
    assert out.startswith("tenant quiet") and "SETTING" in out and "EFFECTIVE" in out
    assert json.loads(a.ctl("--json", "tenant", "show", "quiet").stdout)["name"] == "quiet"
    assert a.ctl("models").stdout == a.ctl("model", "list").stdout


def test_created_is_the_requests_time(appliance) -> None:
    a = appliance
    started = a.status()["engines"][0]["started_at"]
    time.sleep(max(0.0, started + 2.5 - time.time()))
    body = {"model": "demo", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    t0 = time.time()
    _, chunks = post(a, {**body, "stream": True})
    _, whole = post(a, body)
    t1 = time.time()
    assert chunks and {c["created"] for c in chunks} == {chunks[0]["created"]}
    for created in (chunks[0]["created"], whole["created"]):
        assert int(t0) <= created <= t1, (created, t0, started)


def test_a_prompt_too_long_is_refused_before_queueing(appliance_factory) -> None:
    """Checked by the front door (the sim's profile: 8192 tokens): 400
    ``context_length_exceeded``, nothing queued or charged.  With the check off, the
    engine's own 400 reaches the client in the same shape, not the engine's."""
    a = appliance_factory({"models": [sim_model("demo"),
                                      {**sim_model("raw"), "max_model_len": -1}],
                           "tenants": DEMO_TENANTS})
    long = {"max_tokens": 16, "messages": [{"role": "user", "content": "word " * 8000}]}
    before = json.loads(a.ctl("--json", "tenant", "show", "quiet").stdout)["stats"]
    status, body = post(a, {"model": "demo", **long})
    assert status == 400, body
    err = body["error"]
    assert (err["code"], err["type"], err["param"]) == (
        "context_length_exceeded", "invalid_request_error", "messages")
    assert "maximum context length is 8192 tokens" in err["message"]
    status, body = post(a, {"model": "raw", **long})
    assert status == 400 and set(body) == {"error"}, body
    err = body["error"]
    assert (err["code"], err["type"]) == ("context_length_exceeded", "invalid_request_error")
    after = json.loads(a.ctl("--json", "tenant", "show", "quiet").stdout)["stats"]
    assert after.get("tokens_in", 0) == before.get("tokens_in", 0)  # neither was charged
    metrics = urllib.request.urlopen(a.url + "/metrics", timeout=5).read().decode()
    assert 'reason="context_length_exceeded"' in metrics
