"""The real appliance's operator views: ``/status`` on the admin listener (and not on the
tenants' port), and its ``/metrics`` scraped: every query of the shipped dashboard and
rules names a metric it exports."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from appliance import DEMO_TENANTS, free_port, sim_model
from promcheck import dangling, exported_names
from sse import chat_body, stream_chat

pytestmark = pytest.mark.slow


async def test_status_page_and_scraped_metrics(appliance_factory) -> None:
    admin = f"127.0.0.1:{free_port()}"
    app = appliance_factory({"models": [sim_model(max_num_seqs=4, step_s=0.01)],
                             "tenants": DEMO_TENANTS, "admin_listen": admin})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        results = await asyncio.gather(*[
            stream_chat(s, app.url, key, chat_body(10))
            for key in ("sk-quiet-demo", "sk-flooder-demo") * 4])
        assert all(r.status == 200 and r.done for r in results)
        await asyncio.sleep(6)  # a second sample of the counters (one per 5 s)
        async with s.get(f"http://{admin}/status") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/html")
            assert "script-src" not in r.headers["Content-Security-Policy"]
            assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
            page = await r.text()
        async with s.get(app.url + "/status") as r:
            assert r.status == 404, "the status page is for operators: admin listener only"
        async with s.get(f"http://{admin}/metrics") as r:
            assert r.status == 200
            scraped = await r.text()
    assert '<meta http-equiv="refresh"' in page and "<script" not in page
    for needle in ("demo-0", "<td>quiet</td>", "<td>flooder</td>", "<td>ready</td>",
                   "last 30 s"):
        assert needle in page, needle
    for key in ("sk-quiet-demo", "sk-flooder-demo"):
        assert key not in page
    names = exported_names(scraped)
    assert "infergrid_ttft_seconds_bucket" in names and "infergrid_engine_kv_usage" in names
    assert dangling(names) == []
