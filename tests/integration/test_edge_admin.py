"""The admin listener (issue 14.7): ``/metrics`` and ``/health``'s reasons (an engine's
log lines) only on ``admin_listen``; the public port's ``/health`` says the status and
the missing models' names, nothing more, and has no ``/metrics`` when an admin listener
is set.  Before, the public ``/health`` carried each engine's last log lines and
``/metrics`` every tenant's name to anyone who could reach the port."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from appliance import DEMO_TENANTS, free_port, sim_model

from infergridd.frontdoor import admin


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_reasons_and_metrics_only_on_the_admin_listener(appliance_factory: Any) -> None:
    admin_port = free_port()
    model = {**sim_model(startup_delay=60), "startup_timeout_s": 1.5}
    app = appliance_factory({"models": [model], "tenants": DEMO_TENANTS,
                             "admin_listen": f"127.0.0.1:{admin_port}"}, start=False)
    app.start(wait_healthy=False)
    app.wait_for(lambda: (e := app.status()["engines"]) and e[0]["state"] == "failed",
                 timeout=30, what="engine failed")
    admin_url = f"http://127.0.0.1:{admin_port}"

    def detailed() -> Any:
        status, raw = _get(admin_url + "/health")
        body = json.loads(raw)
        failed = body.get("models", {}).get("demo") == "failed"
        return (status, body) if failed and body.get("reasons", {}).get("demo") else None

    status, body = app.wait_for(detailed, what="the reason on the admin /health")
    assert status == 503 and body["status"] == "loading" and body["missing_models"] == ["demo"]
    assert "scheduler_connected" in body and body["models"]["demo"] == "failed"
    status, raw = _get(app.url + "/health")
    assert status == 503
    assert json.loads(raw) == {"status": "loading", "missing_models": ["demo"]}
    status, raw = _get(app.url + "/metrics")
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found"
    status, raw = _get(admin_url + "/metrics")
    text = raw.decode()
    # labelled with the answering process when there are several (frontdoor.processes)
    assert status == 200 and re.search(
        r'^infergrid_frontdoor_waiting_bytes(\{process="\d+"\})? 0\.0$', text, re.M), text
    assert "infergrid_frontdoor_connections" in text and "infergrid_scheduler_connected" in text
    status, raw = _get(admin_url + "/v1/models")  # the admin listener serves no API
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found"


def test_without_admin_listen_public_health_is_short_and_metrics_stay(appliance: Any) -> None:
    status, raw = _get(appliance.url + "/health")
    assert status == 200 and json.loads(raw) == {"status": "ok"}
    status, raw = _get(appliance.url + "/metrics")
    assert status == 200 and b"infergrid_frontdoor_connections" in raw


async def test_other_pages_can_be_added_to_the_admin_listener() -> None:
    """The /status page (issue 19) registers itself like this, and is served with the
    admin listener's guard and OpenAI-shaped errors."""
    import aiohttp
    from aiohttp import web

    from infergridd.frontdoor.edge import EdgeGuard, EdgeRunner

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.app[admin.FD]}")

    admin.ROUTES.append(("GET", "/hello", hello))
    try:
        guard = EdgeGuard(max_connections=4, header_timeout_s=5, keepalive_timeout_s=5,
                          max_requests_per_connection=10)
        runner = EdgeRunner(admin.build_admin_app("fd", guard), guard)  # type: ignore[arg-type]
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{site.port}/hello") as r:
                assert r.status == 200 and await r.text() == "hello fd"
            async with http.post(f"http://127.0.0.1:{site.port}/hello") as r:
                assert r.status == 405 and (await r.json())["error"]["code"] == \
                    "method_not_allowed"
        await runner.cleanup()
    finally:
        admin.ROUTES.pop()
