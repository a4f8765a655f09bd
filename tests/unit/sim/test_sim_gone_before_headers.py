"""Chaos finding 5 (bench/chaos.py, issue 16): a client gone before a stream's headers
were written left a traceback in the simulated engine's log ("Cannot write to closing
transport"), as if the engine had failed; it is a client going away like any other."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from infergridd.sim.options import SimOptions
from infergridd.sim.server import SimServer


async def test_client_gone_before_headers_is_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = web.StreamResponse.prepare
    calls = {"n": 0}

    async def prepare(self, request):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:  # the SSE response's headers: the transport is closing
            raise ClientConnectionResetError("Cannot write to closing transport")
        return await real(self, request)

    monkeypatch.setattr(web.StreamResponse, "prepare", prepare)
    body = {"model": "demo", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with caplog.at_level(logging.DEBUG):
        async with SimServer(SimOptions(model="demo", step_s=0.01)) as srv, \
                aiohttp.ClientSession() as s:
            async with s.post(srv.url + "/v1/chat/completions", json=body) as r:
                await r.read()
            for _ in range(50):  # the request was aborted in the engine, not left running
                if not srv.engine.model.has_work():
                    break
                await asyncio.sleep(0.02)
            assert not srv.engine.model.has_work()
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text, \
        caplog.text
    assert calls["n"] >= 1
