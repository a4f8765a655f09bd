"""The waiting room (frontdoor/room.py), the body reader (body.py) and the request checks
that used to answer 500: each bound refuses with the right OpenAI error, and every
refusal or departure gives back exactly what it held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from infergridd.config import Limits
from infergridd.frontdoor.body import read_body
from infergridd.frontdoor.errors import ApiError, error_middleware
from infergridd.frontdoor.room import Room
from infergridd.frontdoor.validate import CHAT, ParsedRequest, parse

KIB = 1024


def room(away_limit: int = 0, **kw: Any) -> Room:
    lim = Limits(max_body_bytes=10 * KIB, max_queued_bytes=kw.pop("total", 100 * KIB),
                 max_queued_bytes_per_tenant=kw.pop("per_tenant", 30 * KIB), **kw)
    return Room(lim, lambda tenant: away_limit)


def test_a_tenant_over_its_bytes_gets_429_and_others_still_fit() -> None:
    r = room()
    held = []
    for _ in range(3):
        t = r.enter("flood")
        t.reserve(10 * KIB)
        held.append(t)
    t = r.enter("flood")
    with pytest.raises(ApiError) as e:
        t.reserve(1)
    assert (e.value.status, e.value.code, e.value.retry_after_s) == (429, "tenant_queue_full", 1.0)
    t.leave()
    quiet = r.enter("quiet")
    quiet.reserve(10 * KIB)  # another tenant is not affected
    assert r.bytes == 40 * KIB and r.tenant_bytes == {"flood": 30 * KIB, "quiet": 10 * KIB}


def test_the_whole_room_full_is_503_overloaded() -> None:
    r = room(total=25 * KIB)
    a, b = r.enter("a"), r.enter("b")
    a.reserve(10 * KIB)
    b.reserve(10 * KIB)
    c = r.enter("c")
    with pytest.raises(ApiError) as e:
        c.reserve(10 * KIB)
    assert (e.value.status, e.value.code) == (503, "overloaded")


def test_request_counts_in_all_and_per_tenant_while_the_scheduler_is_away() -> None:
    r = room(away_limit=2, max_queued_requests=3)
    r.enter("a"), r.enter("a")
    with pytest.raises(ApiError) as e:
        r.enter("a")
    assert (e.value.status, e.value.code) == (429, "tenant_queue_full")
    r.enter("b")
    with pytest.raises(ApiError) as e:
        r.enter("c")
    assert (e.value.status, e.value.code) == (503, "overloaded")
    connected = room(away_limit=0)  # the scheduler applies the per-tenant count itself
    for _ in range(50):
        connected.enter("a")


def test_leaving_gives_back_exactly_once() -> None:
    r = room()
    with r.enter("a") as t:
        t.reserve(4 * KIB)
        t.reserve(2 * KIB)  # never less than held
        assert r.bytes == 4 * KIB
        t.leave()
        t.reserve(9 * KIB)  # after leaving nothing is held again
    assert (r.bytes, r.requests, r.tenant_bytes, r.tenant_requests) == (0, 0, {}, {})


# --------------------------------------------------------------------------- reading a body


@pytest.fixture
async def body_server() -> AsyncIterator[tuple[str, Room]]:
    r = room()
    lim = Limits(max_body_bytes=10 * KIB, body_timeout_s=0.5)

    async def handler(request: web.Request) -> web.Response:
        with r.enter("t") as ticket:
            raw = await read_body(request, lim, ticket)
            return web.json_response({"n": len(raw), "held": r.bytes})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site.port}/", r
    await runner.cleanup()


async def test_body_is_counted_while_held_and_given_back(body_server: tuple[str, Room]) -> None:
    url, r = body_server
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"x": "y" * 1000}) as resp:
            got = await resp.json()
    assert got["n"] > 1000 and got["held"] == got["n"]
    assert r.bytes == 0 and r.requests == 0


async def test_content_type_other_than_json_is_415(body_server: tuple[str, Room]) -> None:
    url, _ = body_server
    async with aiohttp.ClientSession() as http:
        for ctype, status in (("application/x-www-form-urlencoded", 415), ("text/plain", 415),
                              ("multipart/form-data; boundary=x", 415),
                              ("application/json; charset=utf-8", 200),
                              ("application/vnd.api+json", 200)):
            async with http.post(url, data=b"{}", headers={"Content-Type": ctype}) as resp:
                assert resp.status == status, ctype
                if status == 415:
                    err = (await resp.json())["error"]
                    assert (err["code"], err["type"]) == ("unsupported_media_type",
                                                          "invalid_request_error")


async def test_a_body_that_trickles_is_cut_off_with_408(body_server: tuple[str, Room]) -> None:
    url, r = body_server

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" "
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=trickle(),
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 408
            assert (await resp.json())["error"]["code"] == "request_timeout"
    assert r.bytes == 0


async def test_declared_length_over_the_tenant_bound_is_refused_before_reading(
        body_server: tuple[str, Room]) -> None:
    url, r = body_server
    t = r.enter("t")  # the same tenant already holds 25 KiB: 10 more do not fit 30
    t.reserve(25 * KIB)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=b"x" * (8 * KIB),
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 429
            assert (await resp.json())["error"]["code"] == "tenant_queue_full"
    t.leave()
    assert r.bytes == 0


# --------------------------------------------------------------------------- checks


LIMITS = Limits()


def _parse(body: Any) -> ParsedRequest:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return parse(CHAT, raw, LIMITS, {"demo"})


def _code(body: Any) -> tuple[int, str]:
    with pytest.raises(ApiError) as e:
        _parse(body)
    return e.value.status, e.value.code


def test_deeply_nested_json_is_400_not_500() -> None:
    assert _code(b"[" * 100_000 + b"]" * 100_000) == (400, "invalid_json")
    deep = b'{"model":"demo","messages":[{"role":"user","content":"hi"}],"x":' + \
        b"[" * 5000 + b"]" * 5000 + b"}"
    assert _code(deep) == (400, "invalid_json")


@pytest.mark.parametrize("part", [{"type": "text", "text": None}, {"text": None},
                                  {"type": "text"}, {"type": 5, "text": "x"}, None, "text"])
def test_content_parts_that_are_not_text_are_400(part: Any) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": [part]}]}
    assert _code(body) == (400, "invalid_value")


def test_image_parts_and_text_parts_pass() -> None:
    req = _parse({"model": "demo", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})
    assert req.prompt_tokens > 0


@pytest.mark.parametrize("priority", [2**63, -2**63 - 1, 2**31, 10**30])
def test_priority_out_of_range_is_400(priority: int) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "x"}], "priority": priority}
    assert _code(body) == (400, "invalid_value")


def test_the_body_is_kept_once_as_bytes() -> None:
    req = _parse({"model": "demo", "messages": [{"role": "user", "content": "hi"}],
                  "priority": 3, "junk": [{}] * 100})
    assert isinstance(req.raw, bytes)
    assert not any(isinstance(getattr(req, f), dict) for f in req.__slots__)  # no decoded copy
    body = req.body
    assert body["max_tokens"] == LIMITS.default_max_tokens and "priority" not in body
    body["model"] = "changed"  # a caller's copy, not the request's
    assert req.body["model"] == "demo"
    req.body = {**req.body, "extra": 1}  # the allowlist's assignment re-encodes
    assert isinstance(req.raw, bytes) and req.body["extra"] == 1
    untouched = msgspec.json.encode({"model": "demo", "max_tokens": 5,
                                     "messages": [{"role": "user", "content": "x"}]})
    assert _parse(untouched).raw is not None and _parse(untouched).raw == untouched


def test_a_key_that_is_not_utf8_is_401_not_500() -> None:
    """aiohttp hands header bytes that are not UTF-8 over as surrogates; hashing them with
    a plain ``encode()`` raised (the fuzz test found it: ``Bearer \\x80`` got a 500)."""
    import hashlib

    from infergridd import config
    from infergridd.frontdoor.auth import Authenticator
    from infergridd.protocol import AuthEntry

    a = Authenticator(config.loads("version: 1\ntenants: [{name: a, keys: [sk-a]}]"))
    a.update(1, [AuthEntry(hashlib.sha256(b"sk-a").hexdigest(), "a")])
    for header in ("Bearer \udc80", "Bearer sk-\udcff\udcfe", "BEARER \udce9"):
        with pytest.raises(ApiError) as e:
            a.tenant(header)
        assert (e.value.status, e.value.code) == (401, "invalid_api_key")
    assert a.tenant("Bearer sk-a") == "a"
