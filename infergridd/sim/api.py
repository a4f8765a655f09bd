"""OpenAI request parsing and response encoding, shaped like vLLM's (and SGLang's) server.

Chunks are assembled from pre-encoded byte prefixes and suffixes: a stream is
hundreds of nearly identical JSON objects, and re-serialising a dict per token
would be the sim's largest per-token cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec

from infergridd import tokens
from infergridd.sim.model import VOCAB

log = logging.getLogger("infergridd.sim")

_enc = msgspec.json.encode
_JSON_TEXT: dict[str, bytes] = {t: _enc(t) for t in (*VOCAB, "")}

_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
                500: "InternalServerError", 503: "ServiceUnavailableError"}


class ApiError(Exception):
    """An OpenAI-shaped error answer: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    return _enc({"error": {"message": message, "type": _ERROR_TYPES.get(status, "Error"),
                           "param": param, "code": status}})


@dataclass(slots=True)
class ParsedRequest:
    chat: bool
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    priority: int
    ignore_eos: bool


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, got {value!r}", name)
    return value


def parse_request(raw: bytes, *, chat: bool, served_model: str, max_model_len: int,
                  priority_enabled: bool, strict_priority: bool) -> ParsedRequest:
    """Validate a /v1/chat/completions or /v1/completions body like vLLM does.

    ``strict_priority``: a non-zero ``priority`` without priority scheduling is a
    400 (vLLM's behaviour); otherwise it is ignored (SGLang's).
    """
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    # what reached the engine, by name (--log-level debug): tests check that InferGrid
    # forwards only its allowlist (engines/fields.py)
    log.debug("request fields: %s", " ".join(sorted(body)))
    model = body.get("model")
    if model is not None and model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages \
                or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "messages must be a non-empty list of message objects", "messages")
        prompt_tokens = tokens.estimate_chat(body)  # as a chat template renders it all
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise ApiError(400, "prompt must be a string, a list of strings or token ids", "prompt")
        if isinstance(prompt, list) and not all(isinstance(p, int) for p in prompt) \
                and len(prompt) != 1:
            raise ApiError(400, "the simulated engine takes one prompt per request", "prompt")
        prompt_tokens = tokens.estimate_completion(body)
    max_tokens = _int_field(body, "max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = _int_field(body, "max_tokens")
    if max_tokens is None:
        # vLLM's defaults: chat fills the context; the legacy completions API says 16
        max_tokens = max_model_len - prompt_tokens if chat else 16
    if max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    if prompt_tokens + max_tokens > max_model_len:
        raise ApiError(
            400, f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion.", "max_tokens")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "the simulated engine supports n=1 only", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    if opts and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.",
                       "stream_options")
    priority = _int_field(body, "priority") or 0
    if priority and not priority_enabled:
        if strict_priority:
            raise ApiError(400, f"Got priority {priority} but Priority scheduling is not "
                           "enabled.", "priority")
        priority = 0
    return ParsedRequest(chat=chat, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                         stream=stream, include_usage=bool(opts.get("include_usage")),
                         priority=priority, ignore_eos=bool(body.get("ignore_eos", False)))


class ChunkEncoder:
    """SSE events of one stream, byte for byte the shape vLLM sends."""

    __slots__ = ("chat", "_head", "_open", "_mid", "_fin")

    def __init__(self, chat: bool, request_id: str, created: int, model: str) -> None:
        self.chat = chat
        head = (b'data: {"id":' + _enc(request_id) + b',"object":'
                + (b'"chat.completion.chunk"' if chat else b'"text_completion"')
                + b',"created":' + str(created).encode() + b',"model":' + _enc(model))
        self._head = head
        if chat:
            self._open = head + b',"choices":[{"index":0,"delta":{"content":'
            self._mid = b'},"logprobs":null,"finish_reason":null}]}\n\n'
            self._fin = b'},"logprobs":null,"finish_reason":%s,"stop_reason":null}]}\n\n'
        else:
            self._open = head + b',"choices":[{"index":0,"text":'
            self._mid = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            self._fin = b',"logprobs":null,"finish_reason":%s,"stop_reason":null}]}\n\n'

    def role(self) -> bytes:
        """Chat streams open with the assistant role and empty content."""
        return (self._head + b',"choices":[{"index":0,"delta":{"role":"assistant",'
                b'"content":""},"logprobs":null,"finish_reason":null}]}\n\n')

    def token(self, text: str, finish_reason: str | None = None) -> bytes:
        t = _JSON_TEXT.get(text) or _enc(text)
        if finish_reason is None:
            return self._open + t + self._mid
        return self._open + t + self._fin % _enc(finish_reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return (self._head + b',"choices":[],"usage":'
                + _enc(usage(prompt_tokens, completion_tokens)) + b"}\n\n")


DONE = b"data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens}


def stream_error(message: str, status: int = 500) -> bytes:
    """A terminating SSE error event (what vLLM sends when a stream fails mid-way)."""
    return b"data: " + error_body(status, message) + b"\n\n"


def full_response(chat: bool, request_id: str, created: int, model: str, text: str,
                  finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    if chat:
        choice: dict[str, Any] = {
            "index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                  "stop_reason": None}
        obj = "text_completion"
    return _enc({"id": request_id, "object": obj, "created": created, "model": model,
                 "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)})
