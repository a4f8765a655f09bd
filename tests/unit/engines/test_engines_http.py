"""Adapters against a tiny in-process server: the right paths, auth header and parsing."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from infergridd.config import ModelConfig
from infergridd.engines import EngineError, adapter_for

KEY = "secret"


def make_app(calls: list[str], *, loaded: bool = True) -> web.Application:
    state = {"sleeping": False}

    def authed(req: web.Request) -> None:
        calls.append(f"{req.method} {req.path_qs}")
        if req.headers.get("Authorization") != f"Bearer {KEY}":
            raise web.HTTPUnauthorized()

    async def health(req: web.Request) -> web.Response:
        authed(req)
        return web.Response(text="")

    async def models(req: web.Request) -> web.Response:
        authed(req)
        return web.json_response({"data": [{"id": "tiny"}] if loaded else []})

    async def metrics(req: web.Request) -> web.Response:
        authed(req)
        return web.Response(text='vllm:num_requests_running{m="a"} 2\n'
                                 'sglang:num_queue_reqs 3\nsglang:token_usage 0.5\n')

    async def sleep(req: web.Request) -> web.Response:
        authed(req)
        state["sleeping"] = True
        return web.Response()

    async def wake(req: web.Request) -> web.Response:
        authed(req)
        state["sleeping"] = False
        return web.Response()

    async def is_sleeping(req: web.Request) -> web.Response:
        authed(req)
        return web.json_response({"is_sleeping": state["sleeping"]})

    async def completions(req: web.Request) -> web.Response:
        authed(req)
        body = await req.json()
        assert body["max_tokens"] == 1 and body["model"] == "tiny"
        return web.json_response({"choices": [{"text": "x"}]})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/health_generate", health)
    app.router.add_get("/get_server_info", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/sleep", sleep)
    app.router.add_post("/wake_up", wake)
    app.router.add_post("/release_memory_occupation", sleep)
    app.router.add_post("/resume_memory_occupation", wake)
    app.router.add_get("/is_sleeping", is_sleeping)
    app.router.add_post("/v1/completions", completions)
    return app


@pytest.fixture
async def served():
    calls: list[str] = []
    server = TestServer(make_app(calls))
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield http, f"http://127.0.0.1:{server.port}", calls
    await server.close()


async def test_vllm_dialect(served) -> None:
    http, ep, calls = served
    a = adapter_for(ModelConfig(name="tiny", engine="sim"))
    assert await a.ready(http, ep, KEY)
    assert not await a.ready(http, ep, "wrong")
    m = await a.metrics(http, ep, KEY)
    assert m.num_running == 2 and m.num_waiting == 0
    assert await a.is_sleeping(http, ep, KEY) is False
    await a.sleep(http, ep, KEY, 2)
    assert await a.is_sleeping(http, ep, KEY) is True
    await a.wake(http, ep, KEY)
    await a.warmup(http, ep, KEY)
    assert "POST /sleep?level=2" in calls and "POST /wake_up" in calls


async def test_sglang_dialect(served) -> None:
    http, ep, calls = served
    a = adapter_for(ModelConfig(name="tiny", engine="sim", args={"personality": "sglang"}))
    assert await a.ready(http, ep, KEY)
    m = await a.metrics(http, ep, KEY)
    assert (m.num_waiting, m.kv_usage) == (3, 0.5)
    await a.sleep(http, ep, KEY, 1)
    await a.wake(http, ep, KEY)
    assert calls[-2:] == ["POST /release_memory_occupation", "POST /resume_memory_occupation"]
    assert "GET /health_generate" in calls


async def test_openai_external(served) -> None:
    http, ep, _ = served
    a = adapter_for(ModelConfig(name="tiny", engine="openai", url=ep + "/v1", api_key=KEY))
    assert await a.ready(http, a.endpoint(0), KEY)
    assert (await a.metrics(http, a.endpoint(0), KEY)).num_running == 0


async def test_unreachable_raises_engine_error() -> None:
    a = adapter_for(ModelConfig(name="tiny", engine="sim"))
    async with aiohttp.ClientSession() as http:
        assert not await a.ready(http, "http://127.0.0.1:9", KEY)
        with pytest.raises(EngineError):
            await a.metrics(http, "http://127.0.0.1:9", KEY)


async def test_sleep_unsupported() -> None:
    a = adapter_for(ModelConfig(name="tiny", engine="vllm", args={"model": "/m"}))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(EngineError, match="does not support sleep"):
            await a.sleep(http, "http://127.0.0.1:9", KEY, 1)
