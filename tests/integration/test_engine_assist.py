"""Engine assist through the whole appliance (simulated engine, daemons as processes).

The simulated engine runs the same step policy as the vLLM plugin
(``infergridd/assist/policy.py``); here the point is the plumbing around it:
the adapter asks for it, the engine proves it loaded (its own stats file,
from its own pid), ``infergridctl status`` and ``/metrics`` show it with the
reason, a light request really preempts a heavy one for a seat, and
``engine_assist: false`` turns it off and says so.
"""

from __future__ import annotations

import asyncio

import aiohttp
from appliance import DEMO_TENANTS, sim_model
from sse import chat_body, stream_chat

QUIET, FLOOD = "sk-quiet-demo", "sk-flooder-demo"


def _engine(st: dict, eid: str) -> dict:
    return next(e for e in st["engines"] if e["engine_id"] == eid)


async def test_assist_on_is_proven_by_the_engine_and_preempts_for_a_light_seat(
        appliance_factory) -> None:
    slow = {"step_s": 0.01}  # 10 ms steps: a 300-token answer holds its seat for 3 s
    app = appliance_factory({"models": [
        {**sim_model("a", max_num_seqs=2, **slow)},
        {**sim_model("b", max_num_seqs=2, **slow), "engine_assist": False},
    ], "tenants": DEMO_TENANTS})
    st = app.wait_for(lambda: (lambda s: s if _engine(s, "a-0").get("assist") == "on"
                               else None)(app.status()), what="assist on for a-0")
    a = _engine(st, "a-0")
    assert "loaded in sim" in a["assist_reason"], a
    assert a["max_num_batched_tokens"] == 4096  # the engine's own budget, from its report
    b = _engine(st, "b-0")
    assert b["assist"] == "off" and "false" in b["assist_reason"], b

    async with aiohttp.ClientSession() as s:
        # the quiet tenant is around (it sent a request), so the flooder is heavy from its
        # second request on: the first went while it was under its share of the 2 seats
        warm = await stream_chat(s, app.url, QUIET, chat_body(max_tokens=2, model="a"))
        assert warm.status == 200, warm.body
        flood = [asyncio.create_task(stream_chat(
            s, app.url, FLOOD, chat_body(max_tokens=300, model="a"))) for _ in range(6)]
        await asyncio.sleep(0.8)  # both seats taken by the flooder, the rest queued
        quiet = await stream_chat(s, app.url, QUIET, chat_body(max_tokens=4, model="a"))
        assert quiet.status == 200, quiet.body
        # the flooder's sequences hold their seats for ~3 s: without a preemption the
        # quiet request could not have started before one of them finished
        assert quiet.ttft_s is not None and quiet.ttft_s < 1.0, quiet.ttft_s
        for r in await asyncio.gather(*flood):
            assert r.status == 200 and r.done and r.usage["completion_tokens"] == 300, r  # not lost

        st = app.wait_for(lambda: (lambda s: s if _engine(s, "a-0")["assist_counters"].get(
            "preemptions", 0) >= 1 else None)(app.status()), what="a preemption counted")
        c = _engine(st, "a-0")["assist_counters"]
        assert c["light_first_steps"] >= 1, c
        async with s.get(app.url + "/metrics") as resp:
            text = await resp.text()
    assert 'infergrid_engine_assist{engine="a-0",model="a",state="on"} 1.0' in text
    assert 'infergrid_engine_assist{engine="b-0",model="b",state="off"} 0.0' in text
    assert 'infergrid_engine_assist_actions_total{action="preemptions",engine="a-0",model="a"}' \
        in text
    out = app.ctl("status").stdout
    assert "assist a-0: on" in out and "assist b-0: off" in out, out
