"""SSE pass-through: framing across reads, token counting, usage, and usage-chunk stripping."""

from __future__ import annotations

import json

import msgspec
import pytest
from aiohttp import web

from infergridd.frontdoor.errors import ApiError, error_middleware
from infergridd.frontdoor.sse import StreamAccount, set_created


def ev(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def content(text: str) -> bytes:
    return ev({"id": "x", "choices": [{"index": 0, "delta": {"content": text},
                                       "finish_reason": None}]})


ROLE = ev({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
USAGE = ev({"id": "x", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3,
                                                "total_tokens": 14}})
DONE = b"data: [DONE]\n\n"
STREAM = ROLE + content("a") + content("b") + content("c") + USAGE + DONE


def run(data: bytes, wants_usage: bool, piece: int) -> tuple[StreamAccount, bytes, list[int]]:
    seen: list[int] = []
    ticks = iter(range(1000))
    acct = StreamAccount(0.0, wants_usage, seen.append, clock=lambda: float(next(ticks)))
    out = b"".join(acct.feed(data[i:i + piece]) for i in range(0, len(data), piece))
    return acct, out + acct.flush(), seen


@pytest.mark.parametrize("piece", [1, 7, 64, 10_000])
def test_usage_chunk_stripped_unless_the_client_asked(piece: int) -> None:
    acct, out, seen = run(STREAM, wants_usage=False, piece=piece)
    assert out == ROLE + content("a") + content("b") + content("c") + DONE
    assert seen == [1, 2, 3]
    assert (acct.usage_prompt, acct.completion_tokens, acct.done) == (11, 3, True)
    assert acct.ttft_s == 0.0 and acct.itl_s == [1.0, 1.0]
    acct, out, _ = run(STREAM, wants_usage=True, piece=piece)
    assert out == STREAM


def test_usage_from_the_engine_corrects_the_chunk_count() -> None:
    data = content("ab") + ev({"choices": [], "usage": {"prompt_tokens": 5,
                                                        "completion_tokens": 2}}) + DONE
    acct, _, _ = run(data, False, 10_000)
    assert acct.count == 1 and acct.completion_tokens == 2
    acct, _, _ = run(content("a") + content("b"), False, 10_000)
    assert acct.completion_tokens == 2 and acct.usage_prompt is None and not acct.done


def test_crlf_framing_and_unterminated_last_event() -> None:
    data = (content("a") + DONE).replace(b"\n", b"\r\n")
    acct, out, _ = run(data[:-4], False, 5)  # the engine closed without the final blank line
    assert acct.count == 1 and acct.done
    assert out.endswith(b"data: [DONE]\n\n")


def test_comments_and_foreign_json_pass_through_engine_errors_are_ours() -> None:
    """An engine's error event reaches the client as InferGrid's error object (string
    ``code``, InferGrid's ``type``), whichever of the engines' shapes it came in."""
    err = ev({"error": {"message": "boom", "type": "InternalServerError", "code": 500}})
    flat = ev({"object": "error", "message": "too long: maximum context length is 10",
               "type": "BadRequestError", "param": None, "code": 400})
    passed = b": keep-alive\n\n" + b"data: not json\n\n"
    acct, out, _ = run(passed + err + flat + DONE, False, 3)
    assert "boom" in acct.error and acct.count == 0
    events = out.split(b"\n\n")
    assert out.startswith(passed) and events[-2:] == [b"data: [DONE]", b""]
    assert [json.loads(e[6:]) for e in events[2:4]] == [
        {"error": {"message": "boom", "type": "server_error", "param": None,
                   "code": "engine_error"}},
        {"error": {"message": "too long: maximum context length is 10",
                   "type": "invalid_request_error", "param": None,
                   "code": "context_length_exceeded"}}]


@pytest.mark.parametrize("piece", [1, 5, 10_000])
def test_created_becomes_the_request_time(piece: int) -> None:
    """Every chunk's ``created`` is the request's time, not the engine's (vLLM sets it
    at dispatch, the simulated engine did at its start); nothing else changes."""
    chunk = ev({"id": "x", "object": "chat.completion.chunk", "created": 1000,
                "choices": [{"index": 0, "delta": {"content": '"created":1000'}}]})
    spaced = chunk.replace(b'"created": 1000,', b'"created" : 1000 ,', 1)
    assert spaced != chunk
    acct = StreamAccount(0.0, False, created=1234)
    out = b"".join(acct.feed(d[i:i + piece]) for d in (chunk, spaced, DONE)
                   for i in range(0, len(d), piece)) + acct.flush()
    first, second, done, _ = out.split(b"\n\n")
    for e in (first, second):
        obj = json.loads(e[6:])
        assert obj["created"] == 1234 and obj["choices"][0]["delta"]["content"] == '"created":1000'
    assert done == b"data: [DONE]" and acct.count == 2
    assert set_created(b'{"created":5,"x":1}', 5, 9) == b'{"created":9,"x":1}'
    assert set_created(b'{"created":5}', 5, 0) == b'{"created":5}'  # 0: left as sent


def test_completions_text_and_tool_call_chunks_count_as_tokens() -> None:
    text = ev({"choices": [{"index": 0, "text": "hi", "finish_reason": None}]})
    tool = ev({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]})
    acct, _, _ = run(text + tool + ROLE, False, 10_000)
    assert acct.count == 2


def test_error_json_shape_and_sse_event() -> None:
    e = ApiError(503, "model_unavailable", "loading", retry_after_s=0.01, request_id="cmpl-1")
    resp = e.response()
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert resp.headers["X-Request-Id"] == "cmpl-1"
    assert resp.content_type == "application/json"
    body = msgspec.json.decode(resp.body)
    assert body == {"error": {"message": "loading", "type": "service_unavailable",
                              "param": None, "code": "model_unavailable"}}
    sse = ApiError(502, "engine_error", "broke").sse_event()
    first, second, rest = sse.split(b"\n\n")
    assert json.loads(first[6:])["error"]["code"] == "engine_error"
    assert second == b"data: [DONE]" and rest == b""


async def test_unexpected_exceptions_become_openai_500s() -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    from aiohttp.test_utils import make_mocked_request

    resp = await error_middleware(make_mocked_request("POST", "/v1/completions"), boom)
    assert resp.status == 500
    assert msgspec.json.decode(resp.body)["error"]["code"] == "internal_error"
