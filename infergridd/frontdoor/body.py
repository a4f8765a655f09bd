"""Reading a request body from an untrusted client: typed, bounded, timed and counted.

* ``Content-Type`` must say JSON (or be absent): a form post or a file upload
  gets ``415`` in OpenAI's error shape, not a confusing ``invalid_json``.
* At most ``limits.max_body_bytes`` is read (``413``), never an unbounded body.
* The whole body must arrive within ``limits.body_timeout_s`` once the headers
  are in (``408``): a client trickling its body one byte a second holds a
  connection and a buffer, and without a bound it could do so for ever.
* Every byte held is counted in the waiting room (``room.Ticket``) as it
  arrives — ``Content-Length`` up front — so a tenant over its byte bound is
  refused before its body is read, not after.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..config import Limits
from .errors import ApiError
from .room import Ticket

_CHUNK = 65536


def check_json_type(request: web.Request) -> None:
    """``415 unsupported_media_type`` unless the body is declared JSON (or undeclared)."""
    if "Content-Type" not in request.headers:
        return
    ctype = request.content_type.lower()  # without parameters (charset)
    if ctype == "application/json" or (ctype.startswith("application/")
                                       and ctype.endswith("+json")):
        return
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {ctype!r} is not supported; send the request as JSON "
                   "with 'Content-Type: application/json'", "Content-Type")


async def read_body(request: web.Request, limits: Limits, ticket: Ticket) -> bytes:
    """The body, read within ``body_timeout_s`` and ``max_body_bytes``, counted in ``ticket``."""
    check_json_type(request)
    limit = limits.max_body_bytes
    declared = request.content_length
    if declared is not None:
        if declared > limit:
            raise ApiError(413, "request_too_large",
                           f"request body is {declared} bytes; the limit is {limit}")
        ticket.reserve(declared)
    content = request.content
    if content.is_eof() and declared is not None:
        # the usual small request: its whole body came with the headers and is buffered
        # already (aiohttp ended the payload at Content-Length), so no deadline to keep
        data = content.read_nowait(-1)
        if len(data) == declared:
            return data
        chunks = [data]  # never expected; read the rest the careful way
    else:
        chunks = []
    try:
        # asyncio.timeout, not wait_for: no task of its own, so a body that is already
        # in (the usual small request) is read in this iteration of the loop
        async with asyncio.timeout(limits.body_timeout_s):
            return await _read(request, limit, ticket, chunks)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within "
                       f"{limits.body_timeout_s:g}s") from None


async def _read(request: web.Request, limit: int, ticket: Ticket,
                chunks: list[bytes]) -> bytes:
    size = sum(len(c) for c in chunks)
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "request_too_large", f"request body exceeds {limit} bytes")
        ticket.reserve(size)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
