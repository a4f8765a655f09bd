"""``python -m infergridd.sim``: the simulated engine as a process.

Flags mirror vLLM's where vLLM has one (``--max-num-seqs``,
``--max-num-batched-tokens``, ``--long-prefill-token-threshold``, ``--block-size``,
``--scheduling-policy``,
``--api-key``), so an adapter builds the same kind of command line for both.
With ``--personality sglang`` the engine batches as SGLang does (``sglang_batch.py``)
and takes SGLang's scheduling flags (``--max-running-requests``,
``--chunked-prefill-size``, ``--enable-priority-scheduling``, ...), so the SGLang
adapter's choice of flags is what runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from infergridd import aio
from infergridd.assist.stats import settings_from_env
from infergridd.sim.options import SimOptions
from infergridd.sim.profile import ProfileError, parse_override
from infergridd.sim.server import serve
from infergridd.sim.sglang_batch import SCHEDULE_POLICIES

#: where the engine's key comes from when ``--api-key`` is not given (the supervisor's way)
KEY_ENV = "INFERGRID_SIM_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m infergridd.sim",
        description="Simulated LLM inference engine (vLLM v1's or SGLang's scheduling, "
                    "OpenAI API).")
    a = p.add_argument
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=8000, help="0: any free port (see --port-file)")
    a("--port-file", help="write the bound port here once listening (atomic)")
    a("--model", default="sim", help="served model name")
    a("--served-model-name", dest="model", help="alias of --model, as in vLLM")
    a("--uds", help="listen on this Unix socket instead of --host/--port (as vLLM's --uds)")
    a("--api-key", help="require 'Authorization: Bearer KEY' on every route (default: env "
                        f"{KEY_ENV}; prefer it: a command line shows in ps)")
    a("--profile", default="fast-test", help="packaged profile name or a YAML file path")
    a("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
      help="override one profile key (repeatable), e.g. --set base_s=0.01")
    a("--max-num-seqs", "--max-running-requests", dest="max_num_seqs", type=int,
      help="running sequences at most (SGLang's --max-running-requests is an alias)")
    a("--max-num-batched-tokens", type=int)
    a("--long-prefill-token-threshold", type=int,
      help="a prompt computes at most this many tokens per step (vLLM's flag; 0: no limit)")
    a("--kv-blocks", type=int)
    a("--block-size", type=int)
    a("--max-model-len", type=int)
    a("--step-s", type=float, help="fixed step duration in seconds (ignores token terms)")
    a("--eos-prob", type=float, help="probability of EOS per generated token")
    a("--seed", type=int, default=0)
    a("--personality", choices=("vllm", "sglang"), default="vllm")
    a("--scheduling-policy", choices=("fcfs", "priority"), default="fcfs")
    a("--startup-delay", type=float, help="seconds until ready (default: the profile's)")
    a("--slow-start", action="store_true", help="do not bind the port until ready")
    a("--crash-after-requests", type=int, default=0,
      help="exit(1) when request N+1 arrives (N requests are served)")
    a("--crash-on-prompt-tokens", type=int, default=0,
      help="exit(1) when a request with a prompt of at least N tokens arrives (a request "
           "that crashes its engine)")
    a("--crash-after-s", type=float, default=0.0, help="exit(1) this many seconds after start")
    a("--hang-after-s", type=float, default=0.0,
      help="block the whole process (health included) this many seconds after start")
    a("--error-rate", type=float, default=0.0, help="fraction of requests answered 500")
    a("--stall-mid-stream-s", type=float, default=0.0,
      help="streams pause this long after half their tokens")
    a("--stall-prob", type=float, default=1.0, help="fraction of streams that stall")
    a("--time-scale", type=float, default=1.0, help="multiply every simulated duration")
    a("--engine-assist", action="store_true",
      help="run InferGrid's assisted step policy (settings: env INFERGRID_ASSIST, JSON; "
           "counters written to the file in env INFERGRID_ASSIST_STATS); vLLM personality")
    g = p.add_argument_group(
        "SGLang's scheduling (--personality sglang only)",
        "prefill batches first, decodes paused during them; see infergridd/sim/sglang_batch.py")
    g.add_argument("--chunked-prefill-size", type=int,
                   help="prefill tokens per step; a longer prompt is chunked (default: the "
                        "profile's max_num_batched_tokens; -1: no chunking)")
    g.add_argument("--max-prefill-tokens", type=int, help="prefill tokens per batch "
                   "(default 16384; a longer prompt runs only first in its batch)")
    g.add_argument("--enable-priority-scheduling", action="store_true",
                   help="queue by priority, higher value first (then by arrival)")
    g.add_argument("--schedule-low-priority-values-first", action="store_true")
    g.add_argument("--priority-scheduling-preemption-threshold", type=int,
                   help="a waiting request preempts a running one whose priority is lower "
                        "by more than this (default 10)")
    g.add_argument("--disable-priority-preemption", action="store_true")
    g.add_argument("--schedule-policy", choices=SCHEDULE_POLICIES,
                   help="only fcfs is modelled: the sim has no prefix cache, so the others "
                        "run as fcfs (as SGLang runs lpm and dfs-weight without a cache)")
    a("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def options_from_args(argv: list[str] | None = None) -> SimOptions:
    ns = build_parser().parse_args(argv)
    overrides = dict(parse_override(s) for s in ns.overrides)
    return SimOptions(
        model=ns.model, host=ns.host, port=ns.port, port_file=ns.port_file, uds=ns.uds,
        api_key=ns.api_key or os.environ.get(KEY_ENV) or None,
        profile=ns.profile, profile_overrides=overrides, max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens, kv_blocks=ns.kv_blocks,
        long_prefill_token_threshold=ns.long_prefill_token_threshold,
        block_size=ns.block_size, max_model_len=ns.max_model_len, step_s=ns.step_s,
        eos_prob=ns.eos_prob, seed=ns.seed, personality=ns.personality,
        scheduling_policy=ns.scheduling_policy, startup_delay=ns.startup_delay,
        slow_start=ns.slow_start, crash_after_requests=ns.crash_after_requests,
        crash_on_prompt_tokens=ns.crash_on_prompt_tokens,
        crash_after_s=ns.crash_after_s, hang_after_s=ns.hang_after_s, error_rate=ns.error_rate,
        stall_mid_stream_s=ns.stall_mid_stream_s, stall_prob=ns.stall_prob,
        time_scale=ns.time_scale,
        assist=settings_from_env() if ns.engine_assist else None,
        chunked_prefill_size=ns.chunked_prefill_size, max_prefill_tokens=ns.max_prefill_tokens,
        priority_scheduling_preemption_threshold=ns.priority_scheduling_preemption_threshold,
        schedule_policy=ns.schedule_policy,
        enable_priority_scheduling=ns.enable_priority_scheduling,
        schedule_low_priority_values_first=ns.schedule_low_priority_values_first,
        disable_priority_preemption=ns.disable_priority_preemption)


def main(argv: list[str] | None = None) -> int:
    try:
        options = options_from_args(argv)
        options.resolve_profile()  # fail before binding, with the key's name
    except (ProfileError, ValueError) as exc:
        sys.stderr.write(f"sim engine: {exc}\n")
        return 2
    level = getattr(logging, build_parser().parse_args(argv).log_level.upper())
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        return aio.run(serve(options))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
