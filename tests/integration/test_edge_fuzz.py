"""Fuzzing the HTTP edge of a running appliance (issue 14.7): real daemons (``infergrid
serve``: front door, scheduler, supervisor) and the simulated engine, thousands of
generated requests — bodies from random bytes to nearly valid OpenAI requests, odd
headers, odd paths and methods, and raw bytes that are not HTTP at all.

Every answer must be an OpenAI error object (``{"error": {message, type, param,
code}}``) or a valid answer (a completion, a stream ending in ``[DONE]``, the model
list, ``/health``, ``/metrics``); no answer may be a 5xx; and afterwards every daemon
is the same process it was before, and the appliance is healthy.

``INFERGRID_FUZZ_EXAMPLES`` raises the number of examples (default 1,500, about 30 s
here); the default run is derandomised, so CI sees the same inputs every time, while a
larger run explores new ones.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from typing import Any

import pytest
from appliance import DEMO_TENANTS, Appliance, sim_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("INFERGRID_FUZZ_EXAMPLES", "1500"))
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
KEY = "sk-quiet-demo"

# ------------------------------------------------------------------ strategies
_text = st.text(max_size=12)
_json_leaf = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
              | st.floats(allow_nan=True, allow_infinity=True) | _text)
_json = st.recursive(_json_leaf, lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(_text, c, max_size=4), max_leaves=12)
_ints = st.integers(-5, 40) | st.integers(-2**65, 2**65) | st.sampled_from([0, 1, 16, 10**9])
_maybe = st.one_of

_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _maybe(_text, st.none(), _json)}),
    st.fixed_dictionaries({"text": _maybe(_text, st.none())}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "file", "x"]),
                           "image_url": _json}),
    _json,
)
_content = _maybe(_text, st.none(), st.lists(_part, max_size=3), _json)
_message = _maybe(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]),
                           "content": _content},
                          optional={"name": _json, "tool_calls": _json,
                                    "tool_call_id": _json}),
    _json,
)
_common = {"model": _maybe(st.just("demo"), st.just("demo"), _text, _json),
           "max_tokens": _maybe(st.integers(1, 12), _ints, _json),
           "stream": _maybe(st.booleans(), _json),
           "stream_options": _maybe(st.just({"include_usage": True}), _json),
           "priority": _ints, "n": _maybe(st.just(1), _ints), "temperature": _json,
           "stop": _json, "tools": _json, "response_format": _json, "user": _json,
           "seed": _ints, "logprobs": _json, "suffix": _json,
           "max_completion_tokens": _maybe(st.integers(1, 12), _ints)}
_optional = {k: v for k, v in _common.items() if k != "model"}
_chat = st.fixed_dictionaries(
    {"model": _common["model"],
     "messages": _maybe(st.lists(_message, min_size=1, max_size=3), _json)}, optional=_optional)
_completion = st.fixed_dictionaries(
    {"model": _common["model"],
     "prompt": _maybe(_text, st.lists(st.integers(-10, 70000), min_size=1, max_size=6),
                      st.lists(_text, max_size=3), _json)}, optional=_optional)


def _encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # NaN/Infinity come out as invalid JSON: also tested


_body = st.one_of(
    _chat.map(_encode), _chat.map(_encode), _completion.map(_encode), _completion.map(_encode),
    _json.map(_encode), st.binary(max_size=64),
    _chat.map(lambda b: _encode(b)[: max(1, len(_encode(b)) // 2)]),  # cut short
    st.just(b"[" * 3000 + b"]" * 3000),
    st.just(b'{"model":"demo","messages":[{"role":"user","content":' + b"[" * 600
            + b"]" * 600 + b"}]}"),
)
_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255,
                                     blacklist_characters="\r\n\x7f"), max_size=30)
_auth = st.one_of(st.just(f"Bearer {KEY}"), st.just(f"Bearer {KEY}"), st.just(f"Bearer {KEY}"),
                  st.just("Bearer sk-wrong"), st.just("Bearer "), st.just("Basic Zm9vOmJhcg=="),
                  st.just(f"bearer   {KEY}  "), _header_text, st.none(),
                  _header_text.map(lambda t: "Bearer " + t))  # bytes 0x80-0xff: not UTF-8
_ctype = st.one_of(st.just("application/json"), st.just("application/json"), st.none(),
                   st.just("application/json; charset=utf-8"), st.just("text/plain"),
                   st.just("application/x-www-form-urlencoded"),
                   st.just("multipart/form-data; boundary=zz"), _header_text)
_extra = st.dictionaries(st.from_regex(r"\AX-[A-Za-z0-9-]{1,12}\Z"), _header_text, max_size=3)
# nearly valid: a real client's request with now and then a field out of line
_good_msg = st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                   "content": st.text(min_size=1, max_size=40)})
_good_extra = st.dictionaries(st.sampled_from(sorted(_optional)), _json | _ints, max_size=1)
_good_chat = st.builds(
    lambda msgs, n, stream, extra: {"model": "demo", "messages": msgs, "max_tokens": n,
                                    "stream": stream, **extra},
    st.lists(_good_msg, min_size=1, max_size=3), st.integers(1, 12), st.booleans(),
    st.one_of(st.just({}), st.just({}), _good_extra))
_good_completion = st.builds(
    lambda prompt, n, stream, extra: {"model": "demo", "prompt": prompt, "max_tokens": n,
                                      "stream": stream, **extra},
    st.text(min_size=1, max_size=60) | st.lists(st.integers(0, 30000), min_size=1, max_size=8),
    st.integers(1, 12), st.booleans(), st.one_of(st.just({}), st.just({}), _good_extra))
_good = st.builds(
    lambda path_body, ctype: {"method": "POST", "path": path_body[0], "auth": f"Bearer {KEY}",
                              "ctype": ctype, "extra": {}, "body": _encode(path_body[1])},
    st.one_of(_good_chat.map(lambda b: (CHAT, b)), _good_completion.map(
        lambda b: (COMPLETIONS, b))),
    st.sampled_from(["application/json", "application/json; charset=utf-8"]) | st.none())
_wild = st.fixed_dictionaries({
    "method": st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    "path": st.sampled_from([CHAT] * 6 + [COMPLETIONS] * 4
                            + ["/v1/models", "/health", "/metrics", "/", "/v1/chat",
                               "/v1/embeddings", "/v1/chat/completions/", "/%2e%2e/etc",
                               "/v1/models?x=1"]),
    "auth": _auth, "ctype": _ctype, "extra": _extra, "body": _body,
})
_request = st.one_of(_good, _wild)


# ------------------------------------------------------------------ checking answers
def _is_error(data: bytes) -> bool:
    try:
        err = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
            and isinstance(err["message"], str) and isinstance(err["code"], str))


def _check(req: dict[str, Any], status: int, headers: Any, data: bytes) -> None:
    where = f"{req['method']} {req['path']} → {status}: {data[:300]!r}"
    assert status < 500, where
    if status != 200:
        assert _is_error(data), where
        return
    ctype = headers.get("Content-Type", "")
    path = req["path"].split("?")[0]
    if path == "/metrics":
        assert b"infergrid_requests" in data or b"# HELP" in data, where
    elif path == "/health":
        assert json.loads(data)["status"] == "ok", where
    elif path == "/v1/models":
        assert json.loads(data)["object"] == "list", where
    elif ctype.startswith("text/event-stream"):
        events = [e for e in data.split(b"\n\n") if e.strip()]
        assert events and events[-1] == b"data: [DONE]", where
        for ev in events[:-1]:
            chunk = json.loads(ev[len(b"data: "):])
            assert "error" not in chunk, where  # a stream that broke mid-way
            assert chunk.get("choices") is not None or chunk.get("usage"), where
    else:
        body = json.loads(data)
        assert isinstance(body.get("choices"), list) and body["choices"], where


class Client:
    """One kept-alive connection (http.client), reopened when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(self, req: dict[str, Any]) -> tuple[int, Any, bytes]:
        headers = dict(req["extra"])
        if req["auth"] is not None:
            headers["Authorization"] = req["auth"]
        if req["ctype"] is not None:
            headers["Content-Type"] = req["ctype"]
        body = req["body"] if req["method"] in ("POST", "PUT", "PATCH") else None
        for attempt in range(2):
            try:
                self.conn.request(req["method"], req["path"], body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return r.status, r.headers, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # a kept-alive connection the server closed between requests: once more
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _pids(app: Appliance) -> dict[str, list[int]]:
    return {role: app.daemon_pids(role) for role in ("frontdoor", "scheduler", "supervisor")}


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from appliance import short_tmpdir

    app = Appliance({"models": [sim_model(max_num_seqs=16)], "tenants": DEMO_TENANTS,
                     "limits": {"max_body_bytes": 65536, "max_tokens_cap": 16,
                                "default_max_tokens": 4},
                     "logging": {"requests": False}}, short_tmpdir())
    app.start()
    yield app
    app.stop()


def test_fuzz_requests_never_5xx_and_always_openai_shaped(fuzz_app: Appliance) -> None:
    app = fuzz_app
    before = _pids(app)
    client = Client(app.port)
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              derandomize=EXAMPLES <= 1500,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_request)
    def one(req: dict[str, Any]) -> None:
        status, headers, data = client.send(req)
        seen[status] = seen.get(status, 0) + 1
        _check(req, status, headers, data)

    t0 = time.monotonic()
    one()
    took = time.monotonic() - t0
    n = sum(seen.values())
    print(f"\nfuzz: {n} requests in {took:.1f}s, answers by status: {dict(sorted(seen.items()))}")
    assert n >= EXAMPLES * 0.9
    assert seen.get(200, 0) >= n * 0.1, seen  # a real share of them were served
    assert sum(v for k, v in seen.items() if 400 <= k < 500) >= n * 0.3, seen
    assert _pids(app) == before, "a daemon was restarted"
    app.wait_healthy(5)
    assert "Traceback" not in app.logs(), app.logs()[-3000:]


_raw = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.builds(lambda m, p, h: m + b" " + p + b" HTTP/1.1\r\n" + h + b"\r\n\r\n",
              st.sampled_from([b"GET", b"POST", b"G\x00T", b"", b"\xff\xfe"]),
              st.sampled_from([b"/health", b"/v1/chat/completions", b"", b"*", b"/\x00"]),
              st.binary(max_size=120)),
    st.just(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"),
    st.just(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    st.just(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n"),
    st.just(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\nzz\r\n"),
)


def test_fuzz_raw_bytes_get_an_openai_error_or_a_closed_connection(fuzz_app: Appliance) -> None:
    app = fuzz_app
    before = _pids(app)
    statuses: dict[int, int] = {}

    @settings(max_examples=max(200, EXAMPLES // 5), deadline=None, database=None,
              derandomize=EXAMPLES <= 1500, suppress_health_check=[HealthCheck.too_slow])
    @given(_raw)
    @example(b"GARBAGE\r\n\r\n")  # always among them, whatever the generator picks
    @example(b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    @example(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
    def one(raw: bytes) -> None:
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as s:
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                return  # closed on us while sending: an answer of its own
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        if not data:
            return  # closed without an answer (nothing parseable arrived)
        head, _, body = data.partition(b"\r\n\r\n")  # the first answer only
        status = int(head.split(b" ", 2)[1])
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, data[:300]
        length = [int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")[1:]
                  if h.lower().startswith(b"content-length:")]
        assert length, data[:300]
        if status != 200:
            assert _is_error(body[:length[0]]), data[:400]

    one()
    print(f"\nraw fuzz: answers by status: {dict(sorted(statuses.items()))}")
    assert statuses.get(400, 0) >= 3
    assert _pids(app) == before
    app.wait_healthy(5)
