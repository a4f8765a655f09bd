"""vLLM's sleep-mode endpoints (served with ``VLLM_SERVER_DEV_MODE=1``).

``/sleep?level=1|2`` drops the KV cache (in-flight requests fail) and waits the
profile's sleep latency; ``/wake_up`` waits the wake latency of that level.
"""

from __future__ import annotations

from aiohttp import web

from infergridd.sim import api
from infergridd.sim.http_openai import ENGINE, error_response

__all__ = ["is_sleeping", "sleep_handler", "wake_up"]


async def sleep_handler(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    try:
        level = int(request.query.get("level", "1"))
    except ValueError:
        level = 0
    if level not in (1, 2):
        return error_response(api.ApiError(400, "level must be 1 or 2", "level"))
    await eng.sleep(level)
    return web.Response(status=200)


async def wake_up(request: web.Request) -> web.Response:
    await request.app[ENGINE].wake()
    return web.Response(status=200)


async def is_sleeping(request: web.Request) -> web.Response:
    return web.json_response({"is_sleeping": request.app[ENGINE].is_sleeping})
