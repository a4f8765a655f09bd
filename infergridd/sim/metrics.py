"""``/metrics`` of the simulated engine, in Prometheus text with the real engines' names.

Rendered by hand from the model's counters rather than with prometheus_client:
several sim engines may live in one test process, and the client library's
global registry would make their series collide.  The names and label sets are
the ones the supervisor's adapters parse on a real vLLM / SGLang, so the same
parsing code is exercised here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from infergridd.sim import devices
from infergridd.sim.model import EngineModel, StepResult

#: vLLM's buckets for vllm:time_to_first_token_seconds.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
#: vLLM's buckets for request latency histograms (e2e, queue time).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class Histogram:
    """A cumulative-bucket histogram: one bisect per observation."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str, out: list[str]) -> None:
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {acc}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_count{{{labels}}} {self.count}")
        out.append(f"{name}_sum{{{labels}}} {self.sum}")


class SimMetrics:
    """Per-request latency histograms, fed from each committed step."""

    def __init__(self) -> None:
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.queue = Histogram(LATENCY_BUCKETS)

    def observe(self, result: StepResult) -> None:
        for r in result.first_tokens:
            self.ttft.observe(result.now - r.arrival)
            if r.first_scheduled_at is not None:
                self.queue.observe(r.first_scheduled_at - r.arrival)
        for r in result.finished:
            self.e2e.observe(result.now - r.arrival)

    # ------------------------------------------------------------------ render
    def render_vllm(self, model: EngineModel, model_name: str) -> str:
        lab = f'model_name="{_esc(model_name)}"'
        c = model.counters
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, value: float, extra: str = "") -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            series = name + ("_total" if kind == "counter" else "")
            out.append(f"{series}{{{lab}{extra}}} {value}")

        metric("vllm:num_requests_running", "gauge",
               "Number of requests in model execution batches.", model.num_running)
        metric("vllm:num_requests_waiting", "gauge",
               "Number of requests waiting to be processed.", model.num_waiting)
        metric("vllm:kv_cache_usage_perc", "gauge",
               "KV-cache usage. 1 means 100 percent usage.", model.kv_usage)
        metric("vllm:gpu_cache_usage_perc", "gauge",
               "GPU KV-cache usage (deprecated name). 1 means 100 percent usage.", model.kv_usage)
        metric("vllm:num_preemptions", "counter",
               "Cumulative number of preemption from the engine.", c.preemptions)
        metric("vllm:prompt_tokens", "counter",
               "Number of prefill tokens processed.", c.prompt_tokens)
        metric("vllm:generation_tokens", "counter",
               "Number of generation tokens processed.", c.generation_tokens)
        out.append("# HELP vllm:request_success Count of successfully processed requests.")
        out.append("# TYPE vllm:request_success counter")
        for reason in ("stop", "length", "abort"):
            n = c.aborted if reason == "abort" else c.success.get(reason, 0)
            out.append(f'vllm:request_success_total{{finished_reason="{reason}",{lab}}} {n}')
        for name, hist, help_ in (
            ("vllm:time_to_first_token_seconds", self.ttft, "Histogram of time to first token in seconds."),
            ("vllm:e2e_request_latency_seconds", self.e2e, "Histogram of e2e request latency in seconds."),
            ("vllm:request_queue_time_seconds", self.queue, "Histogram of time spent in WAITING phase for request."),
        ):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            hist.render(name, lab, out)
        devices.render(out)
        out.append("")
        return "\n".join(out)

    def render_sglang(self, model: EngineModel, model_name: str) -> str:
        lab = f'model_name="{_esc(model_name)}"'
        c = model.counters
        out: list[str] = []
        for name, kind, value in (
            ("sglang:num_running_reqs", "gauge", model.num_running),
            ("sglang:num_queue_reqs", "gauge", model.num_waiting),
            ("sglang:token_usage", "gauge", model.kv_usage),
            ("sglang:num_used_tokens", "gauge",
             (model.total_blocks - model.free_blocks) * model.block_size),
            ("sglang:prompt_tokens", "counter", c.prompt_tokens),
            ("sglang:generation_tokens", "counter", c.generation_tokens),
            ("sglang:num_requests", "counter", sum(c.success.values())),
        ):
            out.append(f"# TYPE {name} {kind}")
            series = name + ("_total" if kind == "counter" else "")
            out.append(f"{series}{{{lab}}} {value}")
        out.append("# TYPE sglang:time_to_first_token_seconds histogram")
        self.ttft.render("sglang:time_to_first_token_seconds", lab, out)
        out.append("# TYPE sglang:e2e_request_latency_seconds histogram")
        self.e2e.render("sglang:e2e_request_latency_seconds", lab, out)
        devices.render(out)
        out.append("")
        return "\n".join(out)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
