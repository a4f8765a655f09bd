"""The README's examples work as written against the quickstart configuration.

``test_first_screen_in_order`` is the new user's first hour: the README's first
screen, run as written and in order, in a fresh copy of this checkout (what
``git ls-files`` lists, tracked and new, as a clone of it would hold) —

1. **Run it** (``python3 -m venv .venv && .venv/bin/pip install -e . &&
   .venv/bin/infergrid serve ...``) in the background, until ``/health`` is 200;
2. **Test it** (``INFERGRID_CI_TIERS=default bash .ci/run``) while that server runs.
   The whole default tier inside a test would take minutes, so it runs with
   ``PYTEST_ADDOPTS`` naming one small test file: pytest itself reads that variable,
   the README says so, and everything else (apt check, fresh CI venv, install,
   lint) runs as written.  What matters is that it leaves the running server alone:
   the README's ``.venv`` is the same directory after it, no file the daemons have
   mapped from it was deleted, and the same front door and engine pids answer after;
3. from "another terminal": the curl and OpenAI SDK examples, ``.venv/bin/infergridctl
   status`` and ``infergridctl doctor`` (which finds the running instance's config);
4. a second ``infergrid serve`` on the same machine: it exits non-zero at once with
   "InferGrid is already running (pid N, runtime dir D)", and the first instance's
   engine pid is unchanged;
5. the server stopped (Ctrl-C), ``infergridctl status`` says what to check, for a pip
   install and for the packaged units both.

Two things differ from a user's terminal, each for isolation, neither in a command:
the environment points ``RUNTIME_DIRECTORY``/``STATE_DIRECTORY`` (where ``infergrid serve``
keeps its sockets and state; ``INFERGRID_RUNTIME_DIR`` for ``infergridctl``) into the
test's directory, and the server gets
``--listen 127.0.0.1:<free port>`` appended (the examples' ``8000`` becomes that port),
so a real quickstart running on this machine is neither disturbed nor mistaken for ours.
It needs the network or pip's cache (two pip installs) and takes a minute or two.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from appliance import Appliance, free_port, short_tmpdir

from infergridd.frontdoor import workers

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FIRST_SCREEN = README[:3000]
#: what the README's test command runs inside this test (see the module docstring)
CI_SELECTION = "tests/unit/test_config.py"


@pytest.fixture(scope="module")
def quickstart():
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart_fairness.yaml").read_text())
    cfg.pop("listen")
    a = Appliance(cfg, short_tmpdir())
    a.start()
    yield a
    a.stop()
    shutil.rmtree(a.root, ignore_errors=True)


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_first_screen_has_the_two_commands() -> None:
    assert "infergrid serve --config configs/quickstart_fairness.yaml" in FIRST_SCREEN
    assert "INFERGRID_CI_TIERS=default bash .ci/run" in FIRST_SCREEN
    # ... and that command installs (its own fresh venv, system packages) and runs the
    # default tier, without touching the README's .venv that "Run it" made
    ci = (ROOT / ".ci" / "run").read_text()
    assert "VENV=.venv-ci" in ci and '-m venv "$VENV"' in ci
    assert "pip\" install -q -e '.[test,bench,fast]'" in ci
    assert not re.search(r"rm -rf \.venv\b(?!-)", ci) and "rm -rf \"$VENV\"" in ci
    assert re.search(r"default\)\n.*\n\s*run_pytest", ci)
    assert ".venv-ci/" in (ROOT / ".gitignore").read_text().split()


def test_commands_are_runnable_where_first_shown() -> None:
    """A bare ``infergridctl`` after a README that installs into ``.venv`` without
    activating it is "command not found"."""
    first = FIRST_SCREEN.index("infergridctl")
    assert FIRST_SCREEN[first - len(".venv/bin/"):first] == ".venv/bin/" or \
        "source .venv/bin/activate" in FIRST_SCREEN[:first]
    assert "infergridd check-config" in README
    for extra in ("bench", "fast", "vllm", "sglang", "nvml", "test"):
        assert f"| `{extra}` |" in README, extra
    assert "scdoc" in README


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


# ---------------------------------------------------------------------------- first hour
def fresh_clone(dest: Path) -> Path:
    """This checkout as a clone of it would be: every file git lists (tracked, or new and
    not ignored), nothing ignored (no .venv, no caches, no build output)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, out.decode().split("\0")):
        src = ROOT / name
        if src.is_file():  # deleted in the working tree but still tracked: skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def user_env(root: Path) -> dict[str, str]:
    """A plain shell's environment: no virtualenv of this test run on PATH, no pytest
    variables; a runtime and state dir of the test's own (the docstring says why)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "INFERGRID_")) and k not in ("VIRTUAL_ENV",
                                                                         "PYTHONPATH")}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and (sys.prefix == sys.base_prefix or p != venv_bin))
    # `infergrid serve` as root uses /run/infergrid; systemd's variables move it anywhere
    # (`infergridctl` finds it through INFERGRID_RUNTIME_DIR, as its man page says)
    env["RUNTIME_DIRECTORY"] = env["INFERGRID_RUNTIME_DIR"] = str(root / "run")
    env["STATE_DIRECTORY"] = str(root / "state")
    return env


class FirstHour:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.clone = fresh_clone(root / "infergrid")
        self.env = user_env(root)
        self.port = free_port()
        self.serve: subprocess.Popen[bytes] | None = None
        self.log = root / "serve.log"

    def sh(self, cmd: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", cmd], cwd=self.clone, env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout)

    def local(self, text: str) -> str:
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def start(self, cmd: str) -> None:
        with open(self.log, "ab") as log:
            self.serve = subprocess.Popen(["bash", "-c", cmd], cwd=self.clone, env=self.env,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status
        except OSError:
            return 0

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.serve is not None and self.serve.poll() is None, self.logs()
            if self.health() == 200:
                return
            time.sleep(0.3)
        raise AssertionError(f"not healthy after {timeout}s:\n{self.logs()}")

    def status(self) -> dict[str, Any]:
        r = self.sh(".venv/bin/infergridctl --json status", 30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def pids(self) -> tuple[tuple[int, ...], int, int]:
        """(front doors, engine, scheduler) pids, as the running scheduler reports them
        (``frontdoor.processes``: one per core by default)."""
        s = self.status()
        frontdoors = tuple(sorted(p["pid"] for p in s["peers"] if p["role"] == "frontdoor"))
        return frontdoors, s["engines"][0]["pid"], s["scheduler"]["pid"]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def stop(self) -> None:
        """Ctrl-C, as a user would: to ``infergrid serve`` (the scheduler's parent)."""
        if self.serve is None or self.serve.poll() is not None:
            return
        try:
            os.kill(_ppid(self.pids()[2]), signal.SIGINT)
            self.serve.wait(60)
        except (AssertionError, OSError, subprocess.TimeoutExpired, StopIteration):
            os.killpg(self.serve.pid, signal.SIGKILL)
            self.serve.wait()

    def cleanup(self) -> None:
        self.stop()
        for rec in (self.root / "run" / "supervisor" / "engines").glob("*.json"):
            try:  # belt and braces: no engine outlives the test
                os.killpg(json.loads(rec.read_text())["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _deleted_venv_maps(pid: int, venv: Path) -> list[str]:
    """Files under ``venv`` that process ``pid`` has mapped and that were deleted since."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return [f"process {pid} is gone"]
    return sorted({line.split(None, 5)[-1] for line in maps.splitlines()
                   if str(venv) in line and line.endswith("(deleted)")})


@pytest.mark.slow
def test_first_screen_in_order() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("needs a git checkout (the test copies what a clone would hold)")
    h = FirstHour(short_tmpdir("igr"))
    try:
        run_it, test_it = _blocks("sh", FIRST_SCREEN)[:2]
        assert "infergrid serve" in run_it and ".ci/run" in test_it
        # 1. Run it
        h.start(f"{run_it.strip()} --listen 127.0.0.1:{h.port}")
        h.wait_healthy(300)
        # a front door per core (at most 4) by default, each a peer in infergridctl status
        deadline = time.monotonic() + 30
        while len(h.pids()[0]) != workers.processes(0) and time.monotonic() < deadline:
            time.sleep(0.3)
        frontdoors, engine, scheduler = h.pids()
        assert len(frontdoors) == workers.processes(0), frontdoors
        venv = h.clone / ".venv"
        venv_id = (venv.stat().st_ino, (venv / "pyvenv.cfg").stat().st_ino)

        # 2. Test it, while the server runs
        r = h.sh(test_it.strip(), 900, PYTEST_ADDOPTS=CI_SELECTION)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert (venv.stat().st_ino, (venv / "pyvenv.cfg").stat().st_ino) == venv_id, \
            "the test command replaced the running server's .venv"
        for pid in (*frontdoors, engine, scheduler):
            assert _deleted_venv_maps(pid, venv) == [], f"pid {pid} lost its files"
        assert h.health() == 200 and h.pids() == (frontdoors, engine, scheduler)
        assert "passed" in r.stdout and (h.clone / ".venv-ci" / "bin" / "pytest").exists()

        # 3. From another terminal: the examples, infergridctl, doctor
        curl = next(b for b in _blocks("sh", FIRST_SCREEN) if b.lstrip().startswith("curl"))
        r = h.sh(h.local(curl), 60)
        assert r.returncode == 0 and r.stdout.rstrip().endswith("data: [DONE]"), r.stderr
        r = subprocess.run([sys.executable, "-c", h.local(_blocks("python", FIRST_SCREEN)[0])],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and len(r.stdout.split()) == 16, r.stderr
        ctl = next(b for b in _blocks("sh", FIRST_SCREEN) if "infergridctl" in b)
        r = h.sh(ctl, 30)
        assert r.returncode == 0 and "demo-0" in r.stdout, r.stderr
        config = str(h.clone / "configs" / "quickstart_fairness.yaml")
        assert h.status()["scheduler"]["config"] == config
        if not os.path.exists("/etc/infergrid/infergrid.yaml"):  # a pip install's machine
            r = h.sh(".venv/bin/infergridctl doctor", 60)
            assert config in r.stdout and "does not exist" not in r.stdout, r.stdout

        # 4. A second `infergrid serve`: refuses at once, touches nothing
        serve_again = run_it.split("&&")[-1].strip() + f" --listen 127.0.0.1:{h.port}"
        t0 = time.monotonic()
        try:
            r = h.sh(serve_again, 30)
        except subprocess.TimeoutExpired:
            pytest.fail("a second `infergrid serve` did not exit (it runs beside the first)")
        took = time.monotonic() - t0
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert re.match(r"InferGrid is already running \(pid \d+, runtime dir "
                        + re.escape(str(h.root / "run")) + r"\)", lines[0])
        assert took < 5.0, f"took {took:.1f}s"
        time.sleep(1.0)
        assert h.health() == 200 and h.pids() == (frontdoors, engine, scheduler)

        # 5. Stopped: what to check, for a pip install and for the units
        h.stop()
        assert h.serve is not None and h.serve.returncode == 0, h.logs()
        r = h.sh(ctl, 30)
        assert r.returncode == 1
        assert "is `infergrid serve` running?" in r.stderr and "infergrid-scheduler" in r.stderr
    except BaseException:
        sys.stderr.write(f"\n==== serve log\n{h.logs()}\n")
        raise
    finally:
        h.cleanup()
