#!/usr/bin/env python3
"""Replicas across GPUs: aggregate tokens/s and the quiet tenant's TTFT, 1 vs R replicas.

Real processes: ``infergrid serve`` with one simulated engine per replica, each on its
own (simulated) GPU (``gpu.devices``, ``replicas: R``), fixed 50 ms engine steps and 8
sequences per engine, so one replica's capacity is ~160 tokens/s and the box's
two cores are not what limits R of them.

* throughput: the flooder keeps ``2 x 8 x R`` streams of 64 tokens open for
  ``--seconds``; aggregate = completion tokens of both tenants / wall time;
* hero: a quiet tenant sends a short request every 0.2 s, alone (solo) and beside
  that flood; the ratio is its median time to first token with the flood over solo.
  Fairness is global across replicas (one tenant's counters, whichever engine).

    .venv/bin/python bench/replicas.py [--replicas 4] [--seconds 12]

Prints one line per arm and the scaling figure (R-replica tokens/s over 1-replica);
not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from appliance import DEMO_TENANTS, Appliance, short_tmpdir  # noqa: E402
from sse import chat_body, stream_chat  # noqa: E402

QUIET, FLOODER = "sk-quiet-demo", "sk-flooder-demo"
SEQS, STEP_S, OUT = 8, 0.05, 64


def config(replicas: int) -> dict:
    return {"gpu": {"devices": [{"index": i, "total_memory": "80GiB"} for i in range(replicas)]},
            "tenants": DEMO_TENANTS,
            "models": [{"name": "chat", "engine": "sim", "replicas": replicas,
                        "max_num_seqs": SEQS, "memory": "48GiB", "startup_timeout_s": 60,
                        "args": {"profile": "fast-test", "step_s": STEP_S}}]}


async def quiet_ttfts(s: aiohttp.ClientSession, url: str, seconds: float,
                      tokens: list[int] | None = None) -> list[float]:
    out: list[float] = []

    async def one() -> None:
        r = await stream_chat(s, url, QUIET, chat_body(max_tokens=4, model="chat"))
        if r.status == 200 and r.ttft_s is not None:
            out.append(r.ttft_s)
        if tokens is not None and r.usage is not None:
            tokens.append(r.usage["completion_tokens"])

    tasks = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    return out


async def flood(s: aiohttp.ClientSession, url: str, streams: int, seconds: float,
                tokens: list[int], failures: list[int]) -> None:
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            r = await stream_chat(s, url, FLOODER, chat_body(max_tokens=OUT, model="chat"))
            if r.status != 200 or r.usage is None:
                failures.append(r.status)
                continue
            tokens.append(r.usage["completion_tokens"])

    await asyncio.gather(*[worker() for _ in range(streams)])


async def arm(replicas: int, seconds: float) -> dict:
    app = Appliance(config(replicas), short_tmpdir("igrep"))
    app.start(timeout=90)
    try:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=300)) as s:
            solo = await quiet_ttfts(s, app.url, 5.0)
            tokens: list[int] = []
            failures: list[int] = []
            t0 = time.monotonic()
            _, flooded = await asyncio.gather(
                flood(s, app.url, 2 * SEQS * replicas, seconds, tokens, failures),
                quiet_ttfts(s, app.url, seconds - 2.0, tokens))
            wall = time.monotonic() - t0
    finally:
        app.stop()
    return {"replicas": replicas, "tokens_per_s": sum(tokens) / wall, "failures": len(failures),
            "solo_p50": statistics.median(solo), "flood_p50": statistics.median(flooded),
            "hero_ratio": statistics.median(flooded) / statistics.median(solo),
            "quiet_n": len(flooded)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=12.0)
    ns = ap.parse_args()
    results = [asyncio.run(arm(1, ns.seconds)), asyncio.run(arm(ns.replicas, ns.seconds))]
    for r in results:
        print(f"replicas {r['replicas']}: {r['tokens_per_s']:.0f} tokens/s, "
              f"{r['failures']} failed; quiet TTFT p50 solo {1000 * r['solo_p50']:.0f} ms, "
              f"with the flood {1000 * r['flood_p50']:.0f} ms (ratio {r['hero_ratio']:.2f}, "
              f"n={r['quiet_n']})")
    one, many = results
    print(f"scaling: {many['tokens_per_s'] / one['tokens_per_s']:.2f}x aggregate tokens/s "
          f"with {ns.replicas} replicas; hero ratio {many['hero_ratio']:.2f} vs "
          f"{one['hero_ratio']:.2f} on one replica")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
