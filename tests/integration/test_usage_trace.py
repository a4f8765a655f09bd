"""Usage accounting and request traces against the real appliance (three daemons and the
simulated engine): ``infergridctl usage`` totals equal the tokens the client counted in
a mixed run that kills and restarts the scheduler (exact, per tenant), and
``infergridctl trace`` shows a request's phases and who it waited behind."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import signal
from collections import Counter

import aiohttp
import pytest
from appliance import sim_model
from sse import chat_body, stream_chat

pytestmark = pytest.mark.slow

TENANTS = [
    {"name": "quiet", "keys": ["sk-quiet-demo"]},
    {"name": "flooder", "keys": ["sk-flooder-demo"]},
    {"name": "capped", "keys": ["sk-capped-demo"], "rpm": 1, "burst": 1},
]
KEYS = {"quiet": "sk-quiet-demo", "flooder": "sk-flooder-demo"}


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def test_usage_is_exact_across_scheduler_restarts(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(max_num_seqs=8, step_s=0.01)],
                             "tenants": TENANTS})
    rng = random.Random(19)
    counted = {t: Counter() for t in KEYS}

    async def one(s: aiohttp.ClientSession, tenant: str) -> None:
        stream = rng.random() < 0.7
        res = await stream_chat(s, app.url, KEYS[tenant],
                                chat_body(rng.randint(1, 40), stream=stream,
                                          text="word " * rng.randint(1, 30)))
        assert res.status == 200, res.body
        assert res.usage is not None, "no usage in the answer"
        c = counted[tenant]
        c["requests"] += 1
        c["prompt_tokens"] += res.usage["prompt_tokens"]
        c["completion_tokens"] += res.usage["completion_tokens"]

    async with _session() as s:
        # the capped tenant: one request per minute, the second is the scheduler's 429
        first = await stream_chat(s, app.url, "sk-capped-demo", chat_body(2))
        second = await stream_chat(s, app.url, "sk-capped-demo", chat_body(2))
        assert (first.status, second.status) == (200, 429)

        def capped_rejected() -> bool:
            rows = json.loads(app.ctl("--json", "usage").stdout)["rows"]
            return any(r["tenant"] == "capped" and r["rejected"] == 1 for r in rows)

        # on disk before the first crash: a refusal decided in the half second before a
        # SIGKILL can be missed (the front door has nothing to hand back for it)
        app.wait_for(capped_rejected, timeout=10, what="the 429 counted")
        tasks: list[asyncio.Task[None]] = []
        for wave in range(3):
            tasks += [asyncio.create_task(one(s, "quiet" if i % 3 == 0 else "flooder"))
                      for i in range(45)]
            await asyncio.sleep(0.4)  # streams are running
            old = app.daemon_pid("scheduler")
            # a crash (Dones it wrote but had not acknowledged come back in the Hello)
            # and a stop (it writes what it buffered)
            os.kill(old, signal.SIGKILL if wave != 1 else signal.SIGTERM)
            app.wait_for(lambda old=old: app.daemon_pid("scheduler") != old, timeout=30,
                         what="scheduler restarted")
        await asyncio.gather(*tasks)
    assert sum(c["requests"] for c in counted.values()) == 135

    def totals() -> dict[str, dict[str, int]] | None:
        r = app.ctl("usage", "--by", "tenant", "--json", check=False)
        if r.returncode != 0:
            return None
        rows = {row["tenant"]: row for row in json.loads(r.stdout)["rows"]}
        got = {t: {k: rows.get(t, {}).get(k, 0) for k in counted[t]} for t in counted}
        return rows if got == {t: dict(c) for t, c in counted.items()} else None

    try:
        rows = app.wait_for(totals, timeout=20, what="usage equal to what the client counted")
    except AssertionError:
        r = app.ctl("usage", "--by", "tenant", "--json", check=False)
        raise AssertionError(f"client counted {counted}, usage says {r.stdout} {r.stderr}") from None
    assert rows["quiet"]["ok"] == counted["quiet"]["requests"] and rows["quiet"]["errors"] == 0
    assert rows["capped"]["requests"] == 1 and rows["capped"]["rejected"] == 1
    # the same numbers as CSV, by tenant and model and by hour
    table = list(csv.DictReader(io.StringIO(app.ctl("usage", "--by", "tenant,model",
                                                    "--csv").stdout)))
    flood = next(r for r in table if r["tenant"] == "flooder")
    assert flood["model"] == "demo"
    assert int(flood["completion_tokens"]) == counted["flooder"]["completion_tokens"]
    hours = json.loads(app.ctl("--json", "usage", "--by", "hour", "--since", "2h").stdout)
    # requests are the ones that ran (each ended in a Done), rejections counted apart
    assert sum(r["requests"] for r in hours["rows"]) == 136
    assert sum(r["rejected"] for r in hours["rows"]) == 1
    assert app.ctl("usage", "--since", "yesterday", check=False).returncode == 2
    # still there after a restart of the whole appliance (the file in the state dir)
    app.stop()
    app.start()
    assert totals() is not None, app.ctl("usage", "--json").stdout


async def test_trace_shows_the_phases_and_who_it_waited_behind(appliance_factory) -> None:
    # one seat, no engine assist: the quiet request waits for the flooder's stream
    model = {**sim_model(max_num_seqs=1, step_s=0.01), "engine_assist": False}
    app = appliance_factory({"models": [model], "tenants": TENANTS[:2]})
    async with _session() as s:
        flood = asyncio.create_task(stream_chat(s, app.url, "sk-flooder-demo", chat_body(80)))
        await asyncio.sleep(0.3)
        waited = await stream_chat(s, app.url, "sk-quiet-demo", chat_body(4))
        assert waited.status == 200 and (await flood).status == 200
    rid = waited.headers["X-Request-Id"]
    out = app.ctl("trace", rid).stdout
    for phase in ("received", "admitted", "queued", "dispatched", "engine first token",
                  "last token", "done"):
        assert f"\n{phase} " in out, (phase, out)
    assert "why it waited: engine seats full (demo-0 1/1) held by flooder 1" in out, out
    got = json.loads(app.ctl("--json", "trace", rid).stdout)["trace"]
    assert got["queue_wait_s"] * 1000 >= 100, got
    assert got["outcome"] == "ok" and got["completion_tokens"] == 4
    assert got["first_token"] >= got["dispatched"] >= got["queued"] >= got["received"]
    listing = app.ctl("trace", "--last", "5").stdout
    assert rid in listing and "flooder" in listing
    missing = app.ctl("trace", "cmpl-nope", check=False)
    assert missing.returncode == 2 and "no trace of" in missing.stderr
