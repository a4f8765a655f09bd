"""Request validation and authentication: each bad input gets its own clear 4xx."""

from __future__ import annotations

import json

import msgspec
import pytest

from infergridd import config
from infergridd.frontdoor.errors import ApiError
from infergridd.frontdoor.relay import engine_body
from infergridd.frontdoor.validate import CHAT, COMPLETIONS, parse
from infergridd.protocol import Dispatch

LIMITS = config.Limits(max_tokens_cap=1000, default_max_tokens=64)
MODELS = {"demo"}


def chat(**kw):
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], **kw}
    return json.dumps(body).encode()


@pytest.mark.parametrize("raw,status,code,param", [
    (b"{nope", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_request", None),
    (json.dumps({"messages": []}).encode(), 400, "invalid_value", "model"),
    (chat(model="gpt-9"), 404, "model_not_found", "model"),
    (chat(messages=[]), 400, "invalid_value", "messages"),
    (chat(messages=["hi"]), 400, "invalid_value", "messages[0]"),
    (chat(messages=[{"role": "user"}]), 400, "invalid_value", "messages[0].content"),
    (chat(messages=[{"role": "user", "content": 5}]), 400, "invalid_value",
     "messages[0].content"),
    (chat(max_tokens=-1), 400, "invalid_value", "max_tokens"),
    (chat(max_tokens=0), 400, "invalid_value", "max_tokens"),
    (chat(max_tokens=10**9), 400, "invalid_value", "max_tokens"),
    (chat(max_tokens="5"), 400, "invalid_value", "max_tokens"),
    (chat(max_tokens=True), 400, "invalid_value", "max_tokens"),
    (chat(max_completion_tokens=5000), 400, "invalid_value", "max_completion_tokens"),
    (chat(stream="yes"), 400, "invalid_value", "stream"),
    (chat(stream_options=3), 400, "invalid_value", "stream_options"),
    (chat(n=2), 400, "unsupported_value", "n"),
])
def test_bad_chat_requests(raw, status, code, param) -> None:
    with pytest.raises(ApiError) as err:
        parse(CHAT, raw, LIMITS, MODELS)
    e = err.value
    assert (e.status, e.code, e.param) == (status, code, param)
    body = msgspec.json.decode(e.response().body)
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]


def test_completions_prompt_checks() -> None:
    for prompt in (None, [], 5, ["a", "b"]):
        with pytest.raises(ApiError):
            parse(COMPLETIONS, json.dumps({"model": "demo", "prompt": prompt}).encode(),
                  LIMITS, MODELS)
    r = parse(COMPLETIONS, json.dumps({"model": "demo", "prompt": [1, 2, 3]}).encode(),
              LIMITS, MODELS)
    assert r.prompt_tokens == 3


def test_defaults_fill_max_tokens_and_strip_client_priority() -> None:
    r = parse(CHAT, chat(priority=-100), LIMITS, MODELS)
    assert r.max_tokens == 64 and r.body["max_tokens"] == 64
    assert "priority" not in r.body  # a client cannot jump the engine queue
    assert not r.stream and not r.client_wants_usage


def test_engine_body_forces_usage_and_adds_priority() -> None:
    r = parse(CHAT, chat(stream=True), LIMITS, MODELS)
    d = Dispatch(request_id="r", engine_id="e", endpoint="http://x", engine_priority=-3)
    b = engine_body(r, d)
    assert b["stream_options"] == {"include_usage": True} and b["priority"] == -3
    assert "stream_options" not in r.body  # the client's body is not changed
    b2 = engine_body(r, Dispatch(request_id="r", engine_id="e", endpoint="http://x"))
    assert "priority" not in b2


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    resp = ApiError(429, "rate_limit_exceeded", "slow down", retry_after_s=1.2).response()
    assert resp.headers["Retry-After"] == "2"


# Authentication: tests/unit/frontdoor/test_frontdoor_auth.py
