"""Engine assist on SGLang through the whole appliance (simulated engine, daemons as processes).

On SGLang, engine assist is SGLang's own flags (``engines/sglang.py``,
``sglang_assist_flags``).  The simulated engine's SGLang personality batches as
SGLang does (``infergridd/sim/sglang_batch.py``: prefill first, priority
preemption past a threshold) and is launched with the very flags the SGLang
adapter passes, so this tests that choice of flags: with
``--priority-scheduling-preemption-threshold 1`` a light request (InferGrid
priority 0) preempts a heavy one (-2) for a seat; with ``engine_assist: false``
SGLang's default threshold of 10 applies and it waits for a flood sequence to
finish.  SGLang writes no stats file: the flags are the proof, and
``infergridctl status`` says so.
"""

from __future__ import annotations

import asyncio

import aiohttp
from appliance import DEMO_TENANTS, sim_model
from sse import chat_body, stream_chat

QUIET, FLOOD = "sk-quiet-demo", "sk-flooder-demo"


def _engine(st: dict, eid: str) -> dict:
    return next(e for e in st["engines"] if e["engine_id"] == eid)


async def _quiet_ttft_beside_a_flood(s: aiohttp.ClientSession, url: str, model: str) -> float:
    """The quiet tenant's TTFT while the flooder's sequences hold both seats."""
    # the quiet tenant is around (it sent a request), so the flooder is heavy from then on
    warm = await stream_chat(s, url, QUIET, chat_body(max_tokens=2, model=model))
    assert warm.status == 200, warm.body
    flood = [asyncio.create_task(stream_chat(
        s, url, FLOOD, chat_body(max_tokens=300, model=model))) for _ in range(6)]
    await asyncio.sleep(0.8)  # both seats taken by the flooder, the rest queued
    quiet = await stream_chat(s, url, QUIET, chat_body(max_tokens=4, model=model))
    assert quiet.status == 200 and quiet.ttft_s is not None, quiet.body
    for r in await asyncio.gather(*flood):  # a preempted sequence is recomputed, not lost
        assert r.status == 200 and r.done and r.usage["completion_tokens"] == 300, r
    return quiet.ttft_s


async def test_sglang_flags_let_a_light_request_preempt_for_a_seat_and_without_them_it_waits(
        appliance_factory) -> None:
    # 10 ms steps: a 300-token answer holds its seat for 3 s
    sglang = {"step_s": 0.01, "personality": "sglang"}
    app = appliance_factory({"models": [
        {**sim_model("a", max_num_seqs=2, **sglang)},
        {**sim_model("b", max_num_seqs=2, **sglang), "engine_assist": False},
    ], "tenants": DEMO_TENANTS})
    st = app.wait_for(lambda: (lambda s: s if all(
        _engine(s, e)["state"] == "ready" for e in ("a-0", "b-0")) else None)(app.status()),
        what="both engines ready")
    a = _engine(st, "a-0")
    assert a["assist"] == "on", a  # at once: the flags are the proof, no stats file
    assert a["assist_reason"].startswith("flags: SGLang's own flags"), a
    assert "--priority-scheduling-preemption-threshold 1" in a["assist_reason"], a
    b = _engine(st, "b-0")
    assert b["assist"] == "off" and "false" in b["assist_reason"], b

    async with aiohttp.ClientSession() as s:
        assisted, stock = await asyncio.gather(_quiet_ttft_beside_a_flood(s, app.url, "a"),
                                               _quiet_ttft_beside_a_flood(s, app.url, "b"))
        async with s.get(app.url + "/metrics") as resp:
            text = await resp.text()
    # the flooder's sequences hold their seats for ~3 s from t=0; the quiet request comes
    # at 0.8 s.  Threshold 1: it takes the heavy one's seat and starts within a step or so
    assert assisted < 1.0, (assisted, stock)
    # threshold 10 (SGLang's default): it waits for a flood sequence to finish
    assert stock > 1.5, (assisted, stock)
    assert 'infergrid_engine_assist{engine="a-0",model="a",state="on"} 1.0' in text
    assert 'infergrid_engine_assist{engine="b-0",model="b",state="off"} 0.0' in text
    out = app.ctl("status").stdout
    assert "assist a-0: on (flags: SGLang's own flags" in out, out
    assert "assist b-0: off" in out, out
