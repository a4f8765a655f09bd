"""SGLang's server: command line, readiness, metrics, memory release, priority.

``args`` keys (each also valid as its SGLang flag with dashes):

* ``model_path`` or ``model`` (required): ``--model-path``;
* ``enable_memory_saver: true``: needed for ``/release_memory_occupation`` (our sleep);
* anything else is passed through as ``--key-with-dashes value``.

The engine's key is never on its command line (``ps`` shows that to every local
user): SGLang reads none from its environment, so it is in a 0600 ``--config``
YAML file the supervisor writes in its runtime dir.  SGLang has no Unix-socket
listener: it stays on loopback, where its key covers every route but ``/health``
and ``/metrics`` (read-only), ``/release_memory_occupation`` included.

SGLang runs the *higher* priority value first (unless started with
``--schedule-low-priority-values-first``), hence ``priority_sign = -1``.

Engine assist (``engine_assist``, DESIGN §5) is SGLang's own flags, as SGLang
already batches prefill first: ``--schedule-policy fcfs`` (within a priority),
``--priority-scheduling-preemption-threshold 1`` so a light request (InferGrid
priority 0) preempts a heavy one (-2) for a seat (SGLang's default threshold of
10 never would), and a small ``--chunked-prefill-size`` so the step a light
prompt lands behind is short.  SGLang's chunk size applies to every prompt,
light ones too, so it is twice the heavy cap.  Verified against the simulated
engine's SGLang personality only (SGLang needs CUDA).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import aiohttp

from ..config import ModelConfig
from .base import AdapterConfigError, EngineAdapter, EngineError, LaunchSpec, args_to_flags

_CONSUMED = {"model", "model_path", "enable_memory_saver"}
#: SGLang flags engine assist sets, unless ``args`` sets them itself
_ASSIST_KEYS = ("schedule_policy", "priority_scheduling_preemption_threshold",
                "chunked_prefill_size")

SGLANG_METRICS = {
    "num_running": ("sglang:num_running_reqs",),
    "num_waiting": ("sglang:num_queue_reqs",),
    "kv_usage": ("sglang:token_usage",),
    "prompt_tokens_total": ("sglang:prompt_tokens_total",),
    "generation_tokens_total": ("sglang:generation_tokens_total",),
}


class SglangProtocol(EngineAdapter):
    """SGLang's HTTP dialect, shared with the simulated engine's SGLang personality."""

    supports_priority = True
    supports_sleep = True
    priority_sign = -1
    metric_names = SGLANG_METRICS

    async def ready(self, http: aiohttp.ClientSession, endpoint: str, api_key: str) -> bool:
        """``/health_generate`` runs a real one-token generation, so it proves the model is
        loaded; ``/get_server_info`` then confirms the server answers its control API."""
        try:
            await self._request(http, "GET", f"{endpoint}/health_generate", api_key,
                                timeout_s=10.0)
            await self._request(http, "GET", f"{endpoint}/get_server_info", api_key)
            return True
        except EngineError:
            return False

    async def sleep(self, http: aiohttp.ClientSession, endpoint: str, api_key: str,
                    level: int) -> None:
        """SGLang has no sleep levels over HTTP: either level releases weights and KV cache."""
        await self._memory_call(http, "sleep", f"{endpoint}/release_memory_occupation",
                                api_key, json_body={})

    async def wake(self, http: aiohttp.ClientSession, endpoint: str, api_key: str) -> None:
        await self._memory_call(http, "wake", f"{endpoint}/resume_memory_occupation",
                                api_key, json_body={})


class SglangAdapter(SglangProtocol):
    kind = "sglang"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        self.supports_sleep = bool(model.args.get("enable_memory_saver"))
        if not (model.args.get("model_path") or model.args.get("model")):
            raise AdapterConfigError(
                f"model {model.name!r}: engine sglang needs args.model_path (the weights)")

    def launch_spec(self, port: int, api_key: str) -> LaunchSpec:
        m = self.model
        path = m.args.get("model_path") or m.args.get("model")
        key_file = self.key_file(port)
        argv = [
            *self.python_argv(), "-m", "sglang.launch_server",
            "--model-path", str(path), "--served-model-name", m.name,
            "--host", "127.0.0.1", "--port", str(port), "--config", str(key_file),
            "--max-running-requests", str(m.max_num_seqs), "--enable-metrics",
            "--enable-priority-scheduling",
        ]
        if self.supports_sleep:
            argv.append("--enable-memory-saver")
        if m.gpus > 1 and not {"tp_size", "tensor_parallel_size"} & m.args.keys():
            argv += ["--tp-size", str(m.gpus)]  # over its GPUs: CUDA_VISIBLE_DEVICES
        flags, on, why = sglang_assist_flags(m)
        argv += flags
        argv += args_to_flags(m.args, skip=_CONSUMED)
        argv += m.extra_args
        spec = LaunchSpec(argv=argv, env=dict(m.env), assist=on, assist_reason=why,
                          files={str(key_file): key_yaml(api_key)})
        return self.with_affinity(spec)

    def key_file(self, port: int) -> Path:
        """SGLang reads no key from its environment, so the key goes in a 0600 YAML file
        (``--config``: its flags as keys, merged by SGLang's ``ConfigArgumentMerger``)."""
        where = self.work_dir if self.work_dir is not None else Path(tempfile.gettempdir())
        return where / f"{self.name}-{port}.sglang-key.yaml"


def key_yaml(api_key: str) -> bytes:
    """``api-key: "KEY"`` (quoted: an all-digit hex key would otherwise read as a number)."""
    return f'api-key: "{api_key}"\n'.encode()


def sglang_assist_flags(m: ModelConfig) -> tuple[list[str], str, str]:
    """(flags, "flags"/"off", why) for engine assist on SGLang; ``args`` win over ours."""
    a = m.assist()
    if not a.enabled:
        return [], "off", "engine_assist is false in the config"
    ours: dict[str, object] = {"schedule_policy": "fcfs"}
    if a.preempt:
        ours["priority_scheduling_preemption_threshold"] = 1
    if a.heavy_chunk_tokens > 0:
        ours["chunked_prefill_size"] = max(128, 2 * a.heavy_chunk_tokens)
    flags = args_to_flags({k: v for k, v in ours.items() if k not in m.args})
    # "flags": SGLang writes no stats file; the flags are the whole of it (supervisor/assist.py)
    return flags, "flags", "SGLang's own flags (verified against the simulated engine only)"
