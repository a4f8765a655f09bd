#!/usr/bin/env python3
"""Time to first token for a model that is asleep (level 1, level 2) or stopped.

Real processes: ``infergrid serve`` with simulated engines using the
``a100-llama3-8b`` profile (Llama-3.1-8B on an A100: L1 sleep 0.8 s / wake
0.7 s, L2 sleep 0.3 s / wake 3.0 s, start-up 50 s), 48 GiB each.

* default (``--gpu 80GiB``): only one model fits, so every measurement
  includes draining the resident model and putting it to sleep (level 1,
  0.8 s) first: a real swap;
* ``--gpu 200GiB``: everything fits, so it is the wake or start alone.

Model ``a`` is preloaded and resident before each measurement; ``b`` is put
into the state measured (asleep at level 1 or 2); the cold case uses a
never-started model (``c0``, ``c1``, ...) per run, since a model that was
unloaded by the operator refuses requests until it is loaded again.
``--startup-s`` shortens the cold start (default: the profile's 50 s).

    .venv/bin/python bench/residency_ttft.py [--gpu 80GiB] [--startup-s 50] [--repeat 3]

Prints one line per case (median and all runs, seconds) and the floor the
profile sets for it (the engine's own sleep, wake and start-up times), so
the difference is InferGrid's overhead; not a test.
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

from infergridd.config import parse_size  # noqa: E402
from infergridd.sim.profile import load_profile  # noqa: E402

KEY = "sk-quiet-demo"
PROFILE = "a100-llama3-8b"
MEMORY = "48GiB"


def config(gpu: str, startup_s: float, repeat: int) -> dict:
    def model(name: str, preload: bool) -> dict:
        return {"name": name, "engine": "sim", "max_num_seqs": 8, "memory": MEMORY,
                "sleep_memory": "512MiB", "preload": preload,
                "startup_timeout_s": startup_s + 120,
                "args": {"profile": PROFILE, "set": [f"startup_s={startup_s}"]}}
    models = [model("a", True), model("b", False)]
    models += [model(f"c{i}", False) for i in range(repeat)]
    return {"gpu": {"total_memory": gpu}, "tenants": DEMO_TENANTS, "models": models,
            "scheduler": {"residency": {"max_swaps_per_window": 1000, "swap_window_s": 60,
                                        "load_deadline_s": startup_s + 300}}}


async def ttft(app: Appliance, model: str) -> float:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
        r = await stream_chat(s, app.url, KEY, chat_body(max_tokens=8, model=model))
    assert r.status == 200 and r.ttft_s is not None, r.body
    return r.ttft_s


def state_of(app: Appliance, name: str) -> str:
    info = json.loads(app.ctl("--json", "model", "list").stdout)
    return next(m for m in info["models"] if m["name"] == name)["state"]


def ctl(app: Appliance, *args: str) -> None:
    app.ctl(*args, "--wait", "25")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="80GiB", help="GPU size (80GiB: every case is a swap)")
    ap.add_argument("--startup-s", type=float, default=None,
                    help="engine start-up (default: the profile's)")
    ap.add_argument("--repeat", type=int, default=3)
    ns = ap.parse_args()
    prof = load_profile(PROFILE)
    startup = prof.startup_s if ns.startup_s is None else ns.startup_s
    swap = 2 * parse_size(MEMORY) > parse_size(ns.gpu)
    app = Appliance(config(ns.gpu, startup, ns.repeat), short_tmpdir())
    app.start(timeout=startup + 60)
    results: dict[str, list[float]] = {"resident": [], "sleeping1": [], "sleeping2": [],
                                       "stopped": []}
    try:
        for _ in range(ns.repeat):
            results["resident"].append(await ttft(app, "a"))
        await ttft(app, "b")  # b's first start (not measured): it can sleep from now on
        for i in range(ns.repeat):
            for case in ("sleeping1", "sleeping2"):
                ctl(app, "model", "load", "b")
                ctl(app, "model", "sleep", "b", "--level", case[-1])
                ctl(app, "model", "load", "a")
                assert state_of(app, "b") == case and state_of(app, "a") == "ready"
                results[case].append(await ttft(app, "b"))
            ctl(app, "model", "load", "a")
            assert state_of(app, f"c{i}") == "stopped" and state_of(app, "a") == "ready"
            results["stopped"].append(await ttft(app, f"c{i}"))  # never started: cold
            if not swap:  # keep the GPU from filling up with cold models
                ctl(app, "model", "sleep", f"c{i}")
        info = json.loads(app.ctl("--json", "model", "list").stdout)
    finally:
        app.stop()
    evict = prof.sleep_l1_s if swap else 0.0
    floors = {"resident": 0.0, "sleeping1": evict + prof.wake_l1_s,
              "sleeping2": evict + prof.wake_l2_s, "stopped": evict + startup}
    print(f"{PROFILE} profile, GPU {ns.gpu}, start-up {startup:g}s; TTFT of the first "
          "request for a model in each state"
          + (", including draining the resident model and putting it to sleep (L1)"
             if swap else " (it fits: no swap)") + ":")
    for case, xs in results.items():
        if xs:
            med = statistics.median(xs)
            print(f"  {case:10s} median {med:7.3f}s  (engine floor {floors[case]:6.3f}s, "
                  f"overhead {med - floors[case]:+.3f}s)  runs "
                  + ", ".join(f"{x:.3f}" for x in xs))
    print(f"  swaps: {info['swaps_total']}")


if __name__ == "__main__":
    asyncio.run(main())
