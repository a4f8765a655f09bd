"""Parse and bound a request body before anything is queued or charged.

Only what InferGrid needs is checked here (the engine validates the rest and
its 400s reach the client in InferGrid's error shape, ``errors.engine_error``):
the body is JSON and small enough, the model exists, ``max_tokens`` is sane (it
is the scheduler's cost estimate), the request shape is one we can account for,
and prompt + ``max_tokens`` fit the model's context (``check_context``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from .. import tokens
from ..config import Limits
from .errors import ApiError

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass(slots=True)
class ParsedRequest:
    """A request that passed the checks.  Its body is kept once, as JSON bytes (``raw``),
    not also decoded: while a request waits only those bytes stay in memory, and the
    decoded form of a JSON body can be twenty times its size (``[{},{},…]``).
    ``body`` decodes them again for the moment they are needed (dispatch)."""

    path: str
    raw: bytes  # the body as it goes to the engine (max_tokens filled in), JSON
    model: str
    stream: bool
    client_wants_usage: bool  # the client asked for stream_options.include_usage
    prompt_tokens: int  # estimate; the engine's usage corrects it
    max_tokens: int
    priority: int
    prompt_exact: bool = False  # token ids: prompt_tokens is the engine's count too
    created: int = 0  # the request's time (Unix seconds): every response's ``created``

    @property
    def body(self) -> dict[str, Any]:
        """A fresh decoded copy of the body (the caller may change it)."""
        body: dict[str, Any] = msgspec.json.decode(self.raw)
        return body

    @body.setter
    def body(self, value: dict[str, Any]) -> None:
        self.raw = msgspec.json.encode(value)


#: ``priority`` travels to the scheduler as a 64-bit integer; a client's is kept far inside
PRIORITY_BOUND = 2**31


def _int(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, "invalid_value", f"{name} must be an integer, got "
                       f"{type(v).__name__}", name)
    return v


def _content_ok(m: dict[str, Any]) -> bool:
    """``content`` is text or parts; it may be null only beside tool or function calls."""
    c = m.get("content")
    if isinstance(c, (str, list)):
        return True
    return c is None and bool(m.get("tool_calls") or m.get("function_call"))


def _check_parts(i: int, content: list[Any]) -> None:
    """Each part of a multi-part ``content`` is an object; a text part's ``text`` is a
    string (``{"text": null}`` would reach the engine's template and fail there, as a 500)."""
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict):
            raise ApiError(400, "invalid_value", f"{where} must be an object", where)
        kind = part.get("type", "text")
        if not isinstance(kind, str):
            raise ApiError(400, "invalid_value", f"{where}.type must be a string",
                           f"{where}.type")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise ApiError(400, "invalid_value", f"{where}.text must be a string",
                           f"{where}.text")


def parse(path: str, raw: bytes, limits: Limits, models: set[str]) -> ParsedRequest:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec's own depth bound: a few hundred levels of [[[…
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "invalid_value", "model is required and must be a string", "model")
    if model not in models:
        raise ApiError(404, "model_not_found", f"the model {model!r} does not exist", "model")

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "invalid_value", "stream must be true or false", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "invalid_value", "stream_options must be an object", "stream_options")
    n = _int(body, "n")
    if n is not None and n != 1:
        raise ApiError(400, "unsupported_value", "only n=1 is supported", "n")

    if path == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "invalid_value", "messages must be a non-empty list", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, "invalid_value",
                               f"messages[{i}] must be an object with a string role",
                               f"messages[{i}]")
            if not _content_ok(m):
                raise ApiError(400, "invalid_value",
                               f"messages[{i}].content must be a string or a list of parts",
                               f"messages[{i}].content")
            if isinstance(m["content"], list):
                _check_parts(i, m["content"])
        prompt_tokens = tokens.estimate_chat(body)  # tools, tool calls, schemas too
        exact = False
        field = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
            else "max_tokens"
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise ApiError(400, "invalid_value", "prompt must be a string or a non-empty list",
                           "prompt")
        if isinstance(prompt, list) and len(prompt) > 1 and not all(
                isinstance(x, int) for x in prompt):
            raise ApiError(400, "unsupported_value", "batched prompts are not supported",
                           "prompt")
        prompt_tokens = tokens.estimate_completion(body)  # the prompt and a suffix
        field = "max_tokens"
        exact = isinstance(prompt, list) and all(isinstance(x, int) for x in prompt) \
            and not body.get("suffix")

    max_tokens = _int(body, field)
    changed = max_tokens is None or "priority" in body
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
        body[field] = max_tokens
    if max_tokens < 1:
        raise ApiError(400, "invalid_value", f"{field} must be at least 1, got {max_tokens}", field)
    if max_tokens > limits.max_tokens_cap:
        raise ApiError(400, "invalid_value",
                       f"{field} {max_tokens} is over the limit of {limits.max_tokens_cap}", field)
    priority = _int(body, "priority") or 0
    if not -PRIORITY_BOUND < priority < PRIORITY_BOUND:
        raise ApiError(400, "invalid_value", f"priority must be between {-PRIORITY_BOUND} "
                       f"and {PRIORITY_BOUND}", "priority")
    body.pop("priority", None)  # the scheduler sets the engine priority, not the client
    return ParsedRequest(
        path=path, raw=msgspec.json.encode(body) if changed else raw, model=model,
        stream=stream,
        client_wants_usage=bool(opts and opts.get("include_usage")),
        prompt_tokens=prompt_tokens, max_tokens=max_tokens, priority=priority,
        prompt_exact=exact,
    )


#: a real tokenizer rarely averages more characters a token than this over a prompt; the
#: front door refuses a text prompt only if it cannot fit even counted so (the estimate
#: says 4), so it never refuses what the engine would run
MAX_CHARS_PER_TOKEN = 6


def check_context(req: ParsedRequest, max_model_len: int, exact: bool) -> None:
    """OpenAI's 400 ``context_length_exceeded`` when prompt + ``max_tokens`` cannot fit the
    model's context (``max_model_len`` > 0), before the request is queued or charged.

    ``exact``: the engine counts prompts as InferGrid estimates them (the simulated
    engine).  Otherwise a text prompt is counted at its fewest plausible tokens; what
    passes here and still does not fit, the engine refuses, in the same error shape."""
    if max_model_len <= 0:
        return
    prompt = req.prompt_tokens
    if not (exact or req.prompt_exact):
        prompt = prompt * tokens.CHARS_PER_TOKEN // MAX_CHARS_PER_TOKEN
    need = prompt + req.max_tokens
    if need <= max_model_len:
        return
    about = "" if exact or req.prompt_exact else "at least "
    where = "messages" if req.path == CHAT else "prompt"
    raise ApiError(400, "context_length_exceeded",
                   f"This model's maximum context length is {max_model_len} tokens. However, "
                   f"you requested {about}{need} tokens ({about}{prompt} in the {where}, "
                   f"{req.max_tokens} in the completion). Please reduce the length of the "
                   f"{where} or completion.", where)
