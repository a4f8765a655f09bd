"""The raw load generator against the real appliance (``infergrid serve``, simulated engine).

What the ceiling's figures rest on: through the front door and straight to the
engine's Unix socket, ``rawload`` and ``loadgen.stream_one`` (aiohttp) see the same
outcome, the same token counts and, request by request alternating, TTFTs that
agree; a real 429 (a tenant over its request rate) is ``rejected`` in both; a
wrong key's 401 is ``failed`` in both; and an open loop through the front door
reuses its connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infergridd.bench import rawload
from infergridd.bench.appliance import Serve, free_port, make_config, tenant_key
from infergridd.bench.engines import SimEngine
from infergridd.bench.loadgen import FAILED, OK, REJECTED, Prompts, Result, Target, stream_one
from infergridd.bench.overhead_arms import engine_target, http_session
from infergridd.bench.workload import Planned

N = 40  # requests per generator and path


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, SimEngine]]:
    eng = SimEngine("fast-test", 256)
    conf = make_config("vtc", eng.model_config(), [("bench", 1.0)], free_port())
    # a tenant allowed one request a minute: its second is a real 429 from the scheduler
    conf["tenants"].append({"name": "capped", "keys": [tenant_key("capped")], "rpm": 1.0,
                            "burst": 1.0})
    logdir = Path(tmp_path_factory.mktemp("rawload"))
    serve = Serve(conf, logdir)
    serve.start()
    try:
        yield serve, eng
    finally:
        serve.stop()


def _targets(serve: Serve, eng: SimEngine) -> dict[str, Target]:
    direct = engine_target(serve.runtime, eng.model, "bench")
    assert direct is not None
    keys = {t: tenant_key(t) for t in ("bench", "capped")} | {"wrong": "sk-nobody"}
    return {"infergrid": Target(serve.url, eng.model, keys), "direct": direct}


async def _alternate(target: Target) -> tuple[list[Result], list[Result]]:
    """One request at a time, aiohttp and raw in turn (drift hits both alike)."""
    prompts, aio, raw = Prompts(0), [], []
    pool: rawload.Pool | None = None
    async with http_session() as http:
        for i in range(2 * N):
            p = Planned("bench", i, 0.0, 8, 4)
            r = Result("bench", i, 0.0)
            if i % 2:
                pool = await rawload.send_one(target, p, prompts.get(8, i), time.monotonic(),
                                              r, pool)
                raw.append(r)
            else:
                await stream_one(http, target, p, prompts.get(8, i), time.monotonic(), r)
                aio.append(r)
    assert pool is not None and pool.opened == 1  # one keep-alive connection for all
    pool.close()
    return aio, raw


@pytest.mark.parametrize("path", ["infergrid", "direct"])
def test_raw_agrees_with_aiohttp(appliance: tuple[Serve, SimEngine], path: str) -> None:
    serve, eng = appliance
    aio, raw = asyncio.run(_alternate(_targets(serve, eng)[path]))
    for rs in (aio, raw):
        assert [(r.status, r.http_status, r.tokens_in, r.tokens_out) for r in rs] == \
            [(OK, 200, 8, 4)] * N, [r.error for r in rs if r.status != OK][:3]
        # through the front door its queue header comes back; straight to the engine not
        assert all((r.queue_s is not None) == (path == "infergrid") for r in rs)
    ttft = {k: np.array([r.ttft_s for r in rs]) * 1e3 for k, rs in (("aio", aio), ("raw", raw))}
    rest = {k: np.array([r.e2e_s - r.ttft_s for r in rs]) * 1e3  # type: ignore[operator]
            for k, rs in (("aio", aio), ("raw", raw))}
    # the same quantity: medians within 3 ms or 40 %; the raw client may only be cheaper
    m_aio, m_raw = float(np.median(ttft["aio"])), float(np.median(ttft["raw"]))
    assert abs(m_raw - m_aio) <= max(3.0, 0.4 * m_aio), (m_aio, m_raw)
    # the first token is not the last: the remaining 3 tokens take engine steps in both
    assert np.median(rest["raw"]) > 0.5 and np.median(rest["aio"]) > 0.5, rest
    assert abs(float(np.median(rest["raw"]) - np.median(rest["aio"]))) <= \
        max(3.0, 0.5 * float(np.median(rest["aio"]))), rest
    assert sum(len(r.itl_s) for r in raw) >= N  # tokens arrived in more than one read


async def _one_each(target: Target, tenant: str) -> tuple[Result, Result]:
    p, out = Planned(tenant, 0, 0.0, 8, 4), (Result(tenant, 0, 0.0), Result(tenant, 1, 0.0))
    async with http_session() as http:
        await stream_one(http, target, p, [7] * 8, time.monotonic(), out[0])
    pool = await rawload.send_one(target, p, [7] * 8, time.monotonic(), out[1])
    pool.close()
    return out


def test_real_429_and_401(appliance: tuple[Serve, SimEngine]) -> None:
    serve, eng = appliance
    via = _targets(serve, eng)["infergrid"]
    first = Result("capped", 0, 0.0)

    async def one() -> None:
        (await rawload.send_one(via, Planned("capped", 0, 0.0, 8, 4), [7] * 8,
                                time.monotonic(), first)).close()

    asyncio.run(one())
    assert first.status == OK  # its one request of the minute
    aio, raw = asyncio.run(_one_each(via, "capped"))
    for r in (aio, raw):
        assert (r.status, r.http_status) == (REJECTED, 429), r
        assert "rate_limit" in r.error and r.ttft_s is None
    aio, raw = asyncio.run(_one_each(via, "wrong"))
    for r in (aio, raw):
        assert (r.status, r.http_status) == (FAILED, 401), r
    assert raw.error == aio.error


def test_open_loop_through_the_front_door(appliance: tuple[Serve, SimEngine]) -> None:
    serve, eng = appliance
    via = _targets(serve, eng)["infergrid"]
    plan = [Planned("bench", i, i / 100.0, 8, 4) for i in range(100)]
    run = asyncio.run(rawload.open_loop(via, plan, Prompts(1), label="raw", duration_s=1.0,
                                        drain_s=5.0, progress=False))
    assert [r.status for r in run.results].count(OK) == 100
    assert all(r.tokens_out == 4 for r in run.results)
    assert run.connections < 50  # kept alive and reused, not one per request
    assert np.percentile([r.lag_s for r in run.results], 50) < 0.02


@pytest.mark.parametrize("generator", ["raw", "aiohttp"])
def test_the_latency_parts_closed_loop_with_either_generator(
        appliance: tuple[Serve, SimEngine], generator: str) -> None:
    """``bench/overhead.py --latency-loadgen``: four streams alternating between the two
    paths for 2 s; every kept request complete (4 tokens, a TTFT), both paths
    served about equally, the warm-up dropped."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_overhead_live", Path(__file__).resolve().parents[2] / "bench" / "overhead.py")
    assert spec and spec.loader
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    serve, eng = appliance
    t = _targets(serve, eng)
    out = asyncio.run(overhead.alternating_closed_loop(
        {"direct": t["direct"], "infergrid": t["infergrid"]}, 4, 2.0, Prompts(2), 8, 4,
        generator))
    assert set(out) == {"direct", "infergrid"}
    n = [len(out["direct"]), len(out["infergrid"])]
    assert min(n) >= 10 and abs(n[0] - n[1]) <= 4, n
    for r in out["direct"] + out["infergrid"]:
        assert r.status == OK and r.tokens_out == 4 and r.ttft_s is not None, r
        assert len(r.itl_s) <= 3 and r.sent_s >= overhead.WARMUP_S  # gaps between reads
