"""The supervisor as a real process against a fake scheduler: launch, adopt, restart, back off.

Engines here are the simulated engine when ``infergridd.sim`` can be
run, else a tiny aiohttp stand-in written below (set
``INFERGRID_TEST_FAKE_ENGINE=1`` to force it).  Runtime dirs live under /tmp
with short names: ZeroMQ IPC paths must stay under 107 bytes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from infergridd import protocol as p
from infergridd.config import Dirs
from infergridd.engines.base import is_alive, proc_start_time
from infergridd.supervisor import statefile
from infergridd.supervisor.procs import stop_all_engines

REPO = Path(__file__).resolve().parents[2]

FAKE_ENGINE = textwrap.dedent('''
    import argparse, asyncio, json
    from aiohttp import web
    ap = argparse.ArgumentParser()
    ap.add_argument("-m"); ap.add_argument("--host"); ap.add_argument("--port", type=int)
    ap.add_argument("--model"); ap.add_argument("--api-key", default="")
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--startup-delay", type=float, default=0.0)
    a, _ = ap.parse_known_args()
    st = {"sleeping": False, "gen": 0}
    def ok(r):
        if a.api_key and r.headers.get("Authorization") != "Bearer " + a.api_key:
            raise web.HTTPUnauthorized()
    async def health(r): ok(r); return web.Response()
    async def models(r): ok(r); return web.json_response({"data": [{"id": a.model}]})
    async def metrics(r):
        ok(r)
        return web.Response(text="vllm:num_requests_running 0\\nvllm:num_requests_waiting 0\\n"
                                 "vllm:kv_cache_usage_perc 0.0\\nvllm:generation_tokens_total %d\\n" % st["gen"])
    async def sleep(r): ok(r); st["sleeping"] = True; return web.Response()
    async def wake(r): ok(r); st["sleeping"] = False; return web.Response()
    async def is_sleeping(r): ok(r); return web.json_response({"is_sleeping": st["sleeping"]})
    async def comp(r):
        ok(r); st["gen"] += 1
        return web.json_response({"choices": [{"text": "x"}], "usage": {"completion_tokens": 1}})
    async def main():
        await asyncio.sleep(a.startup_delay)
        app = web.Application()
        for m, path, h in [("GET", "/health", health), ("GET", "/v1/models", models),
                           ("GET", "/metrics", metrics), ("POST", "/sleep", sleep),
                           ("POST", "/wake_up", wake), ("GET", "/is_sleeping", is_sleeping),
                           ("POST", "/v1/completions", comp)]:
            app.router.add_route(m, path, h)
        runner = web.AppRunner(app); await runner.setup()
        await web.TCPSite(runner, a.host, a.port).start()
        await asyncio.Event().wait()
    asyncio.run(main())
''')


def real_sim_available() -> bool:
    return (REPO / "infergridd/sim/__main__.py").exists() and \
        os.environ.get("INFERGRID_TEST_FAKE_ENGINE") != "1"


class FakeScheduler:
    """A ROUTER at supervisor.sock that welcomes peers and answers heartbeats."""

    def __init__(self, dirs: Dirs) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        dirs.scheduler_dir.mkdir(parents=True, exist_ok=True)
        self.sock.bind(Dirs.ipc(dirs.supervisor_sock))
        self.instance = uuid.uuid4().hex[:12]
        self.hellos: list[tuple[bytes, p.Hello]] = []
        self.results: list[p.EngineCommandResult] = []

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def send(self, ident: bytes, msg: p.Message) -> None:
        self.sock.send_multipart([ident, p.encode(msg)])

    def wait_for(self, pred: Callable[[bytes, p.Message], bool], timeout: float) -> p.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            ident, data = self.sock.recv_multipart()
            msg = p.decode(data)
            if isinstance(msg, p.Hello):
                self.hellos.append((ident, msg))
                self.send(ident, p.Welcome(instance=self.instance,
                                           protocol_version=p.PROTOCOL_VERSION))
            elif isinstance(msg, p.Heartbeat):
                self.send(ident, p.Heartbeat(instance=self.instance))
            elif isinstance(msg, p.EngineCommandResult):
                self.results.append(msg)
            if pred(ident, msg):
                return msg
        raise AssertionError("timed out waiting for the supervisor")

    def engine(self, state: str, timeout: float = 20.0, engine_id: str = "demo-0",
               extra: Callable[[p.EngineStatus], bool] = lambda e: True) -> p.EngineStatus:
        """Wait for an EngineUpdate showing ``engine_id`` in ``state``."""
        def match(_i: bytes, m: p.Message) -> bool:
            return isinstance(m, p.EngineUpdate) and any(
                e.engine_id == engine_id and e.state == state and extra(e) for e in m.engines)
        msg = self.wait_for(match, timeout)
        assert isinstance(msg, p.EngineUpdate)
        return next(e for e in msg.engines if e.engine_id == engine_id)

    def watch(self, seconds: float, engine_id: str = "demo-0") -> list[p.EngineStatus]:
        """Every status of ``engine_id`` reported during the next ``seconds``."""
        seen: list[p.EngineStatus] = []

        def collect(_i: bytes, m: p.Message) -> bool:
            if isinstance(m, p.EngineUpdate):
                seen.extend(e for e in m.engines if e.engine_id == engine_id)
            return False
        try:
            self.wait_for(collect, seconds)
        except AssertionError:
            pass
        return seen

    def command(self, ident: bytes, action: str, level: int = 1,
                timeout: float = 15.0) -> p.EngineCommandResult:
        cid = uuid.uuid4().hex[:8]
        self.send(ident, p.EngineCommand(command_id=cid, engine_id="demo-0",
                                         action=action, level=level))  # type: ignore[arg-type]
        msg = self.wait_for(lambda _i, m: isinstance(m, p.EngineCommandResult)
                            and m.command_id == cid, timeout)
        assert isinstance(msg, p.EngineCommandResult)
        return msg


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs = Dirs(runtime=root / "rt", state=root / "st")
        self.dirs.runtime.mkdir(mode=0o750)
        self.procs: list[subprocess.Popen[bytes]] = []
        (root / "fake_engine.py").write_text(FAKE_ENGINE)

    def config(self, python: str | None = None, **model: object) -> Path:
        if python is None:
            python = "" if real_sim_available() else f"{sys.executable} {self.root}/fake_engine.py"
        m = {"name": "demo", "engine": "sim", "python": python, "max_num_seqs": 2,
             "startup_timeout_s": 10, **model}
        import yaml

        path = self.root / "infergrid.yaml"
        path.write_text(yaml.safe_dump({"version": 1, "models": [m]}))
        return path

    def start(self, cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.root / "supervisor.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "infergridd.supervisor", "--config", str(cfg),
             "--runtime-dir", str(self.dirs.runtime), "--state-dir", str(self.dirs.state)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
        log.close()
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        try:
            return (self.root / "supervisor.log").read_text()[-4000:]
        except OSError:
            return ""


@pytest.fixture
def h() -> Iterator[Harness]:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="ig"))
    harness = Harness(root)
    try:
        yield harness
    finally:
        for proc in harness.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop_all_engines(harness.dirs, 5.0)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sched(h: Harness) -> Iterator[FakeScheduler]:
    s = FakeScheduler(h.dirs)
    yield s
    s.close()


def _hello_from(sched: FakeScheduler, old: set[bytes]) -> tuple[bytes, p.Hello]:
    sched.wait_for(lambda i, m: isinstance(m, p.Hello) and i not in old, 15)
    return next((i, m) for i, m in sched.hellos if i not in old)


def test_ready_adopt_after_sigkill_and_restart_after_engine_death(
        h: Harness, sched: FakeScheduler) -> None:
    cfg = h.config()
    sv = h.start(cfg)
    try:
        ident, hello = _hello_from(sched, set())
        assert hello.role == "supervisor" and ident.startswith(b"sv-")
        assert hello.protocol_version == p.PROTOCOL_VERSION and hello.pid == sv.pid
        first = sched.engine(p.EngineState.READY)
    except AssertionError:
        raise AssertionError(h.log()) from None
    assert first.generation == 1 and first.pid > 0 and first.kind == "sim"
    # on a Unix socket in the supervisor's engines dir (issue 14.3), not a loopback port
    assert first.endpoint == f"unix:{h.dirs.engines_dir}/demo-0.sock" and first.api_key
    assert first.supports_sleep and first.supports_priority and first.max_num_seqs == 2
    rec = statefile.load(h.dirs.engines_dir, "demo-0")
    assert rec is not None and rec.pid == first.pid and rec.generation == 1
    assert rec.start_time == proc_start_time(first.pid)
    assert (os.stat(statefile.record_path(h.dirs.engines_dir, "demo-0")).st_mode & 0o777) == 0o600
    assert statefile.log_path(h.dirs.engines_dir, "demo-0").exists()

    # SIGKILL the supervisor: the engine keeps running; a new supervisor adopts it.
    sv.kill()
    sv.wait()
    assert is_alive(first.pid, rec.start_time)
    h.start(cfg)
    ident2, hello2 = _hello_from(sched, {ident})
    assert ident2 != ident
    (adopted,) = hello2.engines  # adoption happens before the first report
    assert (adopted.state, adopted.pid, adopted.generation) == ("ready", first.pid, 1)
    assert adopted.api_key == first.api_key and adopted.endpoint == first.endpoint
    assert "adopted engine demo-0" in h.log()

    # Kill the engine: the supervisor notices, says why, and starts a new one.
    os.killpg(first.pid, signal.SIGKILL)
    sched.engine(p.EngineState.FAILED, 10, extra=lambda e: "SIGKILL" in e.last_error
                 or "status unknown" in e.last_error)
    again = sched.engine(p.EngineState.READY, 20, extra=lambda e: e.pid != first.pid)
    assert again.generation == 2
    assert not is_alive(first.pid, rec.start_time)


def test_commands_sleep_wake_stop_start(h: Harness, sched: FakeScheduler) -> None:
    h.start(h.config())
    ident, _ = _hello_from(sched, set())
    ready = sched.engine(p.EngineState.READY)
    assert sched.command(ident, "sleep", level=1).ok
    sched.engine(p.EngineState.SLEEPING1, 5)
    rec = statefile.load(h.dirs.engines_dir, "demo-0")
    assert rec is not None and rec.sleep_level == 1
    res = sched.command(ident, "wake")
    assert res.ok, res.error
    sched.engine(p.EngineState.READY, 5, extra=lambda e: e.generation_tokens_total >= 0)
    res = sched.command(ident, "stop")
    assert res.ok and res.elapsed_s < 10
    sched.engine(p.EngineState.STOPPED, 5, extra=lambda e: e.pid == 0)
    assert not is_alive(ready.pid, proc_start_time(ready.pid) or 1)
    assert statefile.load(h.dirs.engines_dir, "demo-0") is None
    time.sleep(1.0)  # stays stopped: no restart behind the scheduler's back
    sched.engine(p.EngineState.STOPPED, 5)
    assert sched.command(ident, "start").ok
    back = sched.engine(p.EngineState.READY, 20)
    assert back.generation == 2 and back.pid != ready.pid
    bad = sched.command(ident, "sleep", level=3)
    assert not bad.ok and "level" in bad.error


def test_bad_command_fails_with_reason_and_backs_off(h: Harness, sched: FakeScheduler) -> None:
    h.start(h.config(python="/bin/sh -c 'echo boom-from-engine >&2; exit 3'"))
    failed = sched.engine(p.EngineState.FAILED, 10,
                          extra=lambda e: "boom-from-engine" in e.last_error)
    assert "exited with status 3" in failed.last_error
    seen = sched.watch(4.5)
    gens = sorted({e.generation for e in seen})
    # 1 s, 2 s, 4 s ... between launches: 1 to 3 more launches in 4.5 s (1 when the
    # machine is loaded and the first retry lands late), never a spin.
    assert 1 <= gens[-1] - failed.generation <= 3, gens
    assert all(e.state in ("failed", "starting") for e in seen)
    assert "next start in" in h.log()


def test_unstartable_python_and_readiness_timeout(h: Harness, sched: FakeScheduler) -> None:
    h.start(h.config(python="/nonexistent/python"))
    st = sched.engine(p.EngineState.FAILED, 10, extra=lambda e: "could not start" in e.last_error)
    assert "/nonexistent/python" in st.last_error


def test_readiness_timeout_kills_and_reports(h: Harness, sched: FakeScheduler) -> None:
    python = f"{sys.executable} {h.root}/fake_engine.py"
    h.start(h.config(python=python, startup_timeout_s=1.5, args={"startup_delay": 30}))
    st = sched.engine(p.EngineState.FAILED, 10, extra=lambda e: "not ready within" in e.last_error)
    assert "1.5s" in st.last_error
    assert not is_alive(st.pid, proc_start_time(st.pid) or 1) or st.pid == 0


def test_stop_engines_on_exit_and_stop_all(h: Harness, sched: FakeScheduler) -> None:
    cfg = h.config()
    sv = h.start(cfg)
    first = sched.engine(p.EngineState.READY)
    sv.send_signal(signal.SIGTERM)  # plain SIGTERM: the engine survives
    assert sv.wait(10) == 0
    rec = statefile.load(h.dirs.engines_dir, "demo-0")
    assert rec is not None and is_alive(first.pid, rec.start_time)
    sv = h.start(cfg, env={"INFERGRID_STOP_ENGINES_ON_EXIT": "1"})
    sched.wait_for(lambda i, m: isinstance(m, p.Hello) and m.pid == sv.pid, 15)
    sv.send_signal(signal.SIGTERM)
    assert sv.wait(15) == 0
    assert not is_alive(first.pid, rec.start_time)
    # stop_all_engines: what `infergrid serve` and ExecStopPost use
    sv = h.start(cfg)
    third = sched.engine(p.EngineState.READY, 20, extra=lambda e: e.pid != first.pid)
    sv.kill()
    sv.wait()
    rec3 = statefile.load(h.dirs.engines_dir, "demo-0")
    assert rec3 is not None and stop_all_engines(h.dirs, 5.0) == 1
    assert not is_alive(third.pid, rec3.start_time)
    assert statefile.load_all(h.dirs.engines_dir) == []


def test_engine_key_not_in_ps_and_its_routes_refuse_a_stranger(
        h: Harness, sched: FakeScheduler) -> None:
    """Issue 14.3: the engine's key is nowhere in its command line (``ps`` shows that to
    every local user), and a request to its ``/sleep`` without the key is refused — the
    real ``vllm serve`` leaves ``/sleep`` open with ``VLLM_SERVER_DEV_MODE=1``, which is
    why it is put on a Unix socket in a directory only InferGrid may enter."""
    import asyncio

    import aiohttp

    from infergridd.engines.unixhttp import EngineConnector, engine_url

    h.start(h.config())
    _hello_from(sched, set())
    eng = sched.engine(p.EngineState.READY)
    cmdline = Path(f"/proc/{eng.pid}/cmdline").read_bytes()
    assert eng.api_key and eng.api_key.encode() not in cmdline, cmdline
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert eng.api_key not in ps and "infergridd.sim" in ps
    rec = statefile.load(h.dirs.engines_dir, "demo-0")
    assert rec is not None and not any(eng.api_key in a for a in rec.argv)
    sock = Path(eng.endpoint.removeprefix("unix:"))
    assert sock.is_socket() and (h.dirs.engines_dir.stat().st_mode & 0o007) == 0

    async def probe() -> list[int]:
        got = []
        async with aiohttp.ClientSession(connector=EngineConnector()) as s:
            for key in (None, "wrong", eng.api_key):
                hdr = {"Authorization": f"Bearer {key}"} if key else {}
                async with s.get(engine_url(eng.endpoint + "/metrics"), headers=hdr) as r:
                    got.append(r.status)
                if key != eng.api_key:
                    async with s.post(engine_url(eng.endpoint + "/sleep?level=1"),
                                      headers=hdr) as r:
                        got.append(r.status)
        return got

    assert asyncio.run(probe()) == [401, 401, 401, 401, 200]
    sched.watch(0.5)  # still awake: the stranger's /sleep did nothing
    assert sched.engine(p.EngineState.READY, 5).pid == eng.pid
