"""The simulated engine (``infergridd.sim``), as a managed engine like any other.

It speaks vLLM's dialect by default and SGLang's with ``personality: sglang``,
so the adapter reuses those two protocols and only builds its own command.
Every ``args`` key becomes ``--key-with-dashes value`` (profile, seed, fault
flags, ...), so new simulator options need no change here.

Like the engines it stands in for, the vLLM personality listens on the
supervisor's Unix socket (``--uds``) and the SGLang one on loopback; its key is
in its environment (``INFERGRID_SIM_API_KEY``), never on its command line, and
it checks it on every route (``sim/http_openai.auth``).

Engine assist follows the engine it stands in for: the vLLM personality runs
InferGrid's step policy (``--engine-assist``, as the vLLM plugin does), the
SGLang personality batches as SGLang does and gets the very flags the SGLang
adapter would pass (``sglang_assist_flags``), so what is tested is that choice.
"""

from __future__ import annotations

from ..assist.stats import SETTINGS_ENV, settings_to_env
from .base import LaunchSpec, args_to_flags
from .sglang import SglangProtocol, sglang_assist_flags
from .vllm import VllmProtocol

#: the simulated engine's key, from its environment (``--api-key`` would show in ``ps``)
SIM_KEY_ENV = "INFERGRID_SIM_API_KEY"


def _head(adapter: VllmProtocol | SglangProtocol, port: int, api_key: str) -> list[str]:
    m = adapter.model
    listen = (adapter.listen_flags(port) if isinstance(adapter, VllmProtocol)
              else ["--host", "127.0.0.1", "--port", str(port)])
    return [*adapter.python_argv(), "-m", "infergridd.sim", *listen, "--model", m.name]


def _env(adapter: VllmProtocol | SglangProtocol, api_key: str) -> dict[str, str]:
    return {**adapter.model.env, SIM_KEY_ENV: api_key}


def sim_argv(adapter: VllmProtocol, port: int, api_key: str) -> list[str]:
    m = adapter.model
    return [
        *_head(adapter, port, api_key), "--max-num-seqs", str(m.max_num_seqs),
        # InferGrid sends a priority with each dispatch, as with a real vLLM engine
        *([] if "scheduling_policy" in m.args else ["--scheduling-policy", "priority"]),
        *(["--engine-assist"] if m.assist().enabled else []),
        *args_to_flags(m.args), *m.extra_args,
    ]


def sim_spec(adapter: VllmProtocol, port: int, api_key: str) -> LaunchSpec:
    """The sim runs the very step policy the vLLM plugin runs (``--engine-assist``), with
    its settings in the environment as for vLLM."""
    spec = LaunchSpec(sim_argv(adapter, port, api_key), _env(adapter, api_key))
    a = adapter.model.assist()
    if a.enabled:  # sim_argv has added --engine-assist
        spec.env[SETTINGS_ENV] = settings_to_env(a.settings())
        spec.assist, spec.assist_reason = "on", "simulated engine"
    else:
        spec.assist, spec.assist_reason = "off", "engine_assist is false in the config"
    return adapter.with_affinity(spec)


def sim_sglang_spec(adapter: SglangProtocol, port: int, api_key: str) -> LaunchSpec:
    """SGLang's command line, as ``SglangAdapter`` builds it, on the simulated engine.

    SGLang writes no stats file: its flags are the whole of assist, so the spec says
    ``"flags"`` and the supervisor reports ``on`` at launch (``supervisor/assist.py``)."""
    m = adapter.model
    flags, on, why = sglang_assist_flags(m)
    argv = [*_head(adapter, port, api_key), "--max-running-requests", str(m.max_num_seqs),
            "--enable-priority-scheduling", *flags, *args_to_flags(m.args), *m.extra_args]
    spec = LaunchSpec(argv, _env(adapter, api_key))
    if on == "off":
        spec.assist, spec.assist_reason = on, why
    else:
        spec.assist = "flags"
        spec.assist_reason = ("SGLang's own flags on the simulated engine: "
                              + (" ".join(flags) or "as set in args"))
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
        return sim_sglang_spec(self, port, api_key)
