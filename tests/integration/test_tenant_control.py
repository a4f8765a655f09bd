"""Live tenant control with infergridctl on a running appliance (real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
import yaml
from appliance import DEMO_TENANTS, short_tmpdir, sim_model
from sse import chat_body, stream_chat

pytestmark = pytest.mark.slow


async def _burst(url: str, key: str, n: int, max_tokens: int = 2) -> list:
    async with aiohttp.ClientSession() as s:
        return await asyncio.gather(*[stream_chat(s, url, key, chat_body(max_tokens))
                                      for _ in range(n)])


async def test_set_rate_takes_effect_within_a_second_and_survives_scheduler_kill(
        appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model()], "tenants": DEMO_TENANTS})
    assert all(r.status == 200 for r in await _burst(app.url, "sk-flooder-demo", 6))
    t0 = time.monotonic()
    app.ctl("tenant", "set-rate", "flooder", "--rpm", "6", "--burst", "2")
    results = await _burst(app.url, "sk-flooder-demo", 6)
    assert time.monotonic() - t0 < 1.5
    codes = sorted(r.status for r in results)
    assert codes == [200, 200, 429, 429, 429, 429], codes
    limited = next(r for r in results if r.status == 429)
    assert limited.body["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["Retry-After"]) >= 1
    # the quiet tenant is untouched by the flooder's quota
    assert all(r.status == 200 for r in await _burst(app.url, "sk-quiet-demo", 6))

    # kill -9 the scheduler: the quota (and the flooder's spent bucket, as of the last
    # state snapshot, taken every scheduler.snapshot_interval_s) come back
    await asyncio.sleep(1.5)
    old = app.daemon_pid("scheduler")
    os.kill(old, signal.SIGKILL)
    app.wait_for(lambda: app.daemon_pid("scheduler") != old, what="scheduler restart")
    app.wait_healthy(30)
    eff = {t["name"]: t["effective"] for t in json.loads(app.ctl("--json", "tenant", "list").stdout)}
    assert eff["flooder"]["rpm"] == 6
    after = await _burst(app.url, "sk-flooder-demo", 3)
    assert sum(r.status == 429 for r in after) >= 2, [r.status for r in after]

    app.ctl("tenant", "set-rate", "flooder", "--unlimited")
    assert all(r.status == 200 for r in await _burst(app.url, "sk-flooder-demo", 6))


async def test_add_rotate_remove_keys_take_effect_at_once(appliance) -> None:
    out = appliance.ctl("--json", "tenant", "add", "acme", "--weight", "2").stdout
    key = json.loads(out)["api_key"]
    assert key.startswith("sk-")
    r = (await _burst(appliance.url, key, 1))[0]
    assert r.status == 200, r.body
    # only the hash is at rest
    state = (appliance.state / "scheduler-state.json").read_text()
    assert key not in state
    new_key = json.loads(appliance.ctl("--json", "tenant", "rotate-key", "acme").stdout)["api_key"]
    await asyncio.sleep(0.8)  # the auth table reaches the front door with the next snapshot
    assert (await _burst(appliance.url, key, 1))[0].status == 401
    assert (await _burst(appliance.url, new_key, 1))[0].status == 200
    listing = appliance.ctl("tenant", "list").stdout
    assert "acme" in listing
    appliance.ctl("tenant", "remove", "acme")
    await asyncio.sleep(0.8)
    assert (await _burst(appliance.url, new_key, 1))[0].status == 401


@pytest.mark.parametrize("args,msg", [
    (["tenant", "set-rate", "nobody", "--rpm", "5"], "nobody"),
    (["tenant", "set-rate", "flooder", "--rpm", "-5"], "negative"),
    (["tenant", "set-rate", "flooder", "--rpm", "lots"], "lots"),
    (["tenant", "set-weight", "flooder", "0"], "weight"),
    (["tenant", "set-weight", "nobody", "2"], "nobody"),
    (["tenant", "show", "nobody"], "nobody"),
    (["tenant", "add", "quiet"], "quiet"),
])
def test_bad_input_exits_2_with_a_clear_message(appliance, args, msg) -> None:
    r = appliance.ctl(*args, check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert msg in r.stderr


def test_corrupted_state_file_stops_the_scheduler_naming_it() -> None:
    root = short_tmpdir()
    (root / "state").mkdir()
    bad = root / "state" / "scheduler-state.json"
    bad.write_text('{"format": 1, "state": {')
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "models": [sim_model()], "tenants": DEMO_TENANTS}))
    r = subprocess.run([sys.executable, "-m", "infergridd.cli.infergridd", "scheduler",
                        "--config", str(cfg), "--runtime-dir", str(root / "run"),
                        "--state-dir", str(root / "state")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert str(bad) in r.stderr and "move it aside" in r.stderr
