"""The decode-free fast path of the SSE relay (issue 17.2): same accounting, same bytes.

Every stream here is fed twice: once as it is, once with the fast path switched off
(every chunk decoded); the bytes sent on, the token count, the first-token time and the
usage must be identical, and for a stream of the shape engines send the fast path must
actually be taken (so a regression to "decode everything" shows too).
"""

from __future__ import annotations

import msgspec
import pytest

from infergridd.frontdoor import sse
from infergridd.frontdoor.sse import StreamAccount

enc = msgspec.json.encode
DONE = b"data: [DONE]\n\n"


def ev(obj: object) -> bytes:
    return b"data: " + enc(obj) + b"\n\n"


def chunk(delta: dict[str, object], created: int = 1000, **extra: object) -> bytes:
    return ev({"id": "c", "object": "chat.completion.chunk", "created": created, "model": "m",
               "choices": [{"index": 0, "delta": delta, "logprobs": None,
                            "finish_reason": None}], **extra})


USAGE = ev({"id": "c", "created": 1000, "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 4}})
STREAMS = {
    "plain": chunk({"role": "assistant", "content": ""}) + b"".join(
        chunk({"content": t}) for t in ("a", 'say "usage"', "\\n", "é")) + USAGE + DONE,
    "reasoning": chunk({"reasoning_content": "hm"}) + chunk({"content": "", "reasoning": "x"})
    + chunk({"content": "ok"}) + DONE,
    "tools": chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}) + DONE,
    "completions": ev({"id": "c", "created": 1000, "choices": [
        {"index": 0, "text": "hi", "finish_reason": None}]}) + ev(
        {"id": "c", "created": 1000, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    + DONE,
    "n2": ev({"id": "c", "created": 1000, "choices": [
        {"index": 1, "delta": {"content": "b"}}, {"index": 0, "delta": {"content": ""}}]}) + DONE,
    "error": chunk({"content": "a"}) + ev({"error": {"message": "boom", "code": 500}}) + DONE,
    "spaced": b'data: {"created": 1000, "choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
    + DONE,
    "continuous_usage": chunk({"content": "a"}) + b"".join(
        chunk({"content": t}, usage={"prompt_tokens": 7, "completion_tokens": k})
        for k, t in enumerate("bc", 2)) + DONE,
    # same bytes around something that is not one plain string: decoded
    "not_a_string": chunk({"content": "a"}) + chunk({"content": "b"}).replace(
        b'"content":"b"', b'"content":"b","usage":{"prompt_tokens":9,"completion_tokens":9}')
    + DONE,
    "created_changes": chunk({"content": "a"}, created=1000) + chunk({"content": "b"}, 1001) + DONE,
}


def run(data: bytes, created: int, piece: int) -> tuple[bytes, int, list[int], float | None,
                                                           int | None, str]:
    seen: list[int] = []
    ticks = iter(range(1000))
    acct = StreamAccount(0.0, False, seen.append, clock=lambda: float(next(ticks)),
                         created=created)
    out = b"".join(acct.feed(data[i:i + piece]) for i in range(0, len(data), piece))
    out += acct.flush()
    return out, acct.completion_tokens, seen, acct.ttft_s, acct.usage_prompt, acct.error


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("created", [0, 1000, 1234])
@pytest.mark.parametrize("piece", [5, 10_000])
def test_fast_path_accounts_exactly_like_the_decode(name: str, created: int, piece: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fast = run(STREAMS[name], created, piece)
    monkeypatch.setattr(sse, "FAST", False)
    slow = run(STREAMS[name], created, piece)
    assert fast == slow
    if created == 1234:
        assert b'"created":1000' not in fast[0] and b'"created":1001' not in fast[0]


def test_created_rewritten_in_bytes_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []
    real = sse._decode_chunk

    def counting(payload: bytes) -> object:
        decoded.append(payload)
        return real(payload)

    monkeypatch.setattr(sse, "_decode_chunk", counting)
    data = b"".join(chunk({"content": t}) for t in ("a", "b", "c", "d", 'e"q', "f")) + DONE
    out, n, *_ = run(data, 1234, 10_000)
    # the first chunk teaches the shape; the one with an escaped quote is decoded
    assert n == 6 and len(decoded) == 2 and b'q' in decoded[1]
    assert out.count(b'"created":1234') == 6 and b'"created":1000' not in out
    assert out == data.replace(b'"created":1000', b'"created":1234')
