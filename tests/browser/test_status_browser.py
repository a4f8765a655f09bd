"""The status page in a real headless browser (the ``browser`` tier): Debian's chromium
and chromium-driver, driven by Selenium, against the real appliance under load.

It checks what a person sees — the tables filled in, the page reloading itself, no
script and no key — and saves a screenshot (``docs/status-page.png`` when
``INFERGRID_UPDATE_SCREENSHOT=1``, else in the test's temporary directory).

Run: ``.ci/run`` with ``INFERGRID_CI_TIERS=browser``, or
``apt-get install chromium chromium-driver; pip install -e '.[browser]';
pytest -m browser tests/browser``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest
from appliance import DEMO_TENANTS, free_port, sim_model
from sse import chat_body, stream_chat

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1280,1400")


@pytest.fixture
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # the browser tier installs it: missing is a failure, not a skip
        pytest.fail("selenium missing: pip install -e '.[browser]'")

    for path in (CHROMIUM, DRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} missing: apt-get install chromium chromium-driver "
                        "(.ci/run installs them for the browser tier)")
    profile = tempfile.mkdtemp(prefix="ig-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _rows(driver, cls: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [[c.text for c in tr.find_elements(By.CSS_SELECTOR, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, f"table.{cls} tbody tr")]


async def test_status_page_in_chromium_under_load(appliance_factory, browser, tmp_path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    admin = f"127.0.0.1:{free_port()}"
    app = appliance_factory({"models": [sim_model(max_num_seqs=4, step_s=0.02)],
                             "tenants": DEMO_TENANTS, "admin_listen": admin})
    stop = asyncio.Event()

    async def tenant(key: str, concurrency: int, tokens: int) -> int:
        n = 0

        async def worker() -> None:
            nonlocal n
            while not stop.is_set():
                r = await stream_chat(s, app.url, key, chat_body(tokens))
                assert r.status == 200, r.body
                n += 1

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return n

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        load = asyncio.gather(tenant("sk-flooder-demo", 8, 60), tenant("sk-quiet-demo", 1, 8))
        # a minute and a bit of load: the per-minute throughput has a full window
        await asyncio.sleep(70)
        url = f"http://{admin}/status"
        await asyncio.to_thread(browser.get, url)
        assert browser.title == "InferGrid status"
        engines = await asyncio.to_thread(_rows, browser, "engines")
        tenants = {r[0]: r for r in await asyncio.to_thread(_rows, browser, "tenants")}
        thr = await asyncio.to_thread(_rows, browser, "throughput")
        assert engines and engines[0][0] == "demo-0" and engines[0][2] == "ready", engines
        assert set(tenants) == {"quiet", "flooder"}
        assert int(tenants["quiet"][5]) > 0 and tenants["quiet"][6].endswith(" ms"), tenants
        windows = [r[0] for r in thr]
        assert windows[0] == "last 30 s" and "0-1 min ago" in windows, windows
        assert float(thr[0][-1]) > 0, thr  # tokens are flowing now
        assert not browser.find_elements(By.TAG_NAME, "script")
        for key in ("sk-quiet-demo", "sk-flooder-demo"):
            assert key not in browser.page_source
        shot = tmp_path / "status-page.png"
        assert await asyncio.to_thread(browser.save_screenshot, str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("INFERGRID_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, REPO / "docs" / "status-page.png")
        # the page reloads itself (<meta refresh>): the element we hold goes stale
        heading = browser.find_element(By.TAG_NAME, "h1")
        deadline = time.monotonic() + 15
        reloaded = False
        while time.monotonic() < deadline and not reloaded:
            await asyncio.sleep(0.5)
            try:
                heading.is_displayed()
            except StaleElementReferenceException:
                reloaded = True
        assert reloaded, "the status page did not refresh itself within 15 s"
        stop.set()
        flood_n, quiet_n = await load
    assert quiet_n > 0 and flood_n > 0
