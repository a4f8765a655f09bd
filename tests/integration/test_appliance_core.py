"""The appliance core, against real processes: three daemons and the simulated engine."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
from appliance import DEMO_TENANTS, engine_get, sim_model
from sse import chat_body, stream_chat

KEYS = ["sk-quiet-demo", "sk-flooder-demo"]

pytestmark = pytest.mark.slow


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=120))


def _assert_ok(res, max_tokens: int) -> None:
    assert res.status == 200, res.body
    assert res.error is None, res.error
    assert res.done, "stream did not end with [DONE]"
    assert res.usage is not None, "no usage chunk"
    assert res.usage["completion_tokens"] == max_tokens
    assert res.usage["prompt_tokens"] > 0
    assert res.usage["total_tokens"] == res.usage["prompt_tokens"] + max_tokens
    assert res.content_chunks == max_tokens


async def test_200_concurrent_streams_two_tenants(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(max_num_seqs=16)], "tenants": DEMO_TENANTS})
    async with _session() as s:
        results = await asyncio.gather(*[
            stream_chat(s, app.url, KEYS[i % 2], chat_body(max_tokens=12)) for i in range(200)
        ])
    for r in results:
        _assert_ok(r, 12)
    # the scheduler's books balance: nothing queued or in flight, usage charged per tenant
    st = app.wait_for(lambda: (lambda s: s if all(t["inflight"] == 0 and t["queued"] == 0
                                                  for t in s["tenants"]) else None)(app.status()),
                      what="idle scheduler")
    out = {t["name"]: t["tokens_out"] for t in st["tenants"]}
    assert out == {"quiet": 1200, "flooder": 1200}


async def test_scheduler_sigkill_with_50_streams_in_flight(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(max_num_seqs=64, step_s=0.02)],
                             "tenants": DEMO_TENANTS})
    old = app.daemon_pid("scheduler")
    async with _session() as s:
        inflight = [asyncio.create_task(stream_chat(s, app.url, KEYS[i % 2], chat_body(100)))
                    for i in range(50)]
        await asyncio.sleep(0.7)  # streams are running (100 tokens at 20 ms/step ≈ 2 s)
        assert not any(t.done() for t in inflight)
        os.kill(old, signal.SIGKILL)
        await asyncio.sleep(0.2)
        during = [asyncio.create_task(stream_chat(s, app.url, KEYS[i % 2], chat_body(8)))
                  for i in range(5)]
        results = await asyncio.gather(*inflight)
        late = await asyncio.gather(*during)
    for r in results:
        _assert_ok(r, 100)
    for r in late:
        _assert_ok(r, 8)
    new = app.daemon_pid("scheduler")
    assert new != old


async def test_supervisor_sigkill_engine_is_readopted(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(max_num_seqs=32, step_s=0.02)],
                             "tenants": DEMO_TENANTS})
    engine_before = app.status()["engines"][0]
    old = app.daemon_pid("supervisor")
    async with _session() as s:
        tasks = [asyncio.create_task(stream_chat(s, app.url, KEYS[i % 2], chat_body(60)))
                 for i in range(20)]
        await asyncio.sleep(0.5)
        os.kill(old, signal.SIGKILL)
        results = await asyncio.gather(*tasks)
        for r in results:
            _assert_ok(r, 60)
        app.wait_for(lambda: app.daemon_pid("supervisor") != old, what="supervisor restart")
        # the new supervisor re-adopts the same engine process
        def readopted():
            e = app.status()["engines"]
            return e and e[0]["state"] == "ready" and e[0]["pid"] == engine_before["pid"] \
                and app.daemon_pid("supervisor") != old
        app.wait_for(readopted, what="engine re-adopted by the new supervisor")
        after = app.status()["engines"][0]
        assert after["pid"] == engine_before["pid"]
        assert after["generation"] == engine_before["generation"]
        r = await stream_chat(s, app.url, KEYS[0], chat_body(5))
        _assert_ok(r, 5)


async def test_frontdoor_sigterm_drains_streams(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(max_num_seqs=32, step_s=0.02)],
                             "tenants": DEMO_TENANTS})
    fds = app.daemon_pids("frontdoor")  # every front-door process, each draining its own
    assert len(fds) == app.frontdoors
    async with _session() as s:
        tasks = [asyncio.create_task(stream_chat(s, app.url, KEYS[i % 2], chat_body(80)))
                 for i in range(10)]
        await asyncio.sleep(0.5)
        for fd in fds:
            os.kill(fd, signal.SIGTERM)
        t0 = time.monotonic()
        results = await asyncio.gather(*tasks)
    for r in results:
        _assert_ok(r, 80)
    # each exited after draining (serve then starts a new one)
    for fd in fds:
        app.wait_for(lambda fd=fd: not os.path.exists(f"/proc/{fd}") or _is_zombie(fd),
                     what=f"exit of {fd}")
    assert time.monotonic() - t0 < 30


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


async def test_client_disconnect_aborts_engine_request(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(max_num_seqs=8, step_s=0.02)],
                             "tenants": DEMO_TENANTS})
    engine = app.status()["engines"][0]
    key = app.engine_key(engine["engine_id"])  # the engine checks it on every route
    async with _session() as s:
        r = await stream_chat(s, app.url, KEYS[0], chat_body(500), stop_after_chunks=3)
        assert r.status == 200 and len(r.chunks) == 3
        t0 = time.monotonic()

        async def engine_running() -> float:
            text = (await asyncio.to_thread(engine_get, engine["endpoint"], "/metrics",
                                            key)).decode()
            for line in text.splitlines():
                if line.startswith("vllm:num_requests_running"):
                    return float(line.rsplit(" ", 1)[1])
            raise AssertionError("no vllm:num_requests_running")

        while await engine_running() > 0:
            assert time.monotonic() - t0 < 1.0, "engine still running the request after 1 s"
            await asyncio.sleep(0.05)
    app.wait_for(lambda: all(t["inflight"] == 0 for t in app.status()["tenants"]),
                 timeout=5, what="scheduler in-flight back to 0")


async def test_bad_input_gets_openai_errors_and_service_continues(appliance) -> None:
    url = appliance.url + "/v1/chat/completions"
    good = {"Authorization": "Bearer sk-quiet-demo"}
    async with _session() as s:
        cases = [
            (dict(data=b"{not json", headers={**good, "Content-Type": "application/json"}), 400),
            (dict(json={**chat_body(), "model": "nope"}, headers=good), 404),
            (dict(json=chat_body(), headers={}), 401),
            (dict(json=chat_body(), headers={"Authorization": "Bearer sk-wrong"}), 401),
            (dict(data=b'{"model": "demo", "messages": [' + b'{"role":"user","content":"x"},' * 60000
                  + b'{"role":"user","content":"x"}]}', headers={**good, "Content-Type": "application/json"}), 413),
            (dict(json={**chat_body(), "max_tokens": -5}, headers=good), 400),
            (dict(json={**chat_body(), "max_tokens": 10**9}, headers=good), 400),
            (dict(json={**chat_body(), "max_tokens": "ten"}, headers=good), 400),
            (dict(json={"model": "demo"}, headers=good), 400),
        ]
        for kwargs, status in cases:
            async with s.post(url, **kwargs) as resp:
                body = await resp.json(content_type=None)
                assert resp.status == status, (kwargs.get("json"), resp.status, body)
                err = body["error"]
                assert isinstance(err["message"], str) and err["message"]
                assert "type" in err and "code" in err
        r = await stream_chat(s, appliance.url, "sk-quiet-demo", chat_body(4))
        _assert_ok(r, 4)


async def test_non_streaming_and_completions(appliance) -> None:
    async with _session() as s:
        r = await stream_chat(s, appliance.url, "sk-quiet-demo", chat_body(7, stream=False))
        assert r.status == 200
        assert r.body["usage"]["completion_tokens"] == 7
        assert r.body["choices"][0]["message"]["content"]
        body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 6, "stream": True,
                "stream_options": {"include_usage": True}}
        r = await stream_chat(s, appliance.url, "sk-flooder-demo", body, path="/v1/completions")
        _assert_ok(r, 6)
        async with s.get(appliance.url + "/v1/models",
                         headers={"Authorization": "Bearer sk-quiet-demo"}) as resp:
            models = await resp.json()
        assert [m["id"] for m in models["data"]] == ["demo"]
        async with s.get(appliance.url + "/metrics") as resp:
            text = await resp.text()
        assert 'infergrid_requests_total{' in text and 'tenant="quiet"' in text


def test_infergridctl_status_and_models(appliance) -> None:
    out = appliance.ctl("status").stdout
    assert "demo-0" in out and "quiet" in out
    assert "ready" in appliance.ctl("models").stdout
    st = appliance.status()
    assert st["scheduler"]["policy"] == "vtc"
    assert sorted(p["role"] for p in st["peers"]) == \
        ["frontdoor"] * appliance.frontdoors + ["supervisor"]
    assert f"front doors {appliance.frontdoors}" in out


def test_infergridctl_not_running_is_a_clear_error(tmp_path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "infergridd.cli.infergridctl", "--runtime-dir",
                        str(tmp_path), "status"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "not running" in r.stderr and str(tmp_path) in r.stderr


async def test_usage_chunk_only_for_clients_that_ask(appliance) -> None:
    async with _session() as s:
        r = await stream_chat(s, appliance.url, "sk-quiet-demo", chat_body(5, usage=False))
        assert r.status == 200 and r.done and r.error is None
        assert r.usage is None, "usage chunk leaked to a client that did not ask for it"
        assert r.content_chunks == 5
        assert r.headers["X-Request-Id"].startswith("cmpl-")
    # but the scheduler was still charged the engine's real usage
    appliance.wait_for(lambda: next(t for t in appliance.status()["tenants"]
                                    if t["name"] == "quiet")["tokens_out"] == 5,
                       what="usage charged")


async def test_health_and_metrics_need_no_key(appliance) -> None:
    async with _session() as s:
        async with s.get(appliance.url + "/health") as resp:
            body = await resp.json()
        # public: the status only (model states and reasons: admin_listen, test_edge_admin)
        assert resp.status == 200 and body == {"status": "ok"}
        async with s.get(appliance.url + "/v1/models") as resp:
            assert resp.status == 401
        async with s.get(appliance.url + "/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        async with s.get(appliance.url + "/metrics") as resp:
            text = await resp.text()
        for name in ("infergrid_scheduler_connected 1.0", "infergrid_engine_state{",
                     "infergrid_tenant_queued{", "infergrid_model_ready_engines{"):
            assert name in text, name
