"""OpenAI-shaped errors: every failure a client sees has the same JSON body.

``{"error": {"message", "type", "param", "code"}}`` with the HTTP status, and
``Retry-After`` (whole seconds, rounded up) when the client should come back —
SDKs read both, and a plain-text error breaks them (PEERS.md).  An engine's own
errors are rewritten into this shape too (``engine_error``).
"""

from __future__ import annotations

import logging
import math
import re

import msgspec
from aiohttp import web

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


log = logging.getLogger("infergrid.frontdoor")


class ApiError(Exception):
    """Raised anywhere in a handler; the middleware turns it into the response."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 retry_after_s: float | None = None, request_id: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        self.request_id = request_id

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        headers = dict(headers or {})
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(retry_after_header(self.retry_after_s))
        if self.request_id:
            headers["X-Request-Id"] = self.request_id
        return web.Response(status=self.status, body=msgspec.json.encode(self.body()),
                            content_type="application/json", headers=headers)

    def sse_event(self) -> bytes:
        """The terminating event for a stream that already started."""
        return b"data: " + msgspec.json.encode(self.body()) + b"\n\ndata: [DONE]\n\n"


#: an engine's own words for a prompt that does not fit (vLLM, SGLang, the sim, OpenAI)
_CONTEXT = re.compile(r"context length|context window|max_model_len|maximum model length|"
                      r"longer than the model|context_length", re.IGNORECASE)
_ENGINE_CODES = {400: "invalid_request", 404: "not_found", 413: "request_too_large",
                 422: "invalid_request", 429: "engine_busy"}


def engine_error(status: int, data: object) -> ApiError:
    """An engine's own error answer (vLLM's ``{"error": {.., "type": "BadRequestError",
    "code": 400}}``, its older flat ``{"object": "error", ..}``, FastAPI's ``detail``) as
    InferGrid's error object: the same ``type`` names and a string ``code`` as every
    other error a client sees.  A prompt too long is ``context_length_exceeded``; the
    engine refusing InferGrid's own key is InferGrid's fault (502), not the client's."""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        err = data if isinstance(data, dict) else {}
    message = err.get("message") or err.get("detail") or (
        data.decode(errors="replace") if isinstance(data, bytes) else "")
    message = (message if isinstance(message, str) else str(message))[:1000]
    param = err.get("param") if isinstance(err.get("param"), str) else None
    code = err.get("code")
    if status in (401, 403):
        return ApiError(502, "engine_error", f"the engine refused InferGrid ({status}: "
                        f"{message or 'no reason'}); see the front door's log")
    if isinstance(code, str) and code and not code.isdigit():
        pass  # the engine already says it in words
    elif _CONTEXT.search(message):
        code = "context_length_exceeded"
    else:
        code = _ENGINE_CODES.get(status, "engine_error")
    return ApiError(status, code, message or f"the engine answered {status}", param)


def retry_after_header(seconds: float) -> int:
    """``Retry-After`` is whole seconds; rounding down could send a client back too early."""
    return max(1, math.ceil(seconds))


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Every error leaves as OpenAI JSON — aiohttp's own 404/405 and our bugs included."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status, "http_error")
        return ApiError(exc.status, code, exc.reason or "error").response(
            headers={"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None)
    except Exception:  # noqa: BLE001 - a plain-text 500 breaks every SDK (PEERS.md)
        log.exception("internal error on %s %s", request.method, request.path)
        return ApiError(500, "internal_error", "internal error in the front door; "
                        "the request was not completed").response()
