"""``/metrics`` is rendered off the event loop and at most once per ``CACHE_S``: a slow
render (thousands of label sets) or a scraper in a tight loop must not stall the
streams that cross the same loop.  Rendering on the loop (the old ``render()`` in the
handler) fails the first test: the loop stalls for the whole render."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infergridd.frontdoor import metrics as fm
from infergridd.frontdoor.metrics import FrontdoorMetrics

RENDER_S = 0.4


class SlowCollector(Collector):
    """Stands in for a page with very many label sets: holds the CPU while collected."""

    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> Iterator[Metric]:
        self.calls += 1
        end = time.monotonic() + RENDER_S
        while time.monotonic() < end:  # busy, like a real render (sleeps would be too kind)
            sum(range(1000))
        g = GaugeMetricFamily("slow_thing", "a gauge")
        g.add_metric([], float(self.calls))
        yield g


async def _max_lag_while(coro: object) -> float:
    """The event loop's worst delay on a 5 ms timer while ``coro`` runs."""
    lag = 0.0
    done = False

    async def ticker() -> None:
        nonlocal lag
        while not done:
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lag = max(lag, time.monotonic() - t - 0.005)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    await coro  # type: ignore[misc]
    done = True
    await tick
    return lag


async def test_a_slow_render_does_not_stall_the_loop() -> None:
    m = FrontdoorMetrics()
    m.registry.register(SlowCollector())
    lag = await _max_lag_while(m.render_cached())
    # the thread holds the GIL in slices (5 ms switch interval), never for the whole render
    assert lag < RENDER_S / 4, f"the loop stalled {lag * 1000:.0f} ms during a render"


async def test_concurrent_scrapes_share_one_render_and_a_fresh_page_is_reused() -> None:
    m = FrontdoorMetrics()
    slow = SlowCollector()
    m.registry.register(slow)  # (the registry collects once to learn the names)
    base = slow.calls
    pages = await asyncio.gather(*(m.render_cached() for _ in range(20)))
    assert slow.calls == base + 1 and len(set(pages)) == 1
    again = await m.render_cached()  # within CACHE_S of the render's end
    assert again is pages[0] and slow.calls == base + 1
    await asyncio.sleep(fm.CACHE_S + 0.01)
    fresh = await m.render_cached()
    assert slow.calls == base + 2 and fresh != pages[0]


async def test_a_tight_scrape_loop_renders_at_most_once_per_cache_period() -> None:
    m = FrontdoorMetrics()
    m.requests.labels("t", "demo", "ok").inc()
    renders = 0
    real = m.render

    def counting() -> bytes:
        nonlocal renders
        renders += 1
        return real()

    m.render = counting  # type: ignore[method-assign]
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 0.5:
        page = await m.render_cached()
        n += 1
    assert b'infergrid_requests_total{model="demo",outcome="ok",tenant="t"} 1.0' in page
    assert n > 50 and renders <= 0.5 / fm.CACHE_S + 2, (n, renders)
