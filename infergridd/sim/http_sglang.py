"""SGLang's own endpoints: a generating health check, server info, memory release.

SGLang has no sleep levels over HTTP: releasing memory occupation drops both
weights and KV cache, so it is the simulated engine's level-2 sleep.
"""

from __future__ import annotations

from aiohttp import web

from infergridd.sim import api
from infergridd.sim.http_openai import ENGINE, collect

__all__ = ["get_model_info", "get_server_info", "health_generate", "release_memory",
           "resume_memory"]


async def health_generate(request: web.Request) -> web.Response:
    """SGLang runs a one-token generation through the scheduler to prove it works."""
    eng = request.app[ENGINE]
    if eng.unavailable() is not None:
        return web.Response(status=503)
    parsed = api.ParsedRequest(chat=False, prompt_tokens=1, max_tokens=1, stream=False,
                               include_usage=False, priority=0, ignore_eos=True)
    req = eng.add_probe("health")
    try:
        await collect(eng, req, parsed)
    finally:
        if req.finish_reason is None:
            eng.abort(req)
    return web.Response(status=200 if req.finish_reason else 503)


async def get_server_info(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    p, o = eng.profile, eng.options
    return web.json_response({
        "model_path": o.model, "served_model_name": o.model, "tokenizer_path": o.model,
        "host": o.host, "port": request.url.port,
        "max_running_requests": p.max_num_seqs, "max_total_num_tokens": p.kv_blocks * p.block_size,
        "chunked_prefill_size": p.max_num_batched_tokens, "context_length": p.max_model_len,
        "page_size": p.block_size, "schedule_policy": "fcfs",
        "enable_priority_scheduling": o.scheduling_policy == "priority",
        "schedule_low_priority_values_first": False,
        "version": "0.0.0-sim",
        "internal_states": [{"memory_usage": {"kv_cache_usage": eng.model.kv_usage},
                             "num_running_reqs": eng.model.num_running,
                             "num_queue_reqs": eng.model.num_waiting}],
    })


async def get_model_info(request: web.Request) -> web.Response:
    name = request.app[ENGINE].options.model
    return web.json_response({"model_path": name, "tokenizer_path": name, "is_generation": True})


async def release_memory(request: web.Request) -> web.Response:
    await request.app[ENGINE].sleep(2)  # weights and KV cache both released
    return web.json_response({"success": True, "message": ""})


async def resume_memory(request: web.Request) -> web.Response:
    await request.app[ENGINE].wake()
    return web.json_response({"success": True, "message": ""})
