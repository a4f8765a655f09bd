"""The simulated engine (``infergridd.sim``), as a managed engine like any other.

It speaks vLLM's dialect by default and SGLang's with ``personality: sglang``,
so the adapter reuses those two protocols and only builds its own command.
Every ``args`` key becomes ``--key-with-dashes value`` (profile, seed, fault
flags, ...), so new simulator options need no change here.
"""

from __future__ import annotations

from ..assist.stats import SETTINGS_ENV, settings_to_env
from .base import LaunchSpec, args_to_flags
from .sglang import SglangProtocol
from .vllm import VllmProtocol


def sim_argv(adapter: VllmProtocol | SglangProtocol, port: int, api_key: str) -> list[str]:
    m = adapter.model
    return [
        *adapter.python_argv(), "-m", "infergridd.sim",
        "--host", "127.0.0.1", "--port", str(port), "--model", m.name,
        "--api-key", api_key, "--max-num-seqs", str(m.max_num_seqs),
        # InferGrid sends a priority with each dispatch, as with a real vLLM engine
        *([] if "scheduling_policy" in m.args else ["--scheduling-policy", "priority"]),
        *(["--engine-assist"] if m.assist().enabled else []),
        *args_to_flags(m.args), *m.extra_args,
    ]


def sim_spec(adapter: VllmProtocol | SglangProtocol, port: int, api_key: str) -> LaunchSpec:
    """The sim runs the very step policy the vLLM plugin runs (``--engine-assist``), with
    its settings in the environment as for vLLM."""
    spec = LaunchSpec(sim_argv(adapter, port, api_key), dict(adapter.model.env))
    a = adapter.model.assist()
    if a.enabled:  # sim_argv has added --engine-assist
        spec.env[SETTINGS_ENV] = settings_to_env(a.settings())
        spec.assist, spec.assist_reason = "on", "simulated engine"
    else:
        spec.assist, spec.assist_reason = "off", "engine_assist is false in the config"
    return adapter.with_affinity(spec)


class SimVllmAdapter(VllmProtocol):
    kind = "sim"
    supports_sleep = True

    def launch_spec(self, port: int, api_key: str) -> LaunchSpec:
        return sim_spec(self, port, api_key)


class SimSglangAdapter(SglangProtocol):
    kind = "sim"
    supports_sleep = True

    def launch_spec(self, port: int, api_key: str) -> LaunchSpec:
        return sim_spec(self, port, api_key)
