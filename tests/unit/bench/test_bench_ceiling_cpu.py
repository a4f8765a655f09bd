"""The ceiling's CPU accounting (``overhead_arms.tree_cpu``, ``cpu_table``) and
``ceiling_rows`` with either generator, against a tiny SSE server (no daemons)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from infergridd.bench.loadgen import Prompts, Target
from infergridd.bench.overhead_arms import GENERATORS, ceiling_rows, cpu_table, tree_cpu

BURN = "import time\nt = time.time()\nwhile time.time() - t < 3: pass"


def test_tree_cpu_finds_descendants_by_role() -> None:
    """A root with two busy grandchildren named like the engine and a front door."""
    script = (f"(exec -a infergridd.sim {sys.executable} -c '{BURN}') & "
              f"(exec -a 'infergridd frontdoor' {sys.executable} -c '{BURN}') & wait")
    root = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    try:
        time.sleep(1.0)
        cpu = tree_cpu(root.pid)
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()
    assert set(cpu) == {"serve", "engine", "frontdoor"}, cpu
    assert cpu["engine"] >= 0.1 and cpu["frontdoor"] >= 0.1, cpu  # ~1 s each, 2 cores
    assert cpu["serve"] < 0.1, cpu  # bash itself only waits
    assert tree_cpu(None) == {}


def test_cpu_table() -> None:
    rows = {"1 front door": [{"rate": 500, "sent": 1000, "elapsed_s": 2.0,
                              "cpu_ms": {"generator": 0.3, "frontdoor": 0.6, "engine": 0.4}}]}
    md = cpu_table(rows)
    assert md[0].startswith("| arm | rate req/s | generator ms/req | frontdoor ms/req | "
                            "engine ms/req |")
    # 0.3 ms x 500 req/s = 0.15 of a core; (0.6 + 0.4) ms x 500/s = 0.5
    assert md[2] == "| 1 front door | 500 | 0.300 | 0.600 | 0.400 | 0.15 / 0.50 |"


async def _sse(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = next(int(x.split(b":")[1]) for x in head.split(b"\r\n")
                     if x.lower().startswith(b"content-length"))
            await r.readexactly(n)
            body = (b'data: {"choices":[{"text":"a"}]}\n\n'
                    b'data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":1}}'
                    b"\n\ndata: [DONE]\n\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    except (asyncio.IncompleteReadError, ConnectionError):
        w.close()


@pytest.fixture
async def url() -> AsyncIterator[str]:
    srv = await asyncio.start_server(_sse, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    srv.close()


@pytest.mark.parametrize("generator", sorted(GENERATORS))
async def test_ceiling_rows_with_either_generator(url: str, generator: str) -> None:
    rows = await ceiling_rows({"x": Target(url, "m")}, [50.0, 100.0], 0.5, Prompts(0), 20.0,
                              generator)
    assert [r["rate"] for r in rows["x"]] == [50.0, 100.0]
    for r in rows["x"]:
        assert r["ok_frac"] == 1.0 and r["sent"] == int(r["rate"] * 0.5) and r["sustained"]
        assert r["generator"] == generator and set(r["cpu_ms"]) == {"generator"}
        assert r["cpu_ms"]["generator"] > 0


def test_direct_ceiling_needs_the_raw_generator(capsys: pytest.CaptureFixture[str]) -> None:
    """aiohttp's open loop cannot reach the engine's Unix socket: refused up front."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "bench" / "overhead.py"
    spec = importlib.util.spec_from_file_location("bench_overhead_cli", script)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as e:
        mod.main(["--ceiling-direct", "--loadgen", "aiohttp"])
    assert e.value.code == 2 and "--loadgen raw" in capsys.readouterr().err
