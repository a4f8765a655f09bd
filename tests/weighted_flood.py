"""Eight weighted tenants kept backlogged, and the check that each got its weight's share.

Shared by the fairness test and the fast-path test (which floods with leases on)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from sse import chat_body, stream_chat

WEIGHTS = {"t1a": 1, "t1b": 1, "t2a": 2, "t2b": 2, "t3a": 3, "t3b": 3, "t4a": 4, "t4b": 4}
OUTSTANDING = 6  # per tenant: 48 requests against 8 engine slots keeps everyone backlogged
WARMUP_S, MEASURE_S = 2.0, 8.0


def tenants() -> list[dict]:
    return [{"name": n, "keys": [f"sk-{n}"], "weight": w} for n, w in WEIGHTS.items()]


async def flood(s: aiohttp.ClientSession, url: str) -> dict[str, int]:
    """Every tenant OUTSTANDING closed-loop streams for WARMUP_S + MEASURE_S; the
    completion tokens each was served after the warm-up."""
    served = {n: 0 for n in WEIGHTS}
    t0 = time.monotonic()
    stop_at = t0 + WARMUP_S + MEASURE_S

    async def client(name: str) -> None:
        while time.monotonic() < stop_at:
            r = await stream_chat(s, url, f"sk-{name}", chat_body(max_tokens=20))
            assert r.status == 200, r.body
            if t0 + WARMUP_S <= time.monotonic() <= stop_at:
                served[name] += r.usage["completion_tokens"]

    await asyncio.gather(*[client(n) for n in WEIGHTS for _ in range(OUTSTANDING)])
    return served


def assert_shares(served: dict[str, int]) -> None:
    total = sum(served.values())
    wsum = sum(WEIGHTS.values())
    assert total > 2000, f"too little service to judge: {served}"
    for name, w in WEIGHTS.items():
        share, expect = served[name] / total, w / wsum
        assert abs(share - expect) <= 0.10 * expect, (
            f"{name}: share {share:.3f}, weight share {expect:.3f}; all: {served}")
