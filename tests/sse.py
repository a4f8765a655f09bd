"""A strict SSE client for tests: every stream must be well formed, or the test fails."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class StreamResult:
    status: int
    chunks: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False  # saw "data: [DONE]"
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    text: str = ""
    ttft_s: float | None = None
    body: Any = None  # for non-200 answers: the JSON error
    headers: Any = field(default_factory=dict)

    @property
    def content_chunks(self) -> int:
        n = 0
        for c in self.chunks:
            for ch in c.get("choices", []):
                if ch.get("delta", {}).get("content") or ch.get("text"):
                    n += 1
        return n


def chat_body(max_tokens: int = 16, model: str = "demo", stream: bool = True,
              usage: bool = True, text: str = "Hello there, how are you?") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": stream,
                            "messages": [{"role": "user", "content": text}]}
    if stream and usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def stream_chat(session: aiohttp.ClientSession, url: str, key: str | None,
                      body: dict[str, Any], path: str = "/v1/chat/completions",
                      stop_after_chunks: int | None = None) -> StreamResult:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.monotonic()
    async with session.post(url + path, json=body, headers=headers) as resp:
        res = StreamResult(status=resp.status, headers=resp.headers.copy())  # case-insensitive
        if resp.status != 200:
            res.body = await resp.json(content_type=None)
            return res
        if not body.get("stream"):
            res.body = await resp.json()
            res.usage = res.body.get("usage")
            return res
        assert resp.headers["Content-Type"].startswith("text/event-stream"), resp.headers
        buf = b""
        async for piece in resp.content.iter_any():
            buf += piece
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                line = event.decode()
                assert line.startswith("data: "), f"malformed SSE event: {line!r}"
                data = line[len("data: "):]
                assert not res.done, "data after [DONE]"
                if data == "[DONE]":
                    res.done = True
                    continue
                obj = json.loads(data)
                if "error" in obj:
                    res.error = obj["error"]
                    continue
                res.chunks.append(obj)
                if obj.get("usage"):
                    res.usage = obj["usage"]
                for ch in obj.get("choices", []):
                    piece_text = ch.get("delta", {}).get("content") or ch.get("text") or ""
                    if piece_text and res.ttft_s is None:
                        res.ttft_s = time.monotonic() - t0
                    res.text += piece_text
                if stop_after_chunks is not None and len(res.chunks) >= stop_after_chunks:
                    return res  # leaving the context manager closes the connection
        assert buf.strip() == b"", f"trailing bytes after the stream: {buf!r}"
        return res
