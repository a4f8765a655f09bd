"""Several models on one (simulated) GPU, against real processes: lazy loads, swaps that
never kill a request, the thrash limit, unload with streams in flight, a model that
fails to load, a slow preload and /health, and a supervisor killed during a wake.

Two models of 6 GiB on a GPU of 10 GiB: they cannot both be resident.  Sleep and
wake latencies are short (``set:`` overrides of the fast-test profile) so the
tests stay quick on two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest
from appliance import DEMO_TENANTS
from sse import chat_body, stream_chat

pytestmark = pytest.mark.slow

GiB = 1024**3
KEYS = ["sk-quiet-demo", "sk-flooder-demo"]


def sim(name: str, preload: bool = True, step_s: float = 0.005, sets: list[str] | None = None,
        **extra: Any) -> dict[str, Any]:
    sets = sets or ["sleep_l1_s=0.1", "wake_l1_s=0.2", "sleep_l2_s=0.05", "wake_l2_s=0.3"]
    args = {"profile": "fast-test", "step_s": step_s, "set": sets, **extra.pop("args", {})}
    return {"name": name, "engine": "sim", "max_num_seqs": 16, "memory": "6GiB",
            "preload": preload, "startup_timeout_s": 30, "args": args, **extra}



def config(models: list[dict[str, Any]], **residency: Any) -> dict[str, Any]:
    return {"gpu": {"total_memory": "10GiB"}, "models": models, "tenants": DEMO_TENANTS,
            "scheduler": {"residency": {"load_deadline_s": 30, **residency}}}


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=120))


def model_list(app: Any) -> dict[str, Any]:
    return json.loads(app.ctl("--json", "model", "list").stdout)


def model(app: Any, name: str) -> dict[str, Any]:
    return next(m for m in model_list(app)["models"] if m["name"] == name)


def assert_complete(res: Any, tokens: int, app: Any = None) -> None:
    why = ""
    if app is not None and res.status != 200:  # an engine failure in its own words
        log = app.logs()
        at = log.find("exited with")
        why = log[at:at + 2000] if at >= 0 else log[-2000:]
    assert res.status == 200, (res.body, why)
    assert res.error is None, res.error
    assert res.done and res.usage is not None
    assert res.usage["completion_tokens"] == tokens


async def test_alternating_traffic_swaps_within_the_limit_and_kills_nothing(
        appliance_factory) -> None:
    app = appliance_factory(config([sim("a"), sim("b", preload=False)],
                                    max_swaps_per_window=3, swap_window_s=4.0))
    t0 = time.monotonic()
    health_codes: list[int] = []
    async with session() as s:
        async def one(i: int) -> Any:
            await asyncio.sleep(0.15 * i)  # a, b, a, b, ... both always in demand
            return await stream_chat(s, app.url, KEYS[i % 2],
                                     chat_body(max_tokens=30, model="ab"[i % 2]))

        async def probe_health() -> None:
            while time.monotonic() - t0 < 5.5:
                async with s.get(app.url + "/health") as resp:
                    health_codes.append(resp.status)
                await asyncio.sleep(0.1)

        results, _ = await asyncio.gather(asyncio.gather(*[one(i) for i in range(40)]),
                                          probe_health())
    elapsed = time.monotonic() - t0
    # a swap parks the preloaded model; that is not an outage
    assert health_codes and set(health_codes) == {200}, health_codes
    for r in results:
        assert_complete(r, 30, app)
    info = model_list(app)
    loads = {m["name"]: m for m in info["models"]}
    assert info["swaps_total"] >= 1, info  # b was loaded by evicting a, at least once
    windows = elapsed / 4.0 + 1
    assert info["swaps_total"] <= 3 * windows, (info["swaps_total"], elapsed)
    assert info["swaps_in_window"] <= 3
    assert loads["a"]["evictions"] + loads["b"]["evictions"] == info["swaps_total"]
    # never both resident: the ledger never went over the GPU
    assert sum(m["memory_bytes"] for m in info["models"]) <= 10 * GiB
    log = app.logs()
    assert "aborted" not in app.engine_logs(), "a sleep killed requests in flight"
    assert "refused" not in log or "not enough GPU memory" in log


async def test_unload_waits_for_20_streams_then_stops(appliance_factory) -> None:
    app = appliance_factory(config([sim("a", step_s=0.02, max_num_seqs=32)]))
    async with session() as s:
        streams = [asyncio.create_task(stream_chat(s, app.url, KEYS[i % 2],
                                                   chat_body(max_tokens=60, model="a")))
                   for i in range(20)]
        await asyncio.sleep(0.5)  # all 20 running (60 tokens at 20 ms/step ≈ 1.2 s)
        assert not any(t.done() for t in streams)
        unload = asyncio.create_task(asyncio.to_thread(
            app.ctl, "--json", "model", "unload", "a", "--wait", "60"))
        results = await asyncio.gather(*streams)
        out = json.loads((await unload).stdout)
    for r in results:
        assert_complete(r, 60)
    assert out["state"] == "stopped" and out["done"] and out["drained"] == 20, out
    assert out["waited_s"] >= 0.3, out
    assert model(app, "a")["memory_bytes"] == 0
    async with session() as s:
        r = await stream_chat(s, app.url, KEYS[0], chat_body(max_tokens=4, model="a"))
    assert r.status == 503 and "unloaded" in r.body["error"]["message"], r.body
    # a restarted scheduler learns the unload from the supervisor: still down, still 503
    old = app.daemon_pid("scheduler")
    os.kill(old, signal.SIGKILL)
    app.wait_for(lambda: app.daemon_pid("scheduler") != old, what="a new scheduler")
    app.wait_for(lambda: model(app, "a")["reason"] == "unloaded by the operator",
                 what="the unload known to the new scheduler")
    async with session() as s:
        r = await stream_chat(s, app.url, KEYS[0], chat_body(max_tokens=4, model="a"))
    assert r.status == 503 and "unloaded" in r.body["error"]["message"], r.body
    assert model(app, "a")["state"] == "stopped"
    app.ctl("model", "load", "a", "--wait", "30")
    async with session() as s:
        assert_complete(await stream_chat(s, app.url, KEYS[0], chat_body(4, model="a")), 4)


async def test_a_model_that_fails_to_load_gets_503_others_serve(appliance_factory) -> None:
    bad = sim("bad", preload=False, memory="2GiB",  # fits beside a: no swap involved
              python="/bin/sh -c 'echo boom-no-weights >&2; exit 3'")
    app = appliance_factory(config([sim("a"), bad]))
    async with session() as s:
        failing, fine = await asyncio.gather(
            stream_chat(s, app.url, KEYS[0], chat_body(max_tokens=4, model="bad")),
            stream_chat(s, app.url, KEYS[1], chat_body(max_tokens=20, model="a")))
        assert_complete(fine, 20)
        assert failing.status == 503, failing.body
        msg = failing.body["error"]["message"]
        assert "failed to load" in msg and "exited with status 3" in msg, msg
        assert "Retry-After" in failing.headers
        again = await stream_chat(s, app.url, KEYS[0], chat_body(max_tokens=4, model="bad"))
        assert again.status == 503  # fast, while it is failed
        assert_complete(await stream_chat(s, app.url, KEYS[1], chat_body(5, model="a")), 5)
    bad_info = model(app, "bad")
    assert bad_info["reason"].startswith("failed:") and bad_info["evictions"] == 0, bad_info
    assert model(app, "a")["evictions"] == 0


async def test_slow_preload_health_503_then_200(appliance_factory) -> None:
    app = appliance_factory(config([sim("slow", args={"startup_delay": 3.0})]), start=False)
    app.start(wait_healthy=False)

    def health() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(app.url + "/health", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    code, body = app.wait_for(lambda: (lambda h: h if h[0] == 503 else None)(health()),
                              what="a 503 from /health")
    assert body["status"] == "loading" and body["missing_models"] == ["slow"], body
    app.wait_healthy(30)
    code, body = health()
    assert code == 200 and body == {"status": "ok"}, body  # states: admin_listen only


async def test_supervisor_killed_during_a_wake(appliance_factory) -> None:
    slow_wake = ["sleep_l1_s=0.1", "wake_l1_s=3.0"]
    app = appliance_factory(config([sim("a", sets=slow_wake), sim("b", preload=False)]))
    app.ctl("model", "sleep", "a", "--wait", "20")
    assert model(app, "a")["state"] == "sleeping1"
    app.ctl("model", "wake", "a", "--wait", "0")
    app.wait_for(lambda: model(app, "a")["state"] == "waking", what="a waking")
    old = app.daemon_pid("supervisor")
    os.kill(old, signal.SIGKILL)  # mid-wake (3 s); `infergrid serve` starts a new one
    app.wait_for(lambda: app.daemon_pid("supervisor") != old, timeout=20,
                 what="a new supervisor")
    app.wait_for(lambda: model(app, "a")["state"] == "ready", timeout=30, what="a ready")
    info = model_list(app)
    a = model(app, "a")
    assert a["memory_bytes"] == 6 * GiB, a  # the ledger says what the engine holds
    assert info["gpu_free_bytes"] == 4 * GiB, info
    assert "finishing its wake" in app.logs()
    async with session() as s:
        assert_complete(await stream_chat(s, app.url, KEYS[0], chat_body(5, model="a")), 5)
