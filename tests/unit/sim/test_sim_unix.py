"""The simulated engine as InferGrid launches it (issue 14.3): on a Unix socket, its key
from the environment (never its command line), checked on every route."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from infergridd.engines.unixhttp import EngineConnector, engine_url, unix_endpoint

KEY = "0f" * 24


async def test_sim_on_a_unix_socket_with_its_key_from_the_environment() -> None:
    d = Path(tempfile.mkdtemp(prefix="simu", dir="/tmp"))
    sock = d / "m-0.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infergridd.sim", "--uds", str(sock), "--model", "demo"],
        env={**os.environ, "INFERGRID_SIM_API_KEY": KEY}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "sim did not start"
            time.sleep(0.02)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert KEY.encode() not in cmdline and b"--api-key" not in cmdline
        base = unix_endpoint(sock)
        auth = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(connector=EngineConnector()) as s:
            for _ in range(100):  # bound before the app answers: wait for /health
                try:
                    async with s.get(engine_url(base + "/health"), headers=auth) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            for method, path in (("POST", "/sleep?level=1"), ("POST", "/wake_up"),
                                 ("GET", "/metrics"), ("GET", "/v1/models")):
                async with s.request(method, engine_url(base + path)) as r:
                    assert r.status == 401, path
            async with s.get(engine_url(base + "/v1/models"), headers=auth) as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["demo"]
            async with s.post(engine_url(base + "/v1/completions"), headers=auth,
                              json={"model": "demo", "prompt": "hi", "max_tokens": 2}) as r:
                assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(5)
