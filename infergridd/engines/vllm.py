"""vLLM's OpenAI server: command line, readiness, metrics, sleep mode, priority.

``args`` keys (each also valid as its vLLM flag with dashes):

* ``model`` (required): the weights directory, ``--model``;
* ``gpu_memory_utilization`` or ``kv_cache_memory`` (a size, ``--kv-cache-memory-bytes``);
  with neither, a fractional ``memory:`` (0..1] becomes ``--gpu-memory-utilization``;
* ``enable_sleep_mode: true`` turns on ``/sleep`` and ``/wake_up`` (which vLLM only
  serves with ``VLLM_SERVER_DEV_MODE=1``, and never checks a key on: so the engine
  listens on a Unix socket in the runtime dir, ``--uds``, that only InferGrid's
  users can enter; its key is in ``VLLM_API_KEY``, never on the command line);
* anything else is passed through as ``--key-with-dashes value``.

The scheduler keeps the fairness queue itself; ``--scheduling-policy priority``
only lets a dispatch's priority order what is already inside the engine.
"""

from __future__ import annotations

import aiohttp

from ..assist.launch import SHIM_DIRNAME, AssistLaunch, assist_launch
from ..config import ModelConfig, parse_size
from .base import (
    AdapterConfigError,
    EngineAdapter,
    EngineError,
    LaunchSpec,
    MetricNames,
    args_to_flags,
    cpu_list,
)

_CONSUMED = {"model", "gpu_memory_utilization", "kv_cache_memory", "kv_cache_memory_bytes",
             "enable_sleep_mode"}

#: Older vLLM called the KV gauge gpu_cache_usage_perc.
VLLM_METRICS: MetricNames = {
    "num_running": ("vllm:num_requests_running",),
    "num_waiting": ("vllm:num_requests_waiting",),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prompt_tokens_total": ("vllm:prompt_tokens_total",),
    "generation_tokens_total": ("vllm:generation_tokens_total",),
}


class VllmProtocol(EngineAdapter):
    """vLLM's HTTP dialect, shared with the simulated engine's vLLM personality."""

    supports_priority = True
    supports_unix = True  # vllm serve --uds (vLLM >= 0.9; 0.32 verified in tests/engines)

    def listen_flags(self, port: int) -> list[str]:
        """``--uds PATH`` on the supervisor's socket, else loopback ``--host``/``--port``."""
        sock = self.listen_socket()
        if sock is not None:
            return ["--uds", str(sock)]
        return ["--host", "127.0.0.1", "--port", str(port)]
    priority_sign = 1
    metric_names = VLLM_METRICS

    async def sleep(self, http: aiohttp.ClientSession, endpoint: str, api_key: str,
                    level: int) -> None:
        await self._memory_call(http, "sleep", f"{endpoint}/sleep?level={int(level)}", api_key)

    async def wake(self, http: aiohttp.ClientSession, endpoint: str, api_key: str) -> None:
        await self._memory_call(http, "wake", f"{endpoint}/wake_up", api_key)

    async def is_sleeping(self, http: aiohttp.ClientSession, endpoint: str,
                          api_key: str) -> bool | None:
        if not self.supports_sleep:
            return False
        try:
            body = await self._request(http, "GET", f"{endpoint}/is_sleeping", api_key,
                                       want="json")
        except EngineError:
            return None
        if isinstance(body, dict) and "is_sleeping" in body:
            return bool(body["is_sleeping"])
        return None


class VllmAdapter(VllmProtocol):
    kind = "vllm"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        self.supports_sleep = bool(model.args.get("enable_sleep_mode"))
        if not model.args.get("model"):
            raise AdapterConfigError(
                f"model {model.name!r}: engine vllm needs args.model (the weights directory)")

    def memory_flags(self) -> list[str]:
        args = self.model.args
        if args.get("gpu_memory_utilization") is not None:
            return ["--gpu-memory-utilization", str(args["gpu_memory_utilization"])]
        kv = args.get("kv_cache_memory", args.get("kv_cache_memory_bytes"))
        if kv is not None:
            try:
                return ["--kv-cache-memory-bytes", str(parse_size(kv))]  # type: ignore[arg-type]
            except ValueError as exc:
                raise AdapterConfigError(f"model {self.name!r}: args.kv_cache_memory: {exc}") from None
        mem = self.model.memory
        if isinstance(mem, float) and 0 < mem <= 1:
            return ["--gpu-memory-utilization", str(mem)]
        return []

    def launch_spec(self, port: int, api_key: str) -> LaunchSpec:
        m = self.model
        argv = [
            *self.python_argv(), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(m.args["model"]), "--served-model-name", m.name,
            *self.listen_flags(port),
            "--max-num-seqs", str(m.max_num_seqs), "--scheduling-policy", "priority",
            *self.memory_flags(),
        ]
        if m.gpus > 1 and "tensor_parallel_size" not in m.args:  # its GPUs: CUDA_VISIBLE_DEVICES
            argv += ["--tensor-parallel-size", str(m.gpus)]
        env = dict(m.env)
        env["VLLM_API_KEY"] = api_key  # not --api-key: ps shows argv to every local user
        if self.supports_sleep:
            argv.append("--enable-sleep-mode")
            env["VLLM_SERVER_DEV_MODE"] = "1"
        assist = self.assist_launch(env)
        argv += assist.args
        env.update(assist.env)
        argv += args_to_flags(m.args, skip=_CONSUMED)
        argv += m.extra_args
        if m.cpu_affinity:
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_list(m.cpu_affinity))
        spec = LaunchSpec(argv=argv, env=env, assist="on" if assist.on else "off",
                          assist_reason=assist.reason)
        return self.with_affinity(spec)

    def assist_launch(self, env: dict[str, str]) -> AssistLaunch:
        """InferGrid's scheduler class for this engine, or vLLM's stock one and why
        (disabled, a vLLM outside the tested range, a version that cannot be read).
        The supervisor points ``INFERGRID_ASSIST_STATS`` at the engine's stats file."""
        settings = self.model.assist().settings()
        py = self.python_argv()
        if settings.enabled and len(py) != 1:
            return AssistLaunch(False, f"cannot probe the vLLM version behind {py!r} (python "
                                       "with words); running vLLM's stock scheduler")
        shim = str(self.work_dir / SHIM_DIRNAME) if self.work_dir is not None else None
        return assist_launch(py[0], settings, "", pythonpath=env.get("PYTHONPATH"),
                             shim_dir=shim)
