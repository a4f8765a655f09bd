"""The /metrics reader must sum label sets and shrug off anything odd."""

from __future__ import annotations

from infergridd.engines import promtext
from infergridd.engines.base import metrics_from_text
from infergridd.engines.sglang import SGLANG_METRICS
from infergridd.engines.vllm import VLLM_METRICS

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 1.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0
vllm:generation_tokens_total{engine="0",model_name="tiny"} 5678.0
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="tiny"} 0.0
"""


def test_sums_label_sets() -> None:
    s = promtext.parse(VLLM_TEXT)
    assert s["vllm:num_requests_running"] == 4.0
    assert s["vllm:kv_cache_usage_perc"] == 0.25


def test_tolerant_of_garbage_and_quoted_braces() -> None:
    text = (
        'a{x="}{ \\"q\\"",y="2"} 5 1700000000000\n'
        "b 7\n"
        "broken{x=\"1\" 3\n"
        "c notanumber\n"
        "d NaN\n"
        "e +Inf\n"
        "   \n"
        "f{} 2\n"
        "novalue\n"
    )
    s = promtext.parse(text)
    assert s == {"a": 5.0, "b": 7.0, "e": float("inf"), "f": 2.0}
    assert promtext.first(s, "zz", "b") == 7.0
    assert promtext.first(s, "zz", default=-1) == -1


def test_vllm_metrics_mapping_and_old_kv_name() -> None:
    m = metrics_from_text(VLLM_TEXT, VLLM_METRICS)
    assert (m.num_running, m.num_waiting, m.kv_usage) == (4, 2, 0.25)
    assert (m.prompt_tokens_total, m.generation_tokens_total) == (1234, 5678)
    old = metrics_from_text('vllm:gpu_cache_usage_perc{model_name="x"} 0.5\n', VLLM_METRICS)
    assert old.kv_usage == 0.5 and old.num_running == 0


def test_sglang_metrics_mapping() -> None:
    text = (
        'sglang:num_running_reqs{model_name="m",tp_rank="0"} 5\n'
        'sglang:num_queue_reqs{model_name="m",tp_rank="0"} 9\n'
        'sglang:token_usage{model_name="m",tp_rank="0"} 0.7\n'
        'sglang:prompt_tokens_total{model_name="m"} 100\n'
        'sglang:generation_tokens_total{model_name="m"} 200\n'
    )
    m = metrics_from_text(text, SGLANG_METRICS)
    assert (m.num_running, m.num_waiting, m.kv_usage) == (5, 9, 0.7)
    assert (m.prompt_tokens_total, m.generation_tokens_total) == (100, 200)
