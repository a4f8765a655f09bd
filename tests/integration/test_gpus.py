"""Several (simulated) GPUs against real processes (DESIGN §6): placement with
CUDA_VISIBLE_DEVICES, a tensor-parallel model that loads only when both of its GPUs have
room, two models that swap on the GPU they share without disturbing the other GPU, and a
supervisor killed mid-swap whose ledgers are consistent after re-adoption.

Two GPUs of 24 GiB: ``big`` (tensor parallel, 12 GiB on each) is lazy; ``embed``
(4 GiB) lives on GPU 0; ``chat`` and ``coder`` (16 GiB each) share GPU 1, where only
one fits at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from appliance import DEMO_TENANTS
from sse import chat_body, stream_chat
from test_multimodel import assert_complete, session, sim

pytestmark = pytest.mark.slow

GiB = 1024**3
KEYS = ["sk-quiet-demo", "sk-flooder-demo"]


def two_gpus(chat_sets: list[str] | None = None, **residency: Any) -> dict[str, Any]:
    def on(name: str, memory: str, preload: bool, **kw: Any) -> dict[str, Any]:
        return sim(name, preload=preload, memory=memory, sleep_memory=0, **kw)

    return {
        "gpu": {"devices": [{"index": 0, "total_memory": "24GiB"},
                            {"index": 1, "total_memory": "24GiB"}]},
        "models": [on("big", "12GiB", False, gpus=2), on("embed", "4GiB", True, devices=[0]),
                   on("chat", "16GiB", True, devices=[1],
                      **({"sets": chat_sets} if chat_sets else {})),
                   on("coder", "16GiB", False, devices=[1])],
        "tenants": DEMO_TENANTS,
        "scheduler": {"residency": {"load_deadline_s": 60, **residency}}}


def ctl_json(app: Any, *args: str) -> dict[str, Any]:
    return json.loads(app.ctl("--json", *args).stdout)


def gpus(app: Any) -> dict[int, dict[str, Any]]:
    return {g["index"]: g for g in ctl_json(app, "gpu", "list")["gpus"]}


def models(app: Any) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in ctl_json(app, "model", "list")["models"]}


def engine_env(app: Any, engine_id: str) -> dict[str, str]:
    """The environment the supervisor started an engine with (/proc/PID/environ)."""
    pid = next(e["pid"] for e in ctl_json(app, "status")["engines"]
               if e["engine_id"] == engine_id)
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


def check_ledgers(app: Any) -> dict[int, dict[str, Any]]:
    """Every GPU: what its engines hold is within it, and free = total - held (the
    supervisor's ledger and the engines' reported holdings agree)."""
    g = gpus(app)
    for d in g.values():
        held = d["resident_bytes"] + d["sleeping_bytes"]
        assert held <= d["total_bytes"], d
        assert d["free_bytes"] == d["total_bytes"] - held, d
    return g


async def test_tp_model_and_a_swap_on_the_shared_gpu(appliance_factory) -> None:
    app = appliance_factory(two_gpus(max_swaps_per_window=100, swap_window_s=4.0))
    placed = {m: d for m, info in models(app).items() for d in [info["devices"]]}
    assert placed["big"] == {"big-0": [0, 1]} and placed["embed"] == {"embed-0": [0]}
    assert placed["chat"] == {"chat-0": [1]} and placed["coder"] == {"coder-0": [1]}
    assert engine_env(app, "embed-0")["CUDA_VISIBLE_DEVICES"] == "0"
    assert engine_env(app, "chat-0")["CUDA_VISIBLE_DEVICES"] == "1"
    embed_pid = engine_env(app, "embed-0") and next(
        e["pid"] for e in ctl_json(app, "status")["engines"] if e["engine_id"] == "embed-0")

    # ---- alternating traffic to chat and coder: they swap on GPU 1 only
    t0 = time.monotonic()
    health: list[int] = []
    samples: list[dict[int, dict[str, Any]]] = []
    async with session() as s:
        async def one(i: int) -> Any:
            await asyncio.sleep(0.15 * i)
            return await stream_chat(s, app.url, KEYS[i % 2],
                                     chat_body(max_tokens=20, model=("chat", "coder")[i % 2]))

        async def probe() -> None:
            while time.monotonic() - t0 < 6.0:
                async with s.get(app.url + "/health") as resp:
                    health.append(resp.status)
                samples.append(await asyncio.to_thread(check_ledgers, app))
                await asyncio.sleep(0.2)

        results, _ = await asyncio.gather(asyncio.gather(*[one(i) for i in range(40)]), probe())
    for r in results:
        assert_complete(r, 20, app)
    assert health and set(health) == {200}, health
    info = models(app)
    assert info["chat"]["evictions"] + info["coder"]["evictions"] >= 1, info
    assert info["embed"]["evictions"] == 0 and info["embed"]["state"] == "ready", info["embed"]
    for g in samples:  # GPU 0 never lost embed; GPU 1 never held chat and coder at once
        assert [e["engine_id"] for e in g[0]["resident"]] == ["embed-0"], g[0]
        assert len([e for e in g[1]["resident"] if e["model"] in ("chat", "coder")]) <= 1, g[1]

    # ---- the TP model needs 12 GiB on both GPUs: GPU 1 holds a 16 GiB model (8 free)
    seen: list[dict[int, dict[str, Any]]] = []
    async with session() as s:
        async def watch() -> None:
            while True:
                seen.append(await asyncio.to_thread(check_ledgers, app))
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        r = await stream_chat(s, app.url, KEYS[0], chat_body(max_tokens=10, model="big"))
        watcher.cancel()
    assert_complete(r, 10, app)
    for g in seen:  # big never up on GPU 1 beside a 16 GiB model
        on1 = {e["model"] for e in g[1]["resident"]}
        assert not ("big" in on1 and on1 & {"chat", "coder"}), g[1]
    g = check_ledgers(app)
    assert [e["engine_id"] for e in g[0]["resident"]] == ["big-0", "embed-0"], g[0]
    assert g[1]["resident_bytes"] == 12 * GiB and g[1]["free_bytes"] == 12 * GiB, g[1]
    assert engine_env(app, "big-0")["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert models(app)["big"]["memory_bytes"] == 24 * GiB  # 12 GiB on each of its two GPUs
    assert next(e["pid"] for e in ctl_json(app, "status")["engines"]
                if e["engine_id"] == "embed-0") == embed_pid  # GPU 0's model never touched
    assert models(app)["embed"]["evictions"] == 0


async def test_supervisor_killed_mid_swap_ledgers_consistent(appliance_factory) -> None:
    slow_sleep = ["sleep_l1_s=3.0", "wake_l1_s=0.2", "sleep_l2_s=0.05", "wake_l2_s=0.3"]
    app = appliance_factory(two_gpus(chat_sets=slow_sleep))
    async with session() as s:
        req = asyncio.create_task(
            stream_chat(s, app.url, KEYS[0], chat_body(max_tokens=5, model="coder")))
        await asyncio.to_thread(
            app.wait_for, lambda: any(e["state"] == "draining"
                                      for e in ctl_json(app, "status")["engines"]
                                      if e["engine_id"] == "chat-0"),
            what="chat going to sleep (3 s)")
        old = app.daemon_pid("supervisor")
        os.kill(old, signal.SIGKILL)  # mid-sleep; `infergrid serve` starts a new one
        await asyncio.to_thread(app.wait_for, lambda: app.daemon_pid("supervisor") != old,
                                timeout=20, what="a new supervisor")
        r = await req
    assert_complete(r, 5, app)
    app.wait_for(lambda: models(app)["coder"]["state"] == "ready", timeout=30,
                 what="coder ready")
    g = check_ledgers(app)
    assert [e["engine_id"] for e in g[1]["resident"]] == ["coder-0"], g[1]
    assert g[1]["free_bytes"] == 8 * GiB and g[0]["free_bytes"] == 20 * GiB, g
    assert models(app)["chat"]["state"] == "sleeping1"
    assert "finishing its sleep1" in app.logs()  # killed mid-sleep, re-adopted as such


async def test_four_replicas_one_per_gpu_share_the_load(appliance_factory) -> None:
    """``replicas: 4`` over four GPUs: one engine each (its own CUDA_VISIBLE_DEVICES),
    requests spread over all four by room, one tenant's counters whichever serves it.
    The throughput figure (>= 3.6x one replica) is bench/replicas.py's."""
    app = appliance_factory({
        "gpu": {"devices": [{"index": i, "total_memory": "24GiB"} for i in range(4)]},
        "models": [sim("chat", memory="16GiB", replicas=4, step_s=0.02, max_num_seqs=4)],
        "tenants": DEMO_TENANTS})
    placed = models(app)["chat"]["devices"]
    assert sorted(map(tuple, placed.values())) == [(0,), (1,), (2,), (3,)], placed
    env = {eid: engine_env(app, eid)["CUDA_VISIBLE_DEVICES"] for eid in placed}
    assert env == {eid: str(d[0]) for eid, d in placed.items()}, env
    async with session() as s:
        results = await asyncio.gather(*[
            stream_chat(s, app.url, KEYS[i % 2], chat_body(max_tokens=10, model="chat"))
            for i in range(32)])
    for r in results:
        assert_complete(r, 10, app)
    st = ctl_json(app, "status")
    served = {e["engine_id"]: e.get("generation_tokens_total", 0) for e in st["engines"]}
    assert len(served) == 4 and all(n > 0 for n in served.values()), served
    tenants = {t["name"]: t for t in st["tenants"]}
    assert tenants["quiet"]["tokens_out"] == 16 * 10 == tenants["flooder"]["tokens_out"]
    g = check_ledgers(app)
    assert [len(g[i]["resident"]) for i in range(4)] == [1, 1, 1, 1], g
    # the tenant policy for llm-d, through the real CLI, as kubectl would read it
    docs = list(yaml.safe_load_all(app.ctl("export", "llm-d", "--pool", "chat-pool").stdout))
    assert [d["kind"] for d in docs] == ["InferenceObjective", "ConfigMap"], docs
    assert docs[0]["spec"] == {"priority": 0, "poolRef": {
        "group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "chat-pool"}}
    ids = [t["fairness_id"] for t in yaml.safe_load(docs[1]["data"]["headers.yaml"])["tenants"]]
    assert ids == ["quiet", "flooder"]
