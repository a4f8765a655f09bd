"""Reading an engine's SSE stream as it passes through: framing, token counting, usage.

The relay forwards whatever bytes the engine sent as soon as they form whole
events, so nothing waits for more than the event it belongs to.  On the way
it learns the three things InferGrid needs — when the first token came, how
many tokens have streamed (for ``Progress``), and the engine's final
``usage`` (for ``Done``) — and drops the usage-only chunk that InferGrid
asked for on its own behalf, unless the client asked for it too.  Two rewrites,
both rare or cheap: each chunk's ``created`` becomes the request's time (an
engine sets its own, at dispatch or worse), and an engine's error event becomes
InferGrid's error object (``errors.engine_error``).

Chunks are decoded into small typed structs: msgspec then skips every field
it was not asked for without building Python objects, which keeps the cost
per chunk to about a microsecond.  Most chunks are not decoded at all: the first
plain token chunk teaches the stream's *shape* (its bytes before and after the
token's string, ``StreamAccount._learn``), and every later event that is that shape
around one plain string is a token and nothing else — counted and forwarded (its
``created`` swapped by concatenation) without a decode.  Measured per event on a
35-event stream: 2.0 µs against 2.2 µs decoding all, 2.2 against 2.8 µs when
``created`` is rewritten (issue 17; bench/results/frontdoor-profile.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import msgspec

from .errors import engine_error


class _Delta(msgspec.Struct):
    content: Any = None
    reasoning_content: Any = None
    reasoning: Any = None
    tool_calls: Any = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: Any = None


class Usage(msgspec.Struct):
    """The engine's own token counts: a stream's usage chunk, or a whole response's."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: Usage | None = None
    error: Any = None
    object: Any = None  # "error": an engine's flat error object (older vLLM, SGLang)
    created: Any = None


class Whole(msgspec.Struct):
    """What InferGrid reads of a non-streamed response."""

    usage: Usage | None = None
    created: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_whole = msgspec.json.Decoder(Whole).decode
_CREATED = re.compile(rb'"created"\s*:\s*-?[0-9]+')


def set_created(data: bytes, old: object, created: int) -> bytes:
    """``data`` (one chunk or a whole response) with its top-level ``created`` (``old``)
    replaced by ``created``: the request's time, not whatever the engine put there.
    The first ``"created":`` is the top-level one (a string's quotes are escaped)."""
    if not created or old == created or isinstance(old, bool) or not isinstance(old, int):
        return data
    new = b'"created":%d' % created
    was = b'"created":%d' % old
    if was in data:  # the usual spelling, without spaces
        return data.replace(was, new, 1)
    return _CREATED.sub(new, data, count=1)


def normalised_error(payload: bytes) -> bytes:
    """An engine's in-stream error event's data as InferGrid's error object."""
    try:
        data = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload
    err = data.get("error") if isinstance(data, dict) else None
    code = (err if isinstance(err, dict) else data if isinstance(data, dict) else {}).get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    return msgspec.json.encode(engine_error(status, data).body())


def body_whole(body: bytes) -> Whole | None:
    """``usage`` and ``created`` of a non-streamed response; None if it is not JSON."""
    try:
        return _decode_whole(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _has_token(choice: _Choice) -> bool:
    """A chunk that carries generated output (text, reasoning or a tool call piece)."""
    if choice.text:
        return True
    d = choice.delta
    return d is not None and bool(d.content or d.reasoning_content or d.reasoning or d.tool_calls)


def _payload(event: bytes) -> bytes:
    """The ``data`` of one event (several ``data:`` lines are joined with newlines)."""
    if event.startswith(b"data: ") and b"\n" not in event:  # the usual case, no copies
        return event[6:]
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            v = line[5:]
            parts.append(v[1:] if v.startswith(b" ") else v)
    return b"\n".join(parts)


class StreamAccount:
    """Splits engine bytes into events, forwards them, and counts what went by.

    ``feed`` returns the bytes to send to the client now (whole events only);
    ``flush`` returns what is left at the end of the stream.  ``completion_tokens``
    counts one per chunk with output until the engine's own ``usage`` replaces it.
    """

    __slots__ = ("client_wants_usage", "on_tokens", "clock", "t0", "_buf", "count",
                 "usage_prompt", "usage_completion", "error", "ttft_s", "itl_s", "_last",
                 "done", "created", "_shape")

    def __init__(self, t0: float, client_wants_usage: bool,
                 on_tokens: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, created: int = 0) -> None:
        self.created = created  # every chunk's ``created`` becomes this (0: left as sent)
        #: (bytes before a token's string, the same with ``created`` rewritten, after)
        self._shape: tuple[bytes, bytes, bytes] | None = None
        self.client_wants_usage = client_wants_usage
        self.on_tokens = on_tokens
        self.clock = clock
        self.t0 = t0
        self._buf = b""
        self.count = 0  # chunks with output seen
        self.usage_prompt: int | None = None
        self.usage_completion: int | None = None
        self.error = ""  # the engine's in-stream error, if it sent one
        self.ttft_s: float | None = None
        self.itl_s: list[float] = []
        self._last = 0.0
        self.done = False  # saw data: [DONE]

    @property
    def completion_tokens(self) -> int:
        return self.usage_completion if self.usage_completion is not None else self.count

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:  # CRLF framing is legal SSE; normalise so one split rule works
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2:]
        whole = buf[:end]
        if b"\n\n" not in whole:  # one event: forward the bytes as they came
            ev = self._event(whole)
            if ev is None:
                return b""
            return buf[:end + 2] if ev is whole else ev + b"\n\n"
        out = []
        for ev in whole.split(b"\n\n"):
            kept = self._event(ev) if ev else None
            if kept is not None:
                out.append(kept + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        """At the end of the engine's stream: an unterminated last event still counts."""
        rest, self._buf = self._buf.strip(b"\n"), b""
        kept = self._event(rest) if rest else None
        return b"" if kept is None else kept + b"\n\n"

    def _event(self, event: bytes) -> bytes | None:
        """Account for one event; returns what to send on (``event`` itself unless its
        ``created`` or an engine error was rewritten), None when it must not be sent."""
        payload = _payload(event)
        if not payload:
            return event  # comments, keep-alives: pass through untouched
        if payload == b"[DONE]":
            self.done = True
            return event
        shape = self._shape
        if shape is not None and event.startswith(shape[0]) and event.endswith(shape[2]):
            pre, out, suf = shape  # the common chunk: the stream's shape, no decode
            mid = event[len(pre):len(event) - len(suf)]
            if _plain(mid):
                self._token()
                return event if out is pre else out + mid + suf
        try:
            chunk = _decode_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return event  # not ours to judge: the client gets it as the engine sent it
        if chunk.error or chunk.object == "error":
            if not self.error:  # the first one: the cause
                self.error = str(chunk.error or payload[:300].decode(errors="replace"))[:300]
            return b"data: " + normalised_error(payload)
        if FAST and chunk.choices:
            self._learn(event, chunk)
        if self.created and chunk.created is not None:
            event = set_created(event, chunk.created, self.created)
        if chunk.usage is not None:
            self.usage_prompt = chunk.usage.prompt_tokens
            self.usage_completion = chunk.usage.completion_tokens
        choices = chunk.choices
        if choices:
            if _has_token(choices[0]):
                self._token()
            return event
        # a chunk with no choices and a usage is the one we asked for on our own account
        return event if chunk.usage is None or self.client_wants_usage else None

    def _token(self) -> None:
        """One chunk with output went by: first-token time, inter-token gap, count."""
        now = self.clock()
        if self.ttft_s is None:
            self.ttft_s = now - self.t0
        else:
            self.itl_s.append(now - self._last)
        self._last = now
        self.count += 1
        if self.on_tokens is not None:
            self.on_tokens(self.count)

    def _learn(self, event: bytes, chunk: _Chunk) -> None:
        """From a decoded chunk with one choice whose output is plain ``content`` (or
        ``text``): the bytes around that string, the stream's *shape*.  A later event
        that is the same bytes around one plain JSON string is then a token chunk with
        nothing else to read (no usage, no error: the rest is byte-identical), and
        needs no decode; its ``created`` rewrite is the learned prefix's."""
        ch = chunk.choices[0] if chunk.choices and len(chunk.choices) == 1 else None
        if ch is None or chunk.usage is not None or chunk.error:
            return
        d = ch.delta
        if d is not None and isinstance(d.content, str) and d.content and not (
                d.reasoning_content or d.reasoning or d.tool_calls):
            marker = b'"delta":{"content":'
        elif d is None and isinstance(ch.text, str) and ch.text:
            marker = b'"text":'
        else:
            return
        i = event.find(marker)
        if i < 0 or event.find(marker, i + 1) >= 0:
            return
        start = i + len(marker)
        end = event.find(b'"', start + 1)
        if event[start:start + 1] != b'"' or end < 0 or event[end - 1] == 0x5C:  # a \"
            return
        pre, suf = event[:start], event[end + 1:]
        out = set_created(pre, chunk.created, self.created) if self.created else pre
        self._shape = (pre, out, suf)


def _plain(mid: bytes) -> bool:
    """``mid`` is one non-empty JSON string without escaped quotes (so nothing else)."""
    return len(mid) > 2 and mid[0] == 0x22 and mid[-1] == 0x22 and mid.count(b'"') == 2


#: off only to compare with the full decode (tests, benchmarks)
FAST = True
