#!/usr/bin/env python3
"""Time to first token for a model that is asleep (level 1, level 2) or stopped.

Real processes: ``infergrid serve`` with two simulated engines using the
``a100-llama3-8b`` profile (Llama-3.1-8B on an A100: L1 sleep 0.8 s / wake
0.7 s, L2 sleep 0.3 s / wake 3.0 s, start-up 50 s), 48 GiB each on an 80 GiB
GPU, so every measurement includes draining and putting the *other* model to
sleep first (a real swap).  ``--startup-s`` shortens the cold start.

    .venv/bin/python bench/residency_ttft.py [--startup-s 50] [--repeat 3]

Prints one line per case (median and all runs, seconds); not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from appliance import DEMO_TENANTS, Appliance, short_tmpdir  # noqa: E402
from sse import chat_body, stream_chat  # noqa: E402

KEY = "sk-quiet-demo"


def config(startup_s: float) -> dict:
    def model(name: str, preload: bool) -> dict:
        return {"name": name, "engine": "sim", "max_num_seqs": 8, "memory": "48GiB",
                "sleep_memory": "512MiB", "preload": preload, "startup_timeout_s": 300,
                "args": {"profile": "a100-llama3-8b", "set": [f"startup_s={startup_s}"]}}
    return {"gpu": {"total_memory": "80GiB"}, "tenants": DEMO_TENANTS,
            "models": [model("a", True), model("b", False)],
            "scheduler": {"residency": {"max_swaps_per_window": 1000, "swap_window_s": 60,
                                        "load_deadline_s": 600}}}


async def ttft(app: Appliance, model: str) -> float:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        r = await stream_chat(s, app.url, KEY, chat_body(max_tokens=8, model=model))
    assert r.status == 200 and r.ttft_s is not None, r.body
    return r.ttft_s


def put_b(app: Appliance, how: str) -> None:
    """Get b into the state to measure, with a resident (so b needs a swap)."""
    app.ctl("model", "load", "b", "--wait", "600")
    app.ctl("model", "sleep", "b", "--level", how[-1], "--wait", "60")
    app.ctl("model", "load", "a", "--wait", "600")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--startup-s", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=3)
    ns = ap.parse_args()
    app = Appliance(config(ns.startup_s), short_tmpdir())
    app.start(timeout=ns.startup_s + 60)
    results: dict[str, list[float]] = {"resident": [], "sleeping1": [], "sleeping2": [],
                                       "stopped": []}
    try:
        for _ in range(ns.repeat):
            results["resident"].append(await ttft(app, "a"))
        # cold: b has never been started (first request ever for it)
        results["stopped"].append(await ttft(app, "b"))
        for _ in range(ns.repeat):
            for case in ("sleeping1", "sleeping2"):
                put_b(app, case)
                state = next(m for m in json.loads(app.ctl("--json", "model", "list").stdout)
                             ["models"] if m["name"] == "b")["state"]
                assert state == case, state
                results[case].append(await ttft(app, "b"))
        info = json.loads(app.ctl("--json", "model", "list").stdout)
    finally:
        app.stop()
    print(f"a100-llama3-8b profile, start-up {ns.startup_s:g}s; TTFT of the first request, "
          "including draining and sleeping the other model (L1, 0.8 s):")
    for case, xs in results.items():
        if xs:
            print(f"  {case:10s} median {statistics.median(xs):7.3f}s  runs "
                  + ", ".join(f"{x:.3f}" for x in xs))
    print(f"  swaps: {info['swaps_total']}")


if __name__ == "__main__":
    asyncio.run(main())
