"""Reading an engine's SSE stream as it passes through: framing, token counting, usage.

The relay forwards whatever bytes the engine sent as soon as they form whole
events, so nothing waits for more than the event it belongs to.  On the way
it learns the three things InferGrid needs — when the first token came, how
many tokens have streamed (for ``Progress``), and the engine's final
``usage`` (for ``Done``) — and drops the usage-only chunk that InferGrid
asked for on its own behalf, unless the client asked for it too.

Chunks are decoded into small typed structs: msgspec then skips every field
it was not asked for without building Python objects, which keeps the cost
per chunk to about a microsecond.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec


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


class _Whole(msgspec.Struct):
    usage: Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_whole = msgspec.json.Decoder(_Whole).decode


def body_usage(body: bytes) -> Usage | None:
    """The ``usage`` of a non-streamed response; None if it has none or is not JSON."""
    try:
        return _decode_whole(body).usage
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
                 "done")

    def __init__(self, t0: float, client_wants_usage: bool,
                 on_tokens: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
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
            return buf[:end + 2] if self._event(whole) else b""
        out = [ev + b"\n\n" for ev in whole.split(b"\n\n") if ev and self._event(ev)]
        return b"".join(out)

    def flush(self) -> bytes:
        """At the end of the engine's stream: an unterminated last event still counts."""
        rest, self._buf = self._buf.strip(b"\n"), b""
        if rest and self._event(rest):
            return rest + b"\n\n"
        return b""

    def _event(self, event: bytes) -> bool:
        """Account for one event; False when it must not reach the client."""
        payload = _payload(event)
        if not payload:
            return True  # comments, keep-alives: pass through untouched
        if payload == b"[DONE]":
            self.done = True
            return True
        try:
            chunk = _decode_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return True  # not ours to judge: the client gets it as the engine sent it
        if chunk.error:
            self.error = str(chunk.error)[:300]
        if chunk.usage is not None:
            self.usage_prompt = chunk.usage.prompt_tokens
            self.usage_completion = chunk.usage.completion_tokens
        choices = chunk.choices
        if choices:
            if _has_token(choices[0]):
                now = self.clock()
                if self.ttft_s is None:
                    self.ttft_s = now - self.t0
                else:
                    self.itl_s.append(now - self._last)
                self._last = now
                self.count += 1
                if self.on_tokens is not None:
                    self.on_tokens(self.count)
            return True
        # a chunk with no choices and a usage is the one we asked for on our own account
        return chunk.usage is None or self.client_wants_usage
