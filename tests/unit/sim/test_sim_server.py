"""The simulated engine as a real process: OpenAI API, auth, metrics, disconnects, sleep, faults."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sse import chat_body, stream_chat  # noqa: E402

KEY = "sk-sim-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


class SimProc:
    def __init__(self, *args: str) -> None:
        self.started = time.time()
        self.dir = Path(tempfile.mkdtemp(prefix="sim", dir="/tmp"))
        port_file = self.dir / "port"
        self.log = open(self.dir / "log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infergridd.sim", "--host", "127.0.0.1", "--port", "0",
             "--port-file", str(port_file), "--model", "demo", *args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sim did not start: {self.logs()}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def logs(self) -> str:
        return (self.dir / "log").read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProc]:
    p = SimProc("--api-key", KEY, "--max-num-seqs", "8", "--seed", "1")
    yield p
    p.close()


def _session(timeout: float = 20) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


async def test_streaming_chat_with_usage(sim: SimProc) -> None:
    async with _session() as s:
        r = await stream_chat(s, sim.url, KEY, chat_body(max_tokens=9, text="x" * 40))
    assert r.status == 200 and r.done and r.error is None
    assert r.content_chunks == 9
    assert r.chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    # prompt estimate = infergridd.tokens: 4 overhead + 40 chars / 4
    assert r.usage == {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23}
    assert r.chunks[-1]["choices"] == []
    assert r.chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in r.chunks[:-2])


async def test_non_streaming_and_completions(sim: SimProc) -> None:
    async with _session() as s:
        r = await stream_chat(s, sim.url, KEY, chat_body(max_tokens=5, stream=False))
        assert r.status == 200
        assert r.body["object"] == "chat.completion"
        assert r.body["usage"]["completion_tokens"] == 5
        assert r.body["choices"][0]["message"]["content"].count(" tok") == 5
        body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 6, "stream": True,
                "stream_options": {"include_usage": True}}
        r = await stream_chat(s, sim.url, KEY, body, path="/v1/completions")
        assert r.done and r.content_chunks == 6 and r.usage["completion_tokens"] == 6
        assert r.usage["prompt_tokens"] == 4
        assert r.chunks[0]["object"] == "text_completion"
        body["stream"] = False
        del body["stream_options"]
        r = await stream_chat(s, sim.url, KEY, body, path="/v1/completions")
        assert r.body["choices"][0]["text"].count(" tok") == 6


async def test_created_is_each_requests_time(sim: SimProc) -> None:
    """As vLLM does: ``created`` is when the request came, not when the engine started."""
    await asyncio.sleep(max(0.0, sim.started + 2.5 - time.time()))
    async with _session() as s:
        t0 = time.time()
        streamed = await stream_chat(s, sim.url, KEY, chat_body(max_tokens=3))
        whole = await stream_chat(s, sim.url, KEY, chat_body(max_tokens=3, stream=False))
        t1 = time.time()
    for created in [c["created"] for c in streamed.chunks] + [whole.body["created"]]:
        assert int(t0) <= created <= t1, (created, t0, sim.started)


async def test_auth_errors_and_models(sim: SimProc) -> None:
    async with _session() as s:
        r = await stream_chat(s, sim.url, None, chat_body())
        assert r.status == 401 and r.body["error"]["code"] == 401
        r = await stream_chat(s, sim.url, "wrong", chat_body())
        assert r.status == 401
        r = await stream_chat(s, sim.url, KEY, {**chat_body(), "model": "nope"})
        assert r.status == 404 and r.body["error"]["param"] == "model"
        async with s.post(sim.url + "/v1/chat/completions", data=b"{bad",
                          headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status == 400
            assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}
        for bad in ({"max_tokens": 0}, {"max_tokens": "ten"}, {"messages": []},
                    {"max_tokens": 100_000}, {"priority": 3}):
            r = await stream_chat(s, sim.url, KEY, {**chat_body(), **bad})
            assert r.status == 400, bad
        async with s.get(sim.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["demo"]
        # with a key, every route needs it (issue 14.3: vLLM checks only /v1, so its
        # /sleep is open to anyone who can reach it; the sim, and InferGrid's engines, not)
        for method, path in (("GET", "/health"), ("GET", "/metrics"), ("POST", "/sleep?level=1"),
                             ("POST", "/wake_up"), ("GET", "/is_sleeping")):
            async with s.request(method, sim.url + path) as resp:
                assert resp.status == 401, path
            async with s.request(method, sim.url + path,
                                 headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401, path
        async with s.get(sim.url + "/health", headers=AUTH) as resp:
            assert resp.status == 200


async def test_metrics_names(sim: SimProc) -> None:
    async with _session() as s:
        await stream_chat(s, sim.url, KEY, chat_body(max_tokens=3))
        async with s.get(sim.url + "/metrics", headers=AUTH) as resp:
            text = await resp.text()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total",
                 "vllm:request_success_total", "vllm:time_to_first_token_seconds_count"):
        assert f'{name}{{' in text, name
    assert 'model_name="demo"' in text
    assert _metric(text, "vllm:generation_tokens_total") >= 3
    assert _metric(text, "vllm:time_to_first_token_seconds_count") >= 1


async def test_client_disconnect_aborts_within_a_second(sim: SimProc) -> None:
    async with _session() as s:
        r = await stream_chat(s, sim.url, KEY, chat_body(max_tokens=3000), stop_after_chunks=3)
        assert r.status == 200 and len(r.chunks) == 3
        t0 = time.monotonic()
        while True:
            async with s.get(sim.url + "/metrics", headers=AUTH) as resp:
                text = await resp.text()
            if _metric(text, "vllm:num_requests_running") == 0:
                break
            assert time.monotonic() - t0 < 1.0, "still running 1 s after the client left"
            await asyncio.sleep(0.05)
        assert _metric(text, "vllm:kv_cache_usage_perc") == 0.0


async def test_queueing_beyond_max_num_seqs(sim: SimProc) -> None:
    async with _session() as s:
        tasks = [asyncio.create_task(stream_chat(s, sim.url, KEY, chat_body(max_tokens=60)))
                 for _ in range(12)]
        await asyncio.sleep(0.05)
        async with s.get(sim.url + "/metrics", headers=AUTH) as resp:
            text = await resp.text()
        results = await asyncio.gather(*tasks)
    assert _metric(text, "vllm:num_requests_running") == 8
    assert _metric(text, "vllm:num_requests_waiting") == 4
    assert all(r.content_chunks == 60 for r in results)


async def test_sleep_and_wake(sim: SimProc) -> None:
    async with _session() as s:
        async with s.post(sim.url + "/sleep?level=1", headers=AUTH) as resp:
            assert resp.status == 200
        async with s.get(sim.url + "/is_sleeping", headers=AUTH) as resp:
            assert (await resp.json()) == {"is_sleeping": True}
        r = await stream_chat(s, sim.url, KEY, chat_body(max_tokens=2))
        assert r.status == 503
        t0 = time.monotonic()
        async with s.post(sim.url + "/wake_up", headers=AUTH) as resp:
            assert resp.status == 200
        assert time.monotonic() - t0 >= 0.04  # fast-test wake_l1_s = 0.05
        async with s.get(sim.url + "/is_sleeping", headers=AUTH) as resp:
            assert (await resp.json()) == {"is_sleeping": False}
        r = await stream_chat(s, sim.url, KEY, chat_body(max_tokens=2))
        assert r.status == 200 and r.content_chunks == 2


async def test_sglang_personality_and_startup_delay() -> None:
    p = SimProc("--personality", "sglang", "--startup-delay", "0.6", "--max-num-seqs", "5")
    try:
        async with _session() as s:
            async with s.get(p.url + "/health") as resp:
                assert resp.status == 503, "not ready during the start-up delay"
            r = await stream_chat(s, p.url, None, chat_body(max_tokens=2))
            assert r.status == 503
            t0 = time.monotonic()
            while True:
                async with s.get(p.url + "/health") as resp:
                    if resp.status == 200:
                        break
                assert time.monotonic() - t0 < 5
                await asyncio.sleep(0.05)
            async with s.get(p.url + "/get_server_info") as resp:
                info = await resp.json()
            assert info["max_running_requests"] == 5
            async with s.get(p.url + "/get_model_info") as resp:
                assert (await resp.json())["model_path"] == "demo"
            async with s.get(p.url + "/health_generate") as resp:
                assert resp.status == 200
            r = await stream_chat(s, p.url, None, chat_body(max_tokens=4))
            assert r.content_chunks == 4 and r.usage["completion_tokens"] == 4
            async with s.get(p.url + "/metrics") as resp:
                text = await resp.text()
            for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
                         "sglang:prompt_tokens_total", "sglang:generation_tokens_total"):
                assert f"{name}{{" in text, name
            assert _metric(text, "sglang:generation_tokens_total") >= 5
            async with s.post(p.url + "/release_memory_occupation", json={}) as resp:
                assert resp.status == 200
            assert (await stream_chat(s, p.url, None, chat_body(max_tokens=2))).status == 503
            async with s.post(p.url + "/resume_memory_occupation", json={}) as resp:
                assert resp.status == 200
            assert (await stream_chat(s, p.url, None, chat_body(max_tokens=2))).status == 200
            async with s.post(p.url + "/sleep?level=1") as resp:
                assert resp.status == 404, "vLLM's endpoints are not SGLang's"
    finally:
        p.close()


async def test_crash_after_requests_exits_the_process() -> None:
    p = SimProc("--crash-after-requests", "1")
    try:
        async with _session(5) as s:
            r = await stream_chat(s, p.url, None, chat_body(max_tokens=2))
            assert r.status == 200 and r.content_chunks == 2
            with pytest.raises(aiohttp.ClientError):
                await stream_chat(s, p.url, None, chat_body(max_tokens=2))
        assert p.proc.wait(5) == 1
    finally:
        p.close()


async def test_hang_after_s_blocks_health_too() -> None:
    p = SimProc("--hang-after-s", "0.4")
    try:
        async with _session(2) as s:
            async with s.get(p.url + "/health") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.6)
            with pytest.raises(asyncio.TimeoutError):
                async with s.get(p.url + "/health", timeout=aiohttp.ClientTimeout(total=0.5)):
                    pass
        os.kill(p.proc.pid, signal.SIGTERM)  # a wedged sim still dies on SIGTERM
        assert p.proc.wait(5) == -signal.SIGTERM
    finally:
        p.close()
