"""Weighted shares through the real appliance: 8 backlogged tenants, weights 1–4."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from appliance import sim_model
from sse import chat_body, stream_chat

pytestmark = pytest.mark.slow

WEIGHTS = {"t1a": 1, "t1b": 1, "t2a": 2, "t2b": 2, "t3a": 3, "t3b": 3, "t4a": 4, "t4b": 4}
OUTSTANDING = 6  # per tenant: 48 requests against 8 engine slots keeps everyone backlogged
WARMUP_S, MEASURE_S = 2.0, 8.0


async def test_eight_tenants_get_service_in_proportion_to_weight(appliance_factory) -> None:
    tenants = [{"name": n, "keys": [f"sk-{n}"], "weight": w} for n, w in WEIGHTS.items()]
    app = appliance_factory({"models": [sim_model(max_num_seqs=8, step_s=0.005)],
                             "tenants": tenants})
    served = {n: 0 for n in WEIGHTS}
    t0 = time.monotonic()
    stop_at = t0 + WARMUP_S + MEASURE_S

    async def client(s: aiohttp.ClientSession, name: str) -> None:
        while time.monotonic() < stop_at:
            r = await stream_chat(s, app.url, f"sk-{name}", chat_body(max_tokens=20))
            assert r.status == 200, r.body
            if t0 + WARMUP_S <= time.monotonic() <= stop_at:
                served[name] += r.usage["completion_tokens"]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*[client(s, n) for n in WEIGHTS for _ in range(OUTSTANDING)])

    total = sum(served.values())
    wsum = sum(WEIGHTS.values())
    assert total > 2000, f"too little service to judge: {served}"
    for name, w in WEIGHTS.items():
        share, expect = served[name] / total, w / wsum
        assert abs(share - expect) <= 0.10 * expect, (
            f"{name}: share {share:.3f}, weight share {expect:.3f}; all: {served}")
